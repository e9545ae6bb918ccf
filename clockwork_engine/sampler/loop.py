"""The sampling loop: it owns the step index, asks the clock (on the host) which step
function runs, and passes the index down."""

from __future__ import annotations

from collections.abc import Callable

import torch

from clockwork_engine.clockwork.cache import CacheState
from clockwork_engine.sampler.solver import SolverTable

# callback(step_index, num_steps, latents) -> None; raise inside it to cancel.
StepCallback = Callable[[int, int, torch.Tensor], None]


def run(step_fns: dict, kinds: list[str], table: SolverTable, latents: torch.Tensor, cache: CacheState,
        callback: StepCallback | None = None) -> torch.Tensor:
    """x_E from the initial latents (already times init_noise_sigma, see latents.prepare).
    step_fns[kind](i, x, history, features) -> (x, history, features)."""
    if len(kinds) != table.num_steps:
        raise ValueError(f"schedule has {len(kinds)} entries for {table.num_steps} steps")
    x = latents.float()
    history = table.empty_history(x)
    indices = torch.arange(table.num_steps, device=x.device)  # 0-d slices: no host sync per step
    for i, kind in enumerate(kinds):
        with torch.profiler.record_function(f"clockwork.step.{i}.{kind}"):
            x, history, cache.r_out = step_fns[kind](indices[i], x, history, cache.r_out)
        if callback is not None:
            callback(i, table.num_steps, x)
    return x
