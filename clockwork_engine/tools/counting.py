"""Counting FLOPs with torch.utils.flop_counter: one call's ops, the two conventions, and a UNet
call's example inputs (meta tensors: nothing is computed)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from clockwork_engine.tools.architectures import SDXL_POOLED_DIM

ATTENTION_SCORE_OPS = ("aten.baddbmm", "aten.bmm", "aten._scaled_dot_product")


def _count(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def _conventions(ops: dict[str, int]) -> dict[str, float]:
    full = sum(ops.values())
    scores = sum(n for op, n in ops.items() if any(op.startswith(s) for s in ATTENTION_SCORE_OPS))
    return {"full": full, "paper": full - scores}


def example_inputs(unet_config: dict, batch: int, text_tokens: int, text_dim: int, latent: int | None = None):
    """(x, t, text, added or None) for one UNet call: random latents, timestep 500, text states,
    and for SDXL its added conditioning (pooled text and the six time ids)."""
    size = latent or unet_config["sample_size"]
    x = torch.randn(batch, unet_config["in_channels"], size, size)
    text = torch.randn(batch, text_tokens, text_dim)
    added = None
    if unet_config.get("addition_embed_type") == "text_time":
        side = float(size * 8)  # the image side the time ids name (a VAE factor of 8)
        added = {"text_embeds": torch.randn(batch, SDXL_POOLED_DIM),
                 "time_ids": torch.tensor([[side, side, 0.0, 0.0, side, side]]).repeat(batch, 1)}
    return x, torch.tensor(500), text, added
