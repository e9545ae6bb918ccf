"""Prompt alignment of the demo model (full mode) over guidance scales and step counts: the
sweep behind the demo's recommended guidance (its clockwork_engine.json).

    python benches/bench_guidance_sweep.py [--singles 200 --pairs 100]

Every setting scores the same held-out captions with the same noise
(clockwork_engine.eval.evaluate). Writes benches/results/alignment_guidance_sweep.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write  # noqa: E402

SETTINGS = ((8, 2.0), (8, 3.0), (8, 5.0), (8, 7.5), (20, 3.0), (20, 5.0))  # (steps, CFG)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=100)
    args = ap.parse_args()

    from clockwork_engine.eval import evaluate

    runs = []
    for steps, guidance in SETTINGS:
        d = evaluate.main(["--singles", str(args.singles), "--pairs", str(args.pairs), "--steps", str(steps),
                           "--mode", "full", "--guidance", f"{guidance:g}"])
        single = {k: v["accuracy"] for k, v in d["generated"]["singles"].items()}
        runs.append({"setting": f"{steps} steps, CFG {guidance:g}", "command": d["command"], "single": single,
                     "pairs_all": d["generated"]["pairs"]["all"]["accuracy"], "domain_fid": d["domain_fid"]})
    write("alignment_guidance_sweep.json", {
        "command": "python benches/bench_guidance_sweep.py " + " ".join(sys.argv[1:]),
        "what": f"the committed demo UNet (full mode, DPM++), {args.singles} held-out single + {args.pairs} pair "
                "captions, same noise", "runs": runs})


if __name__ == "__main__":
    main()
