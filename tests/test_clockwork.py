"""Clock, adaptor, cache and the clockwork sampling path on a tiny random pipeline."""

import json
import warnings

import pytest
import torch

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork import adaptors as A
from clockwork_engine.clockwork.clock import Clock
from clockwork_engine.clockwork.unet_split import UNetSplit

GOOD = dict(steps=6, seed=0, height=16, width=16, output="latent", guidance_scale=4.0)


def test_clock_schedules():
    assert Clock(every=2).schedule(8) == [False, True] * 4  # the paper's {2,4,6,8}, counted from 1
    assert Clock(every=3).schedule(6) == [False, False, True, False, False, True]
    assert Clock(every=0).schedule(4) == [False] * 4
    assert Clock(adaptor_steps=frozenset({4, 5, 6, 7})).schedule(8) == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match="step 0 cannot be an adaptor step"):
        Clock(adaptor_steps=frozenset({0, 1}))
    with pytest.raises(ValueError, match="clock every"):
        Clock(every=-1)
    with pytest.raises(ValueError, match="adaptor steps must be ints"):
        EngineConfig(mode="clockwork", adaptor_steps=(1, "x"))
    assert Clock.from_dict(Clock(adaptor_steps=frozenset({2, 3})).to_dict()) == Clock(adaptor_steps=frozenset({2, 3}))


def test_clockwork_without_adaptor_steps_equals_full(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor="identity", clock_every=0))
    full = engine.generate("a red circle", mode="full", **GOOD)
    clockwork = engine.generate("a red circle", **GOOD)
    assert engine.step_kinds(6, "clockwork") == ["clockwork.full"] * 6
    torch.testing.assert_close(clockwork, full, atol=1e-5, rtol=1e-5)


def test_identity_adaptor_changes_the_adaptor_steps_only(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    assert engine.step_kinds(4, "clockwork") == ["clockwork.full", "clockwork.adaptor"] * 2
    seen = []
    engine.generate("a red circle", callback=lambda i, n, x: seen.append(x.clone()), **GOOD)
    full_seen = []
    engine.generate("a red circle", mode="full", callback=lambda i, n, x: full_seen.append(x.clone()), **GOOD)
    torch.testing.assert_close(seen[0], full_seen[0], atol=1e-5, rtol=1e-5)  # step 0 is full
    assert not torch.allclose(seen[1], full_seen[1], atol=1e-4)  # step 1 reused r_out
    assert all(torch.isfinite(x).all() for x in seen)


def test_untrained_adaptor_is_the_identity_adaptor(tiny_pipe, tmp_path):
    split = UNetSplit(tiny_pipe.unet, 1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(split, hidden_channels=16, groups=4))
    A.save(str(tmp_path / "ad"), adaptor, cut=1, base_fingerprint=A.model_fingerprint(tiny_pipe.unet),
           scheduler="DPMSolverMultistepScheduler", steps=6, clock=Clock().to_dict())
    trained = Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor=str(tmp_path / "ad")))
    identity = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    torch.testing.assert_close(trained.generate("a blue square", **GOOD), identity.generate("a blue square", **GOOD),
                               atol=1e-5, rtol=1e-5)


def test_adaptor_shapes_and_ablation_inputs():
    cfg = A.AdaptorConfig(r_in_channels=8, r_out_channels=16, time_embed_dim=32, hidden_channels=16, groups=4)
    for kw in ({}, {"use_r_in": False}, {"use_r_out": False}):
        ad = A.Adaptor(A.AdaptorConfig(**{**cfg.__dict__, **kw}))
        torch.nn.init.normal_(ad.up.weight)
        out = ad(torch.randn(2, 8, 5, 7), torch.randn(2, 16, 5, 7), torch.randn(2, 32))  # odd sizes
        assert out.shape == (2, 16, 5, 7)
    with pytest.raises(ValueError, match="needs r_in, r_out"):
        A.AdaptorConfig(8, 16, 32, 16, 4, use_r_in=False, use_r_out=False)


def test_pooled_text_adaptor_reads_the_prompt():
    cfg = A.AdaptorConfig(8, 16, 32, 16, 4, text_embed_dim=12)
    ad = A.Adaptor(cfg)
    torch.nn.init.normal_(ad.up.weight)
    r_in, r_prev, emb = torch.randn(2, 8, 5, 7), torch.randn(2, 16, 5, 7), torch.randn(2, 32)
    text = torch.randn(2, 3, 12)  # [B, L, D]: pooled over L inside
    out = ad(r_in, r_prev, emb, text)
    assert out.shape == (2, 16, 5, 7)
    assert not torch.allclose(out, ad(r_in, r_prev, emb, text + 1))  # another prompt, another output
    torch.testing.assert_close(out, ad(r_in, r_prev, emb, text.flip(1)))  # a mean: token order is pooled away
    with pytest.raises(ValueError, match="conditioned on text"):
        ad(r_in, r_prev, emb)


def test_pooled_text_adaptor_in_the_engine(tiny_pipe, tmp_path):
    split = UNetSplit(tiny_pipe.unet, 1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(split, 16, groups=4, text_embed_dim=split.text_embed_dim))
    torch.nn.init.normal_(adaptor.up.weight, std=1e-2)
    A.save(str(tmp_path / "ad"), adaptor, cut=1, base_fingerprint=A.model_fingerprint(tiny_pipe.unet),
           scheduler="DPMSolverMultistepScheduler", steps=6, clock=Clock().to_dict())
    engine = Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor=str(tmp_path / "ad")))
    out = engine.generate("a blue square", **GOOD)
    identity = Engine.from_pipeline(tiny_pipe, config="clockwork-identity").generate("a blue square", **GOOD)
    assert torch.isfinite(out).all() and not torch.allclose(out, identity)
    meta = json.loads((tmp_path / "ad" / "adaptor_config.json").read_text())
    meta["adaptor"]["text_embed_dim"] += 1
    meta["parameters"] = 0
    (tmp_path / "ad" / "adaptor_config.json").write_text(json.dumps(meta))
    with pytest.raises(A.AdaptorLoadError):  # the weights no longer fit the config, or the UNet
        Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor=str(tmp_path / "ad")))


def test_each_request_gets_a_fresh_cache(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    a1 = engine.generate("a red circle", **GOOD)
    engine.generate("a green triangle above a black square", **{**GOOD, "seed": 9})
    a2 = engine.generate("a red circle", **GOOD)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)


def _saved_adaptor(tiny_pipe, folder, fingerprint=None, hidden=16):
    split = UNetSplit(tiny_pipe.unet, 1)
    adaptor = A.Adaptor(A.AdaptorConfig.for_split(split, hidden_channels=hidden, groups=4))
    A.save(str(folder), adaptor, cut=1, base_fingerprint=fingerprint or A.model_fingerprint(tiny_pipe.unet),
           scheduler="DPMSolverMultistepScheduler", steps=6, clock=Clock().to_dict())
    return str(folder)


def test_adaptor_for_another_model_is_refused(tiny_pipe, tmp_path):
    folder = _saved_adaptor(tiny_pipe, tmp_path / "ad", fingerprint="0123456789abcdef")
    with pytest.raises(A.AdaptorLoadError, match="trained for model 0123456789abcdef"):
        Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor=folder))


def test_corrupt_adaptor_files(tiny_pipe, tmp_path):
    with pytest.raises(A.AdaptorLoadError, match="not an adaptor folder"):
        A.load(str(tmp_path))
    folder = _saved_adaptor(tiny_pipe, tmp_path / "ad")
    cfg = tmp_path / "ad" / "adaptor_config.json"
    meta = json.loads(cfg.read_text())
    cfg.write_text("{")
    with pytest.raises(A.AdaptorLoadError, match="corrupt"):
        A.load(folder)
    meta["adaptor"]["hidden_channels"] = 32  # weights no longer fit
    cfg.write_text(json.dumps(meta))
    with pytest.raises(A.AdaptorLoadError, match="could not load"):
        A.load(folder)
    weights = tmp_path / "ad" / "adaptor.safetensors"
    weights.write_bytes(b"garbage")
    with pytest.raises(A.AdaptorLoadError):
        A.load(folder)


def test_clockwork_needs_an_adaptor(tiny_pipe):
    with pytest.raises(ValueError, match="needs an adaptor"):
        Engine.from_pipeline(tiny_pipe, config="clockwork")
    with pytest.raises(ValueError, match="needs an adaptor"):
        Engine.from_pipeline(tiny_pipe).generate("a red circle", mode="clockwork", **GOOD)


def test_fingerprint_does_not_depend_on_how_the_unet_was_loaded(tiny_pipe, tiny_dir):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    direct = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    via_pipeline = StableDiffusionPipeline.from_pretrained(tiny_dir).unet
    assert A.model_fingerprint(direct) == A.model_fingerprint(via_pipeline) == A.model_fingerprint(tiny_pipe.unet)
    with torch.no_grad():
        direct.conv_out.bias.add_(1.0)
    assert A.model_fingerprint(direct) != A.model_fingerprint(tiny_pipe.unet)


@pytest.mark.parametrize("name", ["dpm++2m", "euler-a", "unipc", "lcm", "heun"])
def test_clockwork_under_any_scheduler(tiny_pipe, name):
    """The clock counts model evaluations (Heun's 2 a step included); with no adaptor step the
    split path equals full mode under the scheduler, and the identity adaptor changes the result."""
    base = Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor="identity", scheduler=name))
    evals = base.runner.table(6).num_steps
    assert base.step_kinds(6, "clockwork") == ["clockwork.full", "clockwork.adaptor"] * (evals // 2) + \
        ["clockwork.full"] * (evals % 2)
    never = base.with_config(clock_every=0)
    full = never.generate("a red circle", mode="full", **GOOD)
    torch.testing.assert_close(never.generate("a red circle", **GOOD), full, atol=1e-5, rtol=1e-5)
    clocked = base.generate("a red circle", **GOOD)
    assert torch.isfinite(clocked).all() and not torch.allclose(clocked, full, atol=1e-4)


def test_adaptor_fitted_under_another_scheduler_warns(tiny_pipe, tmp_path):
    from clockwork_engine.sampler import noise_schedulers

    split = UNetSplit(tiny_pipe.unet, 1)
    A.save(str(tmp_path / "a"), A.Adaptor(A.AdaptorConfig.for_split(split, 8)), cut=1,
           base_fingerprint=A.model_fingerprint(tiny_pipe.unet), scheduler=noise_schedulers.describe(tiny_pipe.scheduler),
           steps=6, clock={"every": 2, "adaptor_steps": None})
    config = EngineConfig(mode="clockwork", adaptor=str(tmp_path / "a"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Engine.from_pipeline(tiny_pipe, config=config)  # the scheduler it was fitted under: no warning
    assert not [w for w in seen if "fitted under" in str(w.message)]
    with pytest.warns(UserWarning, match="fitted under DPMSolverMultistepScheduler.*running EulerAncestral"):
        Engine.from_pipeline(tiny_pipe, config=config.with_(scheduler="euler-a"))
