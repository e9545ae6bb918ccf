"""Train the demo's mask ControlNet: the control image (shapes.control_mask: white where the
shapes go) fixes each shape's outline and place; the caption still picks colours and kinds.

    python -m clockwork_engine.demo.train_controlnet --out runs/controlnet_mask --steps 2500

A diffusers ControlNetModel copied from the demo UNet's encoder (`ControlNetModel.from_unet`,
zero convolutions on its residuals), its conditioning embedding two stride-2 convolutions deep
(64x64 control image -> the 16x16 latent, the demo VAE's 4x factor). The UNet stays frozen;
the demo's objective (epsilon, min-SNR-5) on the demo's images and their masks, 30% of
captions dropped to "" so the mask alone carries the layout (ControlNet's recipe drops 50%).
Saved with `save_pretrained`: what diffusers' StableDiffusionControlNetPipeline and
`Engine.from_pretrained("demo", controlnet=...)` load. Measured by benches/bench_controlnet_demo.py.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import pipeline
from clockwork_engine.demo.train_unet import encode_captions
from clockwork_engine.distill.training import cosine_lr, min_snr_weights

CONDITIONING_CHANNELS = (16, 32, 64)  # three convolution stages, two of them stride 2: 4x down


def control_tensor(layouts: list[list[shapes.Shape]]) -> torch.Tensor:
    """float32 [B, 3, 64, 64] in [0, 1], as the ControlNet pipelines' control_image_processor
    makes it from the PIL masks."""
    return (shapes.to_tensor(np.stack([shapes.control_mask(lay) for lay in layouts])) + 1) / 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/controlnet_mask")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--uncond-prob", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500, help="overwrite --out every this many steps")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from diffusers import ControlNetModel, DDPMScheduler

    from clockwork_engine.demo import models

    torch.manual_seed(args.seed)
    pipe = pipeline.load()
    unet, vae = pipe.unet.requires_grad_(False).eval(), pipe.vae.requires_grad_(False).eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    controlnet.train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    scenes = shapes.split_scenes("train")
    caption_index = {s.caption: i for i, s in enumerate(scenes)}
    embeds = encode_captions(pipe.tokenizer, pipe.text_encoder, [s.caption for s in scenes] + [""])
    noise_sched = DDPMScheduler(**{k: v for k, v in models.SCHEDULER_CONFIG.items() if k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    data, gen = shapes.stream(args.seed * 1_000_003 + 29, args.batch), torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="controlnet")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=100)
        images, picked, layouts = next(data)
        with torch.no_grad():
            latents = vae.encode(shapes.to_tensor(images)).latent_dist.sample(gen) * vae.config.scaling_factor
        idx = torch.tensor([caption_index[s.caption] for s in picked])
        cond = embeds[torch.where(torch.rand(len(idx), generator=gen) < args.uncond_prob, len(scenes), idx)]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = noise_sched.add_noise(latents, noise, t)
        down, mid = controlnet(noisy, t, cond, controlnet_cond=control_tensor(layouts), return_dict=False)
        pred = unet(noisy, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * min_snr_weights(noise_sched.alphas_cumprod, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            controlnet.save_pretrained(args.out, safe_serialization=True)
    controlnet.save_pretrained(args.out, safe_serialization=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
