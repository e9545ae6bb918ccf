"""clockwork-engine: faster Stable-Diffusion-style text-to-image generation."""

from clockwork_engine.config import PRESETS, EngineConfig
from clockwork_engine.engine import Engine, NonFiniteError
from clockwork_engine.models.loading import ModelLoadError
from clockwork_engine.request import DeadlineExceeded, DeviceMemoryError

__all__ = ["PRESETS", "DeadlineExceeded", "DeviceMemoryError", "Engine", "EngineConfig", "ModelLoadError",
           "NonFiniteError"]
__version__ = "0.1.0"
