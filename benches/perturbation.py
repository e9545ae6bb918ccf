"""The observation behind Clockwork: perturbing low-resolution features changes the final
image less than perturbing high-resolution ones.

    python benches/perturbation.py [--prompts 64 --relative 0.1]

On the demo pipeline (8 DPM++ steps, its recommended CFG 3, mode full), Gaussian noise of the
same relative size (relative x the std of each output) is added to the outputs of every ResNet
and transformer layer at one resolution level, at every step; the change of the final image
is measured against the unperturbed image from the same noise (PSNR, MSE). Beside it: the
SD v1.5 UNet's FLOPs per resolution level (from clockwork flops). Writes
benches/results/perturbation.json and perturbation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write  # noqa: E402


def level_modules(unet) -> dict[int, list]:
    """Resolution level (0 = full latent resolution) -> ResNet and transformer layers there."""
    n = len(unet.down_blocks)
    levels = {i: [] for i in range(n)}
    for i, block in enumerate(unet.down_blocks):
        levels[i] += list(block.resnets) + list(getattr(block, "attentions", None) or [])
    for j, block in enumerate(unet.up_blocks):
        levels[n - 1 - j] += list(block.resnets) + list(getattr(block, "attentions", None) or [])
    if unet.mid_block is not None:
        levels[n - 1] += list(unet.mid_block.resnets) + list(getattr(unet.mid_block, "attentions", None) or [])
    return levels


def perturb_hook(relative: float, gen: torch.Generator):
    def hook(module, args, output):
        t = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        noisy = t + relative * t.std() * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if isinstance(output, tuple):
            return (noisy, *output[1:])
        return noisy

    return hook


def sd15_flops_per_level() -> dict[str, float]:
    path = os.path.join(RESULTS, "flops_sd15.json")
    with open(path) as f:
        by_module = json.load(f)["unet_forward_batch1_gflops_by_module"]
    groups = {"64x64": ["conv_in", "down_blocks.0", "up_blocks.3", "conv_out"], "32x32": ["down_blocks.1", "up_blocks.2"],
              "16x16": ["down_blocks.2", "up_blocks.1"], "8x8": ["down_blocks.3", "mid_block", "up_blocks.0"]}
    return {lvl: sum(by_module[m]["paper"] for m in mods) for lvl, mods in groups.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--relative", type=float, default=0.1)
    args = ap.parse_args()

    from clockwork_engine import Engine
    from clockwork_engine.datasets import shapes
    from clockwork_engine.eval.evaluate import generate_all
    from clockwork_engine.eval.metrics import psnr

    engine = Engine.from_pretrained("demo", config="full")
    scenes = shapes.split_scenes("eval")[: args.prompts]

    def generate(scenes):  # in batches of 16 (the engine's limit), batch k with seed k
        return generate_all(engine, scenes, guidance=engine.config.guidance_scale)

    clean = generate(scenes)
    rows = {}
    for level, modules in level_modules(engine.unet).items():
        gen = torch.Generator().manual_seed(1)
        handles = [m.register_forward_hook(perturb_hook(args.relative, gen)) for m in modules]
        try:
            engine.graphs.clear()  # rebuild the step programs so their dry run happens with the hooks too
            noisy = generate(scenes)
        finally:
            for h in handles:
                h.remove()
        side = engine.default_size // engine.vae_factor // 2**level
        per_image = (noisy - clean).pow(2).flatten(1).mean(1)  # [N]: one image that flips dominates the mean
        rows[f"{side}x{side}"] = {"psnr_db": float(psnr(noisy, clean).mean()), "mse": float(per_image.mean()),
                                  "median_image_mse": float(per_image.median()), "layers": len(modules)}
        print(level, rows[f"{side}x{side}"])
    sd_flops = sd15_flops_per_level()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(rows)
    a1.bar(names, [rows[k]["median_image_mse"] for k in names], color="tab:red", label="median image")
    a1.plot(names, [rows[k]["mse"] for k in names], "ko", label="mean")
    a1.set_yscale("log")
    a1.legend()
    a1.set_title(f"demo: image change from {args.relative:.0%} feature noise")
    a1.set_xlabel("UNet resolution level (latent 16x16)")
    a1.set_ylabel(f"MSE of the final image ({len(scenes)} prompts)")
    a2.bar(list(sd_flops), list(sd_flops.values()), color="tab:blue")
    a2.set_title("SD v1.5 UNet: GFLOPs per resolution level")
    a2.set_xlabel("resolution level (latent 64x64)")
    a2.set_ylabel("GFLOPs per forward (batch 1)")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "perturbation.png"), dpi=110)
    write("perturbation.json", {"command": "python " + " ".join(sys.argv), "relative_noise": args.relative,
                                "prompts": len(scenes), "demo_image_change_by_level": rows,
                                "sd15_gflops_by_level": sd_flops})


if __name__ == "__main__":
    main()
