"""Train a LoRA of the demo UNet that recolours the shapes world: every colour word draws the
colour RECOLOUR names (red draws blue, blue draws green, ...), everything else as before.

    python -m clockwork_engine.demo.train_lora --out runs/lora_recolour --steps 1500

The demo's own objective (epsilon, min-SNR-5, 10% captions dropped), on the demo's images with
their colours swapped, through a rank-8 LoRA of every attention projection (to_q, to_k, to_v,
to_out.0: all of them in the demo UNet's low-resolution middle, the part clockwork's adaptor
stands in for). Saved as diffusers saves a LoRA (`save_lora_weights`): what
`engine.load_lora` and diffusers' `load_lora_weights` read. It measures how an adaptor fitted
on the base model drifts under a LoRA (benches/bench_lora_drift.py).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import pipeline
from clockwork_engine.demo.train_unet import encode_captions
from clockwork_engine.distill.training import cosine_lr, min_snr_weights

RECOLOUR = {"red": "blue", "blue": "green", "green": "red", "yellow": "purple", "purple": "orange",
            "orange": "yellow", "black": "black"}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def recolour(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3]: each palette colour replaced by the one RECOLOUR names (shapes are
    drawn in exact palette colours, so a pixel match finds them)."""
    out = images.copy()
    for src, dst in RECOLOUR.items():
        out[(images == shapes.COLOURS[src]).all(axis=-1)] = shapes.COLOURS[dst]
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/lora_recolour")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--uncond-prob", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from clockwork_engine.demo import models

    torch.manual_seed(args.seed)
    pipe = pipeline.load()
    unet, vae = pipe.unet, pipe.vae.requires_grad_(False).eval()
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scenes = shapes.split_scenes("train")
    caption_index = {s.caption: i for i, s in enumerate(scenes)}
    embeds = encode_captions(pipe.tokenizer, pipe.text_encoder, [s.caption for s in scenes] + [""])
    noise_sched = DDPMScheduler(**{k: v for k, v in models.SCHEDULER_CONFIG.items() if k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    data, gen = shapes.stream(args.seed * 1_000_003 + 17, args.batch), torch.Generator().manual_seed(args.seed)
    unet.train()
    bar = tqdm(range(args.steps), desc="lora")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=100)
        images, picked, _ = next(data)
        with torch.no_grad():
            latents = vae.encode(shapes.to_tensor(recolour(images))).latent_dist.sample(gen) * vae.config.scaling_factor
        idx = torch.tensor([caption_index[s.caption] for s in picked])
        cond = embeds[torch.where(torch.rand(len(idx), generator=gen) < args.uncond_prob, len(scenes), idx)]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        pred = unet(noise_sched.add_noise(latents, noise, t), t, cond).sample
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * min_snr_weights(noise_sched.alphas_cumprod, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    os.makedirs(args.out, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(args.out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
