"""Guidance and progressive distillation on the demo pipeline vs the teacher, one run.

    python benches/bench_distill.py [--singles 100 --pairs 50] [--guidance 3]

Reference: stock diffusers StableDiffusionPipeline on the teacher at 8 DPM++ steps with CFG
(two evaluations per step); every variant runs at the same guidance (default: the demo's
recommended scale; students take it as their w conditioning). Variants: the engine on the
teacher (full; clockwork); every student under the demo's students/ (guidance-distilled: one evaluation per step;
progressive: fewer DDIM steps), full and, where the student ships its own
clockwork_adaptor/ (fitted at its operating point), clockwork; for students that ship none,
clockwork with the adaptor fitted for them in benches/adaptors/<preset>/ (+clockwork_unshipped:
fitted, measured, not shipped); plus attention reuse in the last step where it has more than 2
steps. Writes benches/results/quality_distill.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import teacher_and_students, write  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the demo's recommended one)")
    ap.add_argument("--out", default="quality_distill.json")
    args = ap.parse_args()

    from clockwork_engine.demo.pipeline import load as load_pipe
    from clockwork_engine.eval.baselines import DiffusersBaseline
    from clockwork_engine.eval.compare import compare

    engines = teacher_and_students(reuse=True, unshipped_adaptors=True)
    teacher = engines["teacher_8_cfg"][0]
    guidance = teacher.config.guidance_scale if args.guidance is None else args.guidance
    variants = {"diffusers_teacher_8_cfg": (DiffusersBaseline(load_pipe()), dict(steps=8)), **engines}
    result = compare(variants, args.singles, args.pairs, guidance=guidance, latency_repeats=5,
                     reference="diffusers_teacher_8_cfg")
    write(args.out, {"command": "python " + " ".join(sys.argv), **result})


if __name__ == "__main__":
    main()
