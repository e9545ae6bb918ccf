"""Train the Flux-layout demo by guidance distillation from demo-sd3, as Flux-dev was made
from a CFG teacher: the student takes the guidance scale as an input (its guidance embedding)
and learns the teacher's guided velocity, so it samples with one model call a step.

    python -m clockwork_engine.demo.train_flux --out runs/flux --steps 3000

Each step: the demo's images encoded by the demo VAE, noised on the rectified-flow path
x_s = (1 - s) x_0 + s noise (s logit-normal(0, 1)); the teacher (demo-sd3) gives v_u + g (v_c - v_u)
at a guidance scale g drawn uniformly from flux.GUIDANCE_RANGE; the student (FluxTransformer2DModel
over the packed latents, its own CLIP and T5 stand-ins' states, guidance g) regresses it. An EMA of
the weights is what gets exported. Resumable (re-run the same command); writes <out>/final/.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from tqdm import tqdm

from clockwork_engine.datasets import shapes
from clockwork_engine.demo import flux, sd3
from clockwork_engine.demo.pipeline import DEMO_DIR
from clockwork_engine.demo.train_sd3 import encode_captions as encode_sd3
from clockwork_engine.distill.training import cosine_lr, ema_update, load_with_ema, plot_losses, save_with_ema
from clockwork_engine.models.flux_packing import image_ids, pack, unpack


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default=DEMO_DIR, help="pipeline folder whose vae/ encodes the images (the demo's)")
    ap.add_argument("--teacher", default=sd3.DEMO_SD3_DIR, help="the demo-sd3 pipeline folder")
    ap.add_argument("--out", default="runs/flux")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    return ap


@torch.no_grad()
def encode_captions(pipe, captions: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 16, 128], [N, 64]): FluxPipeline.encode_prompt's T5 and pooled CLIP states."""
    text, pooled = [], []
    for i in range(0, len(captions), batch):
        t, p, _ = pipe.encode_prompt(captions[i : i + batch], None, max_sequence_length=flux.MAX_SEQUENCE_LENGTH)
        text.append(t)
        pooled.append(p)
    return torch.cat(text), torch.cat(pooled)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder="vae").requires_grad_(False).eval()
    teacher_pipe = sd3.load(args.teacher)
    teacher = teacher_pipe.transformer.requires_grad_(False).eval()
    model = flux.build_transformer().train()
    pipe = flux.assemble(model, vae, os.path.join(args.out, "tokenizer_build"), seed=args.seed)
    scenes = shapes.split_scenes("train")
    caption_index = {s.caption: i for i, s in enumerate(scenes)}
    captions = [s.caption for s in scenes]
    text, pooled = encode_captions(pipe, captions)
    t_text, t_pooled = encode_sd3(teacher_pipe, captions + [""])
    uncond = len(scenes)
    ids = image_ids(16, 16, "cpu", torch.float32)  # the 16x16 latents, packed 2x2: 64 tokens
    txt_ids = torch.zeros(flux.MAX_SEQUENCE_LENGTH, 3)

    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    step, losses = load_with_ema(args.out, model, opt, ema)
    data = shapes.stream(args.seed * 1_000_003 + 41 + step, args.batch)
    gen = torch.Generator().manual_seed(args.seed * 7919 + 5 + step)
    lo, hi = flux.GUIDANCE_RANGE
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="flux")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=200)
        images, picked, _ = next(data)
        idx = torch.tensor([caption_index[s.caption] for s in picked])
        n = len(idx)
        with torch.no_grad():
            x0 = vae.encode(shapes.to_tensor(images)).latent_dist.sample(gen) * vae.config.scaling_factor
            noise = torch.randn(x0.shape, generator=gen)
            s = torch.sigmoid(torch.randn(n, generator=gen))[:, None, None, None]  # logit-normal(0, 1)
            noisy = (1 - s) * x0 + s * noise
            scale = lo + (hi - lo) * torch.rand(n, generator=gen)
            rows = torch.cat([idx, torch.full_like(idx, uncond)])
            v_c, v_u = teacher(noisy.repeat(2, 1, 1, 1), t_text[rows], t_pooled[rows], 1000 * s.flatten().repeat(2),
                               return_dict=False)[0].chunk(2)
            target = v_u + scale[:, None, None, None] * (v_c - v_u)
        pred = model(hidden_states=pack(noisy), timestep=s.flatten(), guidance=scale, pooled_projections=pooled[idx],
                     encoder_hidden_states=text[idx], txt_ids=txt_ids, img_ids=ids, return_dict=False)[0]
        loss = (unpack(pred, 16, 16) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, args.ema, step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_with_ema(args.out, model, opt, ema, step + 1, losses)
    plot_losses(losses, os.path.join(args.out, "loss.png"), "Flux demo: guidance-distillation MSE")
    pipe.transformer = ema.eval()
    flux.save(pipe, os.path.join(args.out, "final"))
    print(f"saved {os.path.join(args.out, 'final')}")


if __name__ == "__main__":
    main()
