"""clockwork distill-guidance: stage 1 of Meng et al., one w-conditioned model replaces the
two evaluations of classifier-free guidance.

    clockwork distill-guidance --model demo --out runs/guided --steps 1500
    torchrun --nproc_per_node 2 -m clockwork_engine.distill.guidance --model demo --out runs/guided

The student is the teacher's UNet with time_cond_proj_dim set (diffusers adds
cond_proj(w_embedding) to the time embedding) and that projection zero-initialised, so it
starts as the teacher's conditional model. Per example a guidance scale g ~ U[g_min, g_max]
and a timestep t are drawn; data latents of the demo world are noised to t; the loss is
the (min-SNR-5 weighted) MSE between the student's eps(x_t, t, c, g) and the teacher's
guided eps_u + g (eps_c - eps_u). Resumable, seeded, progress bar, safetensors; writes a
full pipeline directory (the engine runs it with one evaluation per step).

The teacher may be an SD 1.x/2.x or an SDXL model: both models get the conditioning the
engine's sampler gives the captions (encoders.for_sampler: for SDXL both text encoders,
the pooled embedding and the time ids as added_cond_kwargs, zeros for the empty negative
prompt where the pipeline asks for them). The data is the demo world's (64x64 images and
their captions) whatever the teacher: enough to run and test the path on any model, not a
training set for a real one.
"""

from __future__ import annotations

import argparse

import torch

from clockwork_engine.conditioning import encoders
from clockwork_engine.datasets import shapes
from clockwork_engine.distill import student_loop
from clockwork_engine.distill.training import min_snr_weights
from clockwork_engine.sampler.steps import guidance_embedding

GUIDANCE_EMBED_DIM = 256


def build_parser(ap=None):
    ap = ap or argparse.ArgumentParser(prog="clockwork distill-guidance", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo", help="the teacher: 'demo' or a diffusers SD / SDXL directory")
    ap.add_argument("--out", required=True, help="output folder (checkpoint and final pipeline)")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=32, help="examples per step (per process)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--g-min", type=float, default=2.0)
    ap.add_argument("--g-max", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    return ap


def make_student(teacher_unet, embed_dim: int = GUIDANCE_EMBED_DIM):
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=embed_dim)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def demo_batch(engine, rng, gen, batch: int, cfg: bool = True):
    """(clean latents, text, added or None) of the demo world's training images and captions:
    the conditioning the engine's sampler gives the captions at the images' size, with CFG the
    empty prompt's `batch` rows first, then the captions' (encoders.for_sampler)."""
    images, scenes, _ = shapes.sample_batch(rng, shapes.split_scenes("train"), batch)
    pixels = shapes.to_tensor(images)
    with torch.no_grad():
        latents = engine.vae.encode(pixels).latent_dist.sample(gen) * engine.vae.config.scaling_factor
    text, added = encoders.for_sampler(engine, [s.caption for s in scenes], cfg, *pixels.shape[-2:])
    return latents, text, added


def main(argv=None):
    return run(build_parser().parse_args(argv))


def run(args):
    d, engine = student_loop.setup(args)
    teacher = engine.unet
    student = make_student(teacher).train()
    ac = engine.scheduler.alphas_cumprod

    def loss_fn(model, rng, gen):
        latents, text, added = demo_batch(engine, rng, gen, args.batch)  # [2B]: uncond rows, then cond
        cond = slice(args.batch, None)
        t = torch.randint(0, len(ac), (args.batch,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        x_t = ac[t].sqrt()[:, None, None, None] * latents + (1 - ac[t]).sqrt()[:, None, None, None] * noise
        w = args.g_min + (args.g_max - args.g_min) * torch.rand(args.batch, generator=gen)
        with torch.no_grad():
            eps_u, eps_c = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), text,
                                   added_cond_kwargs=added).sample.chunk(2)
            target = eps_u + w[:, None, None, None] * (eps_c - eps_u)
        pred = model(x_t, t, text[cond], timestep_cond=guidance_embedding(w, GUIDANCE_EMBED_DIM),
                     added_cond_kwargs=encoders.rows(added, cond)).sample
        per_example = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (per_example * min_snr_weights(ac, t)).mean(), per_example

    losses = student_loop.train(args, student, d, loss_fn, "guidance distillation", warmup=100)
    student_loop.finish(args, d, engine, student, type(engine.scheduler).from_config(engine.scheduler.config),
                        losses, "guidance distillation: eps MSE")
    return 0

if __name__ == "__main__":
    main()
