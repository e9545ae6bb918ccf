"""clockwork distill: a few epochs on the tiny pipeline, resumable, loadable by the engine."""

import json

import pytest
import torch

from clockwork_engine import Engine, EngineConfig, cli
from clockwork_engine import adaptor as A

ARGS = ["--steps", "4", "--clock", "2", "--captions-per-epoch", "16", "--traj-batch", "8", "--batch", "8",
        "--hidden", "16", "--guidance", "3.0"]


@pytest.mark.parametrize("mode", ["unrolled", "noised"])
def test_distill_trains_resumes_and_loads(tiny_dir, tmp_path, mode):
    out = tmp_path / "adaptor"
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "1", "--mode", mode,
                     *ARGS]) == 0
    first = json.loads((out / "history.json").read_text())
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "3", "--mode", mode,
                     *ARGS]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [2, 3]  # resumed after epoch 1
    assert len(first) == 1
    meta = json.loads((out / "adaptor_config.json").read_text())
    assert meta["steps"] == 4 and meta["clock"] == {"every": 2, "adaptor_steps": None}
    assert meta["scheduler"] == "DPMSolverMultistepScheduler" and meta["training"]["mode"] == mode
    assert (out / "loss.png").exists()
    # The trained adaptor moved away from the identity and the engine runs it.
    adaptor, _ = A.load(str(out))
    assert adaptor.up.weight.abs().sum() > 0
    engine = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(mode="clockwork", adaptor=str(out), steps=4))
    latents = engine.generate("a red circle", seed=0, output="latent")
    assert torch.isfinite(latents).all()


def test_distill_rejects_a_clock_without_adaptor_steps(tiny_dir, tmp_path, capsys):
    code = cli.main(["distill", "--model", str(tiny_dir), "--out", str(tmp_path / "a"), "--epochs", "1",
                     *ARGS[:2], "--clock", "0", *ARGS[4:]])
    assert code == 2
    assert "no adaptor step" in capsys.readouterr().err


def test_distill_for_ddim_and_engine_with_that_scheduler(tiny_dir, tmp_path):
    """The DPM++ vs DDIM ablation: an adaptor fitted on DDIM trajectories, run by an engine
    whose scheduler was swapped with with_config(scheduler=...), adaptor folder kept."""
    from clockwork_engine.distill.progressive import ddim_scheduler

    out = tmp_path / "adaptor_ddim"
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "1",
                     "--scheduler", "ddim", *ARGS]) == 0
    assert json.loads((out / "adaptor_config.json").read_text())["scheduler"] == "DDIMScheduler"
    dpm = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(mode="clockwork", adaptor=str(out), steps=4))
    ddim = dpm.with_config(scheduler=ddim_scheduler(dpm.scheduler.config))
    assert type(ddim.scheduler).__name__ == "DDIMScheduler" and ddim.adaptor is not None
    a, b = (e.generate("a red circle", seed=0, output="latent") for e in (dpm, ddim))
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    assert type(dpm.scheduler).__name__ == "DPMSolverMultistepScheduler"  # the original is untouched


def test_with_config_keeps_the_model_directorys_adaptor(tiny_dir, tmp_path):
    """An engine made from a directory with clockwork_adaptor/ (config.adaptor None) keeps
    that adaptor through with_config."""
    import shutil

    from clockwork_engine.engine import ADAPTOR_FOLDER

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    assert cli.main(["distill", "--model", str(model), "--out", str(model / ADAPTOR_FOLDER), "--epochs", "1",
                     *ARGS]) == 0
    engine = Engine.from_pretrained(str(model))
    assert engine.config.mode == "clockwork" and engine.config.adaptor is None
    reuse = engine.with_config(attention_reuse=(3,))
    assert reuse.adaptor_meta == engine.adaptor_meta
    torch.testing.assert_close(reuse.generate("a red circle", seed=0, output="latent", steps=4),
                               reuse.generate("a red circle", seed=0, output="latent", steps=4))


def test_model_settings_apply_to_named_presets_not_to_config_objects(tiny_dir, tmp_path):
    import shutil

    from clockwork_engine.engine import SETTINGS_FILE

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / SETTINGS_FILE).write_text('{"guidance_scale": 3.0}')
    assert Engine.from_pretrained(str(model)).config.guidance_scale == 3.0
    assert Engine.from_pretrained(str(model), config="full").config.guidance_scale == 3.0
    assert Engine.from_pretrained(str(model), config=EngineConfig()).config.guidance_scale == 5.0
