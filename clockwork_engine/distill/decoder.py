"""clockwork distill-decoder: a tiny decoder that stands in for the model's VAE decoder.

    clockwork distill-decoder --model demo --out runs/tiny --steps 3000

Data: (1) demo training images, encoded by the VAE, one posterior sample each; (2) the
latents the models themselves sample (--sampled per model: the model of --model and each
student it ships, at their own step counts, on training captions, w ~ U[1.5, 5] per batch).
(2) matters: sampled latents are off the encoder's manifold. A decoder fitted on (1) only
was 36 dB from the VAE decoder on encoded images but 27 dB on progressive-2's latents, and
progressive-2's colour+shape fell from 87% to 45% with it. Target: the VAE decoder's image
of the latent (the tiny decoder imitates the decoder, it does not re-learn the data). Loss:
L1 + L2 on pixels, as the demo VAE was trained. The pairs are computed once per run from the
seed. Resumable, seeded, torchrun-ready; writes <out>/final, a tiny decoder folder recording
the VAE's fingerprint and the held-out PSNR to the VAE decoder. Copy it to <model
dir>/tiny_decoder to ship it (EngineConfig(decoder="tiny") then finds it).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.clockwork.adaptors import model_fingerprint
from clockwork_engine.datasets import shapes
from clockwork_engine.distill import dist, student_loop
from clockwork_engine.models import tiny_decoder


def build_parser(ap=None):
    ap = ap or argparse.ArgumentParser(prog="clockwork distill-decoder", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="'demo' or a diffusers SD directory (its VAE is the teacher)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint and final tiny decoder)")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=32, help="examples per step (per process)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--images", type=int, default=8192, help="encoded training images, per process")
    ap.add_argument("--sampled", type=int, default=2048,
                    help="latents sampled by each model (the teacher and its shipped students), per process")
    ap.add_argument("--channels", default="64,32,16", help="channels per level, low to high resolution")
    ap.add_argument("--blocks", default="2,1,1", help="residual blocks per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    return ap


@torch.no_grad()
def vae_pairs(vae, count: int, seed: int, size: int, split: str = "train", chunk: int = 256):
    """(unscaled latents [K, C, h, w]: one posterior sample per image, the VAE decoder's images
    of them [K, 3, H, W]) for `count` demo images of a split, resized to size x size (the
    model's image size) if it is not the demo's."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    scenes = shapes.split_scenes(split)
    latents, images = [], []
    for k in tqdm(range(0, count, chunk), desc="VAE pairs"):
        pixels, _, _ = shapes.sample_batch(rng, scenes, min(chunk, count - k))
        x = shapes.to_tensor(pixels)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        z = vae.encode(x).latent_dist.sample(gen)
        latents.append(z)
        images.append(vae.decode(z).sample)
    return torch.cat(latents), torch.cat(images)


@torch.no_grad()
def sampled_pairs(engine, model: str, count: int, seed: int, split: str = "train", chunk: int = 64):
    """(unscaled latents, the VAE decoder's images of them): `count` samples of `engine` (the
    model in directory `model`, mode full) and of each student that model ships, each at its own
    settings (steps, grid), on captions of a split with w ~ U[1.5, 5] per chunk."""
    from clockwork_engine import Engine
    from clockwork_engine.engine import student_presets

    vae = engine.vae
    rng = np.random.default_rng(seed)
    scenes = shapes.split_scenes(split)
    students = {p: Engine.from_pretrained(model, preset=p, config="full") for p in student_presets(model)}
    latents, images = [], []
    for name, sampler in {model: engine, **students}.items():
        sampler = sampler.with_config(max_batch_size=chunk)
        for k in tqdm(range(0, count, chunk), desc=f"latents of {name}"):
            _, picked, _ = shapes.sample_batch(rng, scenes, min(chunk, count - k))
            w = float(rng.uniform(1.5, 5.0))
            z = sampler.generate([s.caption for s in picked], guidance_scale=w, seed=int(rng.integers(2**31)),
                                 output="latent") / vae.config.scaling_factor
            latents.append(z)
            images.append(vae.decode(z).sample)
    return torch.cat(latents), torch.cat(images)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1], both clamped as the engine clamps them."""
    from clockwork_engine.eval.metrics import psnr as psnr_unit  # images in [0, 1]

    return float(psnr_unit((a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2).mean())


def main(argv=None):
    return run(build_parser().parse_args(argv))


def run(args):
    d, engine = student_loop.setup(args)
    vae = engine.vae
    factor = tiny_decoder.vae_upscale(vae)
    channels = tuple(int(c) for c in args.channels.split(","))
    blocks = tuple(int(b) for b in args.blocks.split(","))
    config = tiny_decoder.TinyDecoderConfig(vae.config.latent_channels, channels, blocks)
    if config.upscale != factor:
        raise ValueError(f"--channels gives {len(channels)} levels (upscale {config.upscale}); this VAE upscales by "
                         f"{factor}: give {factor.bit_length()} levels")
    seed = (args.seed * 97 + d.rank) * 1_000_003  # apart per rank
    latents, targets = vae_pairs(vae, args.images, seed, engine.default_size)
    if args.sampled:
        more = sampled_pairs(engine, args.model, args.sampled, seed + 1)
        latents, targets = torch.cat([latents, more[0]]), torch.cat([targets, more[1]])
    decoder = tiny_decoder.TinyDecoder(config)

    def loss_fn(model, rng, gen):
        j = torch.from_numpy(rng.integers(0, len(latents), args.batch))
        err = model(latents[j]) - targets[j]
        per_example = err.abs().mean(dim=(1, 2, 3)) + err.pow(2).mean(dim=(1, 2, 3))
        return per_example.mean(), per_example

    losses = student_loop.train(args, decoder, d, loss_fn, "tiny decoder", warmup=50)
    if d.main:
        held_z, held_images = vae_pairs(vae, 512, args.seed + 12345, engine.default_size, split="eval")
        with torch.no_grad():
            held_psnr = psnr(decoder.eval()(held_z), held_images)
            held_sampled = sampled_pairs(engine, args.model, 128, args.seed + 12345, split="eval")
            sampled_psnr = psnr(decoder(held_sampled[0]), held_sampled[1])
        from clockwork_engine.distill.training import plot_losses

        plot_losses(losses, os.path.join(args.out, "loss.png"), "tiny decoder: L1 + L2 to the VAE decoder")
        final = os.path.join(args.out, "final")
        tiny_decoder.save(final, decoder, vae_fingerprint=model_fingerprint(vae), training={
            "steps": args.steps, "batch": args.batch, "lr": args.lr, "images": args.images, "seed": args.seed,
            "sampled": args.sampled, "processes": d.world, "heldout_psnr_to_vae_db": round(held_psnr, 2),
            "heldout_sampled_psnr_to_vae_db": round(sampled_psnr, 2)})
        print(f"saved {final}; PSNR to the VAE decoder on held-out captions: {held_psnr:.2f} dB (512 encoded "
              f"images), {sampled_psnr:.2f} dB (128 latents sampled by each model)")
    dist.barrier(d)
    dist.cleanup(d)
    return 0


if __name__ == "__main__":
    main()
