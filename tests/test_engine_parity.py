"""With every acceleration off, the engine equals diffusers' StableDiffusionPipeline."""

import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from clockwork_engine import Engine
from clockwork_engine.demo import models


def diffusers_latents(pipe, prompts, steps, guidance, seed, **kw):
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=16, width=16,
               generator=torch.Generator().manual_seed(seed), output_type="latent", **kw)
    return out.images


@pytest.mark.parametrize("steps", [1, 2, 8, 20])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_latents_match_diffusers_dpmsolver(tiny_pipe, steps, guidance):
    prompts = ["a red circle", "a blue square left of a yellow triangle"]
    ref = diffusers_latents(tiny_pipe, prompts, steps, guidance, seed=3)
    engine = Engine.from_pipeline(tiny_pipe)
    got = engine.generate(prompts, steps=steps, guidance_scale=guidance, seed=3, height=16, width=16,
                          output="latent")
    assert got.shape == ref.shape == (2, 4, 8, 8)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scheduler", [
    DDIMScheduler(clip_sample=False, **{k: v for k, v in models.SCHEDULER_CONFIG.items()
                                        if k not in ("algorithm_type", "solver_order")}),
    DPMSolverMultistepScheduler(**{**models.SCHEDULER_CONFIG, "solver_order": 1}),
    DPMSolverMultistepScheduler(**{**models.SCHEDULER_CONFIG, "prediction_type": "v_prediction",
                                   "timestep_spacing": "trailing", "use_karras_sigmas": True}),
], ids=["ddim", "dpm-order1", "dpm-vpred-karras-trailing"])
def test_latents_match_other_schedulers(scheduler):
    pipe = make_tiny_pipeline(seed=1, scheduler=scheduler)
    ref = diffusers_latents(pipe, "a green triangle", 6, 4.0, seed=5)
    got = Engine.from_pipeline(pipe).generate("a green triangle", steps=6, guidance_scale=4.0, seed=5,
                                               height=16, width=16, output="latent")
    torch.testing.assert_close(got[None], ref, atol=1e-4, rtol=0)


def test_images_match_diffusers(tiny_pipe):
    ref = tiny_pipe("a purple circle", num_inference_steps=4, guidance_scale=3.0, height=16, width=16,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images
    got = Engine.from_pipeline(tiny_pipe).generate("a purple circle", steps=4, guidance_scale=3.0, seed=0,
                                                   height=16, width=16, output="pt")
    torch.testing.assert_close(got[None], ref, atol=1e-4, rtol=0)


def test_negative_prompt_matches_diffusers(tiny_pipe):
    ref = diffusers_latents(tiny_pipe, "a red square", 4, 5.0, seed=2, negative_prompt="a blue circle")
    got = Engine.from_pipeline(tiny_pipe).generate("a red square", steps=4, guidance_scale=5.0, seed=2,
                                                   height=16, width=16, negative_prompt="a blue circle",
                                                   output="latent")
    torch.testing.assert_close(got[None], ref, atol=1e-4, rtol=0)


def test_custom_timestep_grid_matches_diffusers():
    """A student's own grid (EngineConfig.timesteps, from its clockwork_engine.json) is what
    diffusers runs with pipe(..., timesteps=grid); other step counts keep the scheduler's spacing."""
    from clockwork_engine.distill.progressive import grid_scheduler

    pipe = make_tiny_pipeline(seed=1, scheduler=grid_scheduler(models.SCHEDULER_CONFIG))
    grid = (889, 667, 445, 223)
    ref = diffusers_latents(pipe, "a green triangle", None, 4.0, seed=5, timesteps=list(grid))
    engine = Engine.from_pipeline(pipe, config="full").with_config(timesteps=grid)
    got = engine.generate("a green triangle", steps=4, guidance_scale=4.0, seed=5, height=16, width=16,
                          output="latent")
    torch.testing.assert_close(got[None], ref, atol=1e-4, rtol=0)
    assert engine.runner.table(4).timesteps.tolist() == list(grid)
    assert engine.runner.table(3).timesteps.tolist() != list(grid[:3])  # the scheduler's own 3-step spacing


@pytest.mark.parametrize("grid, match", [((500, 600), "decreasing"), ((1200, 10), "go past"), ((), "decreasing")])
def test_bad_timestep_grid_is_a_clear_error(tiny_pipe, grid, match):
    with pytest.raises(ValueError, match=match):
        Engine.from_pipeline(tiny_pipe).with_config(timesteps=grid)


def test_ddim_takes_no_custom_grid():
    pipe = make_tiny_pipeline(seed=1, scheduler=DDIMScheduler(clip_sample=False, **{
        k: v for k, v in models.SCHEDULER_CONFIG.items() if k not in ("algorithm_type", "solver_order")}))
    with pytest.raises(ValueError, match="DDIMScheduler does not take a custom timestep grid"):
        Engine.from_pipeline(pipe).with_config(timesteps=(800, 400))
