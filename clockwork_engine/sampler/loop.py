"""The sampling loop: it owns the step index and passes it to the step functions."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .solver import SolverTable

# callback(step_index, num_steps, latents) -> None; raise inside it to cancel.
StepCallback = Callable[[int, int, torch.Tensor], None]


def run(step_fn, table: SolverTable, noise: torch.Tensor, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """x_N from x_0 = noise * init_sigma. step_fn(i, x, x0_prev) -> (x_next, x0)."""
    x = noise.float() * table.init_noise_sigma
    x0_prev = torch.zeros_like(x)
    indices = torch.arange(table.num_steps, device=x.device)  # 0-d slices: no host sync per step
    for i in range(table.num_steps):
        with torch.profiler.record_function(f"clockwork.step.{i}"):
            x, x0_prev = step_fn(indices[i], x, x0_prev)
        if callback is not None:
            callback(i, table.num_steps, x)
    return x
