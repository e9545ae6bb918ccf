"""The GPU check without a GPU: its dry run (benches/gpu/check.sh --dry-run, the same harness
on the CPU at tiny sizes), the tree it sends (under the device's 64 MiB once packed), the GPU
tests skipping cleanly, and its results section."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_DIR = os.path.join(ROOT, "benches", "gpu")
sys.path.insert(0, GPU_DIR)
sys.path.insert(0, os.path.join(ROOT, "docs"))

import pack  # noqa: E402

SD15_VARIANTS = {"diffusers", "engine_full_eager", "engine_full", "clockwork_identity", "clockwork_adaptor",
                 "clockwork_reuse"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", os.path.join(GPU_DIR, "check.sh"), "--dry-run"],
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_runs_every_phase_and_measures_it(dry_run):
    out, d = dry_run
    assert d["dry_run"] and d["device"]["cuda"] is None and d["settings"]["device"] == "cpu"
    assert {name: p["status"] for name, p in d["phases"].items()} == dict.fromkeys(
        ("sd15", "profile", "sdxl", "sd15_compile"), "ok")
    assert (out / "steps.txt").read_text().split()[:2] == ["harness", "0"]
    sd15 = d["phases"]["sd15"]
    assert set(sd15["timings"]) == SD15_VARIANTS
    assert all(t["median_s"] > 0 and len(t["warmup_s"]) == 1 for t in sd15["timings"].values())
    assert set(sd15["speedup_vs_diffusers"]) == SD15_VARIANTS - {"diffusers"}
    # fp32: the engine equals diffusers; on a CPU both engine backends run the eager programs
    assert sd15["parity"]["engine_vs_diffusers_max_abs"] < 1e-4 < sd15["parity"]["latents_max_abs"]
    assert sd15["parity"]["graphs_vs_eager_max_abs"] == 0
    assert sd15["schedules"]["clockwork_reuse"][-2:] == ["clockwork.full+reuse", "clockwork.adaptor+reuse"]
    assert sd15["reuse"]["layers_cached"] > 0 and sd15["reuse"]["layers_over_cap"] == 0
    assert sd15["adaptor_parameters"] > 0 and sd15["attention_processor"] == "AttnProcessor2_0"
    overhead = sd15["overhead"]
    assert overhead["full_step_replay_ms"] > 0 and overhead["unet_forward_eager_ms"] > 0
    assert d["phases"]["sdxl"]["parity"]["engine_vs_diffusers_max_abs"] < 1e-4
    assert set(d["phases"]["sdxl"]["timings"]) == {"diffusers", "engine_full", "clockwork_identity"}
    assert set(d["phases"]["sd15_compile"]["timings"]) == {"diffusers", "diffusers_compiled", "engine_full"}
    profile = d["phases"]["profile"]
    kinds = sd15["schedules"]["clockwork_adaptor"]
    assert [(s["step"], s["kind"]) for s in profile["steps"]] == list(enumerate(kinds))
    with gzip.open(out / profile["trace"]) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert {f"clockwork.step.{i}.{k}" for i, k in enumerate(kinds)} | {"clockwork.sample"} <= names


def test_results_section_renders_a_gpu_run_and_refuses_a_dry_run(dry_run):
    import make_results

    _, d = dry_run
    assert "_Not run on a GPU: benches/results/gpu_check.json is a dry run's" in _section_with(make_results, d)
    gpu = {**d, "dry_run": False, "device": {**d["device"], "gpu": "NVIDIA H200", "capability": "9.0"},
           "gpu_tests": {"tests": 3, "failures": 1, "errors": 0, "skipped": 0, "passed": 2, "seconds": 9.0,
                         "failed": [{"test": "tests.test_gpu_cuda::test_x", "message": "boom"}]}}
    text = _section_with(make_results, gpu)
    assert "Not run on a GPU" not in text and "NVIDIA H200" in text and "2 passed, 1 failed" in text
    assert "test_x" in text and "torch.compile on diffusers' UNet" in text and "Profile of one clockwork" in text
    for name, t in d["phases"]["sd15"]["timings"].items():
        assert f"| {make_results.GPU_VARIANTS[name]} | {t['median_s'] * 1e3:.1f} |" in text


def test_results_section_renders_what_a_gpu_run_records(dry_run):
    """What the H200 run recorded: pytest's multi-line failure messages, compile options as strings,
    each profiled step listed twice (the second at 0 ms); the torch.compile row sits in the SD v1.5
    table beside the engine's rows."""
    import make_results

    _, d = dry_run
    comp = d["phases"]["sd15_compile"]
    steps = [e for s in d["phases"]["profile"]["steps"] for e in (s, {**s, "ms": 0.0})]
    gpu = {**d, "dry_run": False, "gpu_tests": {
        "tests": 2, "failures": 1, "errors": 0, "skipped": 0, "passed": 1, "seconds": 9.0,
        "failed": [{"test": "tests.test_gpu_cuda::test_x",
                    "message": "AssertionError: not close!\n\nGreatest absolute difference: 0.0012"}]},
        "phases": {**d["phases"], "sd15_compile": {**comp, "compile_options": {"mode": "reduce-overhead",
                                                                                  "fullgraph": "True"}},
                   "profile": {**d["phases"]["profile"], "steps": steps}}}
    text = _section_with(make_results, gpu)
    assert "- failed: `tests.test_gpu_cuda::test_x`: AssertionError: not close! Greatest absolute difference: " \
           "0.0012\n" in text
    assert 'torch.compile(mode="reduce-overhead", fullgraph=True)' in text and "'fullgraph'" not in text
    sd15 = text.split("### SD v1.5")[1].split("###")[0]
    rows = [line for line in sd15.splitlines() if line.startswith("| ")][1:]  # the header row off
    assert rows[0].startswith("| stock diffusers (SDPA) |") and rows[1].startswith("| diffusers, torch.compile(")
    assert f" | {comp['timings']['diffusers_compiled']['median_s'] * 1e3:.1f} | " in rows[1]
    assert any(row.startswith("| engine, full, CUDA graphs |") for row in rows)
    profile = text.split("### Profile of one clockwork request")[1]
    for s in d["phases"]["profile"]["steps"]:
        assert profile.count(f"{s['step']} {s['kind']} ") == 1


def _section_with(make_results, d) -> str:
    original = make_results.load
    make_results.load = lambda name: d if name == "gpu_check.json" else original(name)
    try:
        return make_results.section_gpu()
    finally:
        make_results.load = original


def _git_tree() -> bool:
    return subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not _git_tree(), reason="needs the git work tree")
def test_packed_tree_travels_under_the_device_limit():
    packed = pack.travelling_bytes(packed=True) + pack.wheel_bytes()
    assert packed < pack.LIMIT, f"{packed / 2**20:.1f} MiB would travel once packed"
    # what is moved exists (packing does something) and nothing the check runs reads it
    assert all(os.path.isdir(os.path.join(ROOT, p)) for p in pack.MOVED)
    sources = [os.path.join(GPU_DIR, f) for f in os.listdir(GPU_DIR) if f.endswith((".py", ".sh"))]
    sources.append(os.path.join(ROOT, "tests", "test_gpu_cuda.py"))
    for path in sources:
        if os.path.basename(path) == "pack.py":
            continue
        text = open(path).read()
        assert not any(p in text for p in pack.MOVED + ("students", "adaptors/")), path


def test_pack_moves_out_and_back(tmp_path):
    root = tmp_path / "repo"
    (root / "big").mkdir(parents=True)
    (root / "big" / "weights.bin").write_bytes(b"x" * 1000)
    (root / "small.txt").write_text("kept")
    (root / ".gitignore").write_text(f"/{pack.STASH}/\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    before = pack.travelling_bytes(str(root))
    assert pack.travelling_bytes(str(root), packed=True, moved=("big",)) == before - 1000
    pack.out(str(root), moved=("big",))
    assert not (root / "big").exists() and pack.travelling_bytes(str(root)) == before - 1000
    with pytest.raises(SystemExit, match="already packed"):
        pack.out(str(root), moved=("big",))
    pack.back(str(root), moved=("big",))
    assert (root / "big" / "weights.bin").read_bytes() == b"x" * 1000 and not (root / pack.STASH).exists()
    assert pack.travelling_bytes(str(root)) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU they run (benches/gpu/check.sh)")
def test_gpu_tests_skip_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "tests/test_gpu_cuda.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and re.fullmatch(r"\d+ skipped in [\d.]+s", summary), proc.stdout[-2000:]


def test_a_resumed_harness_marks_the_phase_it_died_in_and_runs_the_rest(tmp_path):
    """check.sh reruns the harness with --resume when its process dies (a signal, not a failed phase)."""
    import harness

    (tmp_path / "gpu_check.json").write_text(json.dumps({"started_utc": "then", "elapsed_s": 5.0, "phases": {
        "sd15": {"status": "ok"}, "profile": {"status": "running"}}}))
    threads = torch.get_num_threads()
    try:
        rc = harness.main(["--out", str(tmp_path), "--dry-run", "--resume", "--phases", "sd15,profile"])
    finally:
        torch.set_num_threads(threads)
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and d["resumed_after"] == {"started_utc": "then", "elapsed_s": 5.0}
    assert d["phases"]["sd15"] == {"status": "ok"} and d["phases"]["profile"]["status"] == "crashed"


def test_merging_a_second_try_keeps_what_either_finished():
    from merge import merge

    first = {"started_utc": "t1", "command": "check.sh", "gpu_tests": {"tests": 58}, "setup": [1],
             "phases": {"sd15": {"status": "ok", "n": 1}, "sdxl": {"status": "error"},
                        "sd15_compile": {"status": "ok"}}}
    second = {"started_utc": "t2", "command": "check.sh --skip-tests", "gpu_tests": None, "setup": [2],
              "phases": {"sdxl": {"status": "ok"}, "sd15_compile": {"status": "error"}}}
    merged = merge(first, second)
    assert {n: p["status"] for n, p in merged["phases"].items()} == {"sd15": "ok", "sdxl": "ok", "sd15_compile": "ok"}
    assert merged["gpu_tests"] == {"tests": 58} and merged["setup"] == [1]
    assert [t["started_utc"] for t in merged["tries"]] == ["t1", "t2"]
