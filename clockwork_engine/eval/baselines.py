"""What a user would run instead, wrapped to look like an engine for eval.compare:
stock diffusers StableDiffusionPipeline, and DeepCache (PyPI `DeepCache`) applied to it."""

from __future__ import annotations

import torch


class DiffusersBaseline:
    """diffusers' own pipeline loop (its scheduler.step, its CFG), same components."""

    def __init__(self, pipe, name: str = "diffusers"):
        self.pipe, self.name = pipe, name
        self.config = type("Config", (), {"steps": 8, "mode": name})()

    def step_kinds(self, steps, mode=None):
        return [self.name] * steps

    @torch.no_grad()
    def generate(self, prompt, *, steps=8, guidance_scale=5.0, seed=0, output="pt", mode=None, **_):
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        out = self.pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size,
                        generator=torch.Generator().manual_seed(seed), output_type="pt").images
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
