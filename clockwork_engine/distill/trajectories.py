"""Teacher features for adaptor training.

unrolled: sample full trajectories from noise with the teacher (the engine's own loop and
          solver, CFG batch), recording (r_in_i, t_emb_i, r_out_i) at every step.
noised:   forward-noise data latents to each step's timestep with one noise draw and run
          the teacher on each (the paper's ablation; needs images, so the demo world only).
Both return per step i a Record of [B', ...] tensors (B' = 2B with CFG: uncond, cond).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from .. import sampler
from ..cache import CacheState


@dataclass
class Record:
    r_in: torch.Tensor  # [B', C_in, h, w]
    emb: torch.Tensor  # [B', E]
    r_out: torch.Tensor  # [B', C_out, h, w]


def _recording_denoiser(split, records: list):
    def denoise(x, t, text, features, cond=None):
        hin = split.h_in(x, t, text, cond)
        r_out = split.low(hin.r_in, hin.emb, text)
        records.append(Record(hin.r_in, hin.emb, r_out))
        return split.h_out(r_out, hin.skips, hin.emb, text), r_out

    return denoise


def _text(engine, prompts, cfg: bool):
    return engine.prompts.encode(([""] * len(prompts) if cfg else []) + list(prompts)).to(engine.device)


@torch.no_grad()
def unrolled(engine, split, prompts: list[str], steps: int, guidance: float, generator: torch.Generator):
    table = engine._table(steps)
    cfg = engine.uses_cfg(guidance)
    records: list[Record] = []
    step_fn = partial(sampler.step, _recording_denoiser(split, records), table, text=_text(engine, prompts, cfg),
                      guidance=torch.tensor(guidance), cfg=cfg, embed_guidance=engine.guidance_dim)
    size = engine.default_size // engine.vae_factor
    noise = torch.randn(len(prompts), engine.unet.config.in_channels, size, size, generator=generator)
    sampler.run({"full": step_fn}, ["full"] * steps, table, noise, CacheState())
    return records


@torch.no_grad()
def noised(engine, split, prompts: list[str], latents: torch.Tensor, steps: int, guidance: float,
           generator: torch.Generator):
    """latents [B, C, h, w]: clean data latents (already scaled) for the prompts."""
    table = engine._table(steps)
    cfg = engine.uses_cfg(guidance)
    text = _text(engine, prompts, cfg)
    cond = None
    if engine.guidance_dim:
        cond = sampler.steps.guidance_embedding(torch.full((len(prompts),), guidance), engine.guidance_dim)
    ac = engine.scheduler.alphas_cumprod
    noise = torch.randn(latents.shape, generator=generator)
    records: list[Record] = []
    for t in table.timesteps:
        x = ac[t].sqrt() * latents + (1 - ac[t]).sqrt() * noise
        x = torch.cat([x, x]) if cfg else x
        hin = split.h_in(x, t, text, cond)
        records.append(Record(hin.r_in, hin.emb, split.low(hin.r_in, hin.emb, text)))
    return records


def pairs(records: list[Record], adaptor_steps: list[int]):
    """Training pairs (r_in_i, r_out_{i-1}, emb_i) -> r_out_i for the adaptor's steps."""
    cat = lambda xs: torch.cat(xs)  # noqa: E731
    return (cat([records[i].r_in for i in adaptor_steps]), cat([records[i - 1].r_out for i in adaptor_steps]),
            cat([records[i].emb for i in adaptor_steps]), cat([records[i].r_out for i in adaptor_steps]))
