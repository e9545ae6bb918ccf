"""The graph sampler (CPU backend): same results as the plain loop, key cache, guard."""

from functools import partial

import pytest
import torch

from clockwork_engine import Engine, EngineConfig, sampler
from clockwork_engine.clockwork.cache import CacheState
from clockwork_engine.conditioning import latents
from clockwork_engine.ops import fused_unet
from clockwork_engine.sampler import GraphSampler, HostSyncError, NoHostSync

GOOD = dict(steps=5, seed=0, height=16, width=16, output="latent", guidance_scale=4.0)


@pytest.mark.parametrize("mode", ["full", "clockwork"])
def test_graph_sampler_equals_the_plain_loop(tiny_pipe, mode):
    engine = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    got = engine.generate(["a red circle", "a blue square"], mode=mode, **GOOD)
    # The same request through sampler.run (no static buffers, no programs).
    text = engine.prompts.encode(["", "", "a red circle", "a blue square"])
    table = engine.runner.table(5)
    kinds = engine.step_kinds(5, mode)
    denoisers = {**engine.denoisers, **engine.operating_point(5).denoisers}  # full, and clockwork's at 5 steps
    fns = {k: partial(sampler.step, denoisers[k], table, text=text, guidance=torch.full((2,), 4.0), cfg=True)
           for k in set(kinds)}
    inputs = latents.prepare(table, engine.vae, (2, 4, 8, 8), [torch.Generator().manual_seed(0)], torch.float32,
                             engine.device, text, torch.full((2,), 4.0))
    assert inputs.noise is None  # DPM-Solver++ draws nothing after the initial latents
    with fused_unet.active():  # the programs' denoisers run the fused GroupNorm kernels too
        ref = sampler.run(fns, kinds, table, inputs.latents, CacheState())
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_program_cache_hits_misses_and_evictions(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor="identity", max_graphs=2))
    g = engine.graphs
    engine.generate("a red circle", **GOOD)
    engine.generate("a red circle", **GOOD)
    assert (g.misses, g.hits, g.evictions) == (1, 1, 0)
    engine.generate("a red circle", **{**GOOD, "height": 24})  # a new key
    engine.generate(["a", "b"], **GOOD)  # a new key (batch 2): evicts the oldest
    assert (g.misses, g.evictions) == (3, 1)
    assert len(g.keys()) == 2 and all(k[1] != 16 or k[0] == 2 for k in g.keys())
    engine.generate("a red circle", mode="full", **GOOD)  # modes are keys too
    assert g.misses == 4


def test_requests_never_see_each_others_state(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    a = engine.generate("a red circle", **GOOD)
    engine.generate("a green triangle", **{**GOOD, "seed": 3, "guidance_scale": 9.0})
    with pytest.raises(RuntimeError, match="stop"):
        engine.generate("a yellow square", **GOOD, callback=lambda i, n, x: (_ for _ in ()).throw(RuntimeError("stop")))
    torch.testing.assert_close(engine.generate("a red circle", **GOOD), a, rtol=0, atol=0)


def test_guard_fails_a_step_that_syncs_with_the_host():
    x = torch.randn(4)
    with pytest.raises(HostSyncError, match="synchronises with the host"):
        with NoHostSync():
            _ = x.sum().item()
    with pytest.raises(HostSyncError):
        with NoHostSync():
            if x.sum() > 0:  # Python branching on a tensor value
                pass
    with NoHostSync():  # pure tensor math passes
        torch.where(x > 0, x, -x).mul(2)


def test_graph_sampler_refuses_a_syncing_step_function():
    def syncing_step(i, x, history, features):
        scale = float(i) + 1.0  # .item() in disguise
        return x * scale, history, features

    g = GraphSampler("cpu")
    table = sampler.build_table(__import__("clockwork_engine").demo.models.build_scheduler(), 2)
    with pytest.raises(HostSyncError):
        g.run(("k",), lambda bufs: {"full": syncing_step}, ["full", "full"], table,
              sampler.RequestInputs(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 8), torch.ones(1)), None, CacheState())
    assert g.keys() == []  # nothing half-built is kept


def test_inductor_programs_equal_the_eager_ones_and_read_every_requests_inputs(tiny_pipe, tmp_path):
    """Compiled step programs (one whole graph each, weights frozen in) give the eager
    programs' latents, and a later request's text, guidance and noise reach them through
    the buffers (nothing of the first request is baked in). Compiling takes about a minute."""
    from torch._dynamo.utils import counters

    eager = Engine.from_pipeline(tiny_pipe, config="clockwork-identity")
    compiled = eager.with_config(backend="inductor")
    later = {**GOOD, "seed": 3, "guidance_scale": 2.0}
    weights_before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    graphs_before = counters["stats"]["unique_graphs"]
    first = compiled.generate("a red circle", **GOOD)
    # the text encoder, clockwork.full and clockwork.adaptor
    assert counters["stats"]["unique_graphs"] - graphs_before == 3
    second = compiled.generate("a blue square", **later)
    assert (compiled.graphs.misses, compiled.graphs.hits) == (1, 1)
    # The first request encoded "" too (batch 2), this one a single prompt: the text encoder
    # compiles once more, for any batch size (dynamic=None); the step programs do not.
    assert counters["stats"]["unique_graphs"] - graphs_before == 4
    compiled.generate("a green triangle", **{**later, "guidance_scale": 6.0, "seed": 5})
    assert counters["stats"]["unique_graphs"] - graphs_before == 4  # no recompilation
    torch.testing.assert_close(first, eager.generate("a red circle", **GOOD), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, eager.generate("a blue square", **later), rtol=1e-4, atol=1e-4)
    assert (first - second).abs().max() > 1.0
    # Freezing folds copies of the weights into the programs; the shared modules stay as they were.
    assert all(torch.equal(v, weights_before[k]) for k, v in tiny_pipe.unet.state_dict().items())
    images = compiled.generate("a red circle", **{**GOOD, "output": "pt"})  # + the VAE decoder
    assert counters["stats"]["unique_graphs"] - graphs_before == 5
    torch.testing.assert_close(images, eager.generate("a red circle", **{**GOOD, "output": "pt"}), rtol=0, atol=1e-4)
    # Under the profiler: one range per step; no model range exists inside a compiled program.
    from clockwork_engine.tools.profile import profile

    table = profile(compiled, "a red circle", str(tmp_path / "trace.json"), **GOOD)
    assert [s["kind"] for s in table["steps"]] == compiled.step_kinds(5, "clockwork")
    assert table["overhead_fraction"] is None and table["model_ms"] is None


def test_a_failed_compile_is_a_clear_error_and_keeps_nothing(tiny_pipe, monkeypatch):
    from clockwork_engine.compile import InductorError

    def no_compiler(fn, **options):
        def compiled(*args):
            raise OSError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    engine = Engine.from_pipeline(tiny_pipe, config=EngineConfig(backend="inductor"))
    with pytest.raises(InductorError, match="failed on the text encoder.*no C.. compiler"):
        engine.generate("a red circle", **GOOD)
    assert len(engine.prompts) == 0
    # With the prompts encoded (eagerly, by another engine), the step program is next.
    for prompt in ("", "a red circle"):
        engine.prompts._cache[prompt] = (Engine.from_pipeline(tiny_pipe).prompts.encode([prompt])[0], None)
    with pytest.raises(InductorError, match="failed on the step program 'full'"):
        engine.generate("a red circle", **GOOD)
    assert engine.graphs.keys() == []


def test_backend_choice():
    assert GraphSampler("auto").backend == ("cuda" if torch.cuda.is_available() else "cpu")
    assert GraphSampler("inductor").backend == "inductor"
    with pytest.raises(ValueError, match="backend"):
        GraphSampler("tpu")
    with pytest.raises(ValueError, match="inductor"):
        EngineConfig(backend="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            GraphSampler("cuda")


def test_profile_writes_a_trace_with_every_step(tiny_dir, tmp_path, capsys):
    import json

    from clockwork_engine.tools import cli

    trace = tmp_path / "trace.json"
    assert cli.main(["profile", "a red circle", "--model", str(tiny_dir), "--steps", "4", "--trace", str(trace),
                     "--json", str(tmp_path / "t.json")]) == 0
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert {f"clockwork.step.{i}.full" for i in range(4)} <= names
    assert {"clockwork.model", "clockwork.sample"} <= names
    table = json.loads((tmp_path / "t.json").read_text())
    assert [s["step"] for s in table["steps"]] == [0, 1, 2, 3]
    assert 0 < table["overhead_fraction"] < 1
    assert "engine overhead" in capsys.readouterr().out
