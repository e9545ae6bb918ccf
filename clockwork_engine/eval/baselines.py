"""What a user would run instead, wrapped to look like an engine for eval.compare: stock
diffusers (StableDiffusionPipeline, StableDiffusion3Pipeline), DeepCache (PyPI `DeepCache`)
applied to the UNet pipeline, and diffusers' own caches applied to the SD3 one."""

from __future__ import annotations

import copy

import torch


class DiffusersBaseline:
    """diffusers' own pipeline loop (its scheduler.step, its CFG), same components; `call`:
    further pipeline arguments (the SD3 demo's max_sequence_length)."""

    def __init__(self, pipe, name: str = "diffusers", **call):
        if "height" not in call:  # Flux's transformer has no sample_size: its call gives the size
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            size = denoiser.config.sample_size * pipe.vae_scale_factor
            call = {**call, "height": size, "width": size}
        self.pipe, self.name, self.call = pipe, name, call
        self.config = type("Config", (), {"steps": 8, "mode": name})()

    def step_kinds(self, steps, mode=None):
        return [self.name] * steps

    @torch.no_grad()
    def generate(self, prompt, *, steps=8, guidance_scale=5.0, seed=0, output="pt", mode=None, **_):
        out = self.pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                        generator=torch.Generator().manual_seed(seed), output_type="pt", **self.call).images
        return out if isinstance(prompt, list) else out[0]


class DeepCacheBaseline(DiffusersBaseline):
    """DeepCache's helper, enabled only around its own calls: it patches the forward of the
    UNet's blocks, and the UNet is shared with the engine variants."""

    def __init__(self, pipe, cache_interval: int = 2, cache_branch_id: int = 0):
        super().__init__(pipe, f"deepcache_i{cache_interval}_b{cache_branch_id}")
        from DeepCache import DeepCacheSDHelper

        self.helper = DeepCacheSDHelper(pipe=pipe)
        self.helper.set_params(cache_interval=cache_interval, cache_branch_id=cache_branch_id)

    def generate(self, prompt, **kw):
        self.helper.enable()
        try:
            return super().generate(prompt, **kw)
        finally:
            self.helper.disable()


class DiffusersCacheBaseline(DiffusersBaseline):
    """One of diffusers' caches (eval/diffusers_caches.py, `kind` with its settings) on a copy
    of the pipeline's transformer, so the other variants keep theirs; its state is reset before
    every generate(), as a CacheMixin pipeline resets it before each image. call: as
    DiffusersBaseline's."""

    def __init__(self, pipe, name: str, kind: str, steps: int, mag_ratios=None, call: dict | None = None, **settings):
        from clockwork_engine.eval.diffusers_caches import CachedTransformer

        own = copy.copy(pipe)
        own.transformer = copy.deepcopy(pipe.transformer)
        super().__init__(own, name, **(call or {}))
        self.steps, self.settings = steps, settings
        self.cache = CachedTransformer(own.transformer, kind, steps, mag_ratios, **settings)

    def generate(self, prompt, *, steps=8, **kw):
        if steps != self.steps:
            raise ValueError(f"{self.name} was set up for {self.steps} steps, not {steps}")
        self.cache.reset()
        return super().generate(prompt, steps=steps, **kw)
