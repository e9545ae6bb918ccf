"""Engine configuration: EngineConfig, its four groups (sampling, acceleration, runtime,
serving) and its named presets."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from clockwork_engine import validate

# "full": the unmodified model (equal to diffusers' pipeline).
# "clockwork": the low-res middle L is replaced by the adaptor on the clock's steps.
MODES = ("full", "clockwork")
# Guidance scales in use are 1-20; far larger ones overflow fp32 latents (NaN) instead of making an image.
MAX_GUIDANCE = 100.0
TEXT_DTYPES = ("float32", "bfloat16")
BATCHING = ("off", "request", "step")


@dataclass(frozen=True)
class SamplingConfig:
    """What a request computes: the mode, the step count and grid, guidance, the scheduler, the size."""

    mode: str = "full"
    steps: int = 8
    # A custom timestep grid for `steps` == len(timesteps) (a distilled student's own grid;
    # DPM-Solver++ only); other step counts use the scheduler's spacing.
    timesteps: tuple[int, ...] | None = None
    guidance_scale: float = 5.0  # <= 1 disables classifier-free guidance (one model call)
    # The sampler: None = the model's own scheduler, else a diffusers class name or a short
    # name (sampler/noise_schedulers.ALIASES: "euler-a", "dpm++2m-karras", ...) built from its config.
    scheduler: str | None = None
    eta: float = 0.0  # DDIM's eta / TCD's gamma, as the pipeline's eta= (0: deterministic)
    guidance_rescale: float = 0.0  # CFG rescale (diffusers' guidance_rescale, in [0, 1]; 0: off)
    height: int | None = None  # None: the model's sample size times the VAE factor
    width: int | None = None
    # SD3's and Flux's T5 tokens (their pipelines' max_sequence_length; None: 256 / 512). SD3
    # without T5 attends to this many zero tokens after CLIP's; 0 only there.
    max_sequence_length: int | None = None

    def size_or(self, default: int) -> tuple[int, int]:
        """(height, width) a request gets when it names none: these, else the model's default."""
        return self.height or default, self.width or default

    def __post_init__(self):
        _tuples(self, "timesteps")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; modes: {', '.join(MODES)}")
        _positive_ints(self, "steps")
        validate.finite_float(self.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
        validate.finite_float(self.eta, "eta", 0.0, 1.0)
        validate.finite_float(self.guidance_rescale, "guidance_rescale", 0.0, 1.0)
        n = self.max_sequence_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 512):
            raise ValueError(f"max_sequence_length must be an int in [0, 512] or None, got {n!r}")
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler):
            raise ValueError(f"scheduler must be a scheduler name or None, got {self.scheduler!r}")
        if self.timesteps is not None:
            ts = self.timesteps
            if not ts or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ts) or \
                    any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
                raise ValueError(f"timesteps must be a decreasing sequence of ints >= 0, got {ts!r}")


@dataclass(frozen=True)
class AccelerationConfig:
    """What makes an image cheaper: clockwork's clock, adaptor and cut, attention reuse, the
    decoder and the text encoder's dtype."""

    # Clockwork: adaptor on steps i % clock_every == clock_every - 1 (0-based), or on an
    # explicit set of steps; "identity" or a folder for the adaptor at every step count (None:
    # the model directory's, the one fitted for each request's step count: operating_point.py);
    # cut level of the split (unet_split.py: 1 is the paper's; 0 runs only conv_in and the
    # UNet's last layer on its steps, DeepCache's cut; transformer_split.py: the first and last
    # `cut` joint blocks always run).
    clock_every: int = 2
    adaptor_steps: tuple[int, ...] | None = None
    adaptor: str | None = None
    cut: int = 1
    # Attention-map reuse: 0-based steps that reuse the maps of the step before them
    # (None: off); which layers ("all", "self", "cross" or module names); byte cap.
    attention_reuse: tuple[int, ...] | None = None
    reuse_layers: str = "all"
    max_attention_bytes: int = 512 * 2**20
    # Image decoder: "vae" (the model's), "tiny" (the model directory's tiny_decoder/: a
    # distilled stand-in, under half of the demo VAE decoder's FLOPs) or a tiny decoder folder.
    decoder: str = "vae"
    # Text encoder weights: "float32" (as loaded) or "bfloat16" (a bf16 copy; embeddings come
    # back in the model's dtype). A batch-1 encoder mostly reads its weights, so half the bytes
    # halves its time; ~1% relative error on the demo's embeddings.
    text_dtype: str = "float32"

    def __post_init__(self):
        _tuples(self, "adaptor_steps", "attention_reuse")
        if not isinstance(self.decoder, str) or not self.decoder:
            raise ValueError(f"decoder must be 'vae', 'tiny' or a tiny decoder folder, got {self.decoder!r}")
        if self.text_dtype not in TEXT_DTYPES:
            raise ValueError(f"text_dtype must be one of {', '.join(TEXT_DTYPES)}, got {self.text_dtype!r}")
        if isinstance(self.cut, bool) or not isinstance(self.cut, int) or self.cut < 0:
            raise ValueError(f"cut must be an int >= 0, got {self.cut!r}")
        self.clock()  # validates clock_every / adaptor_steps
        if self.attention_reuse is not None:
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in self.attention_reuse):
                raise ValueError(f"attention_reuse must be 0-based step indices >= 1, got {self.attention_reuse!r}")

    def clock(self):
        from clockwork_engine.clockwork.clock import Clock

        steps = frozenset(self.adaptor_steps) if self.adaptor_steps is not None else None
        return Clock(every=self.clock_every, adaptor_steps=steps)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the step programs run: the backend, compilation, fused kernels, what is kept."""

    # step programs: "auto" = "cuda" graphs when a GPU is there, else "cpu" (eager);
    # "inductor": compiled by TorchInductor (CPU; tens of seconds per new request shape)
    backend: str = "auto"
    # cuda backend: each step program compiled by TorchInductor (Triton kernels) before it is
    # captured as a CUDA graph, and the text encoder and decoder compiled too; False: the same
    # programs captured uncompiled (starts in seconds; for debugging). inductor: the option set
    # (compile.CUDA_OPTIONS). compiled_dir: prepared artifacts (`clockwork compile`) loaded at
    # start; None: the model directory's compiled/ where it has one.
    compile: bool = True
    inductor: str = "default"
    compiled_dir: str | None = None
    # Uncompiled step programs and decodes: the UNet's and the VAE's resnets run the project's
    # fused GroupNorm + SiLU kernels (ops/fused_unet.py); compiled ones leave fusion to inductor.
    fused_norms: bool = True
    max_graphs: int = 8  # (batch, size, dtype, mode, cfg, steps) program sets kept (LRU)
    prompt_cache_size: int = 256  # prompt embeddings kept (LRU)
    max_size_factor: int = 4  # largest height/width = this x the default size

    def __post_init__(self):
        if self.backend not in ("auto", "cpu", "cuda", "inductor"):
            raise ValueError(f"backend must be 'auto', 'cpu', 'cuda' or 'inductor', got {self.backend!r}")
        for name in ("compile", "fused_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        from clockwork_engine.compile import cuda_options

        cuda_options(self.inductor)  # a known option set
        if self.compiled_dir is not None and (not isinstance(self.compiled_dir, str) or not self.compiled_dir):
            raise ValueError(f"compiled_dir must be a folder or None, got {self.compiled_dir!r}")
        _positive_ints(self, "max_size_factor", "max_graphs")
        if not isinstance(self.prompt_cache_size, int) or self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be an int >= 0, got {self.prompt_cache_size!r}")


@dataclass(frozen=True)
class ServingConfig:
    """Concurrent calls: the batching policy, its buckets, the queue, deadlines."""

    max_batch_size: int = 16  # prompts per generate() call
    # Concurrent generate() calls (threads, the HTTP server): "off" = one call at a time per
    # model; "request" = calls waiting together start together as one batch; "step" = step-level
    # continuous batching (a call joins the running batch at a step boundary). serving/scheduler.py
    batching: str = "off"
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16)  # batch sizes the step programs are built for
    max_queue: int = 64  # images waiting to start (batching on): more is refused at once (QueueFull)
    request_timeout: float | None = None  # seconds a call may take; past it, dropped (DeadlineExceeded)

    def __post_init__(self):
        _tuples(self, "batch_buckets")
        _positive_ints(self, "max_batch_size", "max_queue")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        buckets = self.batch_buckets
        if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets) or \
                list(buckets) != sorted(set(buckets)):
            raise ValueError(f"batch_buckets must be increasing positive ints, got {buckets!r}")
        if self.request_timeout is not None:
            validate.finite_float(self.request_timeout, "request_timeout", 0.0)


GROUPS = {"sampling": SamplingConfig, "acceleration": AccelerationConfig, "runtime": RuntimeConfig,
          "serving": ServingConfig}
FIELD_GROUP = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}  # "steps" -> "sampling"


@dataclass(frozen=True, init=False)
class EngineConfig:
    """The engine's settings in four groups. Every setting is also a flat keyword and a flat
    attribute: EngineConfig(mode="clockwork", steps=20, batching="step").steps == 20, the
    same as EngineConfig(sampling=SamplingConfig(mode="clockwork", steps=20), ...).sampling.steps;
    a group may be given as a dict, and flat keywords update the groups given beside them."""

    sampling: SamplingConfig
    acceleration: AccelerationConfig
    runtime: RuntimeConfig
    serving: ServingConfig

    def __init__(self, sampling=None, acceleration=None, runtime=None, serving=None, **settings):
        given = {"sampling": sampling, "acceleration": acceleration, "runtime": runtime, "serving": serving}
        changes: dict[str, dict] = {group: {} for group in GROUPS}
        for name, value in settings.items():
            if name not in FIELD_GROUP:
                raise TypeError(f"EngineConfig has no setting {name!r}")
            changes[FIELD_GROUP[name]][name] = value
        for group, cls in GROUPS.items():
            base = given[group]
            if base is None or isinstance(base, dict):
                value = cls(**{**(base or {}), **changes[group]})
            elif isinstance(base, cls):
                value = replace(base, **changes[group]) if changes[group] else base
            else:
                raise TypeError(f"EngineConfig's {group} must be a {cls.__name__} or a dict, got {type(base).__name__}")
            object.__setattr__(self, group, value)

    def __getattr__(self, name: str):
        """A flat read: config.steps is config.sampling.steps."""
        group = FIELD_GROUP.get(name)
        if group is None:
            raise AttributeError(f"EngineConfig has no setting {name!r}")
        return getattr(object.__getattribute__(self, group), name)

    def clock(self):
        return self.acceleration.clock()

    def with_(self, **changes) -> EngineConfig:
        """A copy with these settings changed (flat names, or whole groups)."""
        return replace(self, **changes)

    def settings(self) -> dict:
        """Every setting by its flat name."""
        return {f.name: getattr(self, f.name) for group in GROUPS for f in fields(getattr(self, group))}


def _tuples(config, *names):
    for name in names:  # JSON settings give lists: keep the config hashable
        if isinstance(getattr(config, name), list):
            object.__setattr__(config, name, tuple(getattr(config, name)))


def _positive_ints(config, *names):
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


PRESETS: dict[str, EngineConfig] = {
    "full": EngineConfig(mode="full"),
    "clockwork": EngineConfig(mode="clockwork"),
    "clockwork-identity": EngineConfig(mode="clockwork", adaptor="identity"),
}


def preset(name: str) -> EngineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
