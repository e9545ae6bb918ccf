"""Diffusers schedulers as per-step coefficient tables, so a step is pure tensor arithmetic.

Every scheduler the engine takes is linear in what it has seen. At model evaluation i
(a step of a one-evaluation scheduler, a stage of Heun / KDPM2 / singlestep DPM-Solver):

    model input  = in_scale[i] * x_i                         (scale_model_input)
    c_i          = clamp(p[i] x_i + q[i] m_i, -r, r)         (x0 clipping; DDIM/LCM/TCD/Heun/DDPM only)
    x_{i+1}      = sum_k sum_v coeffs[i, k, v] * V_{i-k}[v]  +  noise_term[i]

where V_j = (x_j, m_j[, c_j]) are the sample, the (guided) model output and the clipped x0
prediction of evaluation j, k a lag within a window of K evaluations, and noise_term[i] a
fixed mix of the noise the scheduler draws, pre-drawn per request in diffusers' order.

The tables are read off the diffusers scheduler object itself, not re-derived per scheduler:
its own loop (scale_model_input, step) runs once over coefficient vectors, one variable per
x_j, m_j, c_j and noise draw, so whatever it computes comes out as coefficients. A config
whose step is not linear is refused by name (_UNSUPPORTED), and every table is checked
against the real scheduler on random inputs before it is used (verify()), so a scheduler
the probe cannot express fails loudly instead of sampling approximately.
"""

from __future__ import annotations

import copy
import inspect
import sys
import threading
from dataclasses import dataclass

import torch

SUPPORTED = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
)
# Config values that make a step nonlinear in its inputs: refused, naming the field.
_UNSUPPORTED = {
    "thresholding": (True,),  # dynamic thresholding: a per-image quantile of x0
    "variance_type": ("learned", "learned_range"),  # the model predicts its own variance
    "use_beta_sigmas": (True,),  # needs scipy's beta ppf: fine, but untested here
}
_CLAMPS = {torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
_probe = threading.local()  # the recorder of the probe running in this thread, if any


@dataclass(frozen=True)
class SolverTable:
    timesteps: torch.Tensor  # [E] what the model is given at evaluation i (the scheduler's dtype)
    in_scale: torch.Tensor  # [E] float32
    coeffs: torch.Tensor  # [E, K, V] float32 over evaluations i - K + 1 .. i (oldest first)
    clip: tuple | None  # (p [E], q [E], r) when the scheduler clips its x0 prediction, else None
    noise_mix: torch.Tensor | None  # [E, D] float64: noise_term[i] = sum_d noise_mix[i, d] * draw_d
    init_noise_sigma: float
    steps: int  # the num_inference_steps this table was built for
    draws: int = 0  # noise tensors the scheduler draws per request (noise_mix's D)

    @property
    def num_steps(self) -> int:
        """Model evaluations (the engine's steps): len(scheduler.timesteps)."""
        return self.timesteps.numel()

    @property
    def window(self) -> int:
        return self.coeffs.shape[1]

    @property
    def vectors(self) -> int:
        return self.coeffs.shape[2]

    def to(self, device) -> SolverTable:
        clip = None if self.clip is None else (self.clip[0].to(device), self.clip[1].to(device), self.clip[2])
        return SolverTable(self.timesteps.to(device), self.in_scale.to(device), self.coeffs.to(device), clip,
                           self.noise_mix, self.init_noise_sigma, self.steps, self.draws)

    def empty_history(self, x: torch.Tensor) -> torch.Tensor:
        """[K, V, B, C, h, w] zeros: the window of past vectors before the first evaluation."""
        return x.new_zeros((self.window, self.vectors) + tuple(x.shape), dtype=torch.float32)

    def noise_terms(self, draws: list[torch.Tensor]) -> torch.Tensor | None:
        """[E, B, C, h, w] float32 noise term of every evaluation from the scheduler's draws (each
        [B, C, h, w], in the order it draws them), or None for a deterministic scheduler."""
        if self.noise_mix is None:
            return None
        stacked = torch.stack([d.double() for d in draws])  # [D, B, C, h, w]
        return torch.einsum("ed,d...->e...", self.noise_mix.to(stacked.device), stacked).float()


class _Vec(torch.Tensor):
    """A coefficient vector over the probe's variables, shaped [V, 1, 1, 1] like a latent batch
    (a variable a row). Linear ops stay coefficient vectors; clamp() (x0 clipping) is the one
    nonlinear op a supported scheduler applies, and becomes a fresh variable."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _CLAMPS and getattr(_probe, "recorder", None) is not None:
            return _probe.recorder.clip(args, kwargs or {})
        return super().__torch_function__(func, types, args, kwargs or {})


class _Recorder:
    def __init__(self, num_evals: int):
        self.size = 6 * num_evals + 8
        self.kinds: list[tuple[str, int]] = []  # variable v: (kind, evaluation) with kind in x, m, c, z
        self.eval = 0
        self.clips: dict[int, tuple[float, float, float]] = {}  # evaluation -> (p, q, r)

    def var(self, kind: str) -> _Vec:
        if len(self.kinds) == self.size:
            raise ValueError("the scheduler uses more variables per step than the engine's solver expresses")
        v = torch.zeros(self.size, 1, 1, 1, dtype=torch.float64)
        v[len(self.kinds)] = 1.0
        self.kinds.append((kind, self.eval))
        return v.as_subclass(_Vec)

    def coeff(self, vec: torch.Tensor, kind: str, evaluation: int) -> float:
        return float(vec.view(-1)[self.kinds.index((kind, evaluation))])

    def clip(self, args, kwargs) -> _Vec:
        x0 = args[0].as_subclass(torch.Tensor).view(-1)
        lo, hi = (list(args[1:]) + [kwargs.get("min"), kwargs.get("max")])[:2] if len(args) > 1 else \
            (kwargs.get("min"), kwargs.get("max"))
        if lo is None or hi is None or float(lo) != -float(hi) or self.eval in self.clips:
            raise ValueError("the scheduler clips in a way the engine's solver does not express")
        i = self.eval
        p, q = self.coeff(x0, "x", i), self.coeff(x0, "m", i)
        rest = x0.clone()
        rest[self.kinds.index(("x", i))] = rest[self.kinds.index(("m", i))] = 0
        if rest.abs().max() > 0:
            raise ValueError("the scheduler clips an x0 prediction that is not one of the current step's")
        self.clips[i] = (p, q, float(hi))
        return self.var("c")


def _noise_hook(original):
    def randn_tensor(shape, *args, **kwargs):
        rec = getattr(_probe, "recorder", None)
        return original(shape, *args, **kwargs) if rec is None else rec.var("z")

    randn_tensor.clockwork_probe = True
    return randn_tensor


def _install_noise_hook(scheduler):
    """The scheduler's module draws noise through randn_tensor; inside a probe (this thread
    only) a draw becomes a fresh variable, elsewhere it is diffusers' own function."""
    module = sys.modules[type(scheduler).__module__]
    fn = getattr(module, "randn_tensor", None)
    if fn is not None and not getattr(fn, "clockwork_probe", False):
        module.randn_tensor = _noise_hook(fn)


def step_kwargs(scheduler, eta: float) -> dict:
    """What StableDiffusionPipeline passes to scheduler.step besides (output, t, sample)."""
    params = inspect.signature(scheduler.step).parameters
    return {"eta": eta} if "eta" in params else {}


def check_supported(scheduler, eta: float = 0.0):
    name = type(scheduler).__name__
    if name not in SUPPORTED:
        raise ValueError(f"scheduler {name} is not supported by the engine; supported: {', '.join(SUPPORTED)}")
    for field, bad in _UNSUPPORTED.items():
        if scheduler.config.get(field) in bad:
            raise ValueError(f"{name} with {field}={scheduler.config[field]!r} is not supported by the engine's "
                             "solver (its step is not linear in the model output)")
    if scheduler.config.get("prediction_type") not in (None, "epsilon", "v_prediction", "sample"):
        raise ValueError(f"{name} with prediction_type={scheduler.config.prediction_type!r} is not supported")
    if eta and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"{name} takes no eta; eta={eta} applies to DDIM and TCD only")


def _set_timesteps(scheduler, num_steps: int, timesteps):
    name = type(scheduler).__name__
    if timesteps is None:
        scheduler.set_timesteps(num_steps, device="cpu")
        return
    if max(timesteps) >= scheduler.config.num_train_timesteps:
        raise ValueError(f"timesteps {list(timesteps)} go past the scheduler's {scheduler.config.num_train_timesteps}")
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{name} does not take a custom timestep grid")
    scheduler.set_timesteps(device="cpu", timesteps=list(timesteps))


def build_table(scheduler, num_steps: int, timesteps: list[int] | None = None, eta: float = 0.0) -> SolverTable:
    """Set a copy of the scheduler to num_steps (or to the given timesteps, for a scheduler whose
    set_timesteps takes them), run its loop on coefficient vectors and return the table."""
    check_supported(scheduler, eta)
    scheduler = copy.deepcopy(scheduler)
    _set_timesteps(scheduler, num_steps, timesteps)
    ts = scheduler.timesteps.clone()
    init_sigma = float(scheduler.init_noise_sigma)
    _install_noise_hook(scheduler)
    n = len(ts)
    rec = _Recorder(n)
    _probe.recorder = rec
    try:
        x = rec.var("x")
        outputs, in_scale = [], []
        for i, t in enumerate(ts):
            rec.eval = i
            scaled = scheduler.scale_model_input(x, t).as_subclass(torch.Tensor).view(-1)
            s = rec.coeff(scaled, "x", i)
            if not torch.equal(scaled, s * x.as_subclass(torch.Tensor).view(-1)):
                raise ValueError(f"{type(scheduler).__name__}.scale_model_input is not a scaling of the sample")
            in_scale.append(s)
            m = rec.var("m")
            out = scheduler.step(m, t, x, return_dict=False, **step_kwargs(scheduler, eta))[0]
            outputs.append(out.as_subclass(torch.Tensor).view(-1).double())
            rec.eval = i + 1
            x = rec.var("x")
    finally:
        _probe.recorder = None
    return _table(rec, outputs, ts, in_scale, init_sigma, num_steps)


def _table(rec: _Recorder, outputs: list[torch.Tensor], ts, in_scale, init_sigma: float, steps: int) -> SolverTable:
    n = len(outputs)
    if not all(torch.isfinite(out).all() for out in outputs):
        raise ValueError("the scheduler's own step is not finite at this step count (e.g. UniPC bh1 with "
                         "final_sigmas_type='zero' gives NaN in diffusers too)")
    kinds = ("x", "m", "c") if rec.clips else ("x", "m")
    draws = [v for v, (kind, _) in enumerate(rec.kinds) if kind == "z"]
    window = 1
    for i, out in enumerate(outputs):
        for v in torch.nonzero(out).view(-1).tolist():
            kind, j = rec.kinds[v]
            if kind != "z":
                window = max(window, i - j + 1)
    coeffs = torch.zeros(n, window, len(kinds), dtype=torch.float64)
    for i, out in enumerate(outputs):
        for v in torch.nonzero(out).view(-1).tolist():
            kind, j = rec.kinds[v]
            if kind != "z":
                coeffs[i, window - 1 - (i - j), kinds.index(kind)] = out[v]  # oldest first, like history
    noise_mix = torch.stack([out[draws] for out in outputs]) if draws else None
    if noise_mix is not None and not noise_mix.any():
        noise_mix = None  # drawn but unused (e.g. Euler's churn noise at s_churn=0): nothing to add
    clip = None
    if rec.clips:
        r = {c[2] for c in rec.clips.values()}
        if len(r) != 1 or len(rec.clips) != n:
            raise ValueError("the scheduler clips on some steps only, or to several ranges")
        pq = torch.tensor([rec.clips[i][:2] for i in range(n)], dtype=torch.float64).T.float()
        clip = (pq[0], pq[1], r.pop())
    return SolverTable(ts, torch.tensor(in_scale, dtype=torch.float32), coeffs.float(), clip, noise_mix,
                       init_sigma, steps, len(draws) if noise_mix is not None else 0)


def _at(column: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    # index_select keeps the step index on the device (no .item(), graph-capturable)
    return column.index_select(0, i.view(1))


def update(table: SolverTable, i: torch.Tensor, x, model_out, history, noise_terms=None):
    """(x_{i+1}, history') from the model output of evaluation i: float32 whatever the model
    dtype. history [K, V, B, C, h, w] holds the vectors of the K - 1 evaluations before i."""
    m = model_out.float()
    vecs = [x, m]
    if table.clip is not None:
        p, q, r = table.clip
        vecs.append((_at(p, i) * x + _at(q, i) * m).clamp(-r, r))
    history = torch.cat([history[1:], torch.stack(vecs)[None]])
    coeffs = _at(table.coeffs, i)[0]  # [K, V]
    # A weighted sum of K * V latents (elementwise: a few latents' worth of work, not a matmul)
    x_next = (coeffs.view(coeffs.shape + (1,) * x.dim()) * history).sum((0, 1))
    if noise_terms is not None:
        x_next = x_next + _at(noise_terms, i)[0]
    return x_next, history


def draw_noise(table: SolverTable, shape, generators: list[torch.Generator], dtype=torch.float32):
    """(initial latents x_0 [B, ...] float32, noise terms or None) drawn as diffusers' pipeline
    draws them: the latents, then each of the scheduler's draws, one generator for the batch
    or one per row (randn_tensor's two cases), in dtype (the model's: diffusers draws in it)."""
    def randn():
        if len(generators) == 1:
            return torch.randn(shape, generator=generators[0], dtype=dtype)
        return torch.cat([torch.randn((1,) + tuple(shape[1:]), generator=g, dtype=dtype) for g in generators])

    latents = randn().float() * table.init_noise_sigma
    if table.noise_mix is None:
        return latents, None
    return latents, table.noise_terms([randn() for _ in range(table.draws)])


def verify(scheduler, table: SolverTable, timesteps=None, eta: float = 0.0, seed: int = 0, tol: float = 1e-4):
    """Replay the table against the real scheduler on random inputs (random model outputs, the
    same noise draws); refuse the scheduler where they part by more than tol (relative)."""
    sched = copy.deepcopy(scheduler)
    _set_timesteps(sched, table.steps, timesteps)
    shape = (2, 3, 2, 2)
    outs_gen, real_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    x, noise = draw_noise(table, shape, [torch.Generator().manual_seed(seed + 1)])
    x_ref = torch.randn(shape, generator=real_gen) * sched.init_noise_sigma
    history = table.empty_history(x)
    kwargs = step_kwargs(sched, eta)
    if _takes_generator(sched):
        kwargs["generator"] = real_gen
    for i, t in enumerate(sched.timesteps):
        out = torch.randn(shape, generator=outs_gen)
        what = "input scale"
        ok = torch.allclose(sched.scale_model_input(x_ref, t), x_ref * table.in_scale[i], rtol=tol, atol=0)
        if ok:
            what = "update"
            x, history = update(table, torch.tensor(i), x, out, history, noise)
            x_ref = sched.step(out, t, x_ref, return_dict=False, **kwargs)[0]
            ok = torch.allclose(x, x_ref, rtol=0, atol=tol * max(1.0, float(x_ref.abs().max())))
        if not ok:
            raise ValueError(f"{type(scheduler).__name__} ({_describe(scheduler)}) is not expressible by the "
                             f"engine's solver: the {what} of its step {i} parts from the scheduler's")


def _takes_generator(scheduler) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _describe(scheduler) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in scheduler.config.items() if not k.startswith("_"))[:300]
