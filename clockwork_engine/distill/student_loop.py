"""The optimisation loop shared by guidance and progressive distillation: AdamW with
warm-up + cosine LR, gradient clipping, per-rank seeded data, resumable safetensors
checkpoints on rank 0, and the final pipeline directory."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.distill import dist
from clockwork_engine.distill.training import cosine_lr, load_checkpoint, plot_losses, save_checkpoint

# loss_fn(model, rng, gen) -> (loss to optimise, per-example loss to log)
LossFn = Callable[[torch.nn.Module, np.random.Generator, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def setup(args):
    """(distributed context, the teacher's engine) for a distillation run."""
    from clockwork_engine import Engine

    d = dist.setup()
    torch.manual_seed(args.seed)
    return d, Engine.from_pretrained(args.model, config="full")


def train(args, student: torch.nn.Module, d: dist.Dist, loss_fn: LossFn, desc: str, warmup: int) -> list[float]:
    model = dist.wrap(student, d)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    step, losses = load_checkpoint(args.out, student, opt)
    # Seeded from (seed, resume step, rank): a resumed or parallel run draws fresh, reproducible data.
    rng = np.random.default_rng((args.seed * 1_000_003 + step) * 97 + d.rank)
    gen = torch.Generator().manual_seed((args.seed * 7919 + step) * 97 + d.rank)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc=desc, disable=not d.main)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=warmup)
        loss, per_example = loss_fn(model, rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(per_example.mean().item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if d.main and ((step + 1) % args.save_every == 0 or step + 1 == args.steps):
            save_checkpoint(args.out, student, opt, step + 1, losses)
    return losses


def finish(args, d: dist.Dist, engine, student, scheduler, losses: list[float], title: str, settings=None):
    """Rank 0 writes the loss plot and <out>/final (a pipeline directory like the teacher's)."""
    if d.main:
        import json


        plot_losses(losses, os.path.join(args.out, "loss.png"), title)
        final = os.path.join(args.out, "final")
        save_pipeline(engine, student.eval(), scheduler, final, args.model)
        # the engine's defaults for this model (clockwork_engine.json): the teacher's guidance scale
        settings = {"guidance_scale": engine.config.guidance_scale, **(settings or {})}
        with open(os.path.join(final, "clockwork_engine.json"), "w") as f:
            json.dump(settings, f, indent=1)
        print(f"saved {final}")
    dist.barrier(d)
    dist.cleanup(d)


def save_pipeline(engine, student, scheduler, folder: str, teacher_dir: str):
    """A full pipeline directory like the teacher's: SDXL's, or SD's with its text encoder folder
    if it had one, else in the demo layout (MiniLM comes from its package at load time)."""
    from clockwork_engine.demo import pipeline
    from clockwork_engine.models.loading import resolve

    parts = engine.conditioning.components()
    if engine.conditioning.sdxl:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=engine.vae, unet=student, scheduler=scheduler, **parts)
        pipe.save_pretrained(folder, safe_serialization=True)
        return
    pipe = pipeline.assemble(student, engine.vae, scheduler, **parts)
    if os.path.isdir(os.path.join(resolve(teacher_dir), "text_encoder")):
        pipe.save_pretrained(folder, safe_serialization=True)
    else:
        pipeline.save(pipe, folder)
