"""Train the evaluation classifier on the shapes world.

    python -m clockwork_engine.eval.train_classifier --vae runs/vae/final --steps 700

A share of every batch (--recon-fraction) goes through the demo VAE (encode, decode) so the
classifier reads decoded images as well as it reads clean renders. All captions are used (the classifier
is a measuring instrument; the held-out split matters only for the generator).
"""

from __future__ import annotations

import argparse
import os

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.distill.training import cosine_lr, plot_losses
from clockwork_engine.eval import classifier as C


def loss_fn(model, images, layouts):
    presence, geometry, mask = C.targets(layouts)
    _, logits, geo = model(images)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, presence)
    geo_err = ((geo - geometry).pow(2).sum(-1) * mask).sum() / mask.sum()
    return bce + 10.0 * geo_err, bce, geo_err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="runs/vae/final", help="the demo VAE (decoded images for robustness)")
    ap.add_argument("--out", default=C.WEIGHTS)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--recon-fraction", type=float, default=0.25,
                    help="share of each batch passed through the VAE (it dominates the step time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).requires_grad_(False).eval()
    model = C.ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    all_scenes = shapes.all_scenes()
    rng = __import__("numpy").random.default_rng(args.seed)
    losses = []
    bar = tqdm(range(args.steps), desc="classifier")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=100)
        images, _, layouts = shapes.sample_batch(rng, all_scenes, args.batch)
        x = shapes.to_tensor(images)
        n_recon = int(args.batch * args.recon_fraction)
        if n_recon:
            with torch.no_grad():
                x[:n_recon] = vae.decode(vae.encode(x[:n_recon]).latent_dist.sample()).sample.clamp(-1, 1)
        x = x + 0.03 * torch.randn_like(x)
        loss, bce, geo = loss_fn(model, x, layouts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(bce=f"{bce.item():.4f}", geo=f"{geo.item():.5f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    plot_losses(losses, os.path.splitext(args.out)[0] + "_loss.png", "classifier loss")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
