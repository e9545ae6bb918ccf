"""clockwork-engine: faster Stable-Diffusion-style text-to-image generation."""

from .config import PRESETS, EngineConfig
from .engine import Engine, NonFiniteError
from .loading import ModelLoadError
from .request import DeadlineExceeded, DeviceMemoryError

__all__ = ["PRESETS", "DeadlineExceeded", "DeviceMemoryError", "Engine", "EngineConfig", "ModelLoadError",
           "NonFiniteError"]
__version__ = "0.1.0"
