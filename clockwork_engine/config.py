"""Engine configuration: one dataclass and its named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

MODES = ("full",)  # acceleration modes the engine implements (clockwork etc. join here)


@dataclass(frozen=True)
class EngineConfig:
    mode: str = "full"  # "full": the unmodified model, equal to diffusers' pipeline
    steps: int = 8
    guidance_scale: float = 5.0  # <= 1 disables classifier-free guidance (one model call)
    height: int | None = None  # None: the UNet's sample size times the VAE factor
    width: int | None = None
    max_batch_size: int = 16  # prompts per generate() call
    prompt_cache_size: int = 256  # prompt embeddings kept (LRU)
    max_size_factor: int = 4  # largest height/width = this x the default size

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; modes: {', '.join(MODES)}")
        for name in ("steps", "max_batch_size", "max_size_factor"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not isinstance(self.prompt_cache_size, int) or self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be an int >= 0, got {self.prompt_cache_size!r}")

    def with_(self, **changes) -> "EngineConfig":
        return replace(self, **changes)


PRESETS: dict[str, EngineConfig] = {
    "full": EngineConfig(mode="full"),
}


def preset(name: str) -> EngineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
