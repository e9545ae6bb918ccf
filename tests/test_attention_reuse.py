"""Attention-map reuse: processor numerics, schedules, cap, composition with clockwork."""

import pytest
import torch
from conftest import make_tiny_pipeline
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.reuse.attention import (
    ReuseAttnProcessor,
    ReuseConfig,
    ReuseContext,
    apply_reuse,
    map_bytes,
    reuse_actions,
)
from clockwork_engine.tools.flops import SD15_UNET

GOOD = dict(steps=6, seed=0, height=16, width=16, output="latent", guidance_scale=4.0)


@pytest.mark.parametrize("cross", [False, True])
def test_processor_compute_and_reuse_match_the_original(cross):
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8).eval()
    ctx = ReuseContext(ReuseConfig())
    proc = ReuseAttnProcessor("layer", AttnProcessor2_0(), ctx)
    x = torch.randn(2, 10, 32)
    text = torch.randn(2, 7, 24) if cross else None
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, x, text)
        assert torch.equal(proc(attn, x, text), ref)  # action "off": the original processor
        ctx.action = "compute"
        computed = proc(attn, x, text)
        assert ctx.maps["layer"].shape == (8, 10, 7 if cross else 10)
        torch.testing.assert_close(computed, ref, atol=1e-5, rtol=1e-5)
        ctx.action = "reuse"
        torch.testing.assert_close(proc(attn, x, text), computed, atol=1e-6, rtol=0)  # same inputs, same maps
        # Reuse uses the current V (from x, or from the text for cross-attention).
        other = proc(attn, x + 1, text + 1 if cross else None)
        assert not torch.allclose(other, computed)


def test_reuse_actions():
    assert reuse_actions(6, [4, 5]) == ["off", "off", "off", "compute", "reuse", "reuse"]
    assert reuse_actions(5, [2, 4]) == ["off", "compute", "reuse", "compute", "reuse"]
    assert reuse_actions(3, []) == ["off"] * 3
    with pytest.raises(ValueError, match="step 0 cannot reuse"):
        reuse_actions(4, [0, 1])
    with pytest.raises(ValueError, match="beyond"):
        reuse_actions(4, [5])
    with pytest.raises(ValueError, match="attention_reuse must be"):
        EngineConfig(attention_reuse=(0, 1))


@pytest.fixture()
def fresh_pipe():
    return make_tiny_pipeline(seed=0)  # processors get installed: never the shared session pipe


def test_no_reuse_steps_equals_full(fresh_pipe):
    ref = Engine.from_pipeline(fresh_pipe).generate("a red circle", **GOOD)
    engine = Engine.from_pipeline(fresh_pipe, config=EngineConfig(attention_reuse=()))
    torch.testing.assert_close(engine.generate("a red circle", **GOOD), ref, atol=0, rtol=0)


def test_late_reuse_runs_and_changes_only_late_steps(fresh_pipe):
    full_seen, seen = [], []
    Engine.from_pipeline(fresh_pipe).generate("a red circle", callback=lambda i, n, x: full_seen.append(x.clone()),
                                             **GOOD)
    engine = Engine.from_pipeline(fresh_pipe, config=EngineConfig(attention_reuse=(4, 5)))
    assert engine.step_kinds(6, "full") == ["full"] * 3 + ["full+compute", "full+reuse", "full+reuse"]
    engine.generate("a red circle", callback=lambda i, n, x: seen.append(x.clone()), **GOOD)
    for i in range(4):  # up to the compute step: the same (explicit P vs fused attention)
        torch.testing.assert_close(seen[i], full_seen[i], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(seen[5], full_seen[5], atol=1e-4)
    assert len(engine.reuse.maps) > 0 and all(torch.isfinite(x).all() for x in seen)
    # deterministic and isolated: the same request again gives the same latents
    again = engine.generate("a red circle", **GOOD)
    torch.testing.assert_close(again[None], seen[-1], atol=0, rtol=0)


def test_byte_cap_falls_back_to_computing(fresh_pipe):
    ref = Engine.from_pipeline(fresh_pipe).generate("a red circle", **GOOD)
    engine = Engine.from_pipeline(fresh_pipe, config=EngineConfig(attention_reuse=(4, 5), max_attention_bytes=0))
    out = engine.generate("a red circle", **GOOD)
    assert engine.reuse.maps == {} and len(engine.reuse.over_cap) > 0
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_layer_selection(fresh_pipe):
    ctx = apply_reuse(fresh_pipe.unet, ReuseConfig(layers="cross"))
    procs = fresh_pipe.unet.attn_processors
    reuse = [n for n, p in procs.items() if isinstance(p, ReuseAttnProcessor)]
    assert reuse and all("attn2" in n for n in reuse)
    assert apply_reuse(fresh_pipe.unet, ReuseConfig(layers="cross")) is ctx
    with pytest.raises(ValueError, match="another ReuseConfig"):
        apply_reuse(fresh_pipe.unet, ReuseConfig(layers="self"))
    with pytest.raises(ValueError, match="no Attention modules named"):
        apply_reuse(make_tiny_pipeline().unet, ReuseConfig(layers="nope.attn1"))


def test_composes_with_clockwork(fresh_pipe):
    engine = Engine.from_pipeline(fresh_pipe, config=EngineConfig(mode="clockwork", adaptor="identity",
                                                                  attention_reuse=(3, 5)))
    kinds = engine.step_kinds(6, "clockwork")
    assert kinds == ["clockwork.full", "clockwork.adaptor", "clockwork.full+compute", "clockwork.adaptor+reuse",
                     "clockwork.full+compute", "clockwork.adaptor+reuse"]
    out = engine.generate("a red circle", **GOOD)
    assert torch.isfinite(out).all()


def test_clockwork_reuse_takes_the_low_resolution_maps_from_the_last_full_step():
    """The demo UNet has attention in L only: an adaptor step computes no maps, so the reuse run
    after one reads those of the full step before it (stored there), and reuse takes effect."""
    engine = Engine.from_pretrained("demo", config=EngineConfig(mode="clockwork", attention_reuse=(6, 7)))
    assert engine.step_kinds(8, "clockwork")[4:] == ["clockwork.full+compute", "clockwork.adaptor+compute",
                                                    "clockwork.full+reuse", "clockwork.adaptor+reuse"]
    kw = dict(seed=0, steps=8, output="pt")
    reused = engine.generate("a red circle above a blue square", **kw)
    assert engine.reuse.maps and all(name.startswith(("down_blocks.1.", "mid_block.", "up_blocks.1."))
                                     for name in engine.reuse.maps)  # the 8x8 and 4x4 layers, all in L
    plain = engine.with_config(attention_reuse=None).generate("a red circle above a blue square", **kw)
    assert 0 < (reused - plain).abs().mean() < 0.05  # reuse took effect (0.024 when written), nothing broke


def test_map_bytes_sd15():
    sizes = map_bytes(dict(SD15_UNET), 1, 64, 64, 77, ReuseConfig(layers="self"), dtype_bytes=2, cfg=False)
    # The paper: about 268 MB per 64x64 self-attention layer per image in fp16.
    assert max(sizes["per_layer"].values()) == 8 * 4096 * 4096 * 2
    assert len(sizes["per_layer"]) == 16


def test_greedy_search_and_schedule_files(tmp_path):
    import json

    from clockwork_engine.reuse import search

    pipe = make_tiny_pipeline(seed=2)
    engine = Engine.from_pipeline(pipe, config=EngineConfig(attention_reuse=()))
    calls = []
    result = search.greedy(engine, ["a red circle", "a blue square"], steps=5, budget=2, guidance=3.0,
                                 progress=lambda: calls.append(1))
    assert len(result["reuse_steps"]) == 2 and 0 not in result["reuse_steps"]
    assert len(calls) == 4 + 3  # candidates tried in the two rounds
    mses = [r["mse"] for r in result["mse_per_round"]]
    assert mses[0] <= mses[1]  # adding reuse steps moves the output further from the full one
    path = tmp_path / "s.json"
    path.write_text(json.dumps(result))
    assert search.load(str(path)) == tuple(result["reuse_steps"])
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a reuse schedule file"):
        search.load(str(path))
    assert search.late(3, 10) == (7, 8, 9)
    with pytest.raises(ValueError, match="late reuse"):
        search.late(10, 10)


def test_cli_generate_with_reuse(tiny_dir, tmp_path):
    from clockwork_engine.tools import cli

    out = tmp_path / "x.png"
    assert cli.main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_dir), "--steps", "4",
                     "--reuse-schedule", "late:2", "-q"]) == 0
    assert out.exists()
