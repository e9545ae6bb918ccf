"""A model family: what differs between SD 1.x/2.x, SDXL and SD3 behind one small interface.

The runner, the sampler and clockwork see a family only through these methods:

    family.conditioning(components, text_tokens, **kw)  the prompt -> (text, added) encoder (conditioning/)
    family.denoiser(model)                  (x, t, text, features, cond, added) -> (output, None)
    family.split(model, cut)                clockwork's H_in / L / H_out split of the model
    family.size_multiple(model, vae_factor) image sides must be multiples of this
    family.default_size(model, vae_factor)  the model's native image side
    family.guidance_dim(model)              a guidance-distilled model's embedding size, else 0
    family.table_options(model, scheduler, steps, h, w, vae_factor)  set_timesteps extras (mu, sigmas)
    family.cfg                              CFG runs as a batched model call (not on Flux)
    family.guidance_inputs(model, scales)   added conditioning from the rows' guidance (Flux-dev's)
    family.check(components, where)         the components fit together, else ModelLoadError

A family is one module (models/unet.py, models/sd3.py, models/flux.py); families() lists them
in the order family_of() tries them.
"""

from __future__ import annotations

from typing import Protocol


class ModelFamily(Protocol):
    name: str  # "sd", "sdxl", "sd3"
    model_component: str  # the denoiser's name in a diffusers pipeline: "unet" or "transformer"
    text_components: tuple[str, ...]  # the pipeline's text components this family reads
    pipeline_class: str  # the diffusers pipeline it is at parity with
    pipeline_settings: tuple[str, ...]  # the pipeline's config values it reads (SDXL's force_zeros_for_empty_prompt)
    flow_matching: bool  # sampled by a flow-matching scheduler (SD3, Flux), else by a diffusion one
    cfg: bool  # classifier-free guidance as a batched call (False: Flux, guidance-distilled or -free)
    # What the engine runs on it beyond text-to-image, full or clockwork (identity or learned
    # adaptor): "edit" (image-to-image, inpainting), "attention_reuse", "lora", "controlnet".
    supports: frozenset[str]

    def matches(self, model) -> bool: ...

    def conditioning(self, components: dict, text_tokens: int | None = None, **encoder_kw): ...

    def denoiser(self, model): ...

    def split(self, model, cut: int): ...

    def size_multiple(self, model, vae_factor: int) -> int: ...

    def default_size(self, model, vae_factor: int) -> int: ...

    def guidance_dim(self, model) -> int: ...

    def table_options(self, model, scheduler, steps: int, height: int, width: int, vae_factor: int) -> dict: ...

    def guidance_inputs(self, model, scales) -> dict: ...

    def check(self, components: dict, where: str) -> None: ...


def families() -> tuple:
    from clockwork_engine.models import flux, sd3, unet

    return (unet.SDXL, unet.SD, sd3.SD3, flux.FLUX)


def family_of(model):
    """The family of a denoiser network (a diffusers UNet2DConditionModel or SD3 transformer)."""
    for family in families():
        if family.matches(model):
            return family
    raise ValueError(f"{type(model).__name__} is not a model the engine runs (supported: "
                     f"{', '.join(f.pipeline_class for f in families())})")


def pipeline_family(pipe):
    """The family of a loaded diffusers pipeline, by its denoiser."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if model is None:
        raise ValueError("pipeline has no unet or transformer; Engine.from_pipeline needs a Stable Diffusion "
                         "(1.x / 2.x, XL or 3) or Flux pipeline")
    return family_of(model)


def check_parts(family, components: dict, where: str):
    """The components fit together (family.check) and the family runs each of them."""
    if components.get("controlnet") is not None and "controlnet" not in family.supports:
        raise ValueError(f"{where}: ControlNets run on UNet models; a {family.pipeline_class} model takes none yet")
    family.check(components, where)


def check_runs(family, scheduler, config):
    """Refuse, by name, a scheduler or setting this family does not run (never approximately)."""
    kind = type(scheduler).__name__
    if kind.startswith("FlowMatch") != family.flow_matching:
        need = "a flow-matching scheduler (FlowMatchEulerDiscreteScheduler)" if family.flow_matching else \
            "a diffusion scheduler, not a flow-matching one"
        raise ValueError(f"{kind} cannot sample a {family.pipeline_class} model: it needs {need}")
    if config.attention_reuse is not None and "attention_reuse" not in family.supports:
        raise ValueError(f"attention reuse runs on UNet models; a {family.pipeline_class} model cannot use it")


def by_name(name: str):
    for family in families():
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(f.name for f in families())}")
