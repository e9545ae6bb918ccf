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

The coefficients are read off the diffusers scheduler object itself (probe.py): the
pipeline's own loop runs once over coefficient vectors. A config whose step is not linear
is refused by name (_UNSUPPORTED), and every table is replayed against the real scheduler on
random inputs before use (verify()), so a scheduler the probe cannot express fails loudly
instead of sampling approximately.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, replace

import torch

from clockwork_engine.sampler.probe import Recorder, install_noise_hook, plain

SUPPORTED = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
    "FlowMatchEulerDiscreteScheduler",
)
# Config values that make a step nonlinear in its inputs: refused, naming the field.
_UNSUPPORTED = {
    "thresholding": (True,),  # dynamic thresholding: a per-image quantile of x0
    "variance_type": ("learned", "learned_range"),  # the model predicts its own variance
}


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


def step_kwargs(scheduler, eta: float) -> dict:
    """What StableDiffusionPipeline passes to scheduler.step besides (output, t, sample)."""
    params = inspect.signature(scheduler.step).parameters
    return {"eta": eta} if "eta" in params else {}


def check_supported(scheduler, eta: float = 0.0):
    name = type(scheduler).__name__
    if name not in SUPPORTED:
        raise ValueError(f"scheduler {name} is not supported by the engine; supported: {', '.join(SUPPORTED)}")
    for field, bad in _UNSUPPORTED.items():
        if scheduler.config.get(field) in bad:
            raise ValueError(f"{name} with {field}={scheduler.config[field]!r} is not supported by the engine's "
                             "solver (its step is not linear in the model output)")
    if scheduler.config.get("prediction_type") not in (None, "epsilon", "v_prediction", "sample"):
        raise ValueError(f"{name} with prediction_type={scheduler.config.prediction_type!r} is not supported")
    if eta and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"{name} takes no eta; eta={eta} applies to DDIM and TCD only")


def _set_timesteps(scheduler, num_steps: int, timesteps, start: Start, options: tuple = ()) -> int:
    """Set the scheduler's grid as the pipeline does; returns the index of the first timestep
    that runs (diffusers' get_timesteps: t_start * order, also set as the scheduler's begin index)."""
    name = type(scheduler).__name__
    if timesteps is None:
        scheduler.set_timesteps(num_steps, device="cpu", **dict(options))
    elif max(timesteps) >= scheduler.config.num_train_timesteps:
        raise ValueError(f"timesteps {list(timesteps)} go past the scheduler's {scheduler.config.num_train_timesteps}")
    elif "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{name} does not take a custom timestep grid")
    else:
        scheduler.set_timesteps(device="cpu", timesteps=list(timesteps))
    if start.strength is None:
        return 0
    n = num_steps
    t_start = max(n - min(int(n * start.strength), n), 0)
    if t_start == n:
        raise ValueError(f"strength {start.strength} at {n} steps runs no step (it needs strength >= {1 / n:.3g})")
    begin = t_start * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return begin


def build_table(scheduler, num_steps: int, timesteps: list[int] | None = None, eta: float = 0.0,
                start: Start = TEXT_TO_IMAGE, options: dict | None = None) -> SolverTable:
    """Set a copy of the scheduler to num_steps (or to the given timesteps, for a scheduler whose
    set_timesteps takes them; options: its other set_timesteps arguments, e.g. SD3's mu), run the
    pipeline's loop on coefficient vectors, return the table."""
    check_supported(scheduler, eta)
    scheduler = copy.deepcopy(scheduler)
    options = tuple(sorted((options or {}).items()))
    begin = _set_timesteps(scheduler, num_steps, timesteps, start, options)
    ts = scheduler.timesteps[begin:].clone()
    init_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))  # flow matching starts from the noise itself
    install_noise_hook(scheduler)
    rec = Recorder(len(ts))
    with rec:
        image, noise = (rec.var("i"), rec.var("n")) if start.from_image or start.blend else (None, None)
        start_mix = (0.0, init_sigma)
        if start.from_image:
            x0 = scheduler.add_noise(image, noise, ts[:1])
            rec.only(x0, [rec.index("i", 0), rec.index("n", 0)], "add_noise")
            start_mix = (rec.coeff(x0, "i", 0), rec.coeff(x0, "n", 0))
        x = rec.var("x")
        outputs, in_div, blend = [], [], []
        for i, t in enumerate(ts):
            rec.eval = i
            scaled = plain(scale_model_input(scheduler, x, t))
            s = rec.coeff(scaled, "x", i)
            if not torch.equal(scaled, s * plain(x)) or s <= 0:
                raise ValueError(f"{type(scheduler).__name__}.scale_model_input is not a scaling of the sample")
            in_div.append(_float32_divisor(s, scale_model_input(scheduler, _PROBE_INPUT, t)))
            m = rec.var("m")
            outputs.append(plain(scheduler.step(m, t, x, return_dict=False, **step_kwargs(scheduler, eta))[0]))
            if start.blend:  # the image noised to the next timestep, as StableDiffusionInpaintPipeline does
                kept = scheduler.add_noise(image, noise, ts[i + 1 : i + 2]) if i < len(ts) - 1 else image
                rec.only(kept, [rec.index("i", 0), rec.index("n", 0)], "add_noise")
                blend.append((rec.coeff(kept, "i", 0), rec.coeff(kept, "n", 0)))
            rec.eval = i + 1
            x = rec.var("x")
    blend_mix = torch.tensor(blend, dtype=torch.float64) if start.blend else None
    return replace(_table(rec, outputs, ts, in_div, init_sigma, num_steps, start, start_mix, blend_mix),
                   options=options)


def scale_model_input(scheduler, x, t):
    """The scheduler's scale_model_input; flow-matching schedulers have none (the input is x)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return x if scale is None else scale(x, t)


_PROBE_INPUT = torch.randn(256, generator=torch.Generator().manual_seed(0))


def _float32_divisor(scale: float, scaled: torch.Tensor) -> float:
    """The float32 divisor d with _PROBE_INPUT / d equal, bit for bit, to the scheduler's own
    float32 scale_model_input of it (it divides by sqrt(sigma^2 + 1) in float32): the nearest
    float32 values to 1 / scale are tried; else the nearest one (a rounding apart)."""
    d = torch.tensor(1.0 / scale, dtype=torch.float32)
    for candidate in (d, torch.nextafter(d, d + 1), torch.nextafter(d, d - 1)):
        if torch.equal(_PROBE_INPUT / candidate, scaled):
            return float(candidate)
    return float(d)


def _table(rec: Recorder, outputs: list[torch.Tensor], ts, in_div, init_sigma: float, steps: int, start: Start,
           start_mix, blend_mix) -> SolverTable:
    n = len(outputs)
    if not all(torch.isfinite(out).all() for out in outputs):
        raise ValueError("the scheduler's own step is not finite at this step count (e.g. UniPC bh1 with "
                         "final_sigmas_type='zero' gives NaN in diffusers too)")
    kinds = ("x", "m", "c") if rec.clips else ("x", "m")
    draws = [v for v, (kind, _) in enumerate(rec.kinds) if kind == "z"]
    terms = [[(v, *rec.kinds[v]) for v in torch.nonzero(out).view(-1).tolist()] for out in outputs]
    if any(kind in ("i", "n") for row in terms for _, kind, _ in row):
        raise ValueError("the scheduler's step reads the edit's image or initial noise directly")
    window = max([1] + [i - j + 1 for i, row in enumerate(terms) for _, kind, j in row if kind != "z"])
    coeffs = torch.zeros(n, window, len(kinds), dtype=torch.float64)
    for i, row in enumerate(terms):
        for v, kind, j in row:
            if kind != "z":
                coeffs[i, window - 1 - (i - j), kinds.index(kind)] = outputs[i][v]  # oldest first, like history
    noise_mix = torch.stack([out[draws] for out in outputs]) if draws else None
    if noise_mix is not None and not noise_mix.any():
        noise_mix = None  # drawn but unused (e.g. Euler's churn noise at s_churn=0): nothing to add
    clip = None
    if rec.clips:
        r = {c[2] for c in rec.clips.values()}
        if len(r) != 1 or len(rec.clips) != n:
            raise ValueError("the scheduler clips on some steps only, or to several ranges")
        pq = torch.tensor([rec.clips[i][:2] for i in range(n)], dtype=torch.float64).T.float()
        clip = (pq[0], pq[1], r.pop())
    return SolverTable(ts, torch.tensor(in_div, dtype=torch.float32), coeffs.float(), clip, noise_mix,
                       init_sigma, steps, len(draws) if noise_mix is not None else 0, start, start_mix, blend_mix)


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


def verify(scheduler, table: SolverTable, timesteps=None, eta: float = 0.0, seed: int = 0, tol: float = 1e-4):
    """Replay the table against the pipeline's loop over the real scheduler on random inputs
    (random model outputs, image latents and mask, the same noise draws); refuse the scheduler
    where they part by more than tol (relative)."""
    sched = copy.deepcopy(scheduler)
    begin = _set_timesteps(sched, table.steps, timesteps, table.start, table.options)
    shape = (2, 3, 2, 2)
    gen = torch.Generator().manual_seed(seed)
    image, mask = torch.randn(shape, generator=gen), (torch.rand(2, 1, 2, 2, generator=gen) > 0.5).float()
    real_gen, stream = torch.Generator().manual_seed(seed + 1), NoiseStream([torch.Generator().manual_seed(seed + 1)],
                                                                             shape)
    noise_ref, noise = torch.randn(shape, generator=real_gen), stream.draw()
    ts = sched.timesteps[begin:]
    x_ref = sched.add_noise(image, noise_ref, ts[:1]) if table.start.from_image else noise_ref * table.init_noise_sigma
    x, history = table.initial(noise, image), table.empty_history(noise)
    terms = table.noise_terms([stream.draw() for _ in range(table.draws)])
    blend = (mask, table.blend_terms(image, noise)) if table.start.blend else None
    kwargs = step_kwargs(sched, eta)
    if "generator" in inspect.signature(sched.step).parameters:
        kwargs["generator"] = real_gen
    for i, t in enumerate(ts):
        out = torch.randn(shape, generator=gen)
        what = "input scale"
        ok = torch.allclose(scale_model_input(sched, x_ref, t), x_ref / table.in_div[i], rtol=tol, atol=0)
        if ok:
            what = "update"
            x, history = update(table, torch.tensor(i), x, out, history, terms, blend)
            x_ref = sched.step(out, t, x_ref, return_dict=False, **kwargs)[0]
            if blend is not None:
                kept = sched.add_noise(image, noise_ref, ts[i + 1 : i + 2]) if i < len(ts) - 1 else image
                x_ref = (1 - mask) * kept + mask * x_ref
            ok = torch.allclose(x, x_ref, rtol=0, atol=tol * max(1.0, float(x_ref.abs().max())))
        if not ok:
            raise ValueError(f"{type(scheduler).__name__} ({_describe(scheduler)}) is not expressible by the "
                             f"engine's solver: the {what} of its step {i} parts from the scheduler's")


def _describe(scheduler) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in scheduler.config.items() if not k.startswith("_"))[:300]
