"""clockwork profile: a torch.profiler trace of one generate() and a per-step table.

    clockwork profile "a red circle" --trace trace.json [--steps 8 --mode clockwork]

The trace (Chrome/Perfetto JSON: open in ui.perfetto.dev or chrome://tracing) has a range
per step named clockwork.step.<i>.<kind>, inside it clockwork.model (the denoiser), and
clockwork.sample around the loop. On a GPU the same names are NVTX ranges, so
`nsys profile -t cuda,nvtx clockwork generate ...` shows them too.
Engine overhead = time in clockwork.sample that is not inside clockwork.model.
With --backend inductor the steps run compiled programs: the step ranges remain, but no
Python range exists inside a program, so there is no clockwork.model and no overhead figure.
"""

from __future__ import annotations

import argparse
import json
import re

import torch

STEP = re.compile(r"clockwork\.step\.(\d+)\.(.+)")


def profile(engine, prompt: str, trace: str, **kw) -> dict:
    engine.generate(prompt, **kw)  # warm-up: builds the step programs for this key
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        engine.generate(prompt, **kw)
    prof.export_chrome_trace(trace)
    steps, model_us, sample_us = [], 0.0, 0.0
    for ev in prof.events():
        m = STEP.fullmatch(ev.name)
        if m:
            steps.append({"step": int(m.group(1)), "kind": m.group(2), "ms": ev.cpu_time_total / 1e3})
        elif ev.name == "clockwork.model":
            model_us += ev.cpu_time_total
        elif ev.name == "clockwork.sample":
            sample_us += ev.cpu_time_total
    steps.sort(key=lambda s: s["step"])
    return {"trace": trace, "steps": steps, "sample_ms": sample_us / 1e3, "model_ms": model_us / 1e3 or None,
            "overhead_fraction": 1 - model_us / sample_us if sample_us and model_us else None}


def build_parser(ap):
    ap.add_argument("prompt")
    ap.add_argument("--trace", default="clockwork_trace.json", help="Chrome/Perfetto trace output path")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--mode", default=None, help="full or clockwork (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument("--backend", default=None, choices=("cpu", "cuda", "inductor"),
                    help="step programs (default: the engine's, 'auto'); inductor compiles them before profiling")
    return ap


def run(args) -> dict:
    from clockwork_engine import Engine

    engine = Engine.from_pretrained(args.model)
    if args.backend:
        engine = engine.with_config(backend=args.backend)
    result = profile(engine, args.prompt, args.trace, steps=args.steps, seed=args.seed, mode=args.mode)
    print(f"{'step':>4}  {'kind':<20} {'ms':>8}")
    for s in result["steps"]:
        print(f"{s['step']:>4}  {s['kind']:<20} {s['ms']:>8.2f}")
    if result["overhead_fraction"] is None:
        split = "no model range inside compiled programs"
    else:
        split = f"model {result['model_ms']:.1f} ms, engine overhead {100 * result['overhead_fraction']:.2f}%"
    print(f"sampling {result['sample_ms']:.1f} ms, {split}; trace: {args.trace}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    ap = build_parser(argparse.ArgumentParser(prog="clockwork profile", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(ap.parse_args(argv))
