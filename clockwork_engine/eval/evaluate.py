"""Score a pipeline on held-out captions: prompt alignment, domain FID (and PSNR/SSIM to a
reference run when given one).

    python -m clockwork_engine.eval.evaluate --singles 200 --pairs 100 --steps 8 \
        --json benches/results/alignment_demo.json

The evaluation set is deterministic: held-out captions cycled in a fixed shuffled order,
one seed per batch. "Real" images for the FID are renders of the same captions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from clockwork_engine.datasets import shapes
from clockwork_engine.eval import alignment
from clockwork_engine.eval import classifier as C
from clockwork_engine.eval.metrics import frechet_distance


def eval_scenes(singles: int, pairs: int, seed: int = 0) -> list[shapes.Scene]:
    rng = np.random.default_rng(seed)
    held = shapes.split_scenes("eval")
    out = []
    for want, pool in ((singles, [s for s in held if not s.is_pair]), (pairs, [s for s in held if s.is_pair])):
        order = [pool[i] for i in rng.permutation(len(pool))]
        out += [order[k % len(order)] for k in range(want)]
    return out


@torch.no_grad()
def generate_all(engine, scenes, steps: int | None = None, guidance: float = 5.0, batch: int = 16, seed: int = 0,
                 control_images: list | None = None, **kw) -> torch.Tensor:
    """[N,3,64,64] in [0,1]; batch k uses seed + k; control_images: one a scene (a ControlNet's)."""
    images = []
    for k in range(0, len(scenes), batch):
        prompts = [s.caption for s in scenes[k : k + batch]]
        control = {} if control_images is None else {"control_image": control_images[k : k + batch]}
        images.append(engine.generate(prompts, steps=steps, guidance_scale=guidance, seed=seed + k // batch,
                                      output="pt", **control, **kw))
    return torch.cat(images)


@torch.no_grad()
def score_images(model, scenes, images: torch.Tensor) -> tuple[dict, dict, np.ndarray]:
    feats, presence, geometry = alignment.read(model, images)
    per = [alignment.score(s, p, g, im) for s, p, g, im in zip(scenes, presence, geometry, images)]
    singles = alignment.summarize([r for r, s in zip(per, scenes) if not s.is_pair])
    pairs = alignment.summarize([r for r, s in zip(per, scenes) if s.is_pair])
    return singles, pairs, feats.numpy()


def real_images(scenes, seed: int = 12345) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    arr = np.stack([shapes.render(shapes.layout(s, rng)) for s in scenes])
    return (shapes.to_tensor(arr) + 1) / 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--singles", type=int, default=200, help="single-shape held-out prompts")
    ap.add_argument("--pairs", type=int, default=100, help="two-shape held-out prompts")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="full", help="engine mode: full (the model itself) or clockwork")
    ap.add_argument("--decoder", default="vae", help="image decoder: vae, tiny or a tiny decoder folder")
    ap.add_argument("--text-dtype", default="float32", choices=("float32", "bfloat16"), help="text encoder weights")
    ap.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "inductor"),
                    help="engine backend (inductor: compiled; its first batch compiles)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from clockwork_engine import Engine
    from clockwork_engine.clockwork.adaptors import model_fingerprint

    engine = Engine.from_pretrained(args.model, config=Engine.default_config(args.model).with_(
        mode=args.mode, decoder=args.decoder, text_dtype=args.text_dtype, backend=args.backend))
    model = C.load()
    scenes = eval_scenes(args.singles, args.pairs, args.seed)
    real = real_images(scenes)
    ref_singles, ref_pairs, real_feats = score_images(model, scenes, real)
    start = time.perf_counter()
    generated = generate_all(engine, scenes, args.steps, args.guidance, seed=args.seed)
    seconds = time.perf_counter() - start
    singles, pairs, gen_feats = score_images(model, scenes, generated)
    result = {
        "command": "python -m clockwork_engine.eval.evaluate " + " ".join(argv or __import__("sys").argv[1:]),
        "model": args.model, "unet_fingerprint": model_fingerprint(engine.runner.model), "mode": args.mode,
        "decoder": args.decoder, "text_dtype": args.text_dtype, "backend": args.backend, "steps": args.steps,
        "guidance": args.guidance,
        "unique_captions": len({s.caption for s in scenes}), "images": len(scenes),
        "generated": {"singles": singles, "pairs": pairs},
        "classifier_on_real_renders": {"singles": ref_singles, "pairs": ref_pairs},
        "domain_fid": frechet_distance(gen_feats, real_feats),
        "seconds_generating": seconds,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
