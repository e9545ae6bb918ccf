"""The GPU check's harness: device facts, the GPU tests' outcome and the measured phases,
written to OUT/gpu_check.json after every phase (a run stopped at its limit keeps what it had).

    python benches/gpu/harness.py --out DIR --budget SECONDS [--phases sd15,profile,...]
    python benches/gpu/harness.py --out DIR --dry-run      # CPU, tiny models, same code path

benches/gpu/check.sh runs it after the wheels, the CUDA build and `pytest -m gpu`; see
benches/gpu/README.md. A phase starts only if the budget leaves it its stated need; its
timing loops are sized to the time left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import phases  # noqa: E402
import torch  # noqa: E402
from timing import Deadline  # noqa: E402

# (name, function, seconds it needs at least to start). Ordered by what matters most; the later
# phases reuse the sd15 phase's pipeline and engines (and build them when a resumed run starts
# after it). Compiling is the cost that sizes them: on an H200, the first call of a compiled
# SD v1.5 program set took 32 s (full) and 79 s (clockwork) in a probe, diffusers' 45 s.
PHASES = (("sd15", phases.sd15, 240), ("profile", phases.profile, 20), ("batch4", phases.batch4, 150),
          ("cold_start", phases.cold_start, 120), ("sdxl", phases.sdxl, 240), ("sd35", phases.sd35, 180),
          ("flux", phases.flux, 180), ("serving", phases.serving, 60),
          ("options", phases.options, 150))


@dataclass(frozen=True)
class Settings:
    device: str
    dtype_name: str
    tiny: bool
    sd15_size: int
    sdxl_size: int
    warmup: int  # calls per variant before timing (CUDA graphs are captured in the first)
    min_repeats: int
    repeats: int  # interleaved rounds at most
    sdxl_repeats: int
    sd15_timing_s: float  # seconds the timed rounds of each phase may take
    overhead_timing_s: float
    batch_timing_s: float
    sdxl_timing_s: float
    options_timing_s: float
    compile_warmup: int  # calls before timing where something compiles (reduce-overhead records on the 2nd-3rd)
    cold_compile_need_s: float  # seconds left that serving without artifacts (compiling at start) needs
    serve_requests: int
    serve_load: float  # offered rate / the serialized engine's capacity
    compile_options: tuple = field(default=())  # diffusers' torch.compile, first that works
    skip_options: tuple = field(default=())  # inductor option sets the options phase leaves out

    @property
    def dtype(self):
        return getattr(torch, self.dtype_name)


GPU = Settings("cuda", "float16", False, 512, 1024, warmup=2, min_repeats=3, repeats=10, sdxl_repeats=6,
               sd15_timing_s=30, overhead_timing_s=5, batch_timing_s=15, sdxl_timing_s=20, options_timing_s=10,
               compile_warmup=3, cold_compile_need_s=150, serve_requests=48, serve_load=2.0,
               compile_options=({"mode": "reduce-overhead", "fullgraph": True},), skip_options=("max-autotune",))
# The same phases on a CPU at test sizes; torch.compile only traces (backend "eager": no codegen).
DRY = Settings("cpu", "float32", True, 64, 64, warmup=1, min_repeats=1, repeats=1, sdxl_repeats=1,
               sd15_timing_s=1, overhead_timing_s=1, batch_timing_s=1, sdxl_timing_s=1, options_timing_s=1,
               compile_warmup=1, cold_compile_need_s=0, serve_requests=4, serve_load=2.0,
               compile_options=({"backend": "eager", "fullgraph": True},), skip_options=("max-autotune",))


class Context:
    def __init__(self, settings: Settings, out: str, deadline: Deadline, save):
        self.settings, self.out, self.deadline, self.save = settings, out, deadline, save
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.sd15 = None  # the SD v1.5 pipeline and engines, shared by the later phases

    def quiet(self):
        """Wait for the GPU tests that check.sh runs beside the first phase (OUT/tests.pid) to
        end: nothing is timed while they run."""
        path = os.path.join(self.out, "tests.pid")
        if not os.path.exists(path):
            return
        pid = int(open(path).read())
        while True:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return
            time.sleep(0.5)

    def budget(self, seconds: float) -> float:
        """Timing seconds for a loop: its share, never more than a third of what is left."""
        return max(0.0, min(seconds, self.deadline.left() / 3))


def device_facts() -> dict:
    import diffusers
    import transformers

    from clockwork_engine import ops

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
             "transformers": transformers.__version__, "python": platform.python_version(),
             "cpu_threads": torch.get_num_threads(), "extension": ops.extension_available()}
    if ops.extension_available():
        from clockwork_engine import _C

        facts["extension_built_with_cuda"] = bool(_C.built_with_cuda)
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count)
    return facts


def gpu_tests(out: str) -> dict | None:
    """pytest's JUnit XML (check.sh writes it) as counts and the failures' messages."""
    path = os.path.join(out, "pytest_gpu.xml")
    if not os.path.exists(path):
        return None
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    failed = []
    for case in suite.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "")[:500]})
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "seconds": float(suite.get("time", 0)), "failed": failed}


def setup_steps(out: str) -> list[dict]:
    """check.sh's steps.txt: one 'name rc seconds' line per step it ran."""
    path = os.path.join(out, "steps.txt")
    if not os.path.exists(path):
        return []
    rows = [line.split() for line in open(path) if line.strip()]
    return [{"step": name, "rc": int(rc), "seconds": int(s)} for name, rc, s in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and the trace")
    ap.add_argument("--budget", type=float, default=300, help="seconds this harness may take")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models (what CI runs)")
    ap.add_argument("--phases", default=",".join(name for name, _, _ in PHASES))
    ap.add_argument("--resume", action="store_true",
                    help="keep OUT/gpu_check.json's phases (after a crash: the one running is marked crashed) "
                         "and run the rest")
    args = ap.parse_args(argv)
    wanted = args.phases.split(",")
    unknown = set(wanted) - {name for name, _, _ in PHASES}
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}")
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    settings = DRY if args.dry_run else GPU
    if args.dry_run:
        torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    report = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None else argv,
              "dry_run": args.dry_run, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "budget_s": args.budget, "settings": asdict(settings), "device": device_facts(),
              "setup": setup_steps(args.out), "gpu_tests": gpu_tests(args.out), "phases": {}}
    path = os.path.join(args.out, "gpu_check.json")
    if args.resume and os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        report.update(phases=previous["phases"], resumed_after={"started_utc": previous["started_utc"],
                                                                "elapsed_s": previous.get("elapsed_s")})
        for p in report["phases"].values():
            if p["status"] == "running":
                p.update(status="crashed", reason="the process died in this phase; the resumed run went on")

    def save():
        report["elapsed_s"] = round(time.time() - started, 1)
        report.update(setup=setup_steps(args.out), gpu_tests=gpu_tests(args.out))  # the tests end during a phase
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(path + ".tmp", path)  # never a half-written file if the run is killed

    deadline = Deadline(args.budget)
    ctx = Context(settings, args.out, deadline, save)
    for name, run, need_s in PHASES:
        if name not in wanted:
            continue
        if name in report["phases"]:  # done (or crashed) before a resumed run
            continue
        result = report["phases"][name] = {}
        if deadline.left() < need_s and not args.dry_run:
            result.update(status="skipped", reason=f"{deadline.left():.0f} s left, needs {need_s}")
        else:
            t0 = time.time()
            print(f"== phase {name} ({deadline.left():.0f} s left)", flush=True)
            if name != "sd15":  # sd15 waits for the GPU tests after its warm-up; the rest before they start
                ctx.quiet()
            result["status"] = "running"  # what a resumed run finds if this process dies here
            save()
            try:
                run(ctx, result)
                result["status"] = "ok"
            except Exception as e:
                result.update(status="error", error=f"{type(e).__name__}: {e}"[:2000],
                              traceback=traceback.format_exc()[-4000:])
                print(result["traceback"], file=sys.stderr, flush=True)
            result["seconds"] = round(time.time() - t0, 1)
        save()
        print(f"== phase {name}: {result['status']}", flush=True)
    save()
    shutil.rmtree(ctx.tmp, ignore_errors=True)  # the tokenizers and the adaptor folder
    print(f"wrote {path}")
    return 0 if all(p["status"] == "ok" for p in report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
