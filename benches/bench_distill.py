"""Guidance and progressive distillation on the demo pipeline vs the teacher, one run.

    python benches/bench_distill.py [--singles 100 --pairs 50]

Reference: the teacher at 8 DPM++ steps with CFG 5 (two evaluations per step), the stock
setting. Variants: the teacher with clockwork; every student under the demo's students/
(guidance-distilled: one evaluation per step; progressive: fewer DDIM steps), each with
attention reuse in its last step where it has more than 2 steps. Writes
benches/results/quality_distill.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    args = ap.parse_args()

    from clockwork_engine import Engine
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.eval.compare import compare

    teacher = Engine.from_pretrained("demo", config="full")
    variants = {"teacher_8_cfg": (teacher, dict(steps=8, mode="full")),
                "teacher_8_clockwork": (Engine.from_pretrained("demo"), dict(steps=8, mode="clockwork"))}
    students = os.path.join(DEMO_DIR, "students")
    for name in sorted(os.listdir(students)) if os.path.isdir(students) else []:
        student = Engine.from_pretrained("demo", preset=name)
        n = student.config.steps
        variants[f"{name}_{n}_steps"] = (student, dict(steps=n, mode=student.config.mode))
        if n > 2:
            reuse = student.with_config(attention_reuse=(n - 1,))
            variants[f"{name}_{n}_steps+reuse"] = (reuse, dict(steps=n, mode=student.config.mode))
    result = compare(variants, args.singles, args.pairs, latency_repeats=5)
    write("quality_distill.json", {"command": "python " + " ".join(sys.argv), **result})


if __name__ == "__main__":
    main()
