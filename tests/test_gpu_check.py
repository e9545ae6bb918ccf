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

SD15_VARIANTS = {"diffusers", "diffusers_compiled", "engine_full_uncompiled", "engine_full",
                 "clockwork_identity_uncompiled", "clockwork_identity", "clockwork_adaptor", "clockwork_reuse_uncompiled"}
PHASES = ("sd15", "profile", "batch4", "cold_start", "sdxl", "sd35", "flux", "serving", "options")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", os.path.join(GPU_DIR, "check.sh"), "--dry-run"],
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text())


def _timed(p, names):
    """The phase timed exactly these variants, each with one warm-up call, and says each one's first call."""
    assert set(p["timings"]) == set(names) and set(p["first_call_s"]) == set(names)
    assert all(t["median_s"] > 0 and len(t["warmup_s"]) == 1 for t in p["timings"].values())


def test_dry_run_runs_every_phase_and_measures_it(dry_run):
    out, d = dry_run
    assert d["dry_run"] and d["device"]["cuda"] is None and d["settings"]["device"] == "cpu"
    assert {name: p["status"] for name, p in d["phases"].items()} == dict.fromkeys(PHASES, "ok")
    assert (out / "steps.txt").read_text().split()[:2] == ["harness", "0"]
    sd15 = d["phases"]["sd15"]
    _timed(sd15, SD15_VARIANTS)
    assert sd15["peer"] == "diffusers_compiled" and sd15["compile_options"]["fullgraph"] == "True"
    assert set(sd15["speedup_vs_peer"]) == SD15_VARIANTS - {"diffusers_compiled"}
    assert set(sd15["speedup_vs_diffusers"]) == SD15_VARIANTS - {"diffusers"}
    # fp32: the engine equals diffusers; on a CPU compiled and uncompiled run the same eager programs
    parity = sd15["parity"]
    assert parity["compiled_vs_uncompiled_full_max_abs"] == 0 and parity["compiled_vs_uncompiled_clockwork_max_abs"] == 0
    assert parity["engine_vs_diffusers_max_abs"] < 1e-4 < parity["latents_max_abs"]
    assert parity["compiled_engine_vs_diffusers_max_abs"] < 1e-4
    assert parity["diffusers_compiled_vs_diffusers_max_abs"] < 1e-4
    assert sd15["schedules"]["clockwork_reuse_uncompiled"][-2:] == ["clockwork.full+reuse", "clockwork.adaptor+reuse"]
    assert sd15["reuse"]["layers_cached"] > 0 and sd15["reuse"]["layers_over_cap"] == 0
    assert sd15["adaptor_parameters"] > 0 and sd15["attention_processor"] == "AttnProcessor2_0"
    overhead = sd15["overhead"]
    assert overhead["full_step_replay_ms"] > 0 and overhead["full_step_replay_ms"] == overhead["replay_ms"][
        "engine_full:full"]
    assert set(overhead["replay_ms"]) == {"engine_full:full", "engine_full_uncompiled:full",
                                          "clockwork_identity:clockwork.adaptor",
                                          "clockwork_identity_uncompiled:clockwork.adaptor"}
    assert all(ms > 0 for ms in overhead["replay_ms"].values()) and overhead["timings"]["engine_full"]["median_s"] > 0
    batch4 = d["phases"]["batch4"]
    _timed(batch4, {"diffusers", "diffusers_compiled", "engine_full", "clockwork_identity"})
    assert batch4["batch"] == 4 and set(batch4["speedup_vs_peer"]) == {"diffusers", "engine_full", "clockwork_identity"}
    assert all(batch4["images_per_s"][n] == pytest.approx(4 / t["median_s"]) for n, t in batch4["timings"].items())
    cold = d["phases"]["cold_start"]
    assert "compile_command" not in cold and "skipped" in cold["with_artifacts"]  # clockwork compile: GPU only
    served = cold["without_artifacts"]
    assert 0 < served["listening_s"] <= served["first_answer_s"] and served["second_request_s"] > 0
    assert served["png_bytes"] > 0
    sdxl = d["phases"]["sdxl"]
    _timed(sdxl, {"diffusers", "diffusers_compiled", "engine_full", "clockwork_identity"})
    assert set(sdxl["speedup_vs_peer"]) == {"diffusers", "engine_full", "clockwork_identity"}
    assert sdxl["parity"]["compiled_engine_vs_diffusers_max_abs"] < 1e-4 < sdxl["parity"]["latents_max_abs"]
    sd35 = d["phases"]["sd35"]
    _timed(sd35, {"diffusers", "engine_full", "clockwork_identity", "diffusers_taylorseer_i2", "diffusers_pab_2",
                  "diffusers_faster_2", "diffusers_mag_0.06"})
    assert len(sd35["mag_ratios"]) == 8 and sd35["schedule_clockwork"][:2] == ["clockwork.full", "clockwork.adaptor"]
    assert sd35["parity"]["compiled_engine_vs_diffusers_max_abs"] < 1e-4 * max(1.0, sd35["parity"]["latents_max_abs"])
    flux = d["phases"]["flux"]
    _timed(flux, {"diffusers", "engine_full", "clockwork_identity", "diffusers_first_block_0.08",
                  "diffusers_taylorseer_i2"})
    assert flux["parity"]["compiled_engine_vs_diffusers_max_abs"] < 1e-4 * max(1.0, flux["parity"]["latents_max_abs"])
    serving = d["phases"]["serving"]
    assert serving["service_s"] > 0 and serving["offered_rate_per_s"] > 0
    for policy in ("off", "step"):
        r = serving[policy]
        assert r["answered"] == d["settings"]["serve_requests"] and r["errors"] == []
        assert r["throughput_per_s"] > 0 and 0 < r["p50_s"] <= r["p99_s"]
    options = d["phases"]["options"]
    assert "default" in options["timings"] and set(options["speedup_vs_default"]) == set(options["timings"]) - {
        "default"}
    assert not set(options["skipped"]) & set(options["timings"])
    layouts = options["channels_last"]
    assert {"default", "channels_last"} <= set(layouts["timings"])
    assert set(layouts["speedup_vs_default"]) == set(layouts["timings"]) - {"default"}
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
    assert "test_x" in text and "Profile of one clockwork" in text
    for heading in ("### SD v1.5", "### Batch 4", "### Cold start", "### SDXL", "### Serving", "### Inductor option"):
        assert heading in text
    sd15 = d["phases"]["sd15"]
    for name, t in sd15["timings"].items():
        compiled = make_results._compiled(name, sd15)
        assert f"| {make_results.GPU_VARIANTS[name]} | {compiled} | {t['median_s'] * 1e3:.1f} |" in text
    options = d["phases"]["options"]
    for name, t in options["timings"].items():
        assert f"| `{name}` | {t['median_s'] * 1e3:.1f} |" in text
    for name in options["skipped"]:
        assert f"| `{name}` | skipped: " in text
    for name in set(options["channels_last"]["timings"]) - {"default"}:
        assert f"| {make_results.GPU_LAYOUTS[name]} (against the second run's `default`, " in text
    # a phase that failed or was skipped: one line with its reason; a phase the renderer does not know: nothing
    failed = {**gpu, "phases": {**d["phases"], "sdxl": {"status": "skipped", "reason": "12 s left, needs 90"},
                                "serving": {"status": "error", "error": "RuntimeError: boom\nmore", "traceback": "..."},
                                "a_new_phase": {"status": "ok", "whatever": 1}}}
    text = _section_with(make_results, failed)
    assert "Phase sdxl: skipped (12 s left, needs 90)." in text and "Phase serving: error (RuntimeError: boom more)." \
        in text and "### SDXL" not in text and "a_new_phase" not in text


def test_results_section_renders_what_a_gpu_run_records(dry_run):
    """What a GPU run records: pytest's multi-line failure messages, compile options as strings,
    each profiled step listed twice (the second at 0 ms), artifacts written by clockwork compile;
    the peer (diffusers + torch.compile) sits in the SD v1.5 table beside the engine's rows, every
    row with its speed-up against it. And the earlier check's JSON still renders."""
    import make_results

    _, d = dry_run
    sd15 = {**d["phases"]["sd15"], "compile_options": {"mode": "reduce-overhead", "fullgraph": "True"},
            "overhead": {**d["phases"]["sd15"]["overhead"], "replay_ms": {
                **d["phases"]["sd15"]["overhead"]["replay_ms"], "engine_full:full": 7.5,
                "engine_full_uncompiled:full": 11.9}}}
    steps = [e for s in d["phases"]["profile"]["steps"] for e in (s, {**s, "ms": 0.0})]
    cold = {**d["phases"]["cold_start"], "compile_command": {"seconds": 61.0, "artifact_bytes": 25_000_000,
                                                             "entries": {"inductor_artifacts": 12}},
            "with_artifacts": {"listening_s": 9.5, "first_answer_s": 12.25, "second_request_s": 0.2, "png_bytes": 9}}
    gpu = {**d, "dry_run": False, "gpu_tests": {
        "tests": 2, "failures": 1, "errors": 0, "skipped": 0, "passed": 1, "seconds": 9.0,
        "failed": [{"test": "tests.test_gpu_cuda::test_x",
                    "message": "AssertionError: not close!\n\nGreatest absolute difference: 0.0012"}]},
        "phases": {**d["phases"], "sd15": sd15, "cold_start": cold,
                   "profile": {**d["phases"]["profile"], "steps": steps}}}
    text = _section_with(make_results, gpu)
    assert "- failed: `tests.test_gpu_cuda::test_x`: AssertionError: not close! Greatest absolute difference: " \
           "0.0012\n" in text
    assert 'torch.compile(mode="reduce-overhead", fullgraph=True)' in text and "'fullgraph'" not in text
    section = text.split("### SD v1.5")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert "vs diffusers + compile (paired)" in rows[0] and "first call s" in rows[0]
    rows = rows[1:]  # the header row off
    assert rows[0].startswith("| stock diffusers (SDPA) | no |")
    peer = sd15["timings"]["diffusers_compiled"]
    assert rows[1].startswith(f"| {make_results.GPU_VARIANTS['diffusers_compiled']} | torch.compile(") and \
        f" | {peer['median_s'] * 1e3:.1f} | " in rows[1] and " | 1.00x | " in rows[1]
    for name, row in zip(sd15["timings"], rows, strict=True):  # a row per variant, in the order timed
        assert row.startswith(f"| {make_results.GPU_VARIANTS[name]} | ")
        if name != "diffusers_compiled":
            assert f" | {sd15['speedup_vs_peer'][name]['paired']:.2f}x | " in row
    assert sum(" | **yes** (inductor, CUDA graphs) | " in r for r in rows) == 3  # engine_full, clockwork x2
    assert sum(" | no (CUDA graphs) | " in r for r in rows) == 3  # the _uncompiled variants
    assert "full step 7.50 ms compiled vs 11.90 ms uncompiled (target: one full step <= 8 ms, met)" in text
    assert "compiled vs uncompiled step programs, full 0.00e+00" in text
    cold_text = text.split("### Cold start")[1].split("###")[0]
    assert "61.0 s, writing 25.0 MB of artifacts (12 inductor_artifacts)" in cold_text
    assert "| with the artifacts | 9.50 | 12.25 |" in cold_text and "| without them |" in cold_text
    profile = text.split("### Profile of one clockwork request")[1]
    for s in d["phases"]["profile"]["steps"]:
        assert profile.count(f"{s['step']} {s['kind']} ") == 1
    # the earlier check's format (benches/results/gpu_check.json before the compiled backend ran)
    old_sd15 = {k: v for k, v in d["phases"]["sd15"].items() if k not in ("speedup_vs_peer", "first_call_s", "peer")}
    old_sd15["timings"] = {"engine_full_eager" if n == "engine_full_uncompiled" else n: t
                           for n, t in old_sd15["timings"].items() if n != "diffusers_compiled"}
    old_sd15["parity"] = {"graphs_vs_eager_max_abs": 0.0, "engine_vs_diffusers_max_abs": 0.08, "latents_max_abs": 34.2}
    old_sd15["overhead"] = {"timings": {n: d["phases"]["sd15"]["timings"]["diffusers"] for n in ("diffusers",
                                                                                                  "engine_full")},
                            "full_step_replay_ms": 11.9, "unet_forward_eager_ms": 26.9,
                            "engine_ms_per_step_beyond_replays": 0.9, "diffusers_ms_per_step_beyond_unet": 3.5}
    old_compile = {"status": "ok", "compile_options": {"mode": "reduce-overhead", "fullgraph": "True"},
                   "compile_first_call_s": 45.0, "timings": {n: sd15["timings"][n] for n in (
                       "diffusers", "diffusers_compiled", "engine_full")},
                   "speedup_vs_diffusers": {n: sd15["speedup_vs_diffusers"][n] for n in (
                       "diffusers_compiled", "engine_full")}}
    old = {**gpu, "phases": {"sd15": old_sd15, "profile": gpu["phases"]["profile"], "sdxl": d["phases"]["sdxl"],
                             "sd15_compile": old_compile}}
    text = _section_with(make_results, old)
    assert "| engine, full, eager step programs | no (eager) |" in text and "**yes**" not in text
    assert "CUDA graphs vs eager programs 0.00e+00" in text and "diffusers' eager UNet forward 26.90 ms" in text
    assert "### torch.compile on diffusers' UNet (mode=\"reduce-overhead\", fullgraph=True; first call 45 s)" in text


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
