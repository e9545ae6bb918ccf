"""The comparison a user makes: this engine vs what they would otherwise run, on the demo
pipeline, same machine, one run.

    python benches/bench_e2e.py [--singles 100 --pairs 50 --steps 4 8 20]

Per step count: stock diffusers StableDiffusionPipeline (the reference for PSNR/SSIM and
speed-up), DeepCache (PyPI package, on the same pipeline: interval 2 and 3, branch 0),
the engine with everything off, identity adaptor, clockwork, clockwork + attention reuse
(late: last quarter of the steps); at 8 steps also the distilled students that exist in
clockwork_engine/demo/weights/students/. Writes benches/results/e2e_<steps>.json and a Pareto
plot benches/results/pareto_<steps>.png (speed-up vs prompt alignment).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write  # noqa: E402


def pareto_plot(result: dict, path: str, steps: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in result["variants"].items():
        ax.scatter(v["latency_ratio"], 100 * v["single_colour_and_shape"], s=30)
        ax.annotate(name, (v["latency_ratio"], 100 * v["single_colour_and_shape"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"speed-up vs stock diffusers at {steps} steps (CPU, same run)")
    ax.set_ylabel("held-out single-shape prompts: colour+shape right (%)")
    ax.set_title(f"demo pipeline, {steps} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 20])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.demo.pipeline import load as load_pipe
    from clockwork_engine.engine import ADAPTOR_FOLDER
    from clockwork_engine.eval.baselines import DeepCacheBaseline, DiffusersBaseline
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.reuse_search import late

    pipe = load_pipe()
    base = Engine.from_pipeline(pipe, config=EngineConfig(mode="full", attention_reuse=()))
    learned = os.path.join(DEMO_DIR, ADAPTOR_FOLDER)
    students = os.path.join(DEMO_DIR, "students")
    for n in args.steps:
        kw = dict(steps=n, mode="clockwork")
        variants = {
            "diffusers": (DiffusersBaseline(pipe), dict(steps=n)),
            "deepcache_i2": (DeepCacheBaseline(pipe, 2), dict(steps=n)),
            "deepcache_i3": (DeepCacheBaseline(pipe, 3), dict(steps=n)),
            "engine_full": (base, dict(steps=n, mode="full")),
            "identity_adaptor": (base.with_config(mode="clockwork", adaptor="identity"), kw),
            "clockwork": (base.with_config(mode="clockwork", adaptor=learned), kw),
            "clockwork+reuse": (base.with_config(mode="clockwork", adaptor=learned,
                                             attention_reuse=late(max(1, n // 4), n)), kw),
        }
        if n == 8 and os.path.isdir(students):
            for name in sorted(os.listdir(students)):
                student = Engine.from_pretrained("demo", preset=name)
                s_steps = student.config.steps
                variants[f"student_{name}"] = (student, dict(steps=s_steps, mode=student.config.mode))
        result = compare(variants, args.singles, args.pairs, latency_repeats=args.repeats, reference="diffusers")
        write(f"e2e_{n}.json", {"command": "python " + " ".join(sys.argv), "steps": n, **result})
        pareto_plot(result, os.path.join(RESULTS, f"pareto_{n}.png"), n)


if __name__ == "__main__":
    main()
