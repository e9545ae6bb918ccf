"""Diffusion solvers as per-step coefficient tables, so a step is pure tensor arithmetic.

Every supported diffusers scheduler reduces, at step i, to two linear maps:

    x0_i     = p[i] * x_i + q[i] * model_out_i            (eps or v prediction -> x0)
    x_{i+1}  = a[i] * x_i + b[i] * x0_i + c[i] * x0_{i-1}  (the solver update)

The tables are computed once per (scheduler config, step count) on the host in float64 from
the scheduler's own timesteps/sigmas; the step function then indexes them with the step
index the sampler passes in (a device tensor: no host sync, graph-capturable). Results
match diffusers' own step() (tests/test_solver.py).

Supported: DPMSolverMultistepScheduler (dpmsolver++, order 1 or 2, midpoint, ODE; its
lower-order first/final steps included) and DDIMScheduler (eta = 0, clip_sample off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUPPORTED = ("DPMSolverMultistepScheduler", "DDIMScheduler")


@dataclass(frozen=True)
class SolverTable:
    timesteps: torch.Tensor  # [N] int64, what the UNet is given at step i
    p: torch.Tensor  # [N] float32
    q: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    init_noise_sigma: float

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def to(self, device) -> SolverTable:
        move = lambda t: t.to(device)  # noqa: E731
        return SolverTable(*(move(getattr(self, f)) for f in ("timesteps", "p", "q", "a", "b", "c")),
                           init_noise_sigma=self.init_noise_sigma)


def _prediction_coeffs(prediction_type: str, alpha: float, sigma: float) -> tuple[float, float]:
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    if prediction_type == "sample":
        return 0.0, 1.0
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def _check(cond: bool, scheduler, what: str):
    if not cond:
        raise ValueError(f"{type(scheduler).__name__} with {what} is not supported by the engine's solver")


def _dpmsolver_table(scheduler, n: int):
    cfg = scheduler.config
    _check(cfg.algorithm_type == "dpmsolver++", scheduler, f"algorithm_type={cfg.algorithm_type!r}")
    _check(cfg.solver_order in (1, 2), scheduler, f"solver_order={cfg.solver_order}")
    _check(cfg.solver_type == "midpoint" or cfg.solver_order == 1, scheduler, f"solver_type={cfg.solver_type!r}")
    _check(not cfg.thresholding, scheduler, "thresholding")
    sigmas = scheduler.sigmas.double().tolist()  # n + 1 entries, the last is the final sigma
    # VP form of a sigma: alpha = 1/sqrt(sigma^2 + 1), sigma_vp = sigma * alpha.
    alpha = [1.0 / math.sqrt(s * s + 1.0) for s in sigmas]
    sig = [s * a for s, a in zip(sigmas, alpha)]
    rows = []
    for i in range(n):
        p, q = _prediction_coeffs(cfg.prediction_type, alpha[i], sig[i])
        lower_final = i == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
        )
        # exp(-h), h = lambda_{i+1} - lambda_i, lambda = log(alpha / sigma); written without
        # logs so that a final sigma of 0 gives exp(-h) = 0 instead of nan.
        exp_neg_h = (sig[i + 1] * alpha[i]) / (alpha[i + 1] * sig[i])
        a = sig[i + 1] / sig[i]
        phi = -alpha[i + 1] * (exp_neg_h - 1.0)
        if cfg.solver_order == 1 or i == 0 or lower_final:
            rows.append((p, q, a, phi, 0.0))
        else:
            h = -math.log(exp_neg_h)
            h_0 = math.log(alpha[i] / sig[i]) - math.log(alpha[i - 1] / sig[i - 1])
            r0 = h_0 / h
            # D0 = x0_i, D1 = (x0_i - x0_{i-1}) / r0; x_{i+1} = a x + phi D0 + phi/2 D1
            rows.append((p, q, a, phi * (1.0 + 0.5 / r0), -phi * 0.5 / r0))
    return rows


def _ddim_table(scheduler, n: int):
    cfg = scheduler.config
    ac = scheduler.alphas_cumprod.double()
    final = 1.0 if cfg.set_alpha_to_one else float(ac[0])
    _check(not cfg.thresholding, scheduler, "thresholding")
    _check(not cfg.clip_sample, scheduler, "clip_sample=True (SD's configs set it False)")
    rows = []
    for i, t in enumerate(scheduler.timesteps.tolist()):
        prev_t = t - cfg.num_train_timesteps // scheduler.num_inference_steps
        a_t = float(ac[t])
        a_prev = float(ac[prev_t]) if prev_t >= 0 else final
        alpha, sigma = math.sqrt(a_t), math.sqrt(1 - a_t)
        p, q = _prediction_coeffs(cfg.prediction_type, alpha, sigma)
        a = math.sqrt(1 - a_prev) / sigma
        rows.append((p, q, a, math.sqrt(a_prev) - a * alpha, 0.0))
    return rows


def build_table(scheduler, num_steps: int, timesteps: list[int] | None = None) -> SolverTable:
    """Set the scheduler to num_steps (or to the given timesteps, DPM-Solver++ only: it takes a
    custom grid, DDIM does not) and turn it into a SolverTable (host, float64 math)."""
    name = type(scheduler).__name__
    if name not in SUPPORTED:
        raise ValueError(f"scheduler {name} is not supported by the engine; supported: {', '.join(SUPPORTED)}")
    if timesteps is None:
        scheduler.set_timesteps(num_steps, device="cpu")
    elif max(timesteps) >= scheduler.config.num_train_timesteps:
        raise ValueError(f"timesteps {list(timesteps)} go past the scheduler's {scheduler.config.num_train_timesteps}")
    elif name == "DPMSolverMultistepScheduler":
        scheduler.set_timesteps(device="cpu", timesteps=list(timesteps))
    else:
        raise ValueError(f"{name} does not take a custom timestep grid")
    n = len(scheduler.timesteps)
    rows = _dpmsolver_table(scheduler, n) if name == "DPMSolverMultistepScheduler" else _ddim_table(scheduler, n)
    cols = torch.tensor(rows, dtype=torch.float64).T.float()
    return SolverTable(scheduler.timesteps.clone().long(), *cols, init_noise_sigma=float(scheduler.init_noise_sigma))
