"""Clockwork's operating points: the adaptor a model directory runs at a request's step count
(adaptor.for_steps, clockwork_adaptors/, operating_point.py), chosen per request by the
engine's loop and the batch scheduler alike."""

from __future__ import annotations

import shutil
import threading
import warnings

import pytest
import torch

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork import adaptors as A
from clockwork_engine.clockwork.unet_split import UNetSplit
from clockwork_engine.tools.cli import main as cli

KW = dict(guidance_scale=3.0, seed=0, output="latent", mode="clockwork")
TOL = 1e-4  # a batched row against the request alone: only the batch's float summation order differs


def _save_adaptor(folder, unet, steps, seed, lora=None):
    torch.manual_seed(seed)
    split = UNetSplit(unet, 1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(split))
    torch.nn.init.normal_(adaptor.up.weight, std=0.01)  # not the identity: the choice shows in the output
    A.save(str(folder), adaptor, cut=1, base_fingerprint=A.model_fingerprint(unet),
           scheduler="DPMSolverMultistepScheduler", steps=steps, clock={"every": 2, "adaptor_steps": None},
           training={"lora": lora})


@pytest.fixture
def model_with_operating_points(tiny_pipe, tiny_dir, tmp_path):
    """The tiny model with a default adaptor fitted for 8 steps and others for 20 and 50 steps."""
    path = tmp_path / "model"
    shutil.copytree(tiny_dir, path)
    _save_adaptor(path / "clockwork_adaptor", tiny_pipe.unet, 8, 0)
    _save_adaptor(path / A.OPERATING_POINTS_FOLDER / "20-steps", tiny_pipe.unet, 20, 1)
    _save_adaptor(path / A.OPERATING_POINTS_FOLDER / "50-steps", tiny_pipe.unet, 50, 2)
    (path / A.OPERATING_POINTS_FOLDER / "broken").mkdir()  # unreadable: skipped
    return path


def test_for_steps_picks_by_fitted_steps(model_with_operating_points):
    path = model_with_operating_points
    default = str(path / "clockwork_adaptor")
    assert A.for_steps(default, 8) == default
    assert A.for_steps(default, 20) == str(path / A.OPERATING_POINTS_FOLDER / "20-steps")
    assert A.for_steps(default, 50) == str(path / A.OPERATING_POINTS_FOLDER / "50-steps")
    assert A.for_steps(default, 30) == default  # none fitted for 30: the default (the engine warns)


def test_an_adaptor_fitted_under_a_lora_runs_for_that_set(model_with_operating_points, tiny_pipe, tmp_path):
    """An adaptor fitted under a LoRA set (clockwork distill --lora: training.lora in its metadata)
    is the one for requests under that set at its step count, in the engine's loop and in the
    batch scheduler's lanes; without the LoRA, or at another scale, the base model's runs."""
    from test_lora import make_lora

    path = model_with_operating_points
    default, under = str(path / "clockwork_adaptor"), str(path / A.OPERATING_POINTS_FOLDER / "8-steps-x")
    _save_adaptor(under, tiny_pipe.unet, 8, 3, lora={"x": 1.0})
    assert A.for_steps(default, 8, (("x", 1.0),)) == under
    assert A.for_steps(default, 8) == default and A.for_steps(default, 8, (("x", 0.5),)) == default
    assert A.for_steps(default, 20, (("x", 1.0),)) == str(path / A.OPERATING_POINTS_FOLDER / "20-steps")
    engine = Engine.from_pretrained(str(path), config=EngineConfig(mode="clockwork", steps=8, batching="step"))
    engine.load_lora(make_lora(tiny_pipe, tmp_path / "x", 1), name="x")
    kw = dict(KW, steps=8, height=16, width=16)
    for lora, adaptor in (({"x": 1.0}, under), ({}, default), ({"x": 0.5}, default)):
        forced = engine.with_config(adaptor=adaptor, batching="off").generate("a red circle", lora=lora, **kw)
        assert torch.equal(engine.with_config(batching="off").generate("a red circle", lora=lora, **kw), forced)
        torch.testing.assert_close(engine.generate("a red circle", lora=lora, **kw), forced, atol=TOL, rtol=0)


def test_for_steps_without_operating_points_is_the_default(tmp_path, tiny_pipe):
    _save_adaptor(tmp_path / "clockwork_adaptor", tiny_pipe.unet, 8, 0)
    assert A.for_steps(str(tmp_path / "clockwork_adaptor"), 20) == str(tmp_path / "clockwork_adaptor")


def test_engine_runs_the_adaptor_fitted_for_its_steps(model_with_operating_points):
    path = str(model_with_operating_points)
    kw = dict(guidance_scale=3.0, seed=0, output="latent", mode="clockwork")
    for steps in (8, 20, 50):
        engine = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=steps))
        assert engine.adaptor_meta["steps"] == steps
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # fitted for these steps: no warning
            engine.generate("a red circle", steps=steps, **kw)
    twenty = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=20))
    assert twenty.with_config(steps=8).adaptor_meta["steps"] == 8  # with_config picks again
    # the same request with the 50-step adaptor forced gives another image: the choice matters
    forced = twenty.with_config(adaptor=str(model_with_operating_points / A.OPERATING_POINTS_FOLDER / "50-steps"))
    assert not torch.equal(twenty.generate("a red circle", steps=20, **kw),
                           forced.generate("a red circle", steps=20, **kw))
    # none fitted for 12 steps: the default, and the warning as before
    engine = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=12))
    assert engine.adaptor_meta["steps"] == 8
    with pytest.warns(UserWarning, match="trained for 8 steps, running 12"):
        engine.generate("a red circle", steps=12, **kw)


def test_cli_generate_takes_the_adaptor_for_its_steps(model_with_operating_points, tmp_path, monkeypatch):
    chosen = []
    real = A.load
    monkeypatch.setattr(A, "load", lambda folder: chosen.append(folder) or real(folder))
    assert cli(["generate", "a red circle", "--model", str(model_with_operating_points), "--steps", "20",
                "--mode", "clockwork", "-o", str(tmp_path / "x.png"), "-q"]) == 0
    assert chosen == [str(model_with_operating_points / A.OPERATING_POINTS_FOLDER / "20-steps")]  # only it


def test_one_engine_runs_each_request_on_the_adaptor_of_its_steps(model_with_operating_points):
    path = str(model_with_operating_points)
    engine = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=8))
    assert engine.operating_point(20).meta["steps"] == 20 and engine.operating_point(50).meta["steps"] == 50
    assert engine.operating_point(12) is engine.operating_point(8)  # none fitted for 12: the default
    for steps in (20, 50):
        built_for = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=steps))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # the adaptor fitted for these steps: no warning
            got = engine.generate("a red circle", steps=steps, **KW)
        assert torch.equal(got, built_for.generate("a red circle", steps=steps, **KW))
    assert engine.adaptor_meta["steps"] == 8  # the engine's own (config) step count is unchanged


def test_a_given_adaptor_runs_at_every_step_count(model_with_operating_points):
    folder = str(model_with_operating_points / A.OPERATING_POINTS_FOLDER / "50-steps")
    engine = Engine.from_pretrained(str(model_with_operating_points),
                                    config=EngineConfig(mode="clockwork", steps=8, adaptor=folder))
    assert engine.operating_point(20) is engine.operating_point(8) and engine.operating_point(8).source == folder
    with pytest.warns(UserWarning, match="trained for 50 steps, running 20"):
        engine.generate("a red circle", steps=20, **KW)


def test_batched_requests_at_two_step_counts_run_their_own_adaptors(model_with_operating_points):
    path = str(model_with_operating_points)
    alone = Engine.from_pretrained(path, config=EngineConfig(mode="clockwork", steps=8))
    batched = alone.with_config(batching="step")
    cases = [("a red circle", 8), ("a blue square", 20), ("a green triangle", 12), ("a red square", 20)]
    requests = [dict(prompt=p, steps=s, seed=k, height=16, width=16, guidance_scale=3.0, mode="clockwork",
                     output="latent") for k, (p, s) in enumerate(cases)]
    expected = [alone.generate(**r) for r in requests]
    got, errors = [None] * len(requests), []

    def run(k):
        try:
            got[k] = batched.generate(**requests[k])
        except Exception as e:  # noqa: BLE001  (reported below, not lost in the thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(requests))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 12 steps runs the 8-step adaptor, warned
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for g, want in zip(got, expected, strict=True):
        assert (g - want).abs().max().item() <= TOL
    # one lane per adaptor: 8 and 12 steps share the default's, 20 steps has its own
    assert sorted(key[4].meta["steps"] for key in batched.batcher.lanes()) == [8, 20]


def test_concurrent_first_requests_load_an_adaptor_once(model_with_operating_points, monkeypatch):
    engine = Engine.from_pretrained(str(model_with_operating_points), config=EngineConfig(mode="clockwork", steps=8))
    loads, real = [], A.load
    monkeypatch.setattr(A, "load", lambda folder: loads.append(folder) or real(folder))
    points = [None] * 4

    def first(k):
        points[k] = engine.operating_point(20)

    threads = [threading.Thread(target=first, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(loads) == 1 and all(p is points[0] for p in points) and points[0].meta["steps"] == 20


def test_a_broken_operating_point_fails_only_its_requests(model_with_operating_points):
    path = model_with_operating_points
    (path / A.OPERATING_POINTS_FOLDER / "20-steps" / "adaptor.safetensors").write_bytes(b"not safetensors")
    engine = Engine.from_pretrained(str(path), config=EngineConfig(mode="clockwork", steps=8))
    for e in (engine, engine.with_config(batching="step")):
        with pytest.raises(A.AdaptorLoadError, match="20-steps"):
            e.generate("a red circle", steps=20, height=16, width=16, **KW)
        assert torch.isfinite(e.generate("a red circle", steps=8, height=16, width=16, **KW)).all()
