"""Reading a diffusers scheduler's arithmetic off the scheduler itself.

The pipeline's own loop (add_noise, scale_model_input, step, the inpainting blend) runs once
on coefficient vectors: a vector has one entry per variable (a sample x_j, a model output
m_j, a clipped x0 prediction c_j, a noise draw z, the image latents and initial noise of an
edit), so whatever the scheduler computes from them comes out as the coefficients of a
linear combination. Used by tables.build_table.
"""

from __future__ import annotations

import sys
import threading

import torch

_CLAMPS = {torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
_active = threading.local()  # the recorder of the probe running in this thread, if any


class Vec(torch.Tensor):
    """A coefficient vector over the recorder's variables, shaped [V, 1, 1, 1] like a latent
    batch (a variable a row). Linear ops stay coefficient vectors; clamp() (x0 clipping) is the
    one nonlinear op a supported scheduler applies, and becomes a fresh variable."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _CLAMPS and getattr(_active, "recorder", None) is not None:
            return _active.recorder.clip(args, kwargs or {})
        return super().__torch_function__(func, types, args, kwargs or {})


def plain(v: torch.Tensor) -> torch.Tensor:
    """[V] float64 coefficients of a Vec."""
    return v.as_subclass(torch.Tensor).reshape(-1).double()


class Recorder:
    """The variables of one probe: kinds[v] = (kind, evaluation), kind one of x (sample), m
    (model output), c (clipped x0), z (noise draw), i (image latents), n (initial noise)."""

    def __init__(self, num_evals: int):
        self.size = 6 * num_evals + 8
        self.kinds: list[tuple[str, int]] = []
        self.eval = 0
        self.clips: dict[int, tuple[float, float, float]] = {}  # evaluation -> (p, q, r)

    def __enter__(self):
        _active.recorder = self
        return self

    def __exit__(self, *exc):
        _active.recorder = None

    def var(self, kind: str) -> Vec:
        if len(self.kinds) == self.size:
            raise ValueError("the scheduler uses more variables per step than the engine's solver expresses")
        v = torch.zeros(self.size, 1, 1, 1, dtype=torch.float64)
        v[len(self.kinds)] = 1.0
        self.kinds.append((kind, self.eval))
        return v.as_subclass(Vec)

    def index(self, kind: str, evaluation: int) -> int:
        return self.kinds.index((kind, evaluation))

    def coeff(self, vec: torch.Tensor, kind: str, evaluation: int) -> float:
        return float(plain(vec)[self.index(kind, evaluation)])

    def only(self, vec: torch.Tensor, allowed: list[int], what: str):
        """Refuse a combination with a variable outside `allowed` (indices)."""
        rest = plain(vec).clone()
        rest[allowed] = 0
        if rest.abs().max() > 0:
            raise ValueError(f"the scheduler's {what} is not expressible by the engine's solver")

    def clip(self, args, kwargs) -> Vec:
        x0 = args[0]
        lo = args[1] if len(args) > 1 else kwargs.get("min")
        hi = args[2] if len(args) > 2 else kwargs.get("max")
        if lo is None or hi is None or float(lo) != -float(hi) or self.eval in self.clips:
            raise ValueError("the scheduler clips in a way the engine's solver does not express")
        i = self.eval
        self.only(x0, [self.index("x", i), self.index("m", i)], "clipped x0 prediction")
        self.clips[i] = (self.coeff(x0, "x", i), self.coeff(x0, "m", i), float(hi))
        return self.var("c")


def _noise_hook(original):
    def randn_tensor(shape, *args, **kwargs):
        rec = getattr(_active, "recorder", None)
        return original(shape, *args, **kwargs) if rec is None else rec.var("z")

    randn_tensor.clockwork_probe = True
    return randn_tensor


def install_noise_hook(scheduler):
    """The scheduler's module draws noise through randn_tensor; inside a probe (this thread
    only) a draw becomes a fresh variable, elsewhere it is diffusers' own function."""
    module = sys.modules[type(scheduler).__module__]
    fn = getattr(module, "randn_tensor", None)
    if fn is not None and not getattr(fn, "clockwork_probe", False):
        module.randn_tensor = _noise_hook(fn)
