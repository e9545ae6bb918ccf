"""Clockwork quality on the demo pipeline (held-out captions, same noise for every variant).

    python benches/bench_clockwork_quality.py [--singles 200 --pairs 100] [--ablations]

Variants: full; clockwork (learned adaptor); identity adaptor; adaptor without r_out(t+1)
(if trained: runs/adaptor_no_rout); with --ablations also the adaptor at other steps
({4,5,6,7} and {2,3,4,5}, 0-based = the paper's {5..8} and {3..6}) and the noised-trained
adaptor. Metrics: prompt-alignment accuracy (shapes classifier), domain FID against renders
of the same captions, PSNR/SSIM to the full model's image. Writes
benches/results/quality_clockwork.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write  # noqa: E402


def variant(base, **changes):
    from clockwork_engine import Engine

    return Engine(base.unet, base.vae, base.prompts.tokenizer, base.text_encoder, copy.deepcopy(base.scheduler),
                  config=base.config.with_(**changes))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--out", default="quality_clockwork.json")
    args = ap.parse_args()

    from clockwork_engine import Engine
    from clockwork_engine.engine import ADAPTOR_FOLDER
    from clockwork_engine.eval import classifier, evaluate
    from clockwork_engine.eval.metrics import frechet_distance, psnr, ssim

    base = Engine.from_pretrained("demo", config="full")
    demo_adaptor = os.path.join("clockwork_engine", "demo", "weights", ADAPTOR_FOLDER)
    variants = {"full": base, "clockwork": variant(base, mode="clockwork", adaptor=demo_adaptor),
                "identity": variant(base, mode="clockwork", adaptor="identity")}
    if os.path.isdir("runs/adaptor_no_rout"):
        variants["adaptor_without_r_out"] = variant(base, mode="clockwork", adaptor="runs/adaptor_no_rout")
    if args.ablations:
        for name, steps in (("clockwork_steps_4567", (4, 5, 6, 7)), ("clockwork_steps_2345", (2, 3, 4, 5))):
            variants[name] = variant(base, mode="clockwork", adaptor=demo_adaptor, adaptor_steps=steps)
        if os.path.isdir("runs/adaptor_noised"):
            variants["clockwork_noised_training"] = variant(base, mode="clockwork", adaptor="runs/adaptor_noised")

    model = classifier.load()
    scenes = evaluate.eval_scenes(args.singles, args.pairs)
    _, _, real_feats = evaluate.score_images(model, scenes, evaluate.real_images(scenes))
    results, reference = {}, None
    for name, engine in variants.items():
        start = time.perf_counter()
        images = evaluate.generate_all(engine, scenes, args.steps, 5.0)
        seconds = time.perf_counter() - start
        singles, pairs, feats = evaluate.score_images(model, scenes, images)
        reference = images if reference is None else reference
        results[name] = {
            "schedule": engine.schedule(args.steps, engine.config.mode),
            "single_colour_and_shape": singles["colour_and_shape"]["accuracy"],
            "single_all": singles["all"]["accuracy"], "pair_all": pairs["all"]["accuracy"] if pairs else None,
            "singles": singles, "pairs": pairs, "domain_fid": frechet_distance(feats, real_feats),
            "psnr_to_full": float(psnr(images, reference).mean()), "ssim_to_full": float(ssim(images, reference).mean()),
            "seconds_generating": seconds,
        }
        print(name, {k: v for k, v in results[name].items() if k not in ("singles", "pairs")})
    write(args.out, {"command": "python " + " ".join(sys.argv), "steps": args.steps, "guidance": 5.0,
                     "images": len(scenes), "unique_captions": len({s.caption for s in scenes}),
                     "variants": results})


if __name__ == "__main__":
    main()
