"""The per-step functions: small, pure and free of host syncs (what a CUDA graph captures).

A step takes the latents x_i [B, C, h, w], the previous step's x0 prediction [B, C, h, w]
(the solver's history), the text embeddings ([2B, L, D] with CFG, uncond first, as
diffusers orders them; else [B, L, D]), the guidance scale as a 0-d tensor and the step
index as a 0-d int64 tensor, and returns (x_{i+1}, x0_i). Whether CFG runs is a Python
bool fixed per call site (one captured graph per value), never a branch on tensor data.
"""

from __future__ import annotations

from typing import Callable

import torch

from .solver import SolverTable

# denoise(latents [B', C, h, w], timestep 0-d tensor, text [B', L, D]) -> model output [B', C, h, w]
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _at(table_column: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    # index_select keeps the step index on the device (no .item()); shape [1] broadcasts.
    return table_column.index_select(0, i.view(1))


def guided_output(denoise: Denoiser, x, t, text, guidance, cfg: bool) -> torch.Tensor:
    """Model output with classifier-free guidance folded in (one batched call)."""
    if not cfg:
        return denoise(x, t, text)
    uncond, cond = denoise(torch.cat([x, x]), t, text).chunk(2)
    return uncond + guidance * (cond - uncond)


def solver_update(table: SolverTable, i, x, model_out, x0_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{i+1}, x0_i) from the model output; float32 math whatever the model dtype."""
    model_out = model_out.float()
    x0 = _at(table.p, i) * x + _at(table.q, i) * model_out
    x_next = _at(table.a, i) * x + _at(table.b, i) * x0 + _at(table.c, i) * x0_prev
    return x_next, x0


def full_step(denoise: Denoiser, table: SolverTable, i, x, x0_prev, text, guidance, cfg: bool):
    """One step of the unmodified model."""
    t = table.timesteps.index_select(0, i.view(1))[0]
    out = guided_output(denoise, x.to(text.dtype), t, text, guidance, cfg)
    return solver_update(table, i, x, out, x0_prev)
