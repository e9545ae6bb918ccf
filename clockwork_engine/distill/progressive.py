"""clockwork distill-progressive: stage 2 of Meng et al., halve the step count per round.

    clockwork distill-progressive --model runs/guided/final --out runs/prog4 --student-steps 4
    clockwork distill-progressive --model runs/prog4/final --out runs/prog2 --student-steps 2

A student step does what two teacher steps do. The student samples with DDIM; for its step
t -> t'' the target x0 is the one whose single DDIM step lands where the teacher's two steps
t -> t' -> t'' land from the same x_t:
    x0~ = (x_t'' - (s_t''/s_t) x_t) / (a_t'' - (s_t''/s_t) a_t)
and the loss is max(SNR_t, 1) * ||x0_student - x0~||^2 (Meng et al.'s truncated SNR
weighting). The student starts as a copy of the teacher (a w-conditioned model). Two sources
of (x_t, x_t''), --data:

  trajectories (default)  the teacher's own sampler (its scheduler at 2N steps, e.g. the
          demo's DPM-Solver++ 2M) run from noise on training captions, w ~ U[g_min, g_max]
          per trajectory: x_t and x_t'' are its states two steps apart, the last one its
          sample. The student's N timesteps are every other one of the teacher's: it samples
          with first-order DPM-Solver++ (DDIM) on that grid, written to its
          clockwork_engine.json as "timesteps" (for diffusers: pipe(..., timesteps=grid)). So
          it learns the sampler the teacher is used with, on the states that sampler visits.
  noised  Meng et al.: x_t is a data latent noised to t, the teacher takes two DDIM steps
          (trailing grid, both starting at t=999) online. The student learns that sampler,
          which on the demo is the weaker one: guided-8 scores 84% colour+shape with it
          against 92% with its own DPM-Solver++ (docs/results.md, progressive rounds).

--teacher-steps M (trajectories only) lets one student step match M/N teacher steps, e.g.
8 -> 1 straight from guided-8 (the target of a one-step student is then the teacher's
sample itself); --init starts the student from another directory's UNet (e.g. the N = 2
student) instead of the teacher's.

Resumable (trajectories are re-recorded from the seed on resume), seeded, torchrun-ready
(each rank records its own trajectories); writes a full pipeline directory with the
student's scheduler and its clockwork_engine.json (guidance scale, steps, grid).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from clockwork_engine.conditioning import encoders
from clockwork_engine.datasets import shapes
from clockwork_engine.distill import student_loop
from clockwork_engine.distill.guidance import demo_batch
from clockwork_engine.sampler.solver import update
from clockwork_engine.sampler.steps import guidance_embedding

# What a student's scheduler takes over from its teacher's: the noise schedule and prediction type.
NOISE_SCHEDULE = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "trained_betas")


def _taken_over(config, keys=NOISE_SCHEDULE) -> dict:
    return {k: v for k, v in dict(config).items() if k in keys}


def ddim_scheduler(config):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_taken_over(config), timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)


def grid_scheduler(config):
    """The student's sampler for --data trajectories: first-order DPM-Solver++ (which is DDIM)
    on the custom timestep grid the engine takes from the student's clockwork_engine.json."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**_taken_over(config, NOISE_SCHEDULE + ("timestep_spacing", "steps_offset")),
                                       solver_order=1, algorithm_type="dpmsolver++", final_sigmas_type="zero")


def build_parser(ap=None):
    ap = ap or argparse.ArgumentParser(prog="clockwork distill-progressive", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the teacher: a guidance-distilled pipeline directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--student-steps", type=int, required=True,
                    help="N: the student does in N steps what the teacher does in 2N (or --teacher-steps)")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="M, a multiple of N (default 2N): one student step does what M/N teacher steps do "
                         "(--data trajectories; e.g. 8 -> 1 straight from guided-8)")
    ap.add_argument("--init", default=None,
                    help="start the student from this pipeline directory's UNet (default: the teacher's), "
                         "e.g. an earlier student of the same architecture")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--g-min", type=float, default=2.0)
    ap.add_argument("--g-max", type=float, default=8.0)
    ap.add_argument("--data", choices=("trajectories", "noised"), default="trajectories",
                    help="trajectories: states of the teacher's own sampler from noise; noised: Meng et al.'s "
                         "forward-noised data, two teacher DDIM steps online (see above)")
    ap.add_argument("--trajectories", type=int, default=4096, help="teacher trajectories to record, per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=250)
    return ap


def _alpha_sigma(ac: torch.Tensor, t: torch.Tensor):
    """VP alpha, sigma of timesteps t (t < 0 is the clean end: alpha 1, sigma 0)."""
    a = torch.where(t >= 0, ac[t.clamp(min=0)], torch.ones_like(t, dtype=ac.dtype))
    return a.sqrt()[:, None, None, None], (1 - a).sqrt()[:, None, None, None]


def _meng_loss(x0_student, x_t, x_next, t_coeffs, next_coeffs):
    """(max(SNR_t, 1)-weighted batch loss, per-example x0 MSE): the student's x0 against the x0
    whose single DDIM step from x_t lands on x_next; coeffs are (alpha, sigma) [B, 1, 1, 1]."""
    (a_t, s_t), (a_n, s_n) = t_coeffs, next_coeffs
    ratio = s_n / s_t
    target_x0 = (x_next - ratio * x_t) / (a_n - ratio * a_t)
    per_example = (x0_student - target_x0).pow(2).mean(dim=(1, 2, 3))
    return (per_example * torch.clamp(a_t**2 / s_t**2, min=1.0).view(-1)).mean(), per_example


def main(argv=None):
    return run(build_parser().parse_args(argv))


@torch.no_grad()
def teacher_trajectories(engine, steps: int, count: int, g_min: float, g_max: float, seed: int, chunk: int = 64):
    """The teacher's own sampler (its scheduler at `steps` steps, the engine's solver table)
    from noise on `count` demo training captions; chunk c draws its noise as generate(seed=
    seed + c) does. Returns (states [K, steps + 1, C, h, w], states[:, -1] being the samples;
    captions [K]; w [K])."""
    table = engine.runner.table(steps)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    train = shapes.split_scenes("train")
    size = engine.default_size // engine.vae_factor
    states, captions, ws = [], [], []
    for k in tqdm(range(0, count, chunk), desc=f"teacher trajectories ({steps} steps)"):
        b = min(chunk, count - k)
        batch = [s.caption for s in shapes.sample_batch(rng, train, b)[1]]
        w = g_min + (g_max - g_min) * torch.rand(b, generator=gen)
        (text, added), cond = encoders.for_sampler(engine, batch, False), guidance_embedding(w, engine.guidance_dim)
        noise_gen = torch.Generator().manual_seed(seed + k // chunk)
        x = torch.randn(b, engine.unet.config.in_channels, size, size, generator=noise_gen) * table.init_noise_sigma
        xs, history = [x], table.empty_history(x)
        for i in range(table.num_steps):
            eps = engine.unet(x / table.in_div[i], table.timesteps[i], text, timestep_cond=cond,
                              added_cond_kwargs=added).sample
            x, history = update(table, torch.tensor(i), x, eps, history)
            xs.append(x)
        states.append(torch.stack(xs, 1))
        captions += batch
        ws.append(w)
    return torch.cat(states), captions, torch.cat(ws)


def vp_states(states: torch.Tensor, table) -> torch.Tensor:
    """A sampler's states [K, E + 1, ...] in the VP form x = a x0 + s eps the loss takes: a
    sigma-space sampler's (Euler, SDXL's default) are x / in_div, the model input; a VP
    sampler's (DDIM, DPM-Solver: in_div 1) stay as they are; the last state is the sample."""
    return states / torch.cat([table.in_div.cpu(), torch.ones(1)]).view(1, -1, *[1] * (states.dim() - 2))


def _trajectory_loss(args, engine, d):
    """(loss_fn, the student's scheduler, its settings) for --data trajectories."""
    n, m = args.student_steps, args.teacher_steps
    k = m // n  # teacher steps per student step
    table = engine.runner.table(m)
    teacher_t = table.timesteps.tolist()
    if table.num_steps != m or any(t != int(t) for t in teacher_t):
        raise ValueError(f"--data trajectories needs a teacher scheduler with one model evaluation a step on integer "
                         f"timesteps; {type(engine.scheduler).__name__} at {m} steps gives {teacher_t}")
    teacher_t = [int(t) for t in teacher_t]
    states, captions, ws = teacher_trajectories(engine, m, args.trajectories, args.g_min, args.g_max,
                                                seed=(args.seed * 97 + d.rank) * 1_000_003)  # apart per rank
    states = vp_states(states, table)
    ac = engine.scheduler.alphas_cumprod.float()
    grid = torch.tensor(teacher_t[::k] + [-1])  # the student's N timesteps, then the clean end
    dim = engine.guidance_dim

    def loss_fn(model, rng, gen):
        j = torch.from_numpy(rng.integers(0, len(captions), args.batch))
        i = torch.randint(0, n, (args.batch,), generator=gen)
        x_t, x_next = states[j, k * i], states[j, k * i + k]  # [B, C, h, w]: k teacher steps apart
        a_t, s_t = _alpha_sigma(ac, grid[i])
        text, added = encoders.for_sampler(engine, [captions[c] for c in j.tolist()], False)
        eps = model(x_t, grid[i], text, timestep_cond=guidance_embedding(ws[j], dim), added_cond_kwargs=added).sample
        return _meng_loss((x_t - s_t * eps) / a_t, x_t, x_next, (a_t, s_t), _alpha_sigma(ac, grid[i + 1]))

    return loss_fn, grid_scheduler(engine.scheduler.config), {"steps": n, "timesteps": teacher_t[::k]}


def _noised_loss(args, engine):
    """(loss_fn, the student's scheduler, its settings) for --data noised (Meng et al.)."""
    teacher = engine.unet
    n = args.student_steps
    sched = ddim_scheduler(engine.scheduler.config)
    sched.set_timesteps(2 * n)
    grid = torch.cat([sched.timesteps.long(), torch.tensor([-1])])  # 2N + 1 points, ends at the clean image
    ac = sched.alphas_cumprod.float()
    dim = engine.guidance_dim

    def loss_fn(model, rng, gen):
        latents, text, added = demo_batch(engine, rng, gen, args.batch, cfg=False)
        i = torch.randint(0, n, (args.batch,), generator=gen)
        t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        w_emb = guidance_embedding(args.g_min + (args.g_max - args.g_min) * torch.rand(args.batch, generator=gen), dim)
        (a_t, s_t), (a_m, s_m), (a_n, s_n) = (_alpha_sigma(ac, x) for x in (t, t_mid, t_next))
        x_t = a_t * latents + s_t * torch.randn(latents.shape, generator=gen)
        with torch.no_grad():  # two teacher DDIM steps
            x = x_t
            for (a, s), (a2, s2), tt in (((a_t, s_t), (a_m, s_m), t), ((a_m, s_m), (a_n, s_n), t_mid)):
                eps = teacher(x, tt, text, timestep_cond=w_emb, added_cond_kwargs=added).sample
                x = a2 * (x - s * eps) / a + s2 * eps
        x0_student = (x_t - s_t * model(x_t, t, text, timestep_cond=w_emb, added_cond_kwargs=added).sample) / a_t
        return _meng_loss(x0_student, x_t, x, (a_t, s_t), (a_n, s_n))

    return loss_fn, ddim_scheduler(engine.scheduler.config), {"steps": n}


def _init_unet(folder: str, teacher_unet):
    """The UNet of another pipeline directory, which must have the teacher's architecture."""
    from diffusers import UNet2DConditionModel

    from clockwork_engine.models.checkpoint import public_config
    from clockwork_engine.models.loading import resolve

    unet = UNet2DConditionModel.from_pretrained(resolve(folder), subfolder="unet")
    if public_config(unet.config) != public_config(teacher_unet.config):
        raise ValueError(f"--init {folder}: its UNet's config differs from the teacher's")
    return unet.to(teacher_unet.dtype)


def run(args):
    import copy

    n = args.student_steps
    args.teacher_steps = args.teacher_steps or 2 * n
    if n < 1 or args.teacher_steps % n or args.teacher_steps <= n:
        raise ValueError(f"--teacher-steps must be a multiple of --student-steps above it, got "
                         f"{args.teacher_steps} and {n}")
    if args.data == "noised" and args.teacher_steps != 2 * n:
        raise ValueError("--data noised takes two teacher steps per student step (Meng et al.); "
                         "--teacher-steps needs --data trajectories")
    d, engine = student_loop.setup(args)
    if not engine.guidance_dim:
        raise ValueError(f"{args.model} is not guidance-distilled (no time_cond_proj_dim); run distill-guidance first")
    if args.data == "trajectories":
        loss_fn, scheduler, settings = _trajectory_loss(args, engine, d)
    else:
        loss_fn, scheduler, settings = _noised_loss(args, engine)
    # --init loads a UNet of its own; the teacher's is copied (the engine keeps using it)
    student = copy.deepcopy(engine.unet) if args.init is None else _init_unet(args.init, engine.unet)
    student.train().requires_grad_(True)
    m = args.teacher_steps
    losses = student_loop.train(args, student, d, loss_fn, f"progressive {m}->{n}", warmup=50)
    student_loop.finish(args, d, engine, student, scheduler, losses,
                        f"progressive distillation {m}->{n} ({args.data}): x0 MSE", settings=settings)
    return 0

if __name__ == "__main__":
    main()
