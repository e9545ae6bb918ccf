"""The inductor backend: every engine variant of bench_distill, eager and compiled, timed in
one run against stock diffusers (8 DPM++ steps with CFG on the teacher).

    python benches/bench_inductor.py [--repeats 20] [--check 8]

Latency: median of interleaved repeats, one image per call, a new prompt per call (text
encoding timed). The first call of a compiled variant compiles its step programs (tens of
seconds each); it is the warm-up, not timed. Numerics: for `--check` held-out captions the
compiled variant's image against the eager variant's (same seed): the largest difference
(images in [0, 1]) and whether any 8-bit pixel differs. Alignment is not re-scored here: the
eager variants' scores are in quality_distill.json. Writes benches/results/inductor.json.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, teacher_and_students, write  # noqa: E402


def numerics(eager, compiled, kw, captions) -> dict:
    diffs = []
    for i, caption in enumerate(captions):  # batch 1: the timed shape, so no extra compilation
        a = eager.generate(caption, seed=i, output="pt", **kw)
        b = compiled.generate(caption, seed=i, output="pt", **kw)
        diffs.append(((a - b).abs().max().item(), bool(((a * 255).round() != (b * 255).round()).any())))
    return {"images": len(captions), "max_abs_diff": max(d for d, _ in diffs),
            "images_with_an_8bit_pixel_changed": sum(c for _, c in diffs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--check", type=int, default=8, help="captions for the compiled-vs-eager image check")
    args = ap.parse_args()

    from clockwork_engine.datasets import shapes
    from clockwork_engine.demo.pipeline import load as load_pipe
    from clockwork_engine.eval.baselines import DiffusersBaseline
    from clockwork_engine.eval.compare import latency, paired_speedup

    eager = teacher_and_students()
    guidance = eager["teacher_8_cfg"][0].config.guidance_scale  # the demo's recommended scale
    reference = "diffusers_teacher_8_cfg"
    timed = {reference: (DiffusersBaseline(load_pipe()), dict(steps=8))}
    compiled = {}
    for name, (engine, kw) in eager.items():
        compiled[name] = (engine.with_config(backend="inductor"), kw)
        timed[name] = (engine, kw)
        timed[name + "@inductor"] = compiled[name]
    t = latency({k: (e, {**kw, "guidance_scale": guidance}) for k, (e, kw) in timed.items()}, args.repeats)
    ref = t[reference]["median_s"]  # speed-ups: ratios of medians, and paired per round
    captions = [s.caption for s in shapes.split_scenes("eval")[: args.check]]
    checks = {name: numerics(eager[name][0], c, {**kw, "guidance_scale": guidance}, captions)
              for name, (c, kw) in compiled.items()}
    result = {name: {"latency_s": v["median_s"], "latency_p25_s": v["p25_s"], "latency_p75_s": v["p75_s"],
                     "speedup_vs_diffusers": ref / v["median_s"],
                     "paired_speedup_vs_diffusers": paired_speedup(t, reference, name)} for name, v in t.items()}
    for name in eager:
        result[name + "@inductor"]["over_eager"] = t[name]["median_s"] / t[name + "@inductor"]["median_s"]
        result[name + "@inductor"]["paired_over_eager"] = paired_speedup(t, name, name + "@inductor")
        result[name + "@inductor"]["numerics_vs_eager"] = checks[name]
    for name, r in result.items():
        print(f"{name:40s} {r['latency_s'] * 1e3:7.1f} ms  {r['speedup_vs_diffusers']:.2f}x", r.get("over_eager", ""))
    write("inductor.json", {"command": "python " + " ".join(sys.argv), "guidance": guidance, "batch": 1,
                            "repeats": args.repeats, "prompts": "fresh", "reference": reference,
                            "variants": result, "machine": machine(), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
