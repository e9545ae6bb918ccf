"""Clockwork quality and latency on the demo pipeline (held-out captions, same noise).

    python benches/bench_clockwork_quality.py [--singles 200 --pairs 100] [--ablations]
    # the paper's other ablations, each with its own adaptor (trained by `clockwork distill`):
    python benches/bench_clockwork_quality.py --steps 4 --adaptor runs/adaptor_4 \\
        --extra clockwork_noised_training=runs/adaptor_4_noised --out quality_clockwork_4.json
    python benches/bench_clockwork_quality.py --scheduler ddim-trailing --adaptor runs/adaptor_ddim \\
        --out quality_clockwork_ddim.json

Variants: full; clockwork (--adaptor: default the committed one); identity adaptor; every
--extra NAME=ADAPTOR_FOLDER[@STEPS] (at 8 DPM++ steps also the adaptor without r_out(t+1),
runs/adaptor_no_rout, if trained). Each adaptor runs on the clock its folder records, or on
the 0-based steps after @ (e.g. runs/adaptor@4,5,6,7). With
--ablations: the adaptor on 0-based steps {4,5,6,7} and {2,3,4,5} (the paper's {5..8} and
{3..6}) and the noised-trained adaptor (runs/adaptor_noised).
--scheduler NAME runs every variant with that scheduler (clockwork generate's names, e.g.
ddim-trailing, euler-a) instead of the model's DPM++.
Writes benches/results/<--out>.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--adaptor", default=None, help="the adaptor of the 'clockwork' variant (default: committed)")
    ap.add_argument("--extra", action="append", default=None, metavar="NAME=FOLDER[@STEPS]",
                    help="another adaptor to compare (repeatable)")
    ap.add_argument("--scheduler", default="model", help="'model' (the demo's DPM++) or a scheduler name")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG scale of every variant (default: the demo's recommended one, its clockwork_engine.json)")
    ap.add_argument("--out", default="quality_clockwork.json")
    args = ap.parse_args()

    from clockwork_engine import Engine
    from clockwork_engine.clockwork.adaptors import read_meta
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.engine import ADAPTOR_FOLDER
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.sampler.noise_schedulers import describe

    def clockwork(folder, **changes):
        """The engine running the adaptor in folder, on the clock it was fitted for (its metadata)."""
        clock = read_meta(folder)["clock"]
        steps = tuple(clock["adaptor_steps"]) if clock["adaptor_steps"] else None
        return base.with_config(**{"mode": "clockwork", "adaptor": folder, "clock_every": clock["every"],
                                   "adaptor_steps": steps, **changes})

    base = Engine.from_pretrained("demo", config="full")
    if args.scheduler != "model":
        base = base.with_config(scheduler=args.scheduler)
    learned = args.adaptor or os.path.join(DEMO_DIR, ADAPTOR_FOLDER)
    kw = dict(steps=args.steps, mode="clockwork")
    variants = {"full": (base, dict(steps=args.steps, mode="full")),
                "clockwork": (clockwork(learned), kw),
                "identity_adaptor": (base.with_config(mode="clockwork", adaptor="identity"), kw)}
    # The no-r_out ablation adaptor was fitted at 8 DPM++ steps: only that operating point.
    same_point = args.steps == 8 and args.scheduler == "model"
    extra = {"adaptor_without_r_out": "runs/adaptor_no_rout"} if same_point else {}
    if args.ablations:
        for name, steps in (("clockwork_steps_4567", (4, 5, 6, 7)), ("clockwork_steps_2345", (2, 3, 4, 5))):
            variants[name] = (clockwork(learned, adaptor_steps=steps), kw)
        extra["clockwork_noised_training"] = "runs/adaptor_noised"
    extra |= dict(e.split("=", 1) for e in args.extra or [])
    for name, spec in extra.items():
        path, _, steps = spec.partition("@")
        if os.path.isdir(path):
            changes = {"adaptor_steps": tuple(int(i) for i in steps.split(","))} if steps else {}
            variants[name] = (clockwork(path, **changes), kw)
        else:
            print(f"skipping {name}: {path} does not exist")
    guidance = base.config.guidance_scale if args.guidance is None else args.guidance
    result = compare(variants, args.singles, args.pairs, guidance=guidance)
    write(args.out, {"command": "python " + " ".join(sys.argv), "steps": args.steps,
                     "scheduler": describe(base.scheduler), **result})


if __name__ == "__main__":
    main()
