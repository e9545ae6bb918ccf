"""Guidance-distilled and progressive students of an SDXL teacher (diffusers' test-sized SDXL
config): distill-guidance and distill-progressive run on it, the student directory loads as an
SDXL pipeline and the engine samples it with one evaluation per step, the guidance embedding
and the added conditioning (pooled text, time ids) both reaching the UNet."""

import json

import diffusers
import pytest
import torch
from test_sdxl import sdxl  # noqa: F401  (the test-sized SDXL pipeline fixture)

from clockwork_engine import Engine
from clockwork_engine.distill.guidance import make_student
from clockwork_engine.models.checkpoint import public_config
from clockwork_engine.tools import cli


@pytest.fixture(scope="module")
def sdxl_dir(sdxl, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("sdxl") / "pipe"
    sdxl.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def guided_sdxl(sdxl_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("guided_sdxl")
    assert cli.main(["distill-guidance", "--model", str(sdxl_dir), "--out", str(out), "--batch", "2",
                     "--steps", "2", "--lr", "1e-2"]) == 0
    return out / "final"


def test_sdxl_student_starts_as_the_teachers_conditional_model(sdxl):  # noqa: F811
    student = make_student(sdxl.unet).eval()
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = sdxl.unet(x, t, text, added_cond_kwargs=added).sample
        out = student(x, t, text, timestep_cond=torch.randn(2, 256, generator=g), added_cond_kwargs=added).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_guidance_distilled_sdxl_student_loads_and_generates(guided_sdxl, sdxl_dir):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(guided_sdxl)  # an SDXL directory, both encoders
    assert pipe.unet.config.time_cond_proj_dim == 256 and pipe.config.force_zeros_for_empty_prompt
    assert pipe.unet.time_embedding.cond_proj.weight.abs().sum() > 0  # trained through the guidance embedding
    teacher = diffusers.UNet2DConditionModel.from_pretrained(sdxl_dir, subfolder="unet")
    assert {**public_config(pipe.unet.config), "time_cond_proj_dim": None} == public_config(teacher.config)

    engine = Engine.from_pretrained(str(guided_sdxl), config="full")
    assert engine.conditioning.sdxl and engine.guidance_dim == 256 and not engine.uses_cfg(5.0)
    calls = []

    def record(module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append((args[0].shape[0], kwargs["timestep_cond"].shape, sorted(added),
                      added["time_ids"].tolist()))

    engine.unet.register_forward_pre_hook(record, with_kwargs=True)
    kw = dict(steps=3, seed=0, height=16, width=16, output="pt")
    a = engine.generate("a red circle", guidance_scale=3.0, **kw)
    calls.clear()  # the first request also ran the step program's build (guard) step
    b = engine.generate("a red circle", guidance_scale=7.0, **kw)
    assert calls == [(1, torch.Size([1, 256]), ["text_embeds", "time_ids"], [[16.0, 16, 0, 0, 16, 16]])] * 3
    assert a.shape == (3, 16, 16) and torch.isfinite(a).all() and torch.isfinite(b).all()
    assert 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, b)  # the guidance scale is an input of the model
    with pytest.raises(ValueError, match="guidance-distilled"):
        engine.generate("a red circle", negative_prompt="blue", steps=2)


def test_sdxl_teacher_trajectories_are_the_engines_sampler(guided_sdxl):
    """What progressive distillation records from an SDXL teacher is what the engine samples
    (same noise, w, text and added conditioning)."""
    from clockwork_engine.distill.progressive import teacher_trajectories

    teacher = Engine.from_pretrained(str(guided_sdxl), config="full")
    states, captions, _ = teacher_trajectories(teacher, 3, 2, 4.0, 4.0, seed=0, chunk=1)
    assert states.shape == (2, 4, 4, 8, 8)
    for c in range(2):
        seen = []
        teacher.generate(captions[c], steps=3, guidance_scale=4.0, seed=c, output="latent",
                         callback=lambda i, n, x, seen=seen: seen.append(x.clone()))
        torch.testing.assert_close(torch.cat(seen), states[c, 1:], atol=1e-4, rtol=0)


def test_euler_trajectories_become_vp_states(guided_sdxl):
    """SDXL samples with Euler, whose states are x0 + sigma eps, not the VP a x0 + s eps of
    progressive distillation's loss: vp_states converts them. A first-order Euler step is the
    DDIM step in VP form, so the loss's target x0 between two converted states is the teacher's
    own x0 prediction."""
    from clockwork_engine.conditioning import encoders
    from clockwork_engine.distill.progressive import _alpha_sigma, _meng_loss, teacher_trajectories, vp_states
    from clockwork_engine.sampler.steps import guidance_embedding

    teacher = Engine.from_pretrained(str(guided_sdxl), config="full")
    table = teacher.runner.table(3)
    assert type(teacher.scheduler).__name__ == "EulerDiscreteScheduler" and (table.in_div > 1).all()
    states, captions, w = teacher_trajectories(teacher, 3, 2, 4.0, 4.0, seed=0, chunk=2)
    vp = vp_states(states, table)
    text, added = encoders.for_sampler(teacher, captions, False)
    ac, grid = teacher.scheduler.alphas_cumprod, table.timesteps.long().tolist() + [-1]
    for i in range(3):
        with torch.no_grad():
            eps = teacher.unet(states[:, i] / table.in_div[i], table.timesteps[i], text,
                               timestep_cond=guidance_embedding(w, 256), added_cond_kwargs=added).sample
        a, s = _alpha_sigma(ac, torch.tensor([grid[i]] * 2))
        x0 = (vp[:, i] - s * eps) / a
        _, mse = _meng_loss(x0, vp[:, i], vp[:, i + 1], (a, s), _alpha_sigma(ac, torch.tensor([grid[i + 1]] * 2)))
        assert mse.max() < 1e-8 * x0.pow(2).mean(), (i, mse)
    torch.testing.assert_close(vp[:, -1], states[:, -1], rtol=0, atol=0)  # the sample itself


@pytest.mark.parametrize("data", ["trajectories", "noised"])
def test_progressive_sdxl_student(guided_sdxl, tmp_path, data):
    out = tmp_path / "prog"
    assert cli.main(["distill-progressive", "--model", str(guided_sdxl), "--out", str(out), "--student-steps", "2",
                     "--steps", "2", "--batch", "2", "--trajectories", "4", "--data", data]) == 0
    assert json.loads((out / "final" / "clockwork_engine.json").read_text())["steps"] == 2
    engine = Engine.from_pretrained(str(out / "final"))
    assert engine.conditioning.sdxl and engine.guidance_dim == 256 and engine.config.steps == 2
    image = engine.generate("a blue square", seed=0, height=16, width=16, output="pt")
    assert image.shape == (3, 16, 16) and torch.isfinite(image).all()
    student = diffusers.UNet2DConditionModel.from_pretrained(out / "final", subfolder="unet")
    teacher = diffusers.UNet2DConditionModel.from_pretrained(guided_sdxl, subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values(),
                                                     strict=True))  # the rounds trained it
