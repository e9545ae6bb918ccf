"""Engine overhead per step: everything in generate(output="latent") that is not the model.

    python benches/bench_overhead.py [--repeats 20]

The denoisers are wrapped with timers (perf_counter around the model call: the UNet, or
H_in/L-or-adaptor/H_out); the rest of the request (validation, cached prompt lookup, noise,
CFG concat/split, solver update, static-buffer copies, the loop, the NaN check) is the
engine's overhead. Demo pipeline, 8 steps, CFG, batch 1, both modes. Writes
benches/results/overhead_demo.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    from clockwork_engine import Engine

    engine = Engine.from_pretrained("demo")
    model_time = [0.0]

    def timed(fn):
        def wrapper(*a):
            start = time.perf_counter()
            out = fn(*a)
            model_time[0] += time.perf_counter() - start
            return out
        return wrapper

    point = engine.operating_point(args.steps)  # clockwork's denoisers at these steps
    for denoisers in (engine.denoisers, point.denoisers):
        denoisers.update({k: timed(fn) for k, fn in denoisers.items()})
    prompt = "a small red circle in the top left"
    result = {}
    for mode in ("full", "clockwork"):
        engine.generate(prompt, steps=args.steps, seed=0, mode=mode, output="latent")  # warm-up, builds programs
        fractions, totals = [], []
        for r in range(args.repeats):
            model_time[0] = 0.0
            start = time.perf_counter()
            engine.generate(prompt, steps=args.steps, seed=r, mode=mode, output="latent")
            total = time.perf_counter() - start
            fractions.append(1 - model_time[0] / total)
            totals.append(total)
        result[mode] = {"overhead_fraction_median": statistics.median(fractions),
                        "overhead_ms_per_step_median": statistics.median(
                            f * t / args.steps * 1e3 for f, t in zip(fractions, totals)),
                        "request_ms_median": statistics.median(totals) * 1e3}
    write("overhead_demo.json", {"command": "python " + " ".join(sys.argv), "steps": args.steps,
                                 "overhead_fraction": max(v["overhead_fraction_median"] for v in result.values()),
                                 "sample_ms": result["full"]["request_ms_median"], "modes": result,
                                 "machine": machine()})


if __name__ == "__main__":
    main()
