"""Reading a diffusers scheduler into a SolverTable (solver.py).

The coefficients are read off the scheduler object itself (probe.py): the pipeline's own loop
runs once over coefficient vectors. A config whose step is not linear is refused by name
(_UNSUPPORTED), and every table is replayed against the real scheduler on random inputs
before use (verify()), so a scheduler the probe cannot express fails loudly instead of
sampling approximately.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import replace

import torch

from clockwork_engine.sampler.probe import Recorder, install_noise_hook, plain
from clockwork_engine.sampler.solver import TEXT_TO_IMAGE, NoiseStream, SolverTable, Start, update

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
    options = dict(options)
    first = options.pop("begin_index", None)  # a pipeline that sets it (FluxPipeline: 0) steps in order from it
    if timesteps is None:
        scheduler.set_timesteps(num_steps, device="cpu", **options)
    elif max(timesteps) >= scheduler.config.num_train_timesteps:
        raise ValueError(f"timesteps {list(timesteps)} go past the scheduler's {scheduler.config.num_train_timesteps}")
    elif "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(f"{name} does not take a custom timestep grid")
    else:
        scheduler.set_timesteps(device="cpu", timesteps=list(timesteps))
    if start.strength is None:
        if first is not None:
            scheduler.set_begin_index(first)
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
