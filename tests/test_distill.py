"""clockwork distill: a few epochs on the tiny pipeline, resumable, loadable by the engine."""

import json
import warnings

import pytest
import torch

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork import adaptors as A
from clockwork_engine.tools import cli

ARGS = ["--steps", "4", "--clock", "2", "--captions-per-epoch", "16", "--traj-batch", "8", "--batch", "8",
        "--hidden", "16", "--guidance", "3.0"]


@pytest.mark.parametrize("mode", ["unrolled", "noised", "rollout"])
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
    assert meta["scheduler"].startswith("DPMSolverMultistepScheduler(algorithm_type='dpmsolver++'")
    assert meta["training"]["mode"] == mode
    assert meta["training"]["loss"] == "guided" and {"adaptor_guided", "identity_guided"} <= set(history[-1])
    assert (out / "loss.png").exists()
    # The trained adaptor moved away from the identity and the engine runs it.
    adaptor, _ = A.load(str(out))
    assert adaptor.up.weight.abs().sum() > 0
    engine = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(mode="clockwork", adaptor=str(out), steps=4))
    latents = engine.generate("a red circle", seed=0, output="latent")
    assert torch.isfinite(latents).all()


def test_records_keep_each_samples_uncond_and_cond_rows_together():
    from clockwork_engine.distill.trajectories import Record

    batch = torch.cat([torch.arange(3.0), 100 + torch.arange(3.0)])  # the CFG batch: 3 uncond rows, 3 cond rows
    rows = batch[:, None, None, None].expand(6, 2, 1, 1)
    record = Record.from_batch(rows, batch[:, None], rows, groups=2)
    assert record.r_in.shape == (3, 2, 2, 1, 1) and record.emb.shape == (3, 2, 1)
    assert record.emb[:, :, 0].tolist() == [[0, 100], [1, 101], [2, 102]]
    assert Record.from_batch(rows, batch[:, None], rows, groups=1).r_out.shape == (6, 1, 2, 1, 1)


def test_rollout_follows_the_clockwork_sampler_and_records_the_teachers_target(tiny_dir):
    """On adaptor steps the trajectory goes on with phi's output (cached for the next step),
    while the record's target is the teacher's L on the same r_in."""
    from clockwork_engine.clockwork.unet_split import UNetSplit
    from clockwork_engine.distill import trajectories as T

    engine = Engine.from_pretrained(str(tiny_dir), config="full")
    split = UNetSplit(engine.unet, 1)
    records = T.rollout(engine, split, A.IdentityAdaptor(), ["a red circle", "a blue square"], 4, 3.0,
                        [False, True, False, True], torch.Generator().manual_seed(0))
    assert len(records) == 4 and records[1].r_in.shape[:2] == (2, 2)  # [B, G=2 (CFG)]
    torch.testing.assert_close(records[1].r_cached, records[0].r_out)  # identity phi: step 0's r_out
    torch.testing.assert_close(records[2].cached, records[2].r_out)  # full step: the teacher's
    assert not torch.allclose(records[1].r_out, records[1].cached)  # the target is L at step 1
    _, r_prev, _, text, _ = T.pairs(records, [1, 3])
    assert text.shape == (4, 2, 1, engine.unet.config.cross_attention_dim)  # pooled over the tokens
    full_text, _ = T._conditioning(engine, ["a red circle", "a blue square"], True)  # [G*B, L, D], uncond first
    torch.testing.assert_close(records[1].text[:, :, 0], full_text.mean(1).unflatten(0, (2, -1)).transpose(0, 1))
    torch.testing.assert_close(r_prev, torch.cat([records[0].cached, records[2].cached]))
    # Against the teacher's own trajectory from the same noise: equal until phi first acts.
    unrolled = T.unrolled(engine, split, ["a red circle", "a blue square"], 4, 3.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(records[0].r_in, unrolled[0].r_in)  # same noise, same first (full) step
    assert not torch.allclose(records[2].r_in, unrolled[2].r_in)  # phi's step moved the trajectory


def test_guided_mix_is_what_the_sampler_combines():
    from clockwork_engine.distill.fit_adaptor import guided_mix

    u, c = torch.randn(4, 3), torch.randn(4, 3)
    mixed = guided_mix(torch.stack([u, c], 1), 3.0)
    torch.testing.assert_close(mixed[:, 0], u)
    torch.testing.assert_close(mixed[:, 1], u + 3.0 * (c - u))
    single = torch.randn(4, 1, 3)  # no CFG (a guidance-distilled student): nothing to mix
    assert guided_mix(single, 3.0) is single


def test_distill_rejects_a_clock_without_adaptor_steps(tiny_dir, tmp_path, capsys):
    code = cli.main(["distill", "--model", str(tiny_dir), "--out", str(tmp_path / "a"), "--epochs", "1",
                     *ARGS[:2], "--clock", "0", *ARGS[4:]])
    assert code == 2
    assert "no adaptor step" in capsys.readouterr().err


def test_distill_for_ddim_and_engine_with_that_scheduler(tiny_dir, tmp_path):
    """The DPM++ vs DDIM ablation: an adaptor fitted on DDIM trajectories, run by an engine
    whose scheduler was swapped with with_config(scheduler=...), adaptor folder kept."""
    out = tmp_path / "adaptor_ddim"
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "1",
                     "--scheduler", "ddim-trailing", *ARGS]) == 0
    recorded = json.loads((out / "adaptor_config.json").read_text())["scheduler"]
    assert recorded.startswith("DDIMScheduler(") and "timestep_spacing='trailing'" in recorded
    with pytest.warns(UserWarning, match="the adaptor was fitted under DDIMScheduler"):  # run under DPM++
        dpm = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(mode="clockwork", adaptor=str(out), steps=4))
    ddim = dpm.with_config(scheduler="ddim-trailing")
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


def test_an_adaptor_fitted_on_its_clocks_steps_warns_on_another_clock(tiny_dir, tmp_path):
    out = tmp_path / "adaptor_23"
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "1", "--train-on", "clock",
                     "--adaptor-steps", "2,3", "--mode", "rollout", *ARGS]) == 0
    meta = json.loads((out / "adaptor_config.json").read_text())
    assert meta["clock"]["adaptor_steps"] == [2, 3] and meta["training"]["train_on"] == "clock"
    # A model directory's settings give JSON lists: the config keeps them as (hashable) tuples.
    fitted = EngineConfig(mode="clockwork", adaptor=str(out), steps=4, adaptor_steps=[2, 3])
    assert fitted.adaptor_steps == (2, 3) and hash(fitted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Engine.from_pretrained(str(tiny_dir), config=fitted).generate("a red circle", output="latent")
    assert not [w for w in caught if "fitted only" in str(w.message)]
    other = Engine.from_pretrained(str(tiny_dir), config=fitted.with_(adaptor_steps=None))
    with pytest.warns(UserWarning, match="fitted only on the steps of clock"):
        other.generate("a red circle", output="latent")


def test_distill_at_cut_0(tiny_dir, tmp_path):
    """An adaptor at DeepCache's cut: r_in / r_out at the latents' resolution, the engine splits there."""
    out = tmp_path / "cut0"
    assert cli.main(["distill", "--model", str(tiny_dir), "--out", str(out), "--epochs", "1", "--mode", "rollout",
                     "--cut", "0", *ARGS]) == 0
    meta = json.loads((out / "adaptor_config.json").read_text())
    assert meta["cut"] == 0 and meta["adaptor"]["r_in_channels"] == meta["adaptor"]["r_out_channels"] == 8
    engine = Engine.from_pretrained(str(tiny_dir), config=EngineConfig(mode="clockwork", adaptor=str(out), steps=4))
    assert engine.split.cut == 0 and engine.split.scale == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clockwork = engine.generate("a red circle", seed=0, output="latent")
    full = engine.generate("a red circle", seed=0, output="latent", mode="full")
    assert torch.isfinite(clockwork).all() and (clockwork - full).abs().max() > 0
