"""clockwork distill: train the adaptor phi on the teacher's features (model-step distillation).

    clockwork distill --model demo --out runs/adaptor --steps 8 --clock 2 --epochs 40

Every epoch draws fresh captions (the demo caption generator's training split, or the lines
of --prompts), samples the teacher's trajectories from fresh noise ("unrolled", the paper's
method; "noised" forward-noises data latents instead, for the ablation; "rollout" follows the
clockwork sampler with the current phi, the teacher's L giving the target) and fits phi with
L2 on r_out at every step > 0 (or only the clock's adaptor steps), with Adam; --loss-on image fits
phi on the images the clockwork sampler makes with it instead (fit_images.py). Resumable per epoch; writes the adaptor
(safetensors + adaptor_config.json with the base model's fingerprint, the scheduler, the
step count and the clock). Reports, on held-out captions, the relative error
||phi - r_out||^2 / ||r_out||^2 of phi and of the identity adaptor (phi = r_out(t+1)).

With CFG the loss is "guided" by default: L2 on the uncond rows and on the guided mix
u + w (c - u), the quantity the sampler goes on to use. Plain L2 on every row fits the cond -
uncond difference badly (it is a few percent of r_out), and guidance multiplies that error by w.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.clockwork import adaptors as A
from clockwork_engine.clockwork.clock import Clock
from clockwork_engine.datasets import shapes
from clockwork_engine.distill import fit_images as FI
from clockwork_engine.distill import trajectories as T
from clockwork_engine.distill.training import cosine_lr, load_checkpoint, optimizer_step, plot_losses, save_checkpoint
from clockwork_engine.models import lora
from clockwork_engine.sampler import noise_schedulers


def build_parser(parser=None):
    ap = parser or argparse.ArgumentParser(prog="clockwork distill", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo",
                    help="teacher: 'demo', 'demo-sd3', 'demo-flux' or a diffusers model directory")
    ap.add_argument("--out", required=True, help="output adaptor folder (also the checkpoint folder)")
    ap.add_argument("--steps", type=int, default=8, help="sampler steps of the operating point")
    ap.add_argument("--clock", type=int, default=2, help="adaptor on every N-th step (0-based i %% N == N-1)")
    ap.add_argument("--adaptor-steps", default=None, help="explicit 0-based adaptor steps, e.g. 4,5,6,7")
    ap.add_argument("--guidance", type=float, default=None,
                    help="teacher CFG scale of the operating point (default: the model's recommended one)")
    ap.add_argument("--train-on", choices=("all", "clock"), default="all",
                    help="fit phi on every step > 0 (so other clocks can use it) or only on the clock's steps")
    ap.add_argument("--mode", choices=("unrolled", "noised", "rollout"), default="unrolled")
    ap.add_argument("--loss", choices=("guided", "plain"), default="guided",
                    help="with CFG: L2 on the uncond and guided-mix rows (default), or plain L2 on every row")
    ap.add_argument("--loss-on", choices=("r_out", "output", "image"), default="r_out",
                    help="L2 on r_out (default); on the model's output it gives (a transformer at cut 0: "
                         "through the final norm and projection, which weigh r_out's directions unequally); or "
                         "log MSE of the images the clockwork sampler makes on random clocks (fit_images.py)")
    ap.add_argument("--image-batch", type=int, default=16, help="--loss-on image: captions per optimizer step")
    ap.add_argument("--scheduler", default="model",
                    help="sampler of the operating point: 'model' (the model's own) or a scheduler name "
                         "(clockwork generate --scheduler's: euler-a, unipc, ddim-trailing, ...)")
    ap.add_argument("--prompts", default=None, help="a text file of captions (default: the demo captions)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--captions-per-epoch", type=int, default=512)
    ap.add_argument("--passes", type=int, default=1,
                    help="optimizer passes over each epoch's trajectories (sampling them is the cost; a pass is cheap)")
    ap.add_argument("--traj-batch", type=int, default=128, help="captions per teacher batch")
    ap.add_argument("--batch", type=int, default=64, help="adaptor training batch")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--hidden", type=int, default=None, help="adaptor width (default: r_out's channels)")
    ap.add_argument("--cut", type=int, default=1,
                    help="split level (a UNet's level; a transformer's first and last joint blocks that always run)")
    ap.add_argument("--no-r-out", action="store_true", help="ablation: adaptor without r_out(t+1)")
    ap.add_argument("--pooled-text", action="store_true", help="also condition phi on the mean-pooled text embedding")
    ap.add_argument("--lora", action="append", default=[], metavar="PATH[=SCALE]",
                    help="fit under this LoRA, fused into the teacher (repeatable): an adaptor for requests under "
                         "that LoRA set; named by its folder")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _captions(args, rng, n):
    if args.prompts:
        with open(args.prompts) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        if not lines:
            raise ValueError(f"{args.prompts} has no captions")
        return [lines[i] for i in rng.integers(0, len(lines), n)], None
    images, scenes, _ = shapes.sample_batch(rng, shapes.split_scenes("train"), n)
    return [s.caption for s in scenes], images


@torch.no_grad()
def _features(engine, split, args, captions, images, gen, adaptor=None, schedule=None):
    records = []
    for k in range(0, len(captions), args.traj_batch):
        chunk = captions[k : k + args.traj_batch]
        if args.mode == "unrolled":
            records.append(T.unrolled(engine, split, chunk, args.steps, args.guidance, gen))
        elif args.mode == "rollout":
            records.append(T.rollout(engine, split, adaptor.eval(), chunk, args.steps, args.guidance, schedule, gen))
        else:
            if images is None:
                raise ValueError("--mode noised needs images: use the demo captions (no --prompts)")
            x = shapes.to_tensor(images[k : k + args.traj_batch])
            latents = engine.vae.encode(x).latent_dist.sample(gen) * engine.vae.config.scaling_factor
            records.append(T.noised(engine, split, chunk, latents, args.steps, args.guidance, gen))
    # Merge the chunks step by step.
    merge = lambda parts: None if parts[0] is None else torch.cat(parts)  # noqa: E731
    fields = ("r_in", "emb", "r_out", "r_cached", "text")
    return [T.Record(*(merge([getattr(r[i], f) for r in records]) for f in fields)) for i in range(args.steps)]


def predict(adaptor, r_in, r_prev, emb, text):
    """[N, G, ...] inputs -> [N, G, ...] (r_out's shape): phi runs on every row of the pair."""
    rows = lambda v: v.flatten(0, 1)  # noqa: E731
    return adaptor(rows(r_in), rows(r_prev), rows(emb), rows(text)).unflatten(0, r_in.shape[:2])


def has_output_head(split) -> bool:
    """Whether the model output follows from r_out alone: a transformer split at cut 0."""
    return hasattr(split, "output_tokens") and not split.cut


def output_head(split, n_img: int):
    """r_out -> the model output it gives, for --loss-on output: (r_in, r_out, emb) [N, G, ...] ->
    [N, G, n_img, p * p * C] (a transformer split at cut 0: transformer_split.output_tokens)."""
    if not has_output_head(split):
        raise ValueError("--loss-on output needs a transformer split at cut 0 (its output follows from r_out "
                         f"alone); this is a {type(split).__name__} at cut {split.cut}")
    rows = lambda v: v.flatten(0, 1)  # noqa: E731
    return lambda r_in, r, emb: split.output_tokens(rows(r_in), rows(r), rows(emb), n_img).unflatten(0, r_in.shape[:2])


def guided_mix(r, guidance: float):
    """[N, 2, ...] (uncond, cond) -> [N, 2, ...] (uncond, u + w (c - u)); G = 1 passes through."""
    if r.shape[1] == 1:
        return r
    u, c = r.unbind(1)
    return torch.stack([u, u + guidance * (c - u)], 1)


@torch.no_grad()
def relative_errors(adaptor, data, guidance: float, head=None) -> dict[str, float]:
    """||phi - r_out||^2 / ||r_out||^2 of phi and of the identity (and of the guided mix with
    CFG); with head (output_head), also of the model output they give ("_output")."""
    *inputs, target = data
    r_in, r_prev, emb = inputs[:3]
    pred = _chunked(partial(predict, adaptor), *inputs)
    rel = lambda a, b: float((a - b).pow(2).sum() / b.pow(2).sum())  # noqa: E731
    cfg = target.shape[1] == 2
    mix = (lambda r: guided_mix(r, guidance)) if cfg else (lambda r: r)  # noqa: E731
    errors = {"adaptor": rel(pred, target), "identity": rel(r_prev, target)}
    if cfg:  # with CFG: the error in what the sampler uses
        errors |= {"adaptor_guided": rel(mix(pred), mix(target)), "identity_guided": rel(mix(r_prev), mix(target))}
    if head is not None:
        out = lambda r: mix(_chunked(head, r_in, r, emb))  # noqa: E731
        want = out(target)
        errors |= {"adaptor_output": rel(out(pred), want), "identity_output": rel(out(r_prev), want)}
    return errors


def _chunked(fn, *tensors, size: int = 128) -> torch.Tensor:
    """fn over row chunks of the tensors ([N, ...] each), concatenated: bounded memory."""
    return torch.cat([fn(*(v[k : k + size] for v in tensors)) for k in range(0, len(tensors[0]), size)])


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run(args)


def _held_out(engine, split, args, adaptor_steps):
    """(inputs..., target) pairs on 128 held-out captions for the per-epoch report (None when
    the adaptor is fitted on the caller's --prompts)."""
    if args.prompts:
        return None
    captions = FI.held_out_captions(args.seed, 128)
    val_args = argparse.Namespace(**{**vars(args), "mode": "unrolled"})
    return T.pairs(_features(engine, split, val_args, captions, None, torch.Generator().manual_seed(999)),
                   adaptor_steps)


def _train_epoch(adaptor, opt, data, batches, args, it: int, total_iters: int, losses: list, head=None) -> int:
    """One epoch of L2 steps over `batches` (row indices into data), on r_out or, with head, on
    the output it gives; returns the iteration count."""
    adaptor.train()
    for idx in batches:
        *inputs, target = (d[idx] for d in data)
        pred = predict(adaptor, *inputs)
        if head is not None:
            pred, target = head(inputs[0], pred, inputs[2]), head(inputs[0], target, inputs[2])
        if args.loss == "guided":
            pred, target = guided_mix(pred, args.guidance), guided_mix(target, args.guidance)
        lr = cosine_lr(it, total_iters, args.lr, warmup=50)
        losses.append(optimizer_step(opt, (pred - target).pow(2).mean(), lr))
        it += 1
        batches.set_postfix(loss=f"{losses[-1]:.5f}")
    adaptor.eval()
    return it


def _save(args, adaptor, engine, clock, history, losses):
    """The adaptor folder: weights, metadata (model fingerprint, steps, clock, scheduler, how it
    was fitted), its per-epoch held-out errors and the loss curve."""
    if args.loss_on == "image":  # the losses are log10 MSE (fit_images.log_mse)
        plot_losses([10**v for v in losses], os.path.join(args.out, "loss.png"), "image MSE (random clocks)")
    else:
        plot_losses(losses, os.path.join(args.out, "loss.png"), f"adaptor L2 ({args.mode})")
    how = {"clocks": "random (fit_images.random_clock)", "image_batch": args.image_batch} \
        if args.loss_on == "image" else {"mode": args.mode, "loss": args.loss}  # per-step trajectories
    training = {**how, "loss_on": args.loss_on, "train_on": args.train_on, "epochs": args.epochs,
                "captions_per_epoch": args.captions_per_epoch, "passes": args.passes,
                "lr": args.lr, "guidance": args.guidance, "seed": args.seed, "held_out": history[-1:] or None,
                "lora": engine.runner.lora.default or None}
    base = A.model_fingerprint(engine.model, lora.base_weights(engine.model))  # the base model, under a LoRA too
    A.save(args.out, adaptor, cut=args.cut, base_fingerprint=base, steps=args.steps,
           scheduler=noise_schedulers.describe(engine.scheduler), clock=clock.to_dict(), training=training)
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump(history, f, indent=1)
    print(f"saved {args.out}")


def _output_head(engine, split, args):
    """output_head at the trajectories' size where the split has one (a transformer at cut 0: its
    output errors are reported, and --loss-on output fits on them), else None."""
    if args.loss_on != "output" and not has_output_head(split):
        return None
    return output_head(split, split.feature_shape(1, 0, *T.latent_size(engine))[1])  # N_img, no text tokens


def _fit_on_steps(engine, split, adaptor, opt, args, schedule, adaptor_steps, first, losses) -> list[dict]:
    """Per-step L2 (on r_out or the output it gives) over each epoch's trajectories; returns the
    per-epoch held-out errors."""
    ckpt = os.path.join(args.out, "checkpoint")
    head = _output_head(engine, split, args)
    val = _held_out(engine, split, args, adaptor_steps)
    groups = 1 + engine.uses_cfg(args.guidance)  # rows per sample: (uncond, cond) with CFG
    pair_batch = max(1, args.batch // groups)  # --batch counts model rows, as the sampler does
    iters_per_epoch = args.passes * ((args.captions_per_epoch * len(adaptor_steps)) // pair_batch)
    total_iters, it = args.epochs * iters_per_epoch, first * iters_per_epoch
    history = []
    for epoch in range(first, args.epochs):
        rng = np.random.default_rng(args.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        captions, images = _captions(args, rng, args.captions_per_epoch)
        data = T.pairs(_features(engine, split, args, captions, images, gen, adaptor, schedule), adaptor_steps)
        n = len(data[0])
        # [passes, n // pair_batch, pair_batch]: a fresh permutation per pass
        batches = torch.stack([torch.randperm(n, generator=gen)[: n - n % pair_batch].view(-1, pair_batch)
                               for _ in range(args.passes)]).flatten(0, 1)
        it = _train_epoch(adaptor, opt, data, tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}"), args, it,
                          total_iters, losses, head if args.loss_on == "output" else None)
        if val is not None:
            errors = relative_errors(adaptor, val, args.guidance, head)
            history.append({"epoch": epoch + 1, **errors})
            print(f"epoch {epoch + 1}: held-out relative error " + ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))
        save_checkpoint(ckpt, adaptor, opt, epoch + 1, losses)
    return history


def run(args):
    from clockwork_engine import Engine

    torch.manual_seed(args.seed)
    engine = Engine.from_pretrained(args.model, config="full")
    for spec in args.lora:
        path, _, scale = spec.partition("=")
        engine.load_lora(path, name=os.path.basename(os.path.normpath(path)), scale=float(scale or 1.0))
    if args.scheduler != "model":
        engine = engine.with_config(scheduler=args.scheduler)
    if args.guidance is None:
        args.guidance = engine.config.guidance_scale
    split = engine.runner.family.split(engine.model, args.cut)
    clock = Clock(every=args.clock, adaptor_steps=frozenset(int(s) for s in args.adaptor_steps.split(","))
                  if args.adaptor_steps else None)
    evals = engine.runner.table(args.steps).num_steps  # the clock counts model evaluations
    schedule = clock.schedule(evals)
    adaptor_steps = [i for i, a in enumerate(schedule) if a]
    if not adaptor_steps:
        raise ValueError(f"the clock has no adaptor step in {args.steps} steps")
    if args.train_on == "all":
        adaptor_steps = list(range(1, evals))
    adaptor = A.build(A.AdaptorConfig.for_split(split, args.hidden, use_r_out=not args.no_r_out,
                                                text_embed_dim=split.text_embed_dim if args.pooled_text else 0))
    opt = torch.optim.Adam(adaptor.parameters(), lr=args.lr)
    first, losses = load_checkpoint(os.path.join(args.out, "checkpoint"), adaptor, opt)
    fitted_on = "random clocks' images" if args.loss_on == "image" else \
        f"adaptor steps {adaptor_steps}; mode {args.mode}"
    print(f"adaptor: {A.num_parameters(adaptor) / 1e6:.3f}M parameters; {fitted_on}; resuming at epoch {first}")

    if args.loss_on == "image":
        captions = lambda rng, n: _captions(args, rng, n)[0]  # noqa: E731
        history = FI.fit(engine, split, adaptor, opt, args, captions, first, losses)
    else:
        history = _fit_on_steps(engine, split, adaptor, opt, args, schedule, adaptor_steps, first, losses)
    _save(args, adaptor, engine, clock, history, losses)
    return history


if __name__ == "__main__":
    main()
