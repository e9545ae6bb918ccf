"""Flux's packed latents: 2x2 patches of the [B, C, h, w] latents as tokens, and their rotary
position ids (FluxPipeline._pack_latents, _unpack_latents, _prepare_latent_image_ids)."""

from __future__ import annotations

import torch


def pack(x):
    """[B, C, h, w] -> [B, h/2 * w/2, 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h: int, w: int):
    """[B, h/2 * w/2, 4C] -> [B, C, h, w] (FluxPipeline._unpack_latents)."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype):
    """[h/2 * w/2, 3] rotary position ids of the packed latent grid (row, column in axes 1, 2)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)
