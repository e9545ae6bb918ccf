"""clockwork distill-progressive: stage 2 of Meng et al., halve the step count per round.

    clockwork distill-progressive --model runs/guided/final --out runs/prog4 --student-steps 4
    clockwork distill-progressive --model runs/prog4/final --out runs/prog2 --student-steps 2

Sampler: DDIM with "trailing" timesteps (the N-step grid is every other point of the
2N-step grid, both starting at t=999). For a student step t -> t'' the teacher (a
w-conditioned model) takes the two DDIM steps t -> t' -> t'' from the same x_t; the
student's target x0 is the one whose single DDIM step lands on the teacher's x_t'':
    x0~ = (x_t'' - (s_t''/s_t) x_t) / (a_t'' - (s_t''/s_t) a_t)
and the loss is max(SNR_t, 1) * ||x0_student - x0~||^2 (Meng et al.'s truncated SNR
weighting). The student starts as a copy of the teacher. Resumable, seeded, torchrun-ready;
writes a full pipeline directory with the DDIM scheduler set for student-steps.
"""

from __future__ import annotations

import argparse

import torch

from ..sampler.steps import guidance_embedding
from . import student_loop
from .guidance import demo_batch


def ddim_scheduler(config):
    from diffusers import DDIMScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "trained_betas")
    return DDIMScheduler(**{k: v for k, v in dict(config).items() if k in keep}, timestep_spacing="trailing",
                         clip_sample=False, set_alpha_to_one=True)


def build_parser(ap=None):
    ap = ap or argparse.ArgumentParser(prog="clockwork distill-progressive", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the teacher: a guidance-distilled pipeline directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--student-steps", type=int, required=True, help="N: the student does in N what the teacher does in 2N")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--g-min", type=float, default=2.0)
    ap.add_argument("--g-max", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    return ap


def _alpha_sigma(ac: torch.Tensor, t: torch.Tensor):
    """VP alpha, sigma of timesteps t (t < 0 is the clean end: alpha 1, sigma 0)."""
    a = torch.where(t >= 0, ac[t.clamp(min=0)], torch.ones_like(t, dtype=ac.dtype))
    return a.sqrt()[:, None, None, None], (1 - a).sqrt()[:, None, None, None]


def main(argv=None):
    return run(build_parser().parse_args(argv))


def run(args):
    import copy

    d, engine = student_loop.setup(args)
    teacher = engine.unet
    dim = teacher.config.time_cond_proj_dim
    if not dim:
        raise ValueError(f"{args.model} is not guidance-distilled (no time_cond_proj_dim); run distill-guidance first")
    n = args.student_steps
    sched = ddim_scheduler(engine.scheduler.config)
    sched.set_timesteps(2 * n)
    grid = torch.cat([sched.timesteps.long(), torch.tensor([-1])])  # 2N + 1 points, ends at the clean image
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ac = sched.alphas_cumprod.float()

    def loss_fn(model, rng, gen):
        latents, cond, _ = demo_batch(engine, rng, gen, args.batch)
        i = torch.randint(0, n, (args.batch,), generator=gen)
        t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        w_emb = guidance_embedding(args.g_min + (args.g_max - args.g_min) * torch.rand(args.batch, generator=gen), dim)
        (a_t, s_t), (a_m, s_m), (a_n, s_n) = (_alpha_sigma(ac, x) for x in (t, t_mid, t_next))
        x_t = a_t * latents + s_t * torch.randn(latents.shape, generator=gen)
        with torch.no_grad():  # two teacher DDIM steps
            x = x_t
            for (a, s), (a2, s2), tt in (((a_t, s_t), (a_m, s_m), t), ((a_m, s_m), (a_n, s_n), t_mid)):
                eps = teacher(x, tt, cond, timestep_cond=w_emb).sample
                x = a2 * (x - s * eps) / a + s2 * eps
            ratio = s_n / s_t
            target_x0 = (x - ratio * x_t) / (a_n - ratio * a_t)
        x0_student = (x_t - s_t * model(x_t, t, cond, timestep_cond=w_emb).sample) / a_t
        per_example = (x0_student - target_x0).pow(2).mean(dim=(1, 2, 3))
        return (per_example * torch.clamp(a_t**2 / s_t**2, min=1.0).view(-1)).mean(), per_example

    losses = student_loop.train(args, student, d, loss_fn, f"progressive {2 * n}->{n}", warmup=50)
    student_loop.finish(args, d, engine, student, ddim_scheduler(engine.scheduler.config), losses,
                        f"progressive distillation {2 * n}->{n}: x0 MSE", settings={"steps": n})
    return 0

if __name__ == "__main__":
    main()
