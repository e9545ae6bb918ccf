"""The demo's mask ControlNet: does the image follow the control mask, and does clockwork keep it?

    python benches/bench_controlnet_demo.py [--singles 100 --pairs 50 --steps 8 --rounds 10]

On held-out captions (single shapes and pairs), each with a mask drawn from a layout of its
own scene (shapes.control_mask: where the shapes go), same seeds for every variant, in one run:
the demo without a ControlNet (the caption alone places the shapes), the full model with the
ControlNet, and clockwork with it (the shipped adaptor; on adaptor steps only the ControlNet
blocks whose residuals the run part of the UNet takes execute). Scored by mask IoU (drawn
pixels against the mask), colour+shape (singles) and objects (pairs) by the shapes classifier,
PSNR to the full model; latency by interleaved rounds (a new caption per call), GFLOPs per
image by torch.utils.flop_counter. Writes benches/results/controlnet_demo.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write  # noqa: E402


def masks_for(scenes, seed: int = 7):
    """bool [N, 64, 64] masks and the PIL control images, one layout per scene."""
    import numpy as np
    from PIL import Image

    from clockwork_engine.datasets import shapes

    rng = np.random.default_rng(seed)
    images = [shapes.control_mask(shapes.layout(s, rng)) for s in scenes]
    return np.stack([im[..., 0] > 0 for im in images]), [Image.fromarray(im) for im in images]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    ap.add_argument("--controlnet", default="mask", help="a ControlNet folder, or the demo's shipped one")
    ap.add_argument("--out", default="controlnet_demo.json")
    args = ap.parse_args()
    import torch

    from clockwork_engine import Engine
    from clockwork_engine.eval import alignment, compare, evaluate
    from clockwork_engine.eval import classifier as C
    from clockwork_engine.eval.metrics import psnr

    base = Engine.from_pretrained("demo", device="cpu")
    controlled = Engine.from_pretrained("demo", device="cpu", controlnet=args.controlnet)
    guidance = base.config.guidance_scale
    variants = {"no_control": (base, {"mode": "full"}, False), "full": (controlled, {"mode": "full"}, True),
                "clockwork": (controlled, {"mode": "clockwork"}, True)}
    scenes = evaluate.eval_scenes(args.singles, args.pairs)
    masks, controls = masks_for(scenes)
    model = C.load()
    images = {name: evaluate.generate_all(engine, scenes, args.steps, guidance,
                                          control_images=controls if ctl else None, **kw)
              for name, (engine, kw, ctl) in variants.items()}
    one_mask = {"control_image": controls[0]}
    lat = compare.latency({name: (engine, {**kw, "steps": args.steps, "guidance_scale": guidance,
                                           **(one_mask if ctl else {})})
                           for name, (engine, kw, ctl) in variants.items()}, args.rounds)
    results = {}
    for name, (engine, kw, ctl) in variants.items():
        singles, pairs, _ = evaluate.score_images(model, scenes, images[name])
        ious = [alignment.mask_iou(im, torch.from_numpy(m)) for im, m in zip(images[name], masks)]
        call = {**kw, "steps": args.steps, "guidance_scale": guidance, **(one_mask if ctl else {})}
        results[name] = {
            "schedule": engine.step_kinds(args.steps, kw["mode"]),
            "mask_iou": sum(ious) / len(ious),
            "mask_iou_singles": sum(i for i, s in zip(ious, scenes) if not s.is_pair) / max(1, args.singles),
            "mask_iou_pairs": sum(i for i, s in zip(ious, scenes) if s.is_pair) / max(1, args.pairs),
            "single_colour_and_shape": singles["colour_and_shape"]["accuracy"],
            "pair_objects": pairs["objects"]["accuracy"] if pairs else None,
            "psnr_to_full": float(psnr(images[name], images["full"]).mean()),
            "latency_s": lat[name]["median_s"], "latency_times_s": lat[name]["times_s"],
            "speedup_vs_full": compare.paired_speedup(lat, "full", name),
            "gflops_per_image": compare.gflops_per_image(engine, call, f"a new prompt to count the flops of {name}"),
        }
        print(name, {k: v for k, v in results[name].items() if k not in ("latency_times_s",)})
    write(args.out, {"machine": machine(), "steps": args.steps, "guidance": guidance,
                     "controlnet": args.controlnet, "images": len(scenes), "singles": args.singles,
                     "pairs": args.pairs, "latency_rounds": args.rounds, "variants": results,
                     "command": "python benches/bench_controlnet_demo.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
