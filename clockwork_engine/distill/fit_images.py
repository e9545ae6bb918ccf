"""clockwork distill --loss-on image: fit phi on the images the clockwork sampler makes with it.

L2 on r_out (or on the velocity it gives) weighs each step by how much r_out changes there,
not by what an error there does to the image. On demo-sd3 at 28 steps, cut 0, a phi fitted so
has the lower velocity error summed over steps (the first steps and the last carry most of
it), yet it is further from the velocity than the identity at steps 6-22 and gives images
further from the full model's on every clock tried.

Here phi runs inside the whole sampler on random clocks (first step full; from a random start
within the first third, each step on phi with a random rate of 0.4-0.8), so its consecutive
steps and the full steps between are in the loss. The target is the teacher's image from the
same noise and captions; the loss is the mean over images of log10 of their MSE, which is what
the mean PSNR measures (-10x it), backpropagated through every step and the VAE's decoder (the
model and the VAE stay frozen). phi starts as the identity (its last layer is zero), so the fit
starts from the stale-r_out cache and moves only where the images say.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine import sampler
from clockwork_engine.clockwork import adaptors as A
from clockwork_engine.datasets import shapes
from clockwork_engine.distill import trajectories as T
from clockwork_engine.distill.training import cosine_lr, optimizer_step, save_checkpoint

HELD_OUT_CLOCKS = (2, 3)  # the held-out report's clocks: every 2nd and every 3rd step on phi
HELD_OUT_CAPTIONS = 32


def images(engine, split, adaptor, prompts: list[str], steps: int, guidance: float, schedule: list[bool],
           seed: int) -> torch.Tensor:
    """[B, 3, H, W] about [0, 1] (unclamped: the loss keeps its gradient): the clockwork sampler's
    images with phi on the schedule's steps (none: the teacher's)."""

    def denoiser(use_adaptor: bool):  # the engine's own step denoisers
        return sampler.adaptor_denoiser(split, adaptor) if use_adaptor else sampler.split_denoiser(split)

    x = T.sample(engine, denoiser, prompts, steps, guidance, schedule, torch.Generator().manual_seed(seed))
    return engine.runner.decode_eager(engine.runner.unscaled(x)).float() / 2 + 0.5


def random_clock(rng: np.random.Generator, steps: int) -> list[bool]:
    """A training clock: full until a random start within the first third, then phi at a random rate
    (on one step at least)."""
    start, rate = int(rng.integers(1, max(2, steps // 3 + 1))), rng.uniform(0.4, 0.8)
    clock = [i >= start and bool(rng.random() < rate) for i in range(steps)]
    if not any(clock):  # phi on one step at least: a clock without it gives the loss no gradient
        clock[int(rng.integers(start, steps))] = True
    return clock


def log_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over images of log10 MSE ([B, 3, H, W] each): -PSNR / 10 for images in [0, 1]."""
    return (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12).log10().mean()


def freeze(engine):
    """Only phi is fitted: the model's and the VAE's weights take no gradient."""
    for module in (engine.model, engine.vae):
        module.requires_grad_(False)


def train_epoch(engine, split, adaptor, opt, args, captions, epoch: int, it: int, total_iters: int,
                losses: list) -> int:
    """One epoch: per batch of captions(rng, n) the teacher's images once, then --passes random
    clocks, an optimizer step each; returns the iteration count."""
    rng = np.random.default_rng(args.seed * 100_003 + epoch)
    evals = engine.runner.table(args.steps).num_steps  # a clock counts model evaluations
    adaptor.train()
    bar = tqdm(range(args.captions_per_epoch // args.image_batch), desc=f"epoch {epoch + 1}/{args.epochs}")
    for _ in bar:
        prompts, seed = captions(rng, args.image_batch), int(rng.integers(1 << 30))
        with torch.no_grad():
            want = images(engine, split, adaptor, prompts, args.steps, args.guidance, [False] * evals, seed)
        for _ in range(args.passes):
            got = images(engine, split, adaptor, prompts, args.steps, args.guidance, random_clock(rng, evals),
                         seed)
            losses.append(optimizer_step(opt, log_mse(got, want), cosine_lr(it, total_iters, args.lr, warmup=20)))
            it += 1
            bar.set_postfix(psnr=f"{-10 * losses[-1]:.2f}")
    adaptor.eval()
    return it


def held_out_captions(seed: int, n: int) -> list[str]:
    """n captions drawn from the demo's held-out scenes (the per-epoch reports' of both fits)."""
    rng = np.random.default_rng(10_000 + seed)
    held = shapes.split_scenes("eval")
    return [held[i].caption for i in rng.integers(0, len(held), n)]


@torch.no_grad()
def held_out_psnr(engine, split, adaptor, identity, args) -> dict[str, float]:
    """Mean PSNR to the teacher's images on held-out captions, of phi and of the identity, on
    every HELD_OUT_CLOCKS-th step: {"adaptor_psnr_c2": ..., "identity_psnr_c2": ..., ...}."""
    prompts = held_out_captions(args.seed, HELD_OUT_CAPTIONS)
    evals = engine.runner.table(args.steps).num_steps
    want = images(engine, split, identity, prompts, args.steps, args.guidance, [False] * evals, 999)
    report = {}
    for every in HELD_OUT_CLOCKS:
        clock = [i % every == every - 1 for i in range(evals)]
        for name, phi in (("adaptor", adaptor), ("identity", identity)):
            got = images(engine, split, phi, prompts, args.steps, args.guidance, clock, 999)
            report[f"{name}_psnr_c{every}"] = -10 * log_mse(got.clamp(0, 1), want.clamp(0, 1)).item()
    return report


def fit(engine, split, adaptor, opt, args, captions, first: int, losses: list) -> list[dict]:
    """Epochs `first`..args.epochs on captions(rng, n), a checkpoint after each; returns the
    per-epoch held-out PSNR of phi and of the identity (none on the caller's --prompts)."""
    freeze(engine)
    identity = A.build(adaptor.config).eval()  # phi's start: its last layer is zero
    steps_per_epoch = args.passes * (args.captions_per_epoch // args.image_batch)
    it, history = first * steps_per_epoch, []
    for epoch in range(first, args.epochs):
        it = train_epoch(engine, split, adaptor, opt, args, captions, epoch, it, args.epochs * steps_per_epoch, losses)
        if not args.prompts:
            report = held_out_psnr(engine, split, adaptor, identity, args)
            history.append({"epoch": epoch + 1, **report})
            print(f"epoch {epoch + 1}: held-out PSNR " + ", ".join(f"{k} {v:.2f}" for k, v in report.items()))
        save_checkpoint(os.path.join(args.out, "checkpoint"), adaptor, opt, epoch + 1, losses)
    return history
