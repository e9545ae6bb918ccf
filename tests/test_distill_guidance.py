"""Guidance and progressive distillation: a few steps on the tiny pipeline, resume, torchrun."""

import os
import subprocess
import sys

import pytest
import torch

from clockwork_engine import Engine
from clockwork_engine.distill.guidance import make_student
from clockwork_engine.tools import cli


def test_student_starts_as_the_teachers_conditional_model(tiny_pipe):
    student = make_student(tiny_pipe.unet).eval()
    x, text, t = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32), torch.tensor([10, 700])
    with torch.no_grad():
        ref = tiny_pipe.unet(x, t, text).sample
        out = student(x, t, text, timestep_cond=torch.randn(2, 256)).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def guided_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("guided")
    args = ["distill-guidance", "--model", str(tiny_dir), "--out", str(out), "--batch", "4", "--save-every", "2"]
    assert cli.main([*args, "--steps", "2"]) == 0
    assert cli.main([*args, "--steps", "3"]) == 0  # resumes at step 2
    return out


def test_guidance_distillation_writes_a_one_call_model(guided_dir):
    import json

    assert json.loads((guided_dir / "state.json").read_text())["step"] == 3
    engine = Engine.from_pretrained(str(guided_dir / "final"), config="full")
    assert engine.guidance_dim == 256 and not engine.uses_cfg(5.0)
    calls = []
    engine.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    a = engine.generate("a red circle", steps=3, guidance_scale=3.0, seed=0, output="latent")
    calls.clear()  # the first request also ran the program's build (guard) step
    b = engine.generate("a red circle", steps=3, guidance_scale=7.0, seed=0, output="latent")
    assert calls == [1] * 3  # one evaluation per step, batch 1 (no CFG batch)
    assert not torch.allclose(a, b)  # the guidance scale is an input of the model
    with pytest.raises(ValueError, match="guidance-distilled"):
        engine.generate("a red circle", negative_prompt="blue", steps=2)


def test_progressive_distillation_on_teacher_trajectories(guided_dir, tmp_path):
    """The student's grid is every other timestep of the teacher's sampler; a second round
    halves that grid again (its teacher samples on the first student's own grid)."""
    import json

    teacher = Engine.from_pretrained(str(guided_dir / "final"), config="full")
    teacher_grid = teacher.runner.table(4).timesteps.tolist()
    out = tmp_path / "prog"
    args = ["--steps", "2", "--batch", "4", "--trajectories", "6"]
    assert cli.main(["distill-progressive", "--model", str(guided_dir / "final"), "--out", str(out),
                     "--student-steps", "2", *args]) == 0
    assert json.loads((out / "final" / "clockwork_engine.json").read_text()) == {
        "guidance_scale": teacher.config.guidance_scale, "steps": 2, "timesteps": teacher_grid[::2]}
    engine = Engine.from_pretrained(str(out / "final"))
    assert engine.config.steps == 2 and engine.runner.table(2).timesteps.tolist() == teacher_grid[::2]
    assert torch.isfinite(engine.generate("a red circle", seed=0, output="latent")).all()
    assert cli.main(["distill-progressive", "--model", str(out / "final"), "--out", str(tmp_path / "prog1"),
                     "--student-steps", "1", *args]) == 0
    one = Engine.from_pretrained(str(tmp_path / "prog1" / "final"))
    assert one.runner.table(1).timesteps.tolist() == teacher_grid[:1]


def test_one_student_step_for_several_teacher_steps_and_init(guided_dir, tmp_path, capsys):
    """--teacher-steps 4 --student-steps 1: the student's timestep is the teacher's first, its
    target the teacher's sample; --init starts it from another student's UNet."""
    import json

    from diffusers import UNet2DConditionModel

    teacher = Engine.from_pretrained(str(guided_dir / "final"), config="full")
    teacher_grid = teacher.runner.table(4).timesteps.tolist()
    first = tmp_path / "first"
    args = ["--model", str(guided_dir / "final"), "--student-steps", "1", "--teacher-steps", "4",
            "--steps", "1", "--batch", "4", "--trajectories", "4"]
    assert cli.main(["distill-progressive", "--out", str(first), *args, "--lr", "1e-2"]) == 0
    assert json.loads((first / "final" / "clockwork_engine.json").read_text())["timesteps"] == teacher_grid[:1]
    init_unet = UNet2DConditionModel.from_pretrained(first / "final", subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(init_unet.state_dict().values(),
                                                     teacher.unet.state_dict().values(), strict=True))
    second = tmp_path / "second"
    assert cli.main(["distill-progressive", "--out", str(second), "--init", str(first / "final"), *args,
                     "--lr", "0"]) == 0  # no update: the student is still its init
    student = UNet2DConditionModel.from_pretrained(second / "final", subfolder="unet")
    for (name, a), b in zip(init_unet.state_dict().items(), student.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert cli.main(["distill-progressive", "--out", str(tmp_path / "bad"), *args[:4], "--teacher-steps", "3",
                     "--student-steps", "2"]) == 2
    assert "multiple of --student-steps" in capsys.readouterr().err
    assert cli.main(["distill-progressive", "--out", str(tmp_path / "bad"), *args, "--data", "noised"]) == 2
    assert "needs --data trajectories" in capsys.readouterr().err


def test_teacher_trajectories_are_the_engines_sampler(guided_dir):
    """The recorded states are those the engine's own sampler visits (same noise, same w)."""
    from clockwork_engine.distill.progressive import teacher_trajectories

    teacher = Engine.from_pretrained(str(guided_dir / "final"), config="full")
    states, captions, w = teacher_trajectories(teacher, 3, 2, 4.0, 4.0, seed=0, chunk=1)
    assert states.shape == (2, 4, 4, 8, 8) and torch.all(w == 4.0)
    for c in range(2):
        seen = []
        teacher.generate(captions[c], steps=3, guidance_scale=4.0, seed=c, output="latent",
                         callback=lambda i, n, x: seen.append(x.clone()))
        torch.testing.assert_close(torch.cat(seen), states[c, 1:], atol=1e-4, rtol=0)


def test_progressive_distillation_meng_noised_data(guided_dir, tmp_path):
    out = tmp_path / "prog"
    assert cli.main(["distill-progressive", "--model", str(guided_dir / "final"), "--out", str(out),
                     "--student-steps", "2", "--steps", "2", "--batch", "4", "--data", "noised"]) == 0
    engine = Engine.from_pretrained(str(out / "final"), config="full")
    assert type(engine.scheduler).__name__ == "DDIMScheduler"
    assert engine.runner.table(2).timesteps.tolist() == [999, 499]
    assert torch.isfinite(engine.generate("a red circle", steps=2, seed=0, output="latent")).all()


def test_progressive_needs_a_guided_teacher(tiny_dir, tmp_path, capsys):
    assert cli.main(["distill-progressive", "--model", str(tiny_dir), "--out", str(tmp_path / "p"),
                     "--student-steps", "2", "--steps", "1"]) == 2
    assert "not guidance-distilled" in capsys.readouterr().err


def test_torchrun_two_processes(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "clockwork_engine.distill.guidance", "--model",
                           str(tiny_dir), "--out", str(out), "--steps", "2", "--batch", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "unet" / "config.json").exists()


def test_students_are_presets_of_their_model(tiny_dir, guided_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    out = tmp_path / "prog"
    assert cli.main(["distill-progressive", "--model", str(guided_dir / "final"), "--out", str(out),
                     "--student-steps", "2", "--steps", "1", "--batch", "2"]) == 0
    shutil.copytree(out / "final", model / "students" / "progressive-2")
    engine = Engine.from_pretrained(str(model), preset="progressive-2")
    assert engine.config.steps == 2 and engine.guidance_dim  # the student's recommended settings
    assert engine.generate("a red circle", seed=0, output="latent").shape == (4, 8, 8)
    with pytest.raises(ValueError, match="unknown preset 'nope'.*available: progressive-2"):
        Engine.from_pretrained(str(model), preset="nope")
    (model / "students" / "progressive-2" / "clockwork_engine.json").write_text("{bad")
    from clockwork_engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="clockwork_engine.json is corrupt"):
        Engine.from_pretrained(str(model), preset="progressive-2")
