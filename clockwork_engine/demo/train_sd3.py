"""Train the SD3-layout demo transformer on the shapes world by flow matching.

    python -m clockwork_engine.demo.train_sd3 --out runs/sd3 --steps 6000

Rectified flow as SD3 trains it: x_t = (1 - s) x_0 + s noise with s drawn logit-normal(0, 1),
timestep 1000 s, the transformer predicting noise - x_0. Captions are encoded once by the
pipeline's own encode_prompt (demo/sd3.py: two small frozen CLIP encoders, no T5), 10% are
dropped to "" for classifier-free guidance, and an EMA of the weights is what gets exported.
Resumable (re-run the same command); writes <out>/final/ as a full demo-sd3 pipeline.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import sd3
from clockwork_engine.demo.pipeline import DEMO_DIR
from clockwork_engine.distill.training import cosine_lr, ema_update, load_with_ema, plot_losses, save_with_ema


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default=DEMO_DIR, help="pipeline folder whose vae/ encodes the images (the demo's)")
    ap.add_argument("--out", default="runs/sd3")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for CFG")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    return ap


@torch.no_grad()
def encode_captions(pipe, captions: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 16, 192], [N, 192]): StableDiffusion3Pipeline.encode_prompt's text and pooled states."""
    text, pooled = [], []
    for i in range(0, len(captions), batch):
        t, _, p, _ = pipe.encode_prompt(captions[i : i + batch], None, None, do_classifier_free_guidance=False,
                                        max_sequence_length=sd3.MAX_SEQUENCE_LENGTH)
        text.append(t)
        pooled.append(p)
    return torch.cat(text), torch.cat(pooled)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder="vae").requires_grad_(False).eval()
    model = sd3.build_transformer().train()
    pipe = sd3.assemble(model, vae, os.path.join(args.out, "tokenizer_build"), seed=args.seed)
    scenes = shapes.split_scenes("train")
    caption_index = {s.caption: i for i, s in enumerate(scenes)}
    text, pooled = encode_captions(pipe, [s.caption for s in scenes] + [""])
    uncond = len(scenes)

    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    step, losses = load_with_ema(args.out, model, opt, ema)
    data = shapes.stream(args.seed * 1_000_003 + step, args.batch)
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="sd3")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=200)
        images, picked, _ = next(data)
        with torch.no_grad():
            x0 = vae.encode(shapes.to_tensor(images)).latent_dist.sample(gen) * vae.config.scaling_factor
        idx = torch.tensor([caption_index[s.caption] for s in picked])
        rows = torch.where(torch.rand(len(idx), generator=gen) < args.uncond_prob, uncond, idx)
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.sigmoid(torch.randn(len(idx), generator=gen))[:, None, None, None]  # logit-normal(0, 1)
        noisy = (1 - s) * x0 + s * noise
        pred = model(noisy, text[rows], pooled[rows], 1000 * s.flatten(), return_dict=False)[0]
        per_sample = (pred - (noise - x0)).pow(2).mean(dim=(1, 2, 3))
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, args.ema, step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_with_ema(args.out, model, opt, ema, step + 1, losses)
    plot_losses(losses, os.path.join(args.out, "loss.png"), "SD3 demo: flow-matching MSE")
    pipe.transformer = ema.eval()
    sd3.save(pipe, os.path.join(args.out, "final"))
    print(f"saved {os.path.join(args.out, 'final')}")


if __name__ == "__main__":
    main()
