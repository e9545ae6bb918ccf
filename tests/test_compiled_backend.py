"""The compiled CUDA backend's settings, its artifacts (clockwork compile) and requests out of
device memory, on the CPU. (On a GPU: tests/test_gpu_cuda.py compiles and captures.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fastapi.testclient import TestClient

from clockwork_engine import Engine, EngineConfig, artifacts
from clockwork_engine import request as requests
from clockwork_engine.compile import CUDA_OPTIONS
from clockwork_engine.sampler import GraphSampler

GOOD = dict(steps=2, seed=0, height=16, width=16, output="latent")


@pytest.mark.parametrize("changes, match", [
    (dict(compile=1), "compile must be True or False"),
    (dict(inductor="fastest"), "inductor must be one of default, coordinate-descent"),
    (dict(compiled_dir=""), "compiled_dir must be a folder or None"),
])
def test_bad_compile_settings_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**changes)


def test_compile_applies_to_the_cuda_backend_only(tiny_pipe):
    assert set(CUDA_OPTIONS) >= {"default", "coordinate-descent", "freezing", "max-autotune"}
    assert GraphSampler("cpu", cuda_compile={}).cuda_compile is None
    engine = Engine.from_pipeline(tiny_pipe, config=EngineConfig(backend="cpu", compile=True))
    assert engine.graphs.cuda_compile is None and engine.runner.decode_fn == engine.runner.decode_eager


def test_engines_share_their_encoders_and_decoder_where_the_settings_allow(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe)
    clockwork = engine.with_config(mode="clockwork", adaptor="identity", steps=4)
    assert clockwork.conditioning is engine.conditioning and clockwork.runner.decode_fn is engine.runner.decode_fn
    bf16 = engine.with_config(text_dtype="bfloat16")
    assert bf16.conditioning is not engine.conditioning and bf16.runner.decode_fn is engine.runner.decode_fn
    torch.testing.assert_close(clockwork.generate("a red circle", **GOOD, mode="full"), engine.generate(
        "a red circle", **GOOD), rtol=0, atol=0)


def out_of_memory_at_batch(engine, rows: int):
    """Step programs that run out of device memory for batches of `rows` (as a GPU allocation
    would, while the programs are built or captured)."""
    make = engine.runner.step_fn

    def step_fn(kind, table, bufs, cfg_on, point=None):
        fn = make(kind, table, bufs, cfg_on, point)
        if bufs.x.shape[0] != rows:
            return fn

        def oom(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        return oom

    engine.runner.step_fn = step_fn


def test_a_request_out_of_device_memory_fails_alone(tiny_pipe):
    engine = Engine.from_pipeline(tiny_pipe)
    before = engine.generate("a red circle", **GOOD)
    out_of_memory_at_batch(engine, 3)
    with pytest.raises(requests.DeviceMemoryError, match=r"3 image\(s\) of 16x16\) does not fit in the memory of cpu"):
        engine.generate(["a red circle", "a blue square", "a green square"], **GOOD)
    assert [key[0] for key in engine.graphs.keys()] == [1]  # nothing of the failed key is kept
    torch.testing.assert_close(engine.generate("a red circle", **GOOD), before, rtol=0, atol=0)


def test_a_batched_request_out_of_device_memory_fails_alone(tiny_pipe):
    alone = Engine.from_pipeline(tiny_pipe)
    want = alone.generate("a red circle", **GOOD)
    engine = alone.with_config(batching="step", batch_buckets=(1, 4))
    out_of_memory_at_batch(engine, 4)  # the 4-row bucket a 3-image request needs
    try:
        with pytest.raises(requests.DeviceMemoryError, match=r"3 image\(s\) of 16x16"):
            engine.generate(["a red circle", "a blue square", "a green square"], **GOOD)
        torch.testing.assert_close(engine.generate("a red circle", **GOOD), want, atol=1e-5, rtol=1e-5)
    finally:
        engine.batcher.close()


def test_out_of_device_memory_is_413_over_http(tiny_pipe):
    from clockwork_engine.serving.http import make_app

    engine = Engine.from_pipeline(tiny_pipe)
    out_of_memory_at_batch(engine, 2)
    client = TestClient(make_app(engine, model_name="tiny"))
    body = {"prompt": "a red circle", "size": "16x16", "steps": 2, "seed": 0}
    r = client.post("/v1/images/generations", json={**body, "n": 2})
    assert r.status_code == 413 and "does not fit" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "request_too_large"
    assert client.post("/v1/images/generations", json=body).status_code == 200  # the service goes on


# ----------------------------------------------------------------- artifacts
def write_manifest(folder, **changes):
    os.makedirs(folder, exist_ok=True)
    (folder / artifacts.MANIFEST).write_text(json.dumps({**artifacts.environment(), "bytes": 0, **changes}))


def test_a_folder_without_artifacts_loads_nothing(tmp_path):
    assert artifacts.load(str(tmp_path)) is False


def test_artifacts_of_another_torch_are_skipped_with_a_warning(tmp_path):
    write_manifest(tmp_path, torch="1.0.0")
    (tmp_path / artifacts.ARTIFACTS).write_bytes(b"not read")
    with pytest.warns(UserWarning, match="were made for .*1.0.0.* skipped"):
        assert artifacts.load(str(tmp_path)) is False


@pytest.mark.parametrize("broken", ["manifest", "artifacts"])
def test_corrupt_artifacts_are_an_error_naming_the_file(tmp_path, broken):
    if broken == "manifest":
        (tmp_path / artifacts.MANIFEST).write_text("{not json")
    else:
        write_manifest(tmp_path)
    (tmp_path / artifacts.ARTIFACTS).write_bytes(b"\x00garbage")
    with pytest.raises(artifacts.ArtifactsError, match=f"compiled artifacts .*{tmp_path.name}"):
        artifacts.load(str(tmp_path))


def test_from_pretrained_refuses_a_missing_compiled_dir(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="compiled_dir .* is not a folder"):
        Engine.from_pretrained(tiny_dir, config=EngineConfig(compiled_dir=str(tmp_path / "none")))


_COMPILE = textwrap.dedent("""
    import sys, torch
    from torch._dynamo.utils import counters
    from clockwork_engine import artifacts
    from clockwork_engine.compile import compiled
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU()).eval()
    if sys.argv[1] == "load":
        assert artifacts.load(sys.argv[2])
    with torch.no_grad():
        compiled(lambda x: net(x), {}, "test net")(torch.randn(1, 4, 8, 8))
    if sys.argv[1] == "save":
        artifacts.save(sys.argv[2], [{"what": "test net"}])
    print("hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"])
""")


def test_saved_artifacts_make_a_new_process_hit_the_cache(tmp_path):
    """What clockwork compile saves (inductor's caches, without frozen weights: the cuda backend's
    options) lets a process with empty caches compile without running inductor."""
    folder = tmp_path / "compiled"

    def run(action, cache):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / cache)}
        proc = subprocess.run([sys.executable, "-c", _COMPILE, action, str(folder)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()

    assert run("save", "cache_a")[-4:] == ["hits", "0", "misses", "1"]
    manifest = json.loads((folder / artifacts.MANIFEST).read_text())
    assert manifest["torch"] == torch.__version__ and manifest["bytes"] > 0 and manifest["entries"]["inductor"] == 1
    assert run("load", "cache_b")[-4:] == ["hits", "1", "misses", "0"]  # an empty cache dir, filled by the artifacts


def test_clockwork_compile_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("on a GPU it compiles (benches/gpu/check.sh's cold_start phase)")
    from clockwork_engine.tools.cli import main

    assert main(["compile", "--model", "demo", "--batching", "off"]) == 2
