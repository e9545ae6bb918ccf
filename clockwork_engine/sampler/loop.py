"""The sampling loop: it owns the step index, asks the clock (on the host) which step
function runs, and passes the index down."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cache import CacheState
from .solver import SolverTable

# callback(step_index, num_steps, latents) -> None; raise inside it to cancel.
StepCallback = Callable[[int, int, torch.Tensor], None]


def run(step_fns: dict, kinds: list[str], table: SolverTable, noise: torch.Tensor, cache: CacheState,
        callback: StepCallback | None = None) -> torch.Tensor:
    """x_N from x_0 = noise * init_sigma. step_fns[kind](i, x, x0_prev, features) -> (x, x0, features)."""
    if len(kinds) != table.num_steps:
        raise ValueError(f"schedule has {len(kinds)} entries for {table.num_steps} steps")
    x = noise.float() * table.init_noise_sigma
    x0_prev = torch.zeros_like(x)
    indices = torch.arange(table.num_steps, device=x.device)  # 0-d slices: no host sync per step
    for i, kind in enumerate(kinds):
        with torch.profiler.record_function(f"clockwork.step.{i}.{kind}"):
            x, x0_prev, cache.r_out = step_fns[kind](indices[i], x, x0_prev, cache.r_out)
        if callback is not None:
            callback(i, table.num_steps, x)
    return x
