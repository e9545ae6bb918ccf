"""Teacher features for adaptor training.

unrolled: sample full trajectories from noise with the teacher (the engine's own loop and
          solver, CFG batch), recording (r_in_i, t_emb_i, r_out_i) at every step.
noised:   forward-noise data latents to each step's timestep with one noise draw and run
          the teacher on each (the paper's ablation; needs images, so the demo world only).
rollout:  the clockwork sampler's own trajectories (phi on the clock's steps, so r_in drifts as
          it will at inference), with the teacher's L run beside phi for the target: training
          on the states phi itself leads to (DAgger-style), not only the teacher's.
Each returns per step i a Record of [B, G, ...] tensors: G = 2 with CFG (uncond, cond), else 1,
so the uncond/cond pair of one sample stays together (the guided loss needs both).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from clockwork_engine import sampler
from clockwork_engine.clockwork.cache import CacheState
from clockwork_engine.conditioning import encoders
from clockwork_engine.conditioning.latents import prepare as request_inputs


@dataclass
class Record:
    r_in: torch.Tensor  # [B, G, C_in, h, w] (a transformer's: [B, G, N, D])
    emb: torch.Tensor  # [B, G, E]
    r_out: torch.Tensor  # [B, G, C_out, h, w] (a transformer's: [B, G, N, D]): the teacher's L, the target
    r_cached: torch.Tensor | None = None  # phi's output on an adaptor step (the sampler cached it, not r_out)
    # [B, G, 1, D]: the UNet's encoder_hidden_states mean-pooled over the tokens, all phi reads
    # of them (its text.mean(1) of one token is that token), at 1/L of the memory.
    text: torch.Tensor | None = None

    @property
    def cached(self) -> torch.Tensor:
        """What the sampler cached for the next step."""
        return self.r_out if self.r_cached is None else self.r_cached

    @classmethod
    def from_batch(cls, r_in, emb, r_out, groups: int, r_cached=None, text=None) -> Record:
        """From the model batch [G*B, ...] (all uncond rows, then all cond rows); text [G*B, L, D]."""
        grouped = lambda v: None if v is None else v.unflatten(0, (groups, -1)).transpose(0, 1)  # noqa: E731
        pooled = None if text is None else text.mean(1, keepdim=True)
        return cls(*(grouped(v) for v in (r_in, emb, r_out, r_cached, pooled)))


# (text, added or None) as the engine's sampler gets them with no negative prompt
_conditioning = encoders.for_sampler


def unrolled(engine, split, prompts: list[str], steps: int, guidance: float, generator: torch.Generator):
    """The teacher's own trajectories: a rollout without adaptor steps."""
    return rollout(engine, split, None, prompts, steps, guidance, [False] * engine.runner.table(steps).num_steps,
                   generator)


def latent_size(engine) -> tuple[int, int]:
    """(h, w) of the trajectories' latents: the size a request gets when it names none, as the
    sampler keeps them (Flux packs its own)."""
    return tuple(side // engine.vae_factor for side in engine.config.sampling.size_or(engine.default_size))


def sample(engine, denoiser, prompts: list[str], steps: int, guidance: float, schedule: list[bool],
           generator: torch.Generator) -> torch.Tensor:
    """The sampler's final latents [B, C, h, w] with denoiser(use_adaptor) at each model evaluation
    (schedule[i]: phi at evaluation i); differentiable where the caller enables grad."""
    table = engine.runner.table(steps)
    cfg = engine.uses_cfg(guidance)
    h, w = latent_size(engine)
    with torch.no_grad():  # the text stays the encoders'; only phi's weights are fitted
        text, added = _conditioning(engine, prompts, cfg)
    guidance = torch.full((len(prompts),), float(guidance))
    added = {**(added or {}), **engine.runner.family.guidance_inputs(engine.model, guidance)} or None  # Flux-dev's
    inputs = request_inputs(table, engine.vae, (len(prompts), engine.vae.config.latent_channels, h, w),
                             [generator], torch.float32, engine.device, text, guidance)
    common = dict(text=text, guidance=guidance, cfg=cfg, embed_guidance=engine.guidance_dim, noise=inputs.noise,
                  added=added)
    step_fns = {kind: partial(sampler.step, denoiser(kind == "adaptor"), table, **common)
                for kind in ("full", "adaptor")}  # "adaptor" is never called without adaptor steps
    return sampler.run(step_fns, ["adaptor" if a else "full" for a in schedule], table, inputs.latents, CacheState())


@torch.no_grad()
def rollout(engine, split, adaptor, prompts: list[str], steps: int, guidance: float, schedule: list[bool],
            generator: torch.Generator):
    """schedule[i]: phi at model evaluation i (the clock's schedule, first step full)."""
    cfg = engine.uses_cfg(guidance)
    records: list[Record] = []

    def denoiser(use_adaptor: bool):
        def denoise(x, t, text, r_out_prev, cond=None, added=None):
            hin = split.h_in(x, t, text, cond, added)
            r_out = split.low(hin.r_in, hin.emb, text, hin.skips)
            phi = adaptor(hin.r_in, r_out_prev, hin.emb, text) if use_adaptor else None
            records.append(Record.from_batch(hin.r_in, hin.emb, r_out, 1 + cfg, r_cached=phi, text=text))
            used = r_out if phi is None else phi
            return split.h_out(used, hin.skips, hin.emb, text), used

        return denoise

    sample(engine, denoiser, prompts, steps, guidance, schedule, generator)
    return records


@torch.no_grad()
def noised(engine, split, prompts: list[str], latents: torch.Tensor, steps: int, guidance: float,
           generator: torch.Generator):
    """latents [B, C, h, w]: clean data latents (already scaled) for the prompts; DDPM forward
    noising, so a diffusion model's (a flow-matching model is fitted on unrolled or rollout)."""
    if engine.runner.family.flow_matching:
        raise ValueError("--mode noised forward-noises by the diffusion schedule; a flow-matching model "
                         f"({engine.runner.family.pipeline_class}) is fitted with --mode unrolled or rollout")
    table = engine.runner.table(steps)
    cfg = engine.uses_cfg(guidance)
    text, added = _conditioning(engine, prompts, cfg)
    cond = None
    if engine.guidance_dim:
        cond = sampler.steps.guidance_embedding(torch.full((len(prompts),), guidance), engine.guidance_dim)
    ac = engine.scheduler.alphas_cumprod
    noise = torch.randn(latents.shape, generator=generator)
    records: list[Record] = []
    for t in table.timesteps:
        x = ac[t].sqrt() * latents + (1 - ac[t]).sqrt() * noise
        x = torch.cat([x, x]) if cfg else x
        hin = split.h_in(x, t, text, cond, added)
        r_out = split.low(hin.r_in, hin.emb, text, hin.skips)
        records.append(Record.from_batch(hin.r_in, hin.emb, r_out, 1 + cfg, text=text))
    return records


def pairs(records: list[Record], adaptor_steps: list[int]):
    """Training pairs (r_in_i, r_out_{i-1}, emb_i, text) -> r_out_i for the adaptor's steps, each [N, G, ...]."""
    cat = lambda xs: torch.cat(xs)  # noqa: E731
    return (cat([records[i].r_in for i in adaptor_steps]), cat([records[i - 1].cached for i in adaptor_steps]),
            cat([records[i].emb for i in adaptor_steps]), cat([records[i].text for i in adaptor_steps]),
            cat([records[i].r_out for i in adaptor_steps]))
