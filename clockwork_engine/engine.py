"""Engine: from_pretrained / from_pipeline / generate.

Data flow: prompt -> PromptEncoder (LRU); (edit image, mask) -> images.edit_inputs; the
request's noise and image latents -> latents.prepare; -> sampler loop (the engine's own,
step index passed down) -> step function -> decoder (the VAE's, or a tiny one) -> image.
With every acceleration off the result equals diffusers' pipeline of the model's family
(StableDiffusion, its Img2Img and Inpaint pipelines, SDXL, SD3, Flux, ControlNet) for the same
seed, steps, scheduler and guidance (tests/test_engine_parity.py, test_schedulers.py,
test_edit.py, test_sdxl.py, test_sd3.py, test_flux.py, test_controlnet.py).

Concurrency: by default one generate() runs at a time per model (a lock); with
config.batching "step" or "request", concurrent text-to-image calls go through the request
scheduler (serving/scheduler.py), which batches their rows into shared model calls.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time

import torch

from clockwork_engine import artifacts, request
from clockwork_engine.config import EngineConfig
from clockwork_engine.config import preset as preset_config
from clockwork_engine.models import loading, tiny_decoder
from clockwork_engine.models.family import pipeline_family
from clockwork_engine.request import NonFiniteError
from clockwork_engine.runner import ModelRunner
from clockwork_engine.sampler import release_device_memory
from clockwork_engine.serving.scheduler import BatchScheduler

__all__ = ["Engine", "NonFiniteError", "student_presets"]

ADAPTOR_FOLDER = "clockwork_adaptor"  # inside a model directory: its default adaptor
STUDENTS_FOLDER = "students"  # inside a model directory: distilled students, one folder each
SETTINGS_FILE = "clockwork_engine.json"  # inside a model directory: EngineConfig fields it recommends


class Engine:
    def __init__(self, model, vae, tokenizer, text_encoder, scheduler, config: EngineConfig | None = None,
                 adaptor_dir: str | None = None, decoder_dir: str | None = None, **text_components):
        """model: the denoiser (a UNet2DConditionModel, or an SD3 or Flux transformer);
        text_components: its family's other parts (SDXL: tokenizer_2, text_encoder_2,
        force_zeros_for_empty_prompt; SD3: also tokenizer_3, text_encoder_3; Flux: tokenizer_2,
        text_encoder_2 (T5); a ControlNet pipeline's controlnet; models/family.py)."""
        self.config = config or EngineConfig()
        self.runner = ModelRunner(model, vae, tokenizer, text_encoder, scheduler, self.config, adaptor_dir,
                                  decoder_dir, **text_components)
        self._batcher, self._batcher_guard = None, threading.Lock()

    def __getattr__(self, name: str):
        """The runner's public state read through the engine (engine.unet, engine.graphs,
        engine.step_kinds(...), engine.adaptor, ...)."""
        if name.startswith("_") or name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, model: str = "demo", *, config: EngineConfig | str | None = None,
                        preset: str | None = None, tokenizer=None, text_encoder=None, torch_dtype=None,
                        device=None, controlnet=None) -> Engine:
        """'demo' (the embedded default) or a local diffusers Stable-Diffusion directory.

        preset: a distilled student shipped with the model (a folder under its students/,
        e.g. "guided-8", "progressive-4" for the demo). config=None uses default_config():
        "clockwork" when the directory has a clockwork_adaptor/ (the demo does), else
        "full", with the directory's recommended settings (clockwork_engine.json: e.g. the
        demo's guidance scale, a student's step count); config="full" turns clockwork off and
        keeps those settings; an EngineConfig object is taken as it is. device: where the model
        runs (None: the GPU where there is one, else the CPU); torch_dtype: the weights' dtype
        (None: as diffusers loads them, float32). controlnet: a ControlNetModel, its folder, the
        name of one shipped with the model (the demo's "mask") or a list of these; it replaces a
        ControlNet pipeline directory's own.
        """
        path = model_dir(model, preset)
        adaptor_dir = os.path.join(path, ADAPTOR_FOLDER)
        # A student shares its teacher's VAE, so the teacher's tiny decoder serves it too.
        decoder_dirs = [os.path.join(p, tiny_decoder.FOLDER) for p in (path, loading.resolve(model))]
        decoder_dir = next((d for d in decoder_dirs if os.path.isdir(d)), None)
        if config is None:
            config = cls.default_config(path)
        elif isinstance(config, str):
            config = _with_settings(_config(config), path)
        else:
            config = _config(config)
        _load_artifacts(config, path)
        components = loading.load_components(path, tokenizer, text_encoder, torch_dtype)
        if controlnet is not None:
            components["controlnet"] = loading.load_controlnet(controlnet, path, torch_dtype)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        for name, part in components.items():
            if isinstance(part, torch.nn.Module):
                components[name] = part.to(device)
        return cls(**components, config=config, adaptor_dir=adaptor_dir if os.path.isdir(adaptor_dir) else None,
                   decoder_dir=decoder_dir)

    @staticmethod
    def default_config(model: str = "demo", preset: str | None = None) -> EngineConfig:
        """The "clockwork" preset for a model directory with a clockwork_adaptor/, else "full",
        updated with the directory's clockwork_engine.json (e.g. a student's step count)."""
        path = model_dir(model, preset)
        return _with_settings(preset_config("clockwork" if os.path.isdir(os.path.join(path, ADAPTOR_FOLDER))
                                            else "full"), path)

    @classmethod
    def from_pipeline(cls, pipe, *, config: EngineConfig | str | None = None) -> Engine:
        """Wrap an already loaded diffusers pipeline: StableDiffusion(XL)Pipeline, their ControlNet
        pipelines, StableDiffusion3Pipeline or FluxPipeline (its scheduler is copied whole:
        from_config would drop the fields the pipeline rewrote, e.g. SD's steps_offset=1)."""
        family = pipeline_family(pipe)
        parts = loading.pipeline_components(pipe, family)
        model = parts.pop(family.model_component)
        return cls(model, parts.pop("vae"), parts.pop("tokenizer"), parts.pop("text_encoder"),
                   copy.deepcopy(parts.pop("scheduler")), config=_config(config), **parts)

    def with_config(self, scheduler=None, **changes) -> Engine:
        """Another engine on the same loaded components (shared weights), its config changed;
        scheduler: another supported diffusers scheduler object (e.g. DDIMScheduler.from_config(...));
        config.scheduler (a name, e.g. with_config(scheduler="euler-a")) takes the model's
        scheduler config the same way."""
        if isinstance(scheduler, str):
            changes["scheduler"], scheduler = scheduler, None
        r = self.runner
        other = Engine(r.model, r.vae, r.prompts.tokenizer, r.text_encoder, scheduler or copy.deepcopy(r.scheduler),
                       config=self.config.with_(**changes), adaptor_dir=r.adaptor_dir, decoder_dir=r.decoder_dir,
                       **r.text_components)
        r.share_with(other.runner)
        return other

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompt, *, steps=None, guidance_scale=None, seed=None, height=None, width=None,
                 negative_prompt=None, mode=None, output: str = "pil", callback=None, image=None, mask_image=None,
                 strength=None, timeout=None, lora=None, control_image=None, controlnet_conditioning_scale=1.0,
                 guess_mode=False, control_guidance_start=0.0, control_guidance_end=1.0):
        """Images for a prompt (str -> one image) or a list of prompts (list -> list).

        image: an edit (diffusers' Img2Img pipeline, SDEdit): the image is encoded, noised to
        the timestep `strength` in (0, 1] selects (default 0.8) and sampled from there; with
        mask_image (white = repaint) inpainting (diffusers' Inpaint pipeline; strength default
        1): a 4-channel UNet keeps the image outside the mask by latent blending, a 9-channel
        inpainting UNet reads mask and masked image as input channels. Images: PIL, numpy
        (uint8 or [0, 1] floats) or [B, 3, H, W] tensors in [0, 1], one or one a prompt; the
        output has the image's size.

        steps / guidance_scale / height / width default to the engine's config; seed=None
        draws a random seed. seed and guidance_scale take a list too, one value a prompt: row k
        then depends only on its own prompt, seed and scale (as diffusers' generator=[...]
        does; one int seed draws the batch from one generator, as diffusers' does).
        output: "pil" (PIL images), "pt" (float [B,3,H,W] in [0,1])
        or "latent" (the final latents); callback(step, num_steps, latents) runs after
        every step, and an exception raised in it cancels the request. mode: "full" or
        "clockwork" (default: the config's; clockwork needs the engine's adaptor).
        timeout: seconds (default config.request_timeout; None: no limit); past it the request
        is dropped at the next step boundary with DeadlineExceeded (a TimeoutError).
        lora: the request's LoRA set, {name: scale} of LoRAs loaded with load_lora (None: the
        engine's default set). control_image (one image, or a list, one per ControlNet) and
        controlnet_conditioning_scale, guess_mode, control_guidance_start / _end: a ControlNet
        pipeline's inputs, as StableDiffusionControlNetPipeline takes them.

        With config.batching on, concurrent text-to-image calls share model calls
        (serving/scheduler.py: step-level continuous batching); each row's image stays its own.
        """
        req = request.parse(self, prompt, steps=steps, guidance_scale=guidance_scale, seed=seed, height=height,
                            width=width, negative_prompt=negative_prompt, mode=mode, output=output,
                            callback=callback, image=image, mask_image=mask_image, strength=strength,
                            timeout=timeout, lora=lora, control=None if control_image is None else dict(
                                image=control_image, scale=controlnet_conditioning_scale, guess_mode=guess_mode,
                                start=control_guidance_start, end=control_guidance_end))
        if self.batcher is not None and self.batcher.accepts(req):
            return self.batcher.submit(req).result()
        return self.run_alone(req)

    def run_alone(self, req: request.GenerationRequest):
        """One checked request through the engine's own loop, holding the model's lock."""
        remaining = None if req.deadline is None else max(0.0, req.deadline - time.monotonic())
        if not self.runner.lock.acquire(timeout=-1 if remaining is None else remaining):
            raise request.DeadlineExceeded("the request ran past its time limit waiting for the model")
        out_of_memory = False
        try:
            callback = req.callback
            if req.deadline is not None:
                def callback(i, n, x, user=req.callback):  # the deadline is checked at each step boundary
                    req.check_deadline()
                    if user is not None:
                        user(i, n, x)
            self.runner.lora.use(req.loras)
            final = self.runner.sample(req.prompts, req.negatives, req.steps, req.guidance, req.seeds, req.height,
                                       req.width, req.mode, callback, req.edit, req.negative_given, req.control)
            result = final if req.output == "latent" else self.runner.decode(final, req.output)
        except torch.OutOfMemoryError:
            out_of_memory = True  # raised below, once this traceback (and the tensors it holds) is gone
        finally:
            if out_of_memory:
                release_device_memory()
            self.runner.lock.release()
        if out_of_memory:
            raise request.out_of_memory(req, self.runner.device)
        return req.result(result)

    # ----------------------------------------------------------------- LoRA
    def load_lora(self, source, *, name: str | None = None, scale: float = 1.0) -> str:
        """Fuse a LoRA (a file or folder diffusers' load_lora_weights reads, or its state dict)
        into the model's weights at `scale`; several stack. No step program is recompiled or
        recaptured. Returns its name."""
        self._idle("load a LoRA")
        return self.runner.lora.load(source, name, scale)

    def set_lora_scales(self, scales: dict[str, float]):
        self._idle("rescale LoRAs")
        self.runner.lora.set_scales(scales)

    def unload_lora(self, name: str | None = None):
        """Unfuse one LoRA, or every one (None): the base weights come back bit for bit."""
        self._idle("unload a LoRA")
        self.runner.lora.unload(name)

    @property
    def loras(self) -> dict[str, float]:
        """The default LoRA set (name -> scale): what a request without its own runs under."""
        return self.runner.lora.default

    def _idle(self, what: str):
        """A request runs under one LoRA set: with the request scheduler on, change it only while
        no request is queued or running (with batching off, the model's lock waits for them)."""
        b = self._batcher
        if b is not None and (b.queue_depth() or b.running()):
            raise RuntimeError(f"cannot {what} while {b.queue_depth() + b.running()} request(s) are in flight")

    @property
    def batcher(self) -> BatchScheduler | None:
        """The request scheduler of this engine (config.batching), started on first use; None when off."""
        if self.config.batching == "off":
            return None
        with self._batcher_guard:
            if self._batcher is None:
                self._batcher = BatchScheduler(self.runner)
            return self._batcher


def student_presets(model: str = "demo") -> list[str]:
    """The distilled students shipped with a model (folders under its students/), sorted."""
    students = os.path.join(loading.resolve(model), STUDENTS_FOLDER)
    return sorted(os.listdir(students)) if os.path.isdir(students) else []


def model_dir(model, preset: str | None) -> str:
    """The directory of a model ("demo", "demo-sd3" or a folder) or of one of its students (preset)."""
    path = loading.resolve(model)
    if preset is None:
        return path
    available = student_presets(path)
    if preset not in available:
        raise ValueError(f"unknown preset {preset!r} for {model!r}; available: {', '.join(available) or 'none'}")
    return os.path.join(path, STUDENTS_FOLDER, preset)


def _with_settings(config: EngineConfig, path: str) -> EngineConfig:
    """config updated with the model directory's clockwork_engine.json, if it has one."""
    settings = os.path.join(path, SETTINGS_FILE)
    if not os.path.isfile(settings):
        return config
    try:
        with open(settings) as f:
            return config.with_(**json.load(f))
    except (OSError, ValueError, TypeError) as e:
        raise loading.ModelLoadError(f"{settings} is corrupt: {e}") from e


def _load_artifacts(config: EngineConfig, path: str):
    """The compiled artifacts of a model directory (or config.compiled_dir) into inductor's caches,
    where this engine will compile CUDA step programs (artifacts.py)."""
    if config.compiled_dir is not None and not os.path.isdir(config.compiled_dir):
        raise FileNotFoundError(f"compiled_dir {config.compiled_dir!r} is not a folder")
    cuda = config.backend == "cuda" or (config.backend == "auto" and torch.cuda.is_available())
    if cuda and config.compile:
        artifacts.load(config.compiled_dir or os.path.join(path, artifacts.FOLDER))


def _config(config) -> EngineConfig:
    if config is None:
        return EngineConfig()
    if isinstance(config, str):
        return preset_config(config)
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig or a preset name, got {type(config).__name__}")
    return config
