"""ModelRunner: one loaded model on its device and everything that runs it.

It owns the modules (the denoiser, a UNet or a transformer as its family says (models/);
the VAE, the text encoders), the lock that serialises their device work, the solver tables,
clockwork's operating points, attention reuse, the step programs and their graphs
(sampler.GraphSampler), the prompt encoders and the decoder. Engine is the thin front
over it (configuration, validation, generate); the request scheduler (serving/) and the
distillation code (distill/) call its public methods.

    runner.table(steps)             the solver table of a step count (cached, bounded)
    runner.step_kinds(steps, mode)  the step kinds the loop runs
    runner.step_fn(kind, ...)       the step program of one kind over static buffers
    runner.request_inputs(...)      a request's tensors on the device
    runner.sample(...)              one request through the engine's own loop
    runner.decode(latents, output)  latents -> images
    with runner.lock: ...           device work on this model, one thread at a time
"""

from __future__ import annotations

import threading
import weakref
from contextlib import nullcontext
from functools import partial

import torch

from clockwork_engine import request, sampler, validate
from clockwork_engine.clockwork.cache import CacheState
from clockwork_engine.clockwork.operating_point import OperatingPoint, OperatingPoints
from clockwork_engine.clockwork.unet_split import UNetSplit
from clockwork_engine.compile import CUDA_MODULE_OPTIONS, MODULE_OPTIONS, compiled, cuda_options
from clockwork_engine.conditioning import control as control_inputs
from clockwork_engine.conditioning import latents
from clockwork_engine.config import EngineConfig
from clockwork_engine.models import lora, tiny_decoder
from clockwork_engine.models.family import check_parts, check_runs, family_of
from clockwork_engine.ops import fused_unet
from clockwork_engine.request import NonFiniteError
from clockwork_engine.reuse import attention
from clockwork_engine.sampler import noise_schedulers

# One lock per UNet: runners sharing a model (and its attention processors) take turns.
_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()
MAX_TABLES = 32  # solver tables kept (one per step count and start)


def model_lock(unet) -> threading.RLock:
    """The lock shared by every runner on this UNet."""
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(unet, threading.RLock())


class ModelRunner:
    def __init__(self, model, vae, tokenizer, text_encoder, scheduler, config: EngineConfig | None = None,
                 adaptor_dir: str | None = None, decoder_dir: str | None = None, **text_components):
        """model: the denoiser network (a UNet, or an SD3 transformer); its family
        (models/family.py) says what else it needs. text_components: the family's other text
        parts (SDXL: tokenizer_2, text_encoder_2, force_zeros_for_empty_prompt; SD3 also
        tokenizer_3, text_encoder_3)."""
        self.config = config or EngineConfig()
        self.family = family_of(model)
        self.model = model.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        for name in ("text_encoder_2", "text_encoder_3", "controlnet"):
            if text_components.get(name) is not None:
                text_components[name] = text_components[name].eval().requires_grad_(False)
        self.components = {self.family.model_component: self.model, "vae": vae, "tokenizer": tokenizer,
                           "text_encoder": self.text_encoder, **text_components}
        check_parts(self.family, self.components, type(model).__name__)
        if self.config.scheduler is not None:
            scheduler = noise_schedulers.from_name(self.config.scheduler, scheduler)
        self.scheduler = scheduler
        check_runs(self.family, scheduler, self.config)
        self.adaptor_dir, self.decoder_dir = adaptor_dir, decoder_dir
        self.tiny_decoder = tiny_decoder.for_choice(self.config.decoder, decoder_dir, vae, self.device)
        self.graphs = sampler.GraphSampler(self.config.backend, self.config.max_graphs,
                                           cuda_options(self.config.inductor) if self.config.compile else None)
        # The text encoder and the decoder: compiled on the inductor backend and on the compiled
        # cuda backend, eager otherwise.
        module_options = MODULE_OPTIONS if self.graphs.backend == "inductor" else \
            CUDA_MODULE_OPTIONS if self.graphs.cuda_compile is not None else None
        self.conditioning = self.family.conditioning(
            self.components, text_tokens=self.config.max_sequence_length, capacity=self.config.prompt_cache_size,
            compile_options=module_options, dtype=getattr(torch, self.config.text_dtype))
        self.prompts = self.conditioning.prompts  # the (first) text encoder's prompt cache
        self.decode_fn = self.decode_eager if module_options is None else \
            compiled(self.decode_eager, module_options, "image decoder", dynamic=None)
        if self.config.fused_norms:
            fused_unet.install(self.model)
            fused_unet.install(self.vae)
        self.vae_factor = tiny_decoder.vae_upscale(vae)
        self.size_multiple = self.family.size_multiple(model, self.vae_factor)
        self.default_size = self.family.default_size(model, self.vae_factor)
        self._tables: dict[tuple, sampler.SolverTable] = {}
        self.lock = model_lock(self.model)
        self.lora = lora.ModelLoras(self.model, self.components, self.family, self.lock, self.graphs.weights_frozen)
        grid = self.config.timesteps  # fail now on an unsupported scheduler, or a grid it cannot take
        self.table(len(grid) if grid else self.config.steps)
        self.guidance_dim = self.family.guidance_dim(model)
        self.denoisers = {"full": self.family.denoiser(self.model) if self.controlnet is None else
                          control_inputs.with_control(self.model, self.controlnet)}
        self.points = None  # clockwork's adaptors by step count (operating_point.py)
        self._control_denoisers: dict = {}  # operating point -> its denoisers with the ControlNets
        if self.config.mode == "clockwork":
            self.points = OperatingPoints(self.model, self.config, self.scheduler, adaptor_dir, self.lock,
                                          self.family.split)
            self.points.at(self.config.steps)  # a bad adaptor fails here, not at the first request
        self.reuse = None
        if self.config.attention_reuse is not None:
            self.reuse = attention.apply_reuse(self.model, attention.ReuseConfig(
                self.config.reuse_layers, self.config.max_attention_bytes))

    @property
    def unet(self):
        """The UNet of a UNet family (SD 1.x/2.x, SDXL)."""
        if self.family.model_component != "unet":
            raise AttributeError(f"a {self.family.name} model has no UNet (its denoiser is runner.model)")
        return self.model

    @property
    def controlnet(self):
        """The ControlNet(s) of a ControlNet pipeline (a ControlNetModel or MultiControlNetModel), or None."""
        return self.components.get("controlnet")

    @property
    def text_components(self) -> dict:
        """The family's text components beyond the first encoder (what another runner on the
        same modules is built with)."""
        return {k: v for k, v in self.components.items()
                if k not in (self.family.model_component, "vae", "tokenizer", "text_encoder")}

    def operating_point(self, steps: int, loras: tuple = ()) -> OperatingPoint:
        """The adaptor, split and denoisers clockwork runs at `steps` steps under the LoRA set
        `loras`: on the model's own adaptors the one fitted for them (the default if none was)."""
        if self.points is None:
            raise ValueError("mode 'clockwork' needs an adaptor; build the engine with a clockwork config")
        return self.points.at(steps, loras)

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

    @property
    def device(self) -> torch.device:
        return self.model.device

    def share_with(self, other: ModelRunner):
        """Give `other` (a runner on the same modules) this runner's prompt encoders (and their
        cache) and decoder where the settings they depend on are the same: compiled ones are
        then compiled once, not per runner."""
        def same(*names):
            return all(getattr(self.config, n) == getattr(other.config, n) for n in names) and \
                self.graphs.backend == other.graphs.backend
        if same("compile", "inductor", "text_dtype", "prompt_cache_size"):
            other.conditioning, other.prompts = self.conditioning, self.prompts
        if same("compile", "inductor", "decoder"):
            other.tiny_decoder, other.decode_fn = self.tiny_decoder, self.decode_fn

    def table(self, steps: int, start: sampler.Start = sampler.TEXT_TO_IMAGE,
              size: tuple[int, int] | None = None) -> sampler.SolverTable:
        """size (height, width): the image's, where the family's grid depends on it (SD3 with
        dynamic shifting); default the size a request gets when it names none."""
        steps = validate.positive_int(steps, "steps", request.MAX_STEPS)
        height, width = size or self.config.sampling.size_or(self.default_size)
        options = self.family.table_options(self.model, self.scheduler, steps, height, width, self.vae_factor)
        key = (steps, start, tuple(sorted(options.items())))
        if key not in self._tables:
            if len(self._tables) >= MAX_TABLES:  # a bounded cache: drop the oldest
                self._tables.pop(next(iter(self._tables)))
            grid = self.config.timesteps if self.config.timesteps and len(self.config.timesteps) == steps else None
            try:
                table = sampler.build_table(self.scheduler, steps, grid, self.config.eta, start, options)
            except (IndexError, RuntimeError, ZeroDivisionError) as e:  # the scheduler's own step failed
                raise ValueError(f"{noise_schedulers.describe(self.scheduler)} cannot run {steps} steps: "
                                 f"{type(e).__name__}: {e}") from e
            sampler.verify(self.scheduler, table, grid, self.config.eta)  # refuse what the table would get wrong
            self._tables[key] = table.to(self.device)
        return self._tables[key]

    def step_kinds(self, steps: int, mode: str, start: sampler.Start = sampler.TEXT_TO_IMAGE,
                   size: tuple[int, int] | None = None) -> list[str]:
        """The step kinds the loop runs for `steps` inference steps, one a model evaluation
        (Heun, KDPM2 and PNDM evaluate more often than once a step; an edit runs those its strength
        leaves): e.g. clockwork.full, clockwork.adaptor, ..., with "+compute" / "+reuse" where
        attention maps are cached / reused. The clock counts the evaluations, the first one full."""
        evals = self.table(steps, start, size).num_steps
        if mode == "full":
            kinds = ["full"] * evals
        else:
            kinds = ["clockwork.adaptor" if a else "clockwork.full" for a in self.config.clock().schedule(evals)]
        reuse = self.config.attention_reuse
        return kinds if reuse is None else attention.with_reuse(kinds, reuse)

    def step_fn(self, kind: str, table, bufs, cfg_on: bool, point: OperatingPoint | None = None):
        """The step program of one step kind; clockwork's kinds run `point`'s denoisers."""
        base, _, action = kind.partition("+")
        denoise = (self._clockwork_denoisers(point) if base.startswith("clockwork.") else self.denoisers)[base]
        if action:
            denoise = attention.reuse_denoiser(denoise, self.reuse, action, bufs.maps)
        compiled_programs = self.graphs.backend == "inductor" or self.graphs.cuda_compile is not None
        if self.config.fused_norms and not compiled_programs:
            denoise = fused_unet.activating(denoise)
        return partial(sampler.step, denoise, table, text=bufs.text, guidance=bufs.guidance, cfg=cfg_on,
                       embed_guidance=self.guidance_dim, noise=bufs.noise, extra=bufs.extra, blend=bufs.blend,
                       added=bufs.added, rescale=self.config.guidance_rescale)

    def encode(self, prompts, negatives, cfg_on: bool, height: int, width: int, negative_given: bool = True):
        """The family's conditioning of a batch (prompt caches a LoRA made stale dropped first)."""
        self.lora.drop_stale_prompts(self.conditioning)
        return self.conditioning.encode(prompts, negatives, cfg_on, height, width, negative_given)

    def _clockwork_denoisers(self, point: OperatingPoint) -> dict:
        """The operating point's denoisers; with a ControlNet, its residuals go into the split."""
        if self.controlnet is None:
            return point.denoisers
        if point not in self._control_denoisers:
            self._control_denoisers[point] = control_inputs.clockwork_denoisers(point.split, point.adaptor,
                                                                                self.controlnet)
        return self._control_denoisers[point]

    def uses_cfg(self, guidance) -> bool:
        """Two model evaluations per step (CFG batch) or one (no guidance, or a distilled model);
        guidance: a scale or one a row (the batch runs CFG when any row asks for it)."""
        scales = guidance if isinstance(guidance, (list, tuple)) else [guidance]
        return max(scales) > 1.0 and not self.guidance_dim and self.family.cfg

    def sample(self, prompts, negatives, steps, guidance, seeds, height, width, mode, callback, edit=None,
                negative_given=True, control=None):
        """control: the request's ControlNet inputs (conditioning/control.py), or None."""
        cfg_on = self.uses_cfg(guidance)
        text, added = self.encode(prompts, negatives, cfg_on, height, width, negative_given)
        start = latents.start_for(edit, self.model.config.in_channels)
        table = self.table(steps, start, (height, width))
        if control is not None:
            added = {**(added or {}), **control_inputs.added(control, table.num_steps, cfg_on)}
        inputs = self.request_inputs(table, height, width, guidance, seeds, cfg_on, text, added, edit)
        shape = inputs.latents.shape
        kinds = self.step_kinds(steps, mode, start, (height, width))
        point = self.operating_point(steps, self.lora.fused) if mode == "clockwork" else None  # the request's set

        def make_steps(bufs):
            return {kind: self.step_fn(kind, table, bufs, cfg_on, point) for kind in set(kinds)}

        feature_shape = None
        if point is not None:
            point.warn_off_point(steps)
            feature_shape = point.split.feature_shape(inputs.text.shape[0], inputs.text.shape[1], *shape[2:])
        key = (len(prompts), height, width, str(self.model.dtype), mode, cfg_on, steps, start,
               None if control is None else control.signature())
        result = self.graphs.run(key, make_steps, kinds, table, inputs, feature_shape, CacheState(), callback)
        if not torch.isfinite(result).all():
            raise NonFiniteError("the sampler produced NaN/Inf latents (check the model weights and guidance_scale)")
        return result

    def request_inputs(self, table, height, width, guidance, seeds, cfg_on: bool, text, added=None, edit=None):
        """A request's RequestInputs on the device: its noise from its seeds, its text and added
        conditioning (conditioning.encode's) in the model's dtype, its guidance scales."""
        dtype = self.model.dtype
        shape = (len(guidance), self.vae.config.latent_channels, height // self.vae_factor, width // self.vae_factor)
        # Under CFG a row with a scale <= 1 gets scale 1 (its conditional output), as it would alone.
        scales = torch.tensor([g if g > 1.0 or not cfg_on else 1.0 for g in guidance], device=self.device)
        added = {**(added or {}), **self.family.guidance_inputs(self.model, scales)}
        added = {k: v.to(self.device, dtype) for k, v in added.items()} or None
        # CPU generators whatever the device (the same seed gives the same image everywhere), drawn
        # in the model's dtype as diffusers' pipeline draws them.
        return latents.prepare(table, self.vae, shape, [torch.Generator().manual_seed(s) for s in seeds], dtype,
                               self.device, text.to(self.device, dtype), scales, edit, added)

    def decode(self, latents, output: str):
        """Final latents [B, C, h, w] -> PIL images or [B, 3, H, W] in [0, 1] (output 'pt')."""
        with fused_unet.active() if self.config.fused_norms else nullcontext():  # compiled code ignores it
            images = (self.decode_fn(self.unscaled(latents).to(self.vae.dtype)).float() / 2 + 0.5).clamp(0, 1)
        if output == "pt":
            return images
        from PIL import Image

        arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(a) for a in arrays]

    def unscaled(self, latents):  # the sampler's latents -> the VAE's (its scaling and shift undone)
        c = self.vae.config
        return latents / c.scaling_factor + (getattr(c, "shift_factor", None) or 0)

    def decode_eager(self, z):  # [B, C, h, w] unscaled latents -> [B, 3, H, W] in [-1, 1]
        if self.tiny_decoder is not None:
            return self.tiny_decoder(z)
        return self.vae.decode(z, return_dict=False)[0]
