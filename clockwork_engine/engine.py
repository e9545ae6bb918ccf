"""Engine: from_pretrained / from_pipeline / generate.

Data flow: prompt -> PromptEncoder (LRU); (edit image, mask) -> images.edit_inputs; the
request's noise and image latents -> latents.prepare; -> sampler loop (the engine's own,
step index passed down) -> step function -> decoder (the VAE's, or a tiny one) -> image.
With every acceleration off the result equals diffusers' StableDiffusionPipeline (and its
Img2Img and Inpaint pipelines) for the same seed, steps, scheduler and guidance
(tests/test_engine_parity.py, test_schedulers.py, test_edit.py).

Concurrency: by default one generate() runs at a time per UNet (a lock); with
config.batching "step" or "request", concurrent text-to-image calls go through the request
scheduler (serving/scheduler.py), which batches their rows into shared model calls.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import weakref
from contextlib import nullcontext
from functools import partial

import torch

from . import artifacts, attention, conditioning, latents, loading, request, sampler, schedulers, tiny_decoder, validate
from .cache import CacheState
from .compile import CUDA_MODULE_OPTIONS, MODULE_OPTIONS, compiled, cuda_options
from .config import EngineConfig
from .config import preset as preset_config
from .operating_point import OperatingPoint, OperatingPoints
from .ops import fused_unet
from .unet_split import UNetSplit

ADAPTOR_FOLDER = "clockwork_adaptor"  # inside a model directory: its default adaptor
STUDENTS_FOLDER = "students"  # inside a model directory: distilled students, one folder each
SETTINGS_FILE = "clockwork_engine.json"  # inside a model directory: EngineConfig fields it recommends
# One lock per UNet: engines sharing a model (and its attention processors) take turns.
_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(unet) -> threading.RLock:
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(unet, threading.RLock())

class NonFiniteError(FloatingPointError):
    """The sampler produced NaN or Inf (bad weights or an unstable setting)."""


class Engine:
    def __init__(self, unet, vae, tokenizer, text_encoder, scheduler, config: EngineConfig | None = None,
                 adaptor_dir: str | None = None, decoder_dir: str | None = None, tokenizer_2=None,
                 text_encoder_2=None, force_zeros_for_empty_prompt: bool = False):
        """tokenizer_2 / text_encoder_2 / force_zeros_for_empty_prompt: SDXL's second text encoder
        and its pipeline's setting (conditioning.py)."""
        self.config = config or EngineConfig()
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.text_encoder_2 = None if text_encoder_2 is None else text_encoder_2.eval().requires_grad_(False)
        self._second = dict(tokenizer_2=tokenizer_2, text_encoder_2=self.text_encoder_2,
                            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        if self.config.scheduler is not None:
            scheduler = schedulers.from_name(self.config.scheduler, scheduler)
        self.scheduler = scheduler
        self.adaptor_dir, self.decoder_dir = adaptor_dir, decoder_dir
        self.tiny_decoder = self._load_tiny_decoder(self.config.decoder)
        self.graphs = sampler.GraphSampler(self.config.backend, self.config.max_graphs,
                                           cuda_options(self.config.inductor) if self.config.compile else None)
        # The text encoder and the decoder: compiled on the inductor backend and on the compiled
        # cuda backend, eager otherwise.
        module_options = MODULE_OPTIONS if self.graphs.backend == "inductor" else \
            CUDA_MODULE_OPTIONS if self.graphs.cuda_compile is not None else None
        self.conditioning = conditioning.for_model(
            unet, tokenizer, self.text_encoder, tokenizer_2, self.text_encoder_2, force_zeros_for_empty_prompt,
            capacity=self.config.prompt_cache_size, compile_options=module_options,
            dtype=getattr(torch, self.config.text_dtype))
        self.prompts = self.conditioning.prompts  # the (first) text encoder's prompt cache
        self._decode_fn = self._decode_eager if module_options is None else \
            compiled(self._decode_eager, module_options, "image decoder", dynamic=None)
        if self.config.fused_norms:
            fused_unet.install(self.unet)
            fused_unet.install(self.vae)
        self.vae_factor = tiny_decoder.vae_upscale(vae)
        # Image sides must survive the VAE and every UNet downsampler without rounding.
        self.size_multiple = self.vae_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size
        self.default_size = (sample_size if isinstance(sample_size, int) else sample_size[0]) * self.vae_factor
        self._tables: dict[tuple, sampler.SolverTable] = {}
        self._lock = _model_lock(self.unet)
        self._batcher, self._batcher_guard = None, threading.Lock()
        grid = self.config.timesteps  # fail now on an unsupported scheduler, or a grid it cannot take
        self._table(len(grid) if grid else self.config.steps)
        # A guidance-distilled UNet embeds the guidance scale (time_cond_proj_dim) instead of CFG.
        self.guidance_dim = unet.config.time_cond_proj_dim or 0
        self.denoisers = {"full": sampler.unet_denoiser(self.unet)}
        self.points = None  # clockwork's adaptors by step count (operating_point.py)
        if self.config.mode == "clockwork":
            self.points = OperatingPoints(self.unet, self.config, self.scheduler, adaptor_dir, self._lock)
            self.points.at(self.config.steps)  # a bad adaptor fails here, not at the first request
        self.reuse = None
        if self.config.attention_reuse is not None:
            self.reuse = attention.apply_reuse(self.unet, attention.ReuseConfig(
                self.config.reuse_layers, self.config.max_attention_bytes))

    def _load_tiny_decoder(self, choice: str):
        if choice == "vae":
            return None
        source = self.decoder_dir if choice == "tiny" else choice
        if source is None:
            raise ValueError(f"decoder 'tiny' needs a tiny decoder: a model directory with {tiny_decoder.FOLDER}/ "
                             "(clockwork distill-decoder makes one), or its folder as config.decoder")
        decoder, _ = tiny_decoder.load(source, self.vae)
        return decoder.to(self.device, self.vae.dtype)

    def operating_point(self, steps: int) -> OperatingPoint:
        """The adaptor, split and denoisers clockwork runs at `steps` steps: on the model's own
        adaptors the one fitted for that step count (the default one if none was)."""
        if self.points is None:
            raise ValueError("mode 'clockwork' needs an adaptor; build the engine with a clockwork config")
        return self.points.at(steps)

    @property
    def adaptor(self):
        """The adaptor at the config's step count (None without clockwork)."""
        return None if self.points is None else self.points.at(self.config.steps).adaptor

    @property
    def adaptor_meta(self) -> dict:
        return {} if self.points is None else self.points.at(self.config.steps).meta

    @property
    def split(self) -> UNetSplit | None:
        return None if self.points is None else self.points.at(self.config.steps).split

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, model: str = "demo", *, config: EngineConfig | str | None = None, preset: str | None = None,
                        tokenizer=None, text_encoder=None, torch_dtype=None, device=None) -> Engine:
        """'demo' (the embedded default) or a local diffusers Stable-Diffusion directory.

        preset: a distilled student shipped with the model (a folder under its students/,
        e.g. "guided-8", "progressive-4" for the demo). config=None uses default_config():
        "clockwork" when the directory has a clockwork_adaptor/ (the demo does), else
        "full", with the directory's recommended settings (clockwork_engine.json: e.g. the
        demo's guidance scale, a student's step count); config="full" turns clockwork off and
        keeps those settings; an EngineConfig object is taken as it is. device: where the model
        runs (None: the GPU where there is one, else the CPU); torch_dtype: the weights' dtype
        (None: as diffusers loads them, float32).
        """
        path = _model_dir(model, preset)
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
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if components.get(name) is not None:
                components[name] = components[name].to(device)
        return cls(**components, config=config, adaptor_dir=adaptor_dir if os.path.isdir(adaptor_dir) else None,
                   decoder_dir=decoder_dir)

    @staticmethod
    def default_config(model: str = "demo", preset: str | None = None) -> EngineConfig:
        """The "clockwork" preset for a model directory with a clockwork_adaptor/, else "full",
        updated with the directory's clockwork_engine.json (e.g. a student's step count)."""
        path = _model_dir(model, preset)
        return _with_settings(preset_config("clockwork" if os.path.isdir(os.path.join(path, ADAPTOR_FOLDER))
                                            else "full"), path)

    @classmethod
    def from_pipeline(cls, pipe, *, config: EngineConfig | str | None = None) -> Engine:
        """Wrap an already loaded diffusers StableDiffusionPipeline (its scheduler is copied whole:
        from_config would drop the fields the pipeline rewrote, e.g. SD's steps_offset=1)."""
        for name in ("unet", "vae", "tokenizer", "text_encoder", "scheduler"):
            if getattr(pipe, name, None) is None:
                raise ValueError(f"pipeline has no {name}; Engine.from_pipeline needs a Stable Diffusion pipeline")
        second = dict(tokenizer_2=getattr(pipe, "tokenizer_2", None),
                      text_encoder_2=getattr(pipe, "text_encoder_2", None),
                      force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)))
        loading.check_compatible(pipe.unet, pipe.vae, pipe.text_encoder, type(pipe).__name__, second["text_encoder_2"])
        scheduler = copy.deepcopy(pipe.scheduler)
        return cls(pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder, scheduler, config=_config(config), **second)

    def with_config(self, scheduler=None, **changes) -> Engine:
        """Another engine on the same loaded components (shared weights), its config changed;
        scheduler: another supported diffusers scheduler object (e.g. DDIMScheduler.from_config(...));
        config.scheduler (a name, e.g. with_config(scheduler="euler-a")) takes the model's
        scheduler config the same way."""
        if isinstance(scheduler, str):
            changes["scheduler"], scheduler = scheduler, None
        other = Engine(self.unet, self.vae, self.prompts.tokenizer, self.text_encoder,
                       scheduler or copy.deepcopy(self.scheduler), config=self.config.with_(**changes),
                       adaptor_dir=self.adaptor_dir, decoder_dir=self.decoder_dir, **self._second)
        # Where the settings they depend on are the same, the engines share the prompt encoders
        # (and their cache) and the decoder: compiled ones are compiled once, not per engine.
        def same(*names):
            return all(getattr(self.config, n) == getattr(other.config, n) for n in names) and \
                self.graphs.backend == other.graphs.backend
        if same("compile", "inductor", "text_dtype", "prompt_cache_size"):
            other.conditioning, other.prompts = self.conditioning, self.prompts
        if same("compile", "inductor", "decoder"):
            other.tiny_decoder, other._decode_fn = self.tiny_decoder, self._decode_fn
        return other

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompt, *, steps=None, guidance_scale=None, seed=None, height=None, width=None,
                 negative_prompt=None, mode=None, output: str = "pil", callback=None, image=None, mask_image=None,
                 strength=None, timeout=None):
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

        With config.batching on, concurrent text-to-image calls share model calls
        (serving/scheduler.py: step-level continuous batching); each row's image stays its own.
        """
        req = request.parse(self, prompt, steps=steps, guidance_scale=guidance_scale, seed=seed, height=height,
                            width=width, negative_prompt=negative_prompt, mode=mode, output=output,
                            callback=callback, image=image, mask_image=mask_image, strength=strength,
                            timeout=timeout)
        if self.batcher is not None and self.batcher.accepts(req):
            return self.batcher.submit(req).result()
        return self.run_alone(req)

    def run_alone(self, req: request.GenerationRequest):
        """One checked request through the engine's own loop, holding the UNet's lock."""
        remaining = None if req.deadline is None else max(0.0, req.deadline - time.monotonic())
        if not self._lock.acquire(timeout=-1 if remaining is None else remaining):
            raise request.DeadlineExceeded("the request ran past its time limit waiting for the model")
        out_of_memory = False
        try:
            callback = req.callback
            if req.deadline is not None:
                def callback(i, n, x, user=req.callback):  # the deadline is checked at each step boundary
                    req.check_deadline()
                    if user is not None:
                        user(i, n, x)
            final = self._sample(req.prompts, req.negatives, req.steps, req.guidance, req.seeds, req.height,
                                 req.width, req.mode, callback, req.edit, req.negative_given)
            result = final if req.output == "latent" else self.decode(final, req.output)
        except torch.OutOfMemoryError:
            out_of_memory = True  # raised below, once this traceback (and the tensors it holds) is gone
        finally:
            if out_of_memory:
                sampler.release_device_memory()
            self._lock.release()
        if out_of_memory:
            raise request.out_of_memory(req, self.device)
        return req.result(result)

    @property
    def batcher(self):
        """The request scheduler of this engine (config.batching), started on first use; None when off."""
        if self.config.batching == "off":
            return None
        with self._batcher_guard:
            if self._batcher is None:
                from .serving.scheduler import BatchScheduler

                self._batcher = BatchScheduler(self)
            return self._batcher

    def _table(self, steps: int, start: sampler.Start = sampler.TEXT_TO_IMAGE) -> sampler.SolverTable:
        steps = validate.positive_int(steps, "steps", request.MAX_STEPS)
        key = (steps, start)
        if key not in self._tables:
            if len(self._tables) >= 32:  # a bounded cache: drop the oldest
                self._tables.pop(next(iter(self._tables)))
            grid = self.config.timesteps if self.config.timesteps and len(self.config.timesteps) == steps else None
            try:
                table = sampler.build_table(self.scheduler, steps, grid, self.config.eta, start)
            except (IndexError, RuntimeError, ZeroDivisionError) as e:  # the scheduler's own step failed
                raise ValueError(f"{schedulers.describe(self.scheduler)} cannot run {steps} steps: "
                                 f"{type(e).__name__}: {e}") from e
            sampler.verify(self.scheduler, table, grid, self.config.eta)  # refuse what the table would get wrong
            self._tables[key] = table.to(self.device)
        return self._tables[key]

    def schedule(self, steps: int, mode: str, start: sampler.Start = sampler.TEXT_TO_IMAGE) -> list[str]:
        """The step kinds the loop runs for `steps` inference steps, one a model evaluation
        (Heun, KDPM2 and PNDM evaluate the model more often than once a step; an edit runs the
        evaluations its strength leaves): e.g. clockwork.full, clockwork.adaptor, ..., each with
        "+compute" / "+reuse" where attention maps are cached / reused. The clock counts the
        evaluations that run, the first one full."""
        evals = self._table(steps, start).num_steps
        if mode == "full":
            kinds = ["full"] * evals
        else:
            kinds = ["clockwork.adaptor" if a else "clockwork.full" for a in self.config.clock().schedule(evals)]
        if self.config.attention_reuse is None:
            return kinds
        actions = attention.reuse_actions(evals, self.config.attention_reuse)
        for i, action in enumerate(actions):
            # An adaptor step runs no layer of L, so the maps of L's attention layers a reuse run
            # needs come from the last full step before it: that step computes (stores) them too.
            if action == "compute" and kinds[i] == "clockwork.adaptor":
                full = [j for j in range(i) if kinds[j] == "clockwork.full"]
                if full and actions[full[-1]] == "off":
                    actions[full[-1]] = "compute"
        return [k if a == "off" else f"{k}+{a}" for k, a in zip(kinds, actions)]

    def _step_fn(self, kind: str, table, bufs, cfg_on: bool, point: OperatingPoint | None = None):
        """The step program of one step kind; clockwork's kinds run `point`'s denoisers."""
        base, _, action = kind.partition("+")
        denoise = (point.denoisers if base.startswith("clockwork.") else self.denoisers)[base]
        if action:
            denoise = attention.reuse_denoiser(denoise, self.reuse, action, bufs.maps)
        compiled_programs = self.graphs.backend == "inductor" or self.graphs.cuda_compile is not None
        if self.config.fused_norms and not compiled_programs:
            denoise = fused_unet.activating(denoise)
        return partial(sampler.step, denoise, table, text=bufs.text, guidance=bufs.guidance, cfg=cfg_on,
                       embed_guidance=self.guidance_dim, noise=bufs.noise, extra=bufs.extra, blend=bufs.blend,
                       added=bufs.added, rescale=self.config.guidance_rescale)

    def uses_cfg(self, guidance) -> bool:
        """Two model evaluations per step (CFG batch) or one (no guidance, or a distilled model);
        guidance: a scale or one a row (the batch runs CFG when any row asks for it)."""
        scales = guidance if isinstance(guidance, (list, tuple)) else [guidance]
        return max(scales) > 1.0 and not self.guidance_dim

    def _sample(self, prompts, negatives, steps, guidance, seeds, height, width, mode, callback, edit=None,
                negative_given=True):
        cfg_on = self.uses_cfg(guidance)
        text, added = self.conditioning.encode(prompts, negatives, cfg_on, height, width, negative_given)
        start = latents.start_for(edit, self.unet.config.in_channels)
        table = self._table(steps, start)
        inputs = self.request_inputs(table, height, width, guidance, seeds, cfg_on, text, added, edit)
        shape = inputs.latents.shape
        kinds = self.schedule(steps, mode, start)
        point = self.operating_point(steps) if mode == "clockwork" else None

        def make_steps(bufs):
            return {kind: self._step_fn(kind, table, bufs, cfg_on, point) for kind in set(kinds)}

        feature_shape = None
        if point is not None:
            point.warn_off_point(steps)
            s = point.split.scale
            feature_shape = (inputs.text.shape[0], point.split.r_out_channels, shape[2] // s, shape[3] // s)
        key = (len(prompts), height, width, str(self.unet.dtype), mode, cfg_on, steps, start)
        result = self.graphs.run(key, make_steps, kinds, table, inputs, feature_shape, CacheState(), callback)
        if not torch.isfinite(result).all():
            raise NonFiniteError("the sampler produced NaN/Inf latents (check the model weights and guidance_scale)")
        return result

    def request_inputs(self, table, height, width, guidance, seeds, cfg_on: bool, text, added=None, edit=None):
        """A request's RequestInputs on the device: its noise from its seeds, its text and added
        conditioning (conditioning.encode's) in the model's dtype, its guidance scales."""
        dtype = self.unet.dtype
        shape = (len(guidance), self.vae.config.latent_channels, height // self.vae_factor, width // self.vae_factor)
        # Under CFG a row with a scale <= 1 gets scale 1 (its conditional output), as it would alone.
        scales = torch.tensor([g if g > 1.0 or not cfg_on else 1.0 for g in guidance], device=self.device)
        if added is not None:
            added = {k: v.to(self.device, dtype) for k, v in added.items()}
        # CPU generators whatever the device (the same seed gives the same image everywhere), drawn
        # in the model's dtype as diffusers' pipeline draws them.
        return latents.prepare(table, self.vae, shape, [torch.Generator().manual_seed(s) for s in seeds], dtype,
                               self.device, text.to(self.device, dtype), scales, edit, added)

    def decode(self, latents, output: str):
        """Final latents [B, C, h, w] -> PIL images or [B, 3, H, W] in [0, 1] (output 'pt')."""
        vae_cfg = self.vae.config
        z = latents / vae_cfg.scaling_factor
        if getattr(vae_cfg, "shift_factor", None):
            z = z + vae_cfg.shift_factor
        with fused_unet.active() if self.config.fused_norms else nullcontext():  # compiled code ignores it
            images = (self._decode_fn(z.to(self.vae.dtype)).float() / 2 + 0.5).clamp(0, 1)
        if output == "pt":
            return images
        from PIL import Image

        arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(a) for a in arrays]

    def _decode_eager(self, z):  # [B, C, h, w] unscaled latents -> [B, 3, H, W] in [-1, 1]
        if self.tiny_decoder is not None:
            return self.tiny_decoder(z)
        return self.vae.decode(z, return_dict=False)[0]


def student_presets(model: str = "demo") -> list[str]:
    """The distilled students shipped with a model (folders under its students/), sorted."""
    students = os.path.join(loading.resolve(model), STUDENTS_FOLDER)
    return sorted(os.listdir(students)) if os.path.isdir(students) else []


def _model_dir(model, preset: str | None) -> str:
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
