"""Scheduler names: diffusers class names and the usual short names (A1111's, as diffusers'
docs map them), each built from a model's own scheduler config the way diffusers users do:
`Class.from_config(pipe.scheduler.config, **overrides)`."""

from __future__ import annotations

import inspect

from clockwork_engine.sampler.tables import SUPPORTED

_DPM = "DPMSolverMultistepScheduler"
# short name -> (diffusers class, config overrides)
ALIASES: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False,
                                        "set_alpha_to_one": True}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms-karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "heun-karras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2-karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm2-a": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": False}),
    "dpm2-a-karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm++2m": (_DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpm++2m-karras": (_DPM, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpm++2m-sde": (_DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpm++2m-sde-karras": (_DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                  "use_karras_sigmas": True}),
    "dpm++3m": (_DPM, {"algorithm_type": "dpmsolver++", "solver_order": 3, "use_karras_sigmas": False}),
    "dpm++2s": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": False}),
    "dpm++2s-karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
# The fields that tell two schedulers of one class apart in what they compute (for an
# adaptor's record of the scheduler it was fitted under).
_IDENTITY_FIELDS = ("algorithm_type", "solver_order", "solver_type", "use_karras_sigmas", "timestep_spacing",
                    "prediction_type", "skip_prk_steps", "final_sigmas_type")


def names() -> list[str]:
    return sorted(ALIASES) + sorted(SUPPORTED)


def from_name(name: str, base):
    """A scheduler for `name` (short name or class name) from the model's scheduler `base`."""
    import diffusers

    if not isinstance(name, str):
        raise TypeError(f"scheduler must be a name, got {type(name).__name__}")
    if name in ALIASES:
        cls_name, overrides = ALIASES[name]
    elif name in SUPPORTED:
        cls_name, overrides = name, {}
    else:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(names())}")
    cls = getattr(diffusers, cls_name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config(base.config, **{k: v for k, v in overrides.items() if k in accepted})


def same(recorded: str, scheduler) -> bool:
    """Whether a recorded scheduler (describe()'s string, or a bare class name) is this one."""
    return recorded == (describe(scheduler) if "(" in recorded else type(scheduler).__name__)


def describe(scheduler) -> str:
    """e.g. "DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2, ...)"."""
    cfg = scheduler.config
    fields = ", ".join(f"{k}={cfg[k]!r}" for k in _IDENTITY_FIELDS if k in cfg)
    return f"{type(scheduler).__name__}({fields})"
