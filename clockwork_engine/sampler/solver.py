"""Diffusers schedulers as per-step coefficient tables, so a step is pure tensor arithmetic.

Every scheduler the engine takes is linear in what it has seen. At model evaluation i
(a step of a one-evaluation scheduler, a stage of Heun / KDPM2 / singlestep DPM-Solver):

    model input  = x_i / in_div[i]                           (scale_model_input)
    c_i          = clamp(p[i] x_i + q[i] m_i, -r, r)         (x0 clipping; DDIM/DDPM/LCM/TCD/Heun only)
    x_{i+1}      = sum_k sum_v coeffs[i, k, v] * V_{i-k}[v]  +  noise_term[i]

where V_j = (x_j, m_j[, c_j]) are the sample, the (guided) model output and the clipped x0
prediction of evaluation j, k runs over a window of K evaluations, and noise_term[i] is a
fixed mix of the noise the scheduler draws, pre-drawn per request in diffusers' order. An
edit starts from the image: x_0 = start[0] * image latents + start[1] * noise (add_noise at
the first timestep the strength leaves), and 4-channel inpainting blends after each step:
x_{i+1} = (1 - mask) * (blend[i, 0] * image latents + blend[i, 1] * noise) + mask * x_{i+1}.

The tables are read off the diffusers scheduler object itself (tables.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Start:
    """Where a trajectory starts. Text-to-image: from noise over the whole grid. An edit:
    `strength` in (0, 1] picks the first timestep as diffusers' get_timesteps does;
    from_image: x_0 is the image latents noised to it (img2img, inpainting below strength 1),
    else noise * init sigma; blend: 4-channel inpainting's latent blend after every step."""

    strength: float | None = None
    from_image: bool = False
    blend: bool = False


TEXT_TO_IMAGE = Start()


@dataclass(frozen=True)
class SolverTable:
    timesteps: torch.Tensor  # [E] what the model is given at evaluation i (the scheduler's dtype)
    in_div: torch.Tensor  # [E] float32 divisor of the model input (its float32 rounding is the scheduler's own)
    coeffs: torch.Tensor  # [E, K, V] float32 over evaluations i - K + 1 .. i (oldest first)
    clip: tuple | None  # (p [E], q [E], r) when the scheduler clips its x0 prediction, else None
    noise_mix: torch.Tensor | None  # [E, D] float64: noise_term[i] = sum_d noise_mix[i, d] * draw_d
    init_noise_sigma: float
    steps: int  # the num_inference_steps this table was built for
    draws: int = 0  # noise tensors the scheduler draws per request (noise_mix's D)
    start: Start = TEXT_TO_IMAGE
    start_mix: tuple[float, float] = (0.0, 1.0)  # x_0 = [0] * image latents + [1] * noise
    blend_mix: torch.Tensor | None = None  # [E, 2] float64 (image, noise) outside the mask after step i
    options: tuple = ()  # extra set_timesteps arguments, as (name, value) pairs (e.g. SD3's mu)

    @property
    def num_steps(self) -> int:
        """Model evaluations that run (the engine's steps): the scheduler's timesteps from the
        first one the strength leaves."""
        return self.timesteps.numel()

    @property
    def window(self) -> int:
        return self.coeffs.shape[1]

    @property
    def vectors(self) -> int:
        return self.coeffs.shape[2]

    def to(self, device) -> SolverTable:
        """The tensors the step reads on the device (the host-side mixes stay where they are)."""
        clip = None if self.clip is None else (self.clip[0].to(device), self.clip[1].to(device), self.clip[2])
        return replace(self, timesteps=self.timesteps.to(device), in_div=self.in_div.to(device),
                       coeffs=self.coeffs.to(device), clip=clip)

    def empty_history(self, x: torch.Tensor) -> torch.Tensor:
        """[K, V, B, C, h, w] zeros: the window of past vectors before the first evaluation."""
        return x.new_zeros((self.window, self.vectors) + tuple(x.shape), dtype=torch.float32)

    def initial(self, noise: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """x_0 [B, C, h, w] float32 from the noise and, for an edit, the image latents."""
        x = self.start_mix[1] * noise.double()
        if self.start_mix[0]:
            x = x + self.start_mix[0] * image.double()
        return x.float()

    def noise_terms(self, draws: list[torch.Tensor]) -> torch.Tensor | None:
        """[E, B, C, h, w] float32 noise term of every evaluation from the scheduler's draws (each
        [B, C, h, w], in the order it draws them), or None for a deterministic scheduler."""
        if self.noise_mix is None:
            return None
        return _mix(self.noise_mix, draws)

    def blend_terms(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor | None:
        """[E, B, C, h, w] float32: what 4-channel inpainting keeps outside the mask after each step."""
        return None if self.blend_mix is None else _mix(self.blend_mix, [image, noise])


def _mix(weights: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([t.double() for t in tensors])  # [D, B, C, h, w]
    return torch.einsum("ed,d...->e...", weights.to(stacked.device), stacked).float()


def _at(column: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    # index_select keeps the step index on the device (no .item(), graph-capturable)
    return column.index_select(0, i.view(1))


def per_row(column: torch.Tensor, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """column[i] shaped to broadcast over like [B, ...]: [1, 1, ...] for one index, [B, 1, ...]
    for one index a row."""
    return column.index_select(0, i.view(-1)).view((-1,) + (1,) * (like.dim() - 1))


def update(table: SolverTable, i: torch.Tensor, x, model_out, history, noise=None, blend=None):
    """(x_{i+1}, history') from the model output of evaluation i: float32 whatever the model
    dtype. history [K, V, B, C, h, w] holds the vectors of the K - 1 evaluations before i.
    i: 0-d (the batch at one evaluation; noise: the request's terms [E, B, C, h, w]) or [B]
    (one evaluation a row; noise: this evaluation's terms [B, C, h, w], the host copies them
    in). blend: (mask [B, 1, h, w], blend terms [E, B, C, h, w]) for 4-channel inpainting
    (one index only)."""
    m = model_out.float()
    vecs = [x, m]
    if table.clip is not None:
        p, q, r = table.clip
        vecs.append((per_row(p, i, x) * x + per_row(q, i, x) * m).clamp(-r, r))
    history = torch.cat([history[1:], torch.stack(vecs)[None]])
    coeffs = table.coeffs.index_select(0, i.view(-1))  # [1 or B, K, V]
    # A weighted sum of K * V latents (elementwise: a few latents' worth of work, not a matmul)
    coeffs = coeffs.permute(1, 2, 0).reshape(coeffs.shape[1:] + (-1,) + (1,) * (x.dim() - 1))
    x_next = (coeffs * history).sum((0, 1))
    if noise is not None:
        x_next = x_next + (_at(noise, i)[0] if i.dim() == 0 else noise)
    if blend is not None:
        mask, kept = blend
        x_next = (1 - mask) * _at(kept, i)[0] + mask * x_next
    return x_next, history


class NoiseStream:
    """Gaussian draws as diffusers' randn_tensor makes them: one CPU generator for the batch
    (a [B, ...] draw), or one generator a row (each draws its own [1, ...])."""

    def __init__(self, generators: list[torch.Generator], shape):
        self.generators, self.shape = generators, tuple(shape)

    def draw(self, dtype=torch.float32) -> torch.Tensor:
        if len(self.generators) == 1:
            return torch.randn(self.shape, generator=self.generators[0], dtype=dtype)
        return torch.cat([torch.randn((1,) + self.shape[1:], generator=g, dtype=dtype) for g in self.generators])
