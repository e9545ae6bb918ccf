"""How far an adaptor fitted on the base model drifts under a LoRA, and the remedy.

    python benches/bench_lora_drift.py [--singles 100 --scales 0.5 1.0 --remedy DIR]

On the demo at 8 DPM++ steps, CFG 3, clock 2, with the recolouring LoRA the demo ships
(demo/weights/loras/recolour/, trained by demo/train_lora.py: red draws blue, ...). Per LoRA set
(none, then the LoRA at each scale): the full model, clockwork with the shipped adaptor (fitted
on the base model), the identity adaptor and, with --remedy, an adaptor fitted under the LoRA
at scale 1 (`clockwork distill --lora`). Scored by PSNR to the full model under the same set
(the adaptor's drift is what it loses there against the base model's figure) and colour+shape
against what the set draws (the LoRA's colours at scale 1, the caption's without it; at
other scales, both are reported). Writes benches/results/lora_drift.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write  # noqa: E402

STEPS = 8


def recoloured(scene):
    from clockwork_engine.demo.train_lora import RECOLOUR

    return dataclasses.replace(scene, colour=RECOLOUR[scene.colour],
                               colour2=RECOLOUR[scene.colour2] if scene.colour2 else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--scales", type=float, nargs="*", default=[0.5, 1.0])
    ap.add_argument("--remedy", default=None, help="an adaptor fitted under the LoRA at scale 1")
    args = ap.parse_args()
    import torch

    from clockwork_engine import Engine
    from clockwork_engine.demo.pipeline import DEMO_DIR
    from clockwork_engine.eval import classifier as C
    from clockwork_engine.eval import evaluate
    from clockwork_engine.eval.metrics import psnr

    lora_dir = os.path.join(DEMO_DIR, "loras", "recolour")
    engine = Engine.from_pretrained("demo", device="cpu")
    engine.load_lora(lora_dir, name="recolour")  # every request below names its own set
    guidance = engine.config.guidance_scale
    model, scenes = C.load(), evaluate.eval_scenes(args.singles, 0)
    adaptors = {"clockwork": engine, "identity": engine.with_config(adaptor="identity")}
    if args.remedy:
        adaptors["fitted_under_lora"] = engine.with_config(adaptor=args.remedy)
    results = {}
    for scale in [0.0, *args.scales]:
        lora = {"recolour": scale} if scale else {}  # {}: no LoRA, the base model
        full = evaluate.generate_all(engine, scenes, STEPS, guidance, mode="full", lora=lora)
        images = {"full": full, **{name: evaluate.generate_all(e, scenes, STEPS, guidance, mode="clockwork", lora=lora)
                                   for name, e in adaptors.items()}}
        for name, im in images.items():
            as_asked = evaluate.score_images(model, scenes, im)[0]["colour_and_shape"]["accuracy"]
            as_lora = evaluate.score_images(model, [recoloured(s) for s in scenes], im)[0]
            results[f"{name}@{scale:g}"] = {
                "lora_scale": scale, "variant": name, "psnr_to_full": float(psnr(im, full).mean()) if name != "full"
                else None, "colour_and_shape_as_captioned": as_asked,
                "colour_and_shape_as_recoloured": as_lora["colour_and_shape"]["accuracy"]}
            print(name, scale, results[f"{name}@{scale:g}"])
    drift = {f"{name}@{s:g}": results[f"{name}@{s:g}"]["psnr_to_full"] - results[f"{name}@0"]["psnr_to_full"]
             for name in adaptors for s in args.scales}
    write("lora_drift.json", {"command": "python " + " ".join(sys.argv), "steps": STEPS, "guidance": guidance,
                              "images": len(scenes), "lora": os.path.relpath(lora_dir, os.path.dirname(DEMO_DIR)),
                              "results": results, "psnr_drift_db": drift, "torch_threads": torch.get_num_threads(),
                              "machine": machine()})


if __name__ == "__main__":
    main()
