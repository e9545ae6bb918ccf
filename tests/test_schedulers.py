"""Every scheduler the engine takes equals diffusers' StableDiffusionPipeline with it: same seed,
steps and guidance, final latents within 1e-4, epsilon and v-prediction, CFG on and off. The
stochastic ones too: the engine pre-draws their noise from the same CPU generator in the order
the pipeline draws it."""

import copy

import diffusers
import pytest
import torch
from conftest import make_tiny_pipeline

from clockwork_engine import Engine, sampler
from clockwork_engine.sampler import noise_schedulers

NOISE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# (id, class, config, pipeline eta)
CASES = [
    ("ddim", "DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1), 0.0),
    ("ddim-clip-alpha1", "DDIMScheduler", dict(clip_sample=True, set_alpha_to_one=True), 0.0),
    ("ddim-eta", "DDIMScheduler", dict(clip_sample=False, steps_offset=1, timestep_spacing="trailing"), 0.6),
    ("ddpm", "DDPMScheduler", dict(), 0.0),
    ("pndm-plms", "PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1), 0.0),
    ("pndm-prk", "PNDMScheduler", dict(skip_prk_steps=False), 0.0),
    ("lms", "LMSDiscreteScheduler", dict(), 0.0),
    ("euler", "EulerDiscreteScheduler", dict(), 0.0),
    ("euler-karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True), 0.0),
    ("euler-leading", "EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1), 0.0),
    ("euler-trailing", "EulerDiscreteScheduler", dict(timestep_spacing="trailing"), 0.0),
    ("euler-exponential", "EulerDiscreteScheduler", dict(use_exponential_sigmas=True), 0.0),
    ("euler-beta", "EulerDiscreteScheduler", dict(use_beta_sigmas=True), 0.0),
    ("euler-a", "EulerAncestralDiscreteScheduler", dict(), 0.0),
    ("heun", "HeunDiscreteScheduler", dict(), 0.0),
    ("kdpm2", "KDPM2DiscreteScheduler", dict(), 0.0),
    ("kdpm2-a", "KDPM2AncestralDiscreteScheduler", dict(), 0.0),
    ("dpm++2m", "DPMSolverMultistepScheduler", dict(), 0.0),
    ("dpm++2m-karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), 0.0),
    ("dpm++3m-heun", "DPMSolverMultistepScheduler", dict(solver_order=3, solver_type="heun"), 0.0),
    ("dpm++1", "DPMSolverMultistepScheduler", dict(solver_order=1), 0.0),
    ("dpm++2m-lu-lambdas", "DPMSolverMultistepScheduler", dict(use_lu_lambdas=True), 0.0),
    ("dpm++2m-euler-final-sigma-min", "DPMSolverMultistepScheduler",
     dict(euler_at_final=True, final_sigmas_type="sigma_min"), 0.0),
    ("dpmsolver", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 0.0),
    ("dpm++2m-sde", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), 0.0),
    ("sde-dpmsolver", "DPMSolverMultistepScheduler",
     dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"), 0.0),
    ("dpm-singlestep", "DPMSolverSinglestepScheduler", dict(), 0.0),
    ("dpm-singlestep3", "DPMSolverSinglestepScheduler", dict(solver_order=3), 0.0),
    ("unipc-bh2", "UniPCMultistepScheduler", dict(), 0.0),
    ("unipc-bh1", "UniPCMultistepScheduler", dict(solver_type="bh1", final_sigmas_type="sigma_min"), 0.0),
    ("unipc-order3", "UniPCMultistepScheduler", dict(solver_order=3), 0.0),
    ("deis", "DEISMultistepScheduler", dict(), 0.0),
    ("lcm", "LCMScheduler", dict(), 0.0),
    ("tcd", "TCDScheduler", dict(), 0.0),
    ("tcd-gamma", "TCDScheduler", dict(), 0.3),
]
PROMPTS = ["a red circle", "a blue square left of a yellow triangle"]
TOL = 1e-4  # relative to the reference latents' largest magnitude (at least 1)


def assert_latents_close(got, ref, tol=TOL):
    """Float sums in another order (fused GroupNorm kernels, batch size) differ by ~1e-5 per
    step; over 25 steps with latents near 10 that reaches 2e-4, so the bound scales with |ref|."""
    torch.testing.assert_close(got, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=0)


def build(cls_name: str, config: dict, prediction_type: str = "epsilon"):
    return getattr(diffusers, cls_name)(**NOISE, **config, prediction_type=prediction_type)


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=1)


def with_scheduler(pipe, scheduler):
    """The pipeline with this scheduler as it is (set after construction: StableDiffusionPipeline's
    constructor would rewrite clip_sample and steps_offset)."""
    pipe = copy.copy(pipe)
    pipe.scheduler = scheduler
    return pipe


def diffusers_latents(pipe, prompts, steps, guidance, seed, eta=0.0):
    generator = [torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list) else \
        torch.Generator().manual_seed(seed)
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=16, width=16, eta=eta,
                generator=generator, output_type="latent").images


def engine_latents(pipe, prompts, steps, guidance, seed, eta=0.0):
    engine = Engine.from_pipeline(pipe, config="full").with_config(eta=eta)
    return engine.generate(prompts, steps=steps, guidance_scale=guidance, seed=seed, height=16, width=16,
                           output="latent")


@pytest.mark.parametrize("guidance", [1.0, 4.0], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_latents_match_diffusers(pipe, case, prediction_type, guidance):
    _, cls_name, config, eta = case
    p = with_scheduler(pipe, build(cls_name, config, prediction_type))
    ref = diffusers_latents(p, PROMPTS, 6, guidance, seed=3, eta=eta)
    got = engine_latents(p, PROMPTS, 6, guidance, seed=3, eta=eta)
    assert torch.isfinite(ref).all()
    assert_latents_close(got, ref)


@pytest.mark.parametrize("steps", [1, 3, 25])
@pytest.mark.parametrize("name", ["euler-a", "heun", "unipc", "dpm++2m-sde-karras", "lcm", "pndm", "dpm++2s"])
def test_other_step_counts_match_diffusers(pipe, name, steps):
    if name == "pndm" and steps < 4:
        pytest.skip("diffusers' PNDM with PRK warm-up needs >= 4 steps")
    p = with_scheduler(pipe, noise_schedulers.from_name(name, build("DPMSolverMultistepScheduler", {})))
    assert_latents_close(engine_latents(p, PROMPTS[0], steps, 5.0, seed=7),
                         diffusers_latents(p, PROMPTS[:1], steps, 5.0, seed=7)[0])


@pytest.mark.parametrize("name", ["euler-a", "dpm++2m-sde", "ddim"])
def test_per_row_seeds_and_guidance_match_each_request_alone(pipe, name):
    """Row k depends only on its prompt, seed and scale (within 1e-4 absolute + 1e-4 relative: the
    UNet's float sums differ with the batch size, by up to 3.4e-5 on some CPUs); with seeds only,
    it equals diffusers' generator=[...] too (diffusers takes one scale per call)."""
    p = with_scheduler(pipe, noise_schedulers.from_name(name, build("DPMSolverMultistepScheduler", {})))
    engine = Engine.from_pipeline(p, config="full")
    kw = dict(steps=5, height=16, width=16, output="latent")
    prompts, seeds, scales = ["a red circle", "a blue square", "a green triangle"], [11, 12, 13], [3.0, 7.5, 1.0]
    batch = engine.generate(prompts, seed=seeds, guidance_scale=scales, **kw)
    for k in range(3):
        alone = engine.generate(prompts[k], seed=seeds[k], guidance_scale=scales[k], **kw)
        torch.testing.assert_close(batch[k], alone, atol=1e-4, rtol=1e-4)
    ref = diffusers_latents(p, prompts, 5, 4.0, seed=seeds)
    assert_latents_close(engine.generate(prompts, seed=seeds, guidance_scale=4.0, **kw), ref)


def test_per_row_lists_must_match_the_prompts(pipe):
    engine = Engine.from_pipeline(pipe, config="full")
    with pytest.raises(ValueError, match="seed has 1 entries for 2 prompts"):
        engine.generate(PROMPTS, seed=[1], steps=2, height=16, width=16)
    with pytest.raises(ValueError, match="guidance_scale must be in"):
        engine.generate(PROMPTS, guidance_scale=[2.0, -1.0], steps=2, height=16, width=16)
    with pytest.raises(TypeError, match="seed must be an int"):
        engine.generate(PROMPTS, seed=[1, "2"], steps=2, height=16, width=16)


def test_pipeline_rewritten_ddim_config_is_kept():
    """StableDiffusionPipeline rewrites a default-built DDIM's config (steps_offset 1,
    clip_sample False); the engine samples on the pipeline's timesteps, not the defaults'."""
    p = make_tiny_pipeline(seed=1, scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                                      beta_end=0.012))
    assert p.scheduler.config.steps_offset == 1 and not p.scheduler.config.clip_sample
    engine = Engine.from_pipeline(p, config="full")
    p.scheduler.set_timesteps(6)
    assert engine.runner.table(6).timesteps.tolist() == p.scheduler.timesteps.tolist() == [831, 665, 499, 333, 167, 1]
    assert_latents_close(engine_latents(p, PROMPTS, 6, 4.0, seed=0), diffusers_latents(p, PROMPTS, 6, 4.0, 0))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_table_equals_the_scheduler_on_random_inputs(case):
    """The probe's table replays the real scheduler's step() on random inputs and noise."""
    _, cls_name, config, eta = case
    scheduler = build(cls_name, config)
    for steps in (4, 10):
        sampler.verify(scheduler, sampler.build_table(scheduler, steps, eta=eta), eta=eta, tol=1e-5)


def test_heun_runs_two_model_evaluations_a_step(pipe):
    p = with_scheduler(pipe, noise_schedulers.from_name("heun", pipe.scheduler))
    engine = Engine.from_pipeline(p, config="full")
    assert engine.runner.table(6).num_steps == 11 and len(engine.step_kinds(6, "full")) == 11
    seen = []
    engine.generate("a red circle", steps=6, height=16, width=16, callback=lambda i, n, x: seen.append((i, n)))
    assert seen == [(i, 11) for i in range(11)]


@pytest.mark.parametrize("name", noise_schedulers.names())
def test_every_name_builds_a_scheduler_the_engine_takes(pipe, name):
    s = noise_schedulers.from_name(name, pipe.scheduler)
    assert type(s).__name__ == noise_schedulers.ALIASES.get(name, (name,))[0]
    engine = Engine.from_pipeline(pipe, config="full")
    if type(s).__name__.startswith("FlowMatch"):  # SD3's: a UNet refuses it (tests/test_sd3.py runs it)
        with pytest.raises(ValueError, match="cannot sample a StableDiffusionPipeline model"):
            engine.with_config(scheduler=name)
        return
    engine.with_config(scheduler=name).runner.table(8)
