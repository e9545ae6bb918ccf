"""The per-step functions: small, pure and free of host syncs (what a CUDA graph captures).

A step takes the step index (0-d int64 tensor: the model evaluation, see solver.py; or one
index a row, [B] int64, when rows at different evaluations share the call: serving/), the
latents x_i [B, C, h, w], the solver's window of past vectors (history [K, V, B, C, h, w]),
the cached features of the previous step (r_out [B', C_r, h_r, w_r] or None), the text
embeddings ([2B, L, D] with CFG, uncond first as diffusers orders them; else [B, L, D]), the
guidance scales (one a row, [B] float32) and the pre-drawn noise terms of a stochastic
scheduler ([E, B, C, h, w] or None), and returns (x_{i+1}, history, features). Whether CFG
runs is a Python bool fixed per call site (one captured graph per value), never a branch on
tensor data.

A guidance-distilled model (a UNet with time_cond_proj_dim) runs once per step without
the CFG batch and takes the guidance scale as an embedding added to its time embedding
(embed_guidance=True): the scale stays a device tensor, so it too is graph-capturable.

A denoiser maps (latents, timestep, text, cached features, timestep_cond) -> (model
output, features); timestep_cond is the guidance embedding [B', D_w] or None:
  unet_denoiser      the unmodified UNet (no features)
  split_denoiser     H_in -> L -> H_out, returns r_out for the cache
  adaptor_denoiser   H_in -> adaptor(r_in, cached r_out, t_emb, text) -> H_out
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch

from clockwork_engine.sampler.solver import SolverTable, per_row, update

Features = torch.Tensor | None
Denoiser = Callable[..., tuple[torch.Tensor, Features]]


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of guidance scales w [B] -> [B, dim] (the LCM / Meng et al. form:
    the scale times 1000 embedded like a timestep)."""
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=w.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def unet_denoiser(unet) -> Denoiser:
    def denoise(x, t, text, features, cond=None, added=None):
        return unet(x, t, encoder_hidden_states=text, timestep_cond=cond, added_cond_kwargs=added,
                    return_dict=False)[0], None

    return denoise


def split_denoiser(split) -> Denoiser:
    def denoise(x, t, text, features, cond=None, added=None):
        return split(x, t, text, cond, added)

    return denoise


def adaptor_denoiser(split, adaptor) -> Denoiser:
    def denoise(x, t, text, r_out_prev, cond=None, added=None):
        hin = split.h_in(x, t, text, cond, added)
        r_out = adaptor(hin.r_in, r_out_prev, hin.emb, text)
        return split.h_out(r_out, hin.skips, hin.emb, text), r_out

    return denoise


def step(denoise: Denoiser, table: SolverTable, i, x, history, features, text, guidance, cfg: bool,
         embed_guidance: int = 0, noise=None, extra=None, blend=None, added=None, rescale: float = 0.0):
    """One sampler step: classifier-free guidance folded into one batched model call, or
    (embed_guidance = the embedding size of a guidance-distilled model) one plain call.
    extra [B, C_x, h, w]: channels appended to the model input (a 9-channel inpainting UNet's
    mask and masked-image latents); blend: 4-channel inpainting's (mask, kept terms); added:
    the UNet's added conditioning (SDXL); rescale: CFG rescale (diffusers' guidance_rescale)."""
    rows = i.dim() == 1  # one evaluation index a row (continuous batching; table: a TableBank's)
    t = table.timesteps.index_select(0, i.view(-1))  # [1] or [B]
    t = (t.repeat(2) if cfg else t) if rows else t[0]
    model_in = x / per_row(table.in_div, i, x)
    if extra is not None:
        model_in = torch.cat([model_in, extra.to(model_in.dtype)], dim=1)
    model_in = model_in.to(text.dtype)
    if cfg:
        model_in = torch.cat([model_in, model_in])
    cond = None
    if embed_guidance:
        cond = guidance_embedding(guidance, embed_guidance).to(text.dtype)
    # The profile's "model compute" range; a compiled program has no Python ranges inside it.
    model_range = nullcontext() if torch.compiler.is_compiling() else torch.profiler.record_function("clockwork.model")
    if added is not None and "controlnet_scales" in added:  # the ControlNets' scales of this evaluation
        added = {**added, "controlnet_step": i}
    with model_range:
        out, features = denoise(model_in, t, text, features, cond, added)
    if cfg:
        uncond, cond_out = out.chunk(2)
        out = uncond + guidance.to(out.dtype).view(-1, 1, 1, 1) * (cond_out - uncond)
        if rescale:  # rescale_noise_cfg: the guided output's std brought back towards the cond's
            dims = list(range(1, out.dim()))
            rescaled = out * (cond_out.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
            out = rescale * rescaled + (1 - rescale) * out
    x_next, history = update(table, i, x, out, history, noise, blend)
    return x_next, history, features
