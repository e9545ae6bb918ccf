"""Train the demo AutoencoderKL on the shapes world.

    python -m clockwork_engine.demo.train_vae --out runs/vae --steps 1000

Resumable (re-run the same command), seeded, writes <out>/final/ in diffusers layout with
the latent scaling factor measured on the data (so latents have unit variance).
"""

from __future__ import annotations

import argparse
import os

import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import models
from clockwork_engine.distill.training import cosine_lr, load_checkpoint, plot_losses, save_checkpoint


def kl_loss(posterior) -> torch.Tensor:
    return posterior.kl().mean() / posterior.mean[0].numel()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/vae", help="checkpoint and output folder")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps in total")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-element KL term")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    vae = models.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step, losses = load_checkpoint(args.out, vae, opt)
    # The stream is re-seeded from the step, so a resumed run sees fresh, reproducible data.
    data = shapes.stream(args.seed * 1_000_003 + step, args.batch)
    gen = torch.Generator().manual_seed(args.seed + step)
    vae.train()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="vae")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        images, _, _ = next(data)
        x = shapes.to_tensor(images)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        loss = rec + args.kl_weight * kl_loss(posterior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(rec.item())
        bar.set_postfix(rec=f"{rec.item():.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(args.out, vae, opt, step + 1, losses)
    plot_losses(losses, os.path.join(args.out, "loss.png"), "VAE reconstruction (L1 + L2)")
    export(vae, os.path.join(args.out, "final"), args.seed)


@torch.no_grad()
def export(vae, folder: str, seed: int):
    """Measure the latent scale on fresh data and save in diffusers layout."""
    vae.eval()
    images, _, _ = next(shapes.stream(seed + 999, 256))
    latents = vae.encode(shapes.to_tensor(images)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(folder)
    print(f"saved {folder}; latent std {latents.std():.4f} -> scaling_factor {vae.config.scaling_factor:.4f}")


if __name__ == "__main__":
    main()
