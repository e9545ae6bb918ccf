"""Train the demo UNet (text-to-image, epsilon prediction) on the shapes world.

    python -m clockwork_engine.demo.train_unet --vae runs/vae/final --out runs/unet --steps 8000

Captions are encoded once (the grammar has ~1.7K training captions) exactly as diffusers'
StableDiffusionPipeline encodes them, 10% are dropped to "" for classifier-free guidance,
losses are weighted by min-SNR-5, and an EMA of the weights is what gets exported.
Resumable (re-run the same command); writes <out>/final/ as a full demo pipeline.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import models, pipeline
from clockwork_engine.distill.training import (cosine_lr, ema_update, load_with_ema, min_snr_weights, plot_losses,
                                               save_with_ema)


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], batch: int = 256) -> torch.Tensor:
    """[N, max_length, 384], the same computation as StableDiffusionPipeline.encode_prompt."""
    out = []
    for i in range(0, len(captions), batch):
        ids = tokenizer(
            captions[i : i + batch], padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="runs/vae/final", help="trained VAE folder (diffusers layout)")
    ap.add_argument("--out", default="runs/unet")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for CFG")
    ap.add_argument("--init", default=None,
                    help="start from this pipeline directory's unet (e.g. clockwork_engine/demo/weights) "
                         "instead of random weights; a checkpoint in --out still takes precedence")
    ap.add_argument("--top-attention", action="store_true",
                    help="the earlier demo architecture: transformer blocks at 16x16 too (models.TOP_ATTENTION)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    return ap


def _unet(args):
    """The UNet to train: built fresh, or with every weight from --init."""
    unet = models.build_unet(**(models.TOP_ATTENTION if args.top_attention else {}))
    if args.init:
        from diffusers import UNet2DConditionModel

        # Every weight comes from --init; weights the built UNet has no place for are dropped
        # (e.g. the 16x16 transformer blocks of the earlier demo UNet), missing ones are an error.
        init = UNet2DConditionModel.from_pretrained(args.init, subfolder="unet").state_dict()
        missing, dropped = unet.load_state_dict(init, strict=False)
        if missing:
            raise ValueError(f"--init {args.init} lacks weights the new UNet needs: {missing[:5]}")
        if dropped:
            print(f"--init {args.init}: {len(dropped)} weights dropped (not in the new UNet), e.g. {dropped[0]}")
    return unet.train()


def main(argv=None):
    args = build_parser().parse_args(argv)
    from diffusers import AutoencoderKL, DDPMScheduler

    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae).requires_grad_(False).eval()
    tokenizer, text_encoder = models.load_text_encoder()
    scenes = shapes.split_scenes("train")
    caption_index = {s.caption: i for i, s in enumerate(scenes)}
    embeds = encode_captions(tokenizer, text_encoder, [s.caption for s in scenes] + [""])
    uncond = len(scenes)

    unet = _unet(args)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    step, losses = load_with_ema(args.out, unet, opt, ema)
    noise_sched = DDPMScheduler(**{k: v for k, v in models.SCHEDULER_CONFIG.items() if k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")})
    alphas_cumprod = noise_sched.alphas_cumprod

    data = shapes.stream(args.seed * 1_000_003 + step, args.batch)
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    unet.train()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="unet")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=200)
        images, picked, _ = next(data)
        with torch.no_grad():
            latents = vae.encode(shapes.to_tensor(images)).latent_dist.sample(gen) * vae.config.scaling_factor
        idx = torch.tensor([caption_index[s.caption] for s in picked])
        drop = torch.rand(len(idx), generator=gen) < args.uncond_prob
        cond = embeds[torch.where(drop, uncond, idx)]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = noise_sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, cond).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(alphas_cumprod, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, args.ema, step)
        losses.append(per_sample.mean().item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_with_ema(args.out, unet, opt, ema, step + 1, losses)
    plot_losses(losses, os.path.join(args.out, "loss.png"), "UNet epsilon MSE (unweighted)")
    ema.eval()
    pipe = pipeline.assemble(ema, vae, tokenizer=tokenizer, text_encoder=text_encoder)
    pipeline.save(pipe, os.path.join(args.out, "final"))
    print(f"saved {os.path.join(args.out, 'final')}")


if __name__ == "__main__":
    main()
