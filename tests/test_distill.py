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
