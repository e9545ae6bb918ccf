"""diffusers' own training-free caches (diffusers.hooks) on an SD3 or Flux pipeline's
transformer, as peers of clockwork: FirstBlockCache, MagCache, TaylorSeerCache,
PyramidAttentionBroadcast and FasterCache.

diffusers 0.42's StableDiffusion3Pipeline drives none of them as it ships:
- FirstBlockCache, TaylorSeerCache and MagCache keep their state under a cache context that the
  pipeline never sets (the Flux and Wan pipelines wrap each transformer call in
  `transformer.cache_context(...)`; SD3Transformer2DModel has no CacheMixin and the SD3
  pipeline no such wrapper), so their first call raises "No cache context is set";
- PyramidAttentionBroadcast and FasterCache ask a current_timestep_callback for the step's
  timestep, which pipelines read from `pipe.current_timestep`; the SD3 pipeline keeps none;
- MagCache also needs magnitude ratios calibrated per model and step count (a calibrate=True
  run computes them; diffusers ships Flux's only);
- FasterCache drops the unconditional half of the CFG batch on some steps, slicing the inputs
  it knows by name; SD3's pooled_projections is not among them, so with one prompt the full
  pooled batch broadcasts silently against the halved timesteps (a wrong image) and with more
  it fails. config_for names pooled_projections too.

On Flux (a CacheMixin model whose pipeline sets the context and current_timestep) the same
wrapper drives them alike: its context stands in for the pipeline's "cond" one (Flux runs no
CFG batch), its timestep is the pipeline's (FluxPipeline passes t / 1000 to the transformer).

CachedTransformer supplies what the pipeline lacks, as those pipelines do: a cache context
around every transformer call (one name: SD3 runs CFG as one batched call), the timestep of the
current call for the callbacks, and a reset of the hooks' state before each image (what a
CacheMixin model gets from its pipeline). The caches themselves are diffusers' code, unchanged.
"""

from __future__ import annotations

import ast
import contextlib
import io

import torch

from clockwork_engine.models.family import family_of

CONTEXT = "cond_uncond"  # SD3 evaluates the CFG batch in one transformer call


def config_for(kind: str, steps: int, timestep, mag_ratios=None, guidance_distilled: bool = False, **settings):
    """A diffusers cache config; timestep() gives the current call's timestep (PAB, FasterCache);
    guidance_distilled: a model without a CFG batch (Flux), whose FasterCache skips no half of it."""
    from diffusers import hooks

    if kind == "first_block":
        return hooks.FirstBlockCacheConfig(**settings)
    if kind == "mag":
        return hooks.MagCacheConfig(num_inference_steps=steps, mag_ratios=mag_ratios,
                                    calibrate=mag_ratios is None, **settings)
    if kind == "taylorseer":
        return hooks.TaylorSeerCacheConfig(taylor_factors_dtype=torch.float32, **settings)
    if kind == "pab":
        return hooks.PyramidAttentionBroadcastConfig(current_timestep_callback=timestep, **settings)
    if kind == "faster" and guidance_distilled:
        return hooks.FasterCacheConfig(current_timestep_callback=timestep, attention_weight_callback=lambda _: 0.3,
                                       is_guidance_distilled=True, tensor_format="BCHW", **settings)
    if kind == "faster":
        from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS as batched

        return hooks.FasterCacheConfig(
            current_timestep_callback=timestep, attention_weight_callback=lambda _: 0.3, is_guidance_distilled=False,
            tensor_format="BCHW", _unconditional_conditional_input_kwargs_identifiers=(*batched, "pooled_projections"),
            **settings)
    raise ValueError(f"unknown diffusers cache {kind!r}; known: first_block, mag, taylorseer, pab, faster")


_APPLY = {"first_block": "apply_first_block_cache", "mag": "apply_mag_cache", "taylorseer": "apply_taylorseer_cache",
          "pab": "apply_pyramid_attention_broadcast", "faster": "apply_faster_cache"}


class CachedTransformer:
    """One diffusers cache on `transformer`, driven as a CacheMixin pipeline drives it; remove()
    takes it off again (the transformer is shared with the other variants of a run)."""

    def __init__(self, transformer, kind: str, steps: int, mag_ratios=None, **settings):
        from diffusers import hooks

        self.transformer, self.kind, self.timestep = transformer, kind, None
        self.flux = family_of(transformer).name == "flux"
        self.config = config_for(kind, steps, lambda: self.timestep, mag_ratios, guidance_distilled=self.flux,
                                 **settings)
        self.registry = hooks.HookRegistry.check_if_exists_or_initialize(transformer)
        before = self._hooks()
        getattr(hooks, _APPLY[kind])(transformer, self.config)
        self.added = [h for h in self._hooks() if h not in before]  # (registry, name): on the blocks too
        hooked = transformer.forward

        def forward(*args, **kwargs):
            t = kwargs.get("timestep")
            self.timestep = None if t is None else self.current_timestep(t)
            with self.context():
                return hooked(*args, **kwargs)

        transformer.forward = forward

    def current_timestep(self, t: torch.Tensor):
        """The pipelines' current_timestep: FluxPipeline passes t / 1000 to its transformer."""
        t = float(t.flatten()[0])
        return 1000 * t if self.flux else int(t)

    @contextlib.contextmanager
    def context(self):
        """What `transformer.cache_context(...)` does on a CacheMixin model."""
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        _set_cache_context(self.transformer, CacheContext(CONTEXT, timestep=self.timestep))
        try:
            yield
        finally:
            _set_cache_context(self.transformer, None)

    def reset(self):
        """Before each image: no state of the last one survives."""
        self.registry.reset_stateful_hooks(recurse=True)

    def _hooks(self) -> list[tuple]:
        self.registry.invalidate_child_registries_cache()
        return [(r, name) for r in (self.registry, *self.registry._get_child_registries()) for name in r.hooks]

    def remove(self):
        self.transformer.__dict__.pop("forward", None)
        for registry, name in self.added:
            registry.remove_hook(name, recurse=False)


def calibrate_mag(pipe, steps: int, **call) -> list[float]:
    """MagCache's magnitude ratios for this pipeline at `steps` steps: one calibration run, whose
    ratios diffusers prints (and clears from its state) at the last step."""
    cache = CachedTransformer(pipe.transformer, "mag", steps)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            pipe(num_inference_steps=steps, **call)
    finally:
        cache.remove()
    lines = printed.getvalue().splitlines()
    header = next((k for k, line in enumerate(lines) if "Calibration Complete" in line), None)
    if header is None:
        raise ValueError("MagCache's calibration run printed no ratios")
    return [float(r) for r in ast.literal_eval(lines[header + 1].strip())]
