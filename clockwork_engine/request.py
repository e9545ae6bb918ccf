"""A generate() call, checked: every argument validated and defaulted once, for the engine's own
loop and for the batching scheduler (serving/) alike."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from clockwork_engine import validate
from clockwork_engine.conditioning import control as control_inputs
from clockwork_engine.conditioning import images
from clockwork_engine.config import MAX_GUIDANCE, MODES

OUTPUT_TYPES = ("pil", "pt", "latent")
MAX_STEPS = 1000


class NonFiniteError(FloatingPointError):
    """The sampler produced NaN or Inf (bad weights or an unstable setting)."""


class DeadlineExceeded(TimeoutError):
    """The request ran past its time limit; it was dropped at a step boundary."""


class DeviceMemoryError(MemoryError):
    """The request does not fit in the device's memory (compiling, capturing or running its
    step programs, encoding or decoding ran out). What it took is freed; the engine serves on."""


def out_of_memory(req: GenerationRequest, device) -> DeviceMemoryError:
    """The error for a request that ran out of device memory, naming its size and the device's."""
    import torch

    where = str(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where += f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free now)"
    return DeviceMemoryError(f"the request ({req.rows} image(s) of {req.width}x{req.height}) does not fit in the "
                             f"memory of {where}: ask for fewer images or a smaller size")


@dataclass
class GenerationRequest:
    prompts: list[str]
    negatives: list[str]  # one a prompt
    negative_given: bool  # False: the empty negative (SDXL may zero it: force_zeros_for_empty_prompt)
    steps: int
    guidance: list[float]  # one a prompt
    seeds: list[int]  # one: the batch drawn from one generator; else one a prompt
    height: int
    width: int
    mode: str
    output: str
    single: bool  # a str prompt: one image back, not a list
    callback: object = None
    edit: images.EditInputs | None = None
    deadline: float | None = None  # time.monotonic() past which the request is dropped
    loras: tuple = ()  # ((name, scale), ...): the LoRA set it runs under (models/lora.py)
    control: object = None  # conditioning/control.ControlInputs of a ControlNet request

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.monotonic() if now is None else now) > self.deadline

    def check_deadline(self):
        if self.expired():
            raise DeadlineExceeded("the request ran past its time limit and was dropped")

    def result(self, images):
        """What generate() returns: images (a list, or a tensor [B, ...] for 'pt' / 'latent'), or
        its first for a str prompt."""
        return images[0] if self.single else images


def parse(engine, prompt, *, steps=None, guidance_scale=None, seed=None, height=None, width=None,
          negative_prompt=None, mode=None, output="pil", callback=None, image=None, mask_image=None,
          strength=None, timeout=None, lora=None, control=None) -> GenerationRequest:
    """Engine.generate's arguments checked against the engine (its config, adaptor and model):
    a TypeError / ValueError naming the argument for anything it cannot run. control: the
    ControlNet arguments (control_image, controlnet_conditioning_scale, guess_mode,
    control_guidance_start, control_guidance_end) or None."""
    cfg = engine.config
    mode = cfg.mode if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if mode == "clockwork" and engine.points is None:
        raise ValueError("mode 'clockwork' needs an adaptor; build the engine with a clockwork config")
    prompts = validate.prompts(prompt, cfg.max_batch_size)
    negatives = _negatives(engine, negative_prompt, len(prompts))
    steps = validate.positive_int(cfg.steps if steps is None else steps, "steps", MAX_STEPS)
    guidance = validate.per_row(cfg.guidance_scale if guidance_scale is None else guidance_scale, len(prompts),
                                lambda g: validate.finite_float(g, "guidance_scale", 0.0, MAX_GUIDANCE),
                                "guidance_scale")
    max_side = cfg.max_size_factor * engine.default_size
    edit = None
    unet_channels, family = engine.model.config.in_channels, engine.runner.family
    if image is not None or mask_image is not None:
        if "edit" not in family.supports:
            raise ValueError(f"image-to-image and inpainting run on UNet models; a {family.pipeline_class} model "
                             "takes text-to-image requests only")
        edit = images.edit_inputs(image, mask_image, strength, len(prompts), engine.size_multiple, max_side,
                                  unet_channels, height, width)
        height, width = edit.height, edit.width
    elif strength is not None:
        raise ValueError("strength applies to an edit: pass image= (and mask_image= to inpaint)")
    elif "edit" in family.supports and unet_channels != engine.vae.config.latent_channels:
        raise ValueError(f"this UNet takes {unet_channels} input channels (an inpainting UNet): "
                         "it needs image= and mask_image=")
    if control is not None:
        height, width = _control_size(engine, control, edit, mode, height, width)
    height = validate.image_side(cfg.height or engine.default_size if height is None else height, "height",
                                 engine.size_multiple, max_side)
    width = validate.image_side(cfg.width or engine.default_size if width is None else width, "width",
                                engine.size_multiple, max_side)
    seeds = validate.per_row(seed, len(prompts), validate.seed, "seed") if isinstance(seed, (list, tuple)) \
        else [validate.seed(seed)]
    seeds = [secrets.randbits(63) if s is None else s for s in seeds]
    if output not in OUTPUT_TYPES:
        raise ValueError(f"output must be one of {OUTPUT_TYPES}, got {output!r}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    timeout = cfg.request_timeout if timeout is None else timeout
    if timeout is not None:
        timeout = validate.finite_float(timeout, "timeout", 0.0)
    loras = engine.runner.lora.key(lora)  # resolved now: a later change of the default does not reach it
    if control is not None:
        control = control_inputs.control_inputs(engine.runner.controlnet, rows=len(prompts), height=height,
                                                width=width, vae_factor=engine.vae_factor, **control)
    return GenerationRequest(prompts, negatives, negative_prompt is not None, steps, guidance, seeds, height, width,
                             mode, output, isinstance(prompt, str), callback, edit,
                             None if timeout is None else time.monotonic() + timeout, loras, control)


def _negatives(engine, negative_prompt, rows: int) -> list[str]:
    """One negative prompt a row (the empty one where none is given)."""
    negatives = validate.prompts(negative_prompt, engine.config.max_batch_size, "negative_prompt") \
        if negative_prompt is not None else [""]
    if negative_prompt is not None and engine.guidance_dim:
        raise ValueError("negative_prompt needs classifier-free guidance; this model is guidance-distilled")
    if len(negatives) == 1:
        return negatives * rows
    if len(negatives) != rows:
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {rows} prompts")
    return negatives


def _control_size(engine, control: dict, edit, mode: str, height, width):
    """A ControlNet request is checked here; its size defaults to its (first) control image's,
    as the pipeline's does."""
    if engine.runner.controlnet is None:
        raise ValueError("control_image needs a ControlNet: build the engine from a ControlNet pipeline")
    if edit is not None:
        raise ValueError("ControlNet requests run text-to-image (edits with a ControlNet are not built yet)")
    if height is None and width is None and engine.config.height is None and engine.config.width is None:
        from diffusers.image_processor import VaeImageProcessor

        image = control["image"]
        image = image[0] if isinstance(image, (list, tuple)) else image
        try:
            height, width = VaeImageProcessor(vae_scale_factor=engine.vae_factor).get_default_height_width(image)
        except Exception as e:  # not an image
            raise ValueError(f"control_image is not an image the pipeline takes: {e}") from e
    return height, width
