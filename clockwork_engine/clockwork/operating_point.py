"""Clockwork's operating points: the adaptor a request's step count and LoRA set run, with its split.

A model directory ships its default adaptor (clockwork_adaptor/) and may ship others fitted
for other step counts, or under a LoRA set, beside it (clockwork_adaptors/<name>/). An engine
on the model's own adaptors runs each request on the one fitted for the request's step count
and LoRA set (adaptor.for_steps; the base model's for a set none was fitted under), loaded on
first use and kept; an engine given one adaptor (config.adaptor: a folder or
"identity") runs it at every step count. The engine's loop and the batch scheduler's lanes
both take their clockwork denoisers from here, so one step count runs one adaptor everywhere.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass

import torch

from clockwork_engine import sampler
from clockwork_engine.clockwork import adaptors as adaptor_io
from clockwork_engine.clockwork.unet_split import UNetSplit
from clockwork_engine.models import lora
from clockwork_engine.sampler import noise_schedulers


@dataclass(eq=False)  # compared and hashed by identity: a lane key holds one
class OperatingPoint:
    source: str  # "identity" or the adaptor folder
    adaptor: torch.nn.Module
    meta: dict  # the folder's adaptor_config.json ({} for the identity adaptor)
    split: UNetSplit
    denoisers: dict  # "clockwork.full" / "clockwork.adaptor" -> sampler denoiser
    clock_mismatch: str | None = None  # the warning for an adaptor fitted only on another clock's steps

    def warn_off_point(self, steps: int):
        """Warn when the adaptor runs at another step count or clock than it was fitted for
        (stacklevel: generate()'s caller, through torch.no_grad's wrapper, run_alone and _sample)."""
        fitted = self.meta.get("steps")
        if fitted not in (None, steps):
            warnings.warn(f"the adaptor was trained for {fitted} steps, running {steps}", stacklevel=6)
        if self.clock_mismatch:
            warnings.warn(self.clock_mismatch, stacklevel=6)


class OperatingPoints:
    """The operating points of one engine, by step count and LoRA set."""

    def __init__(self, model, config, scheduler, model_adaptor: str | None, model_lock, make_split=UNetSplit):
        """model_adaptor: the model directory's clockwork_adaptor/ (None if it has none);
        config.adaptor, when set, is the one adaptor every step count runs. model_lock: the
        model's lock, held while an adaptor loads (no device copy while a graph is captured).
        make_split(model, cut): the family's clockwork split (models/family.py)."""
        source = config.adaptor or model_adaptor
        if source is None:
            raise ValueError("mode 'clockwork' needs an adaptor: config.adaptor='identity', an adaptor folder, "
                             "or a model directory with clockwork_adaptor/")
        self.model, self.config, self.scheduler, self.make_split = model, config, scheduler, make_split
        self._default, self._per_steps = source, config.adaptor is None
        self._by_source: dict[str, OperatingPoint] = {}
        self._by_point: dict[tuple, OperatingPoint] = {}  # (steps, LoRA set) -> its point
        self._model_lock, self._guard = model_lock, threading.Lock()

    def at(self, steps: int, loras: tuple = ()) -> OperatingPoint:
        """The operating point a request of `steps` steps under the LoRA set `loras` ((name,
        scale), ...) runs (loads its adaptor on first use: an unreadable or mismatched one raises
        adaptor.AdaptorLoadError)."""
        point = self._by_point.get((steps, loras))
        if point is not None:
            return point
        source = adaptor_io.for_steps(self._default, steps, loras) if self._per_steps else self._default  # metadata
        # Loading weights moves them to the device: not while another thread runs or captures the
        # UNet, so under its lock (taken first, as the engine's loop holds it when it gets here).
        # The identity adaptor is views of the UNet, built without it.
        with contextlib.nullcontext() if source == "identity" else self._model_lock, self._guard:
            if source not in self._by_source:
                self._by_source[source] = self._load(source)
            self._by_point[steps, loras] = self._by_source[source]
            return self._by_point[steps, loras]

    def _load(self, source: str) -> OperatingPoint:
        if source == "identity":
            split = self.make_split(self.model, self.config.cut)
            return _point(source, adaptor_io.IdentityAdaptor(), {}, split)
        adaptor, meta = adaptor_io.load(source)
        split = self.make_split(self.model, meta["cut"])
        base = adaptor_io.model_fingerprint(self.model, lora.base_weights(self.model))  # under a LoRA too
        adaptor_io.check_compatible(meta, source, split, base)
        adaptor.to(self.model.device, self.model.dtype)
        fitted, running = meta.get("clock"), self.config.clock().to_dict()
        mismatch = None
        if (meta.get("training") or {}).get("train_on") == "clock" and fitted != running:
            mismatch = f"the adaptor was fitted only on the steps of clock {fitted}, running clock {running}"
        fitted_scheduler = meta.get("scheduler")
        if fitted_scheduler and not noise_schedulers.same(fitted_scheduler, self.scheduler):
            warnings.warn(f"the adaptor was fitted under {fitted_scheduler}, running "
                          f"{noise_schedulers.describe(self.scheduler)}", stacklevel=5)
        return _point(source, adaptor, meta, split, mismatch)


def _point(source, adaptor, meta, split, mismatch=None) -> OperatingPoint:
    denoisers = {"clockwork.full": sampler.split_denoiser(split),
                 "clockwork.adaptor": sampler.adaptor_denoiser(split, adaptor)}
    return OperatingPoint(source, adaptor, meta, split, denoisers, mismatch)
