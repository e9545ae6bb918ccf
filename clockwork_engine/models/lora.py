"""LoRA adapters fused into a model's weights in place.

A LoRA is read by diffusers' own reader (the pipeline class's `lora_state_dict`: peft,
kohya and older diffusers files), so the engine takes what `load_lora_weights` takes. Each
adapted layer gets W = W_base + sum_i scale_i * (alpha_i / r_i) * B_i A_i, written into the
same parameter tensor: the step programs and CUDA graphs read those tensors, so loading,
rescaling or unloading a LoRA recaptures and recompiles nothing. The base weights of every
touched layer are kept, so unloading the last LoRA restores them bit for bit.

The set of LoRAs belongs to the model (every engine on the same modules sees it), as the lock
that serialises its device work does; changes take that lock, so they wait for a running
request to end.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

_SETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SETS_GUARD = threading.Lock()


class LoraLoadError(ValueError):
    """A LoRA file is unreadable, of a kind the engine does not fuse, or made for another model."""


@dataclass
class Lora:
    deltas: dict  # (component, module path) -> dW [out, in(, k, k)] float32 at scale 1 (alpha / r included)
    scale: float


def set_for(model) -> LoraSet:
    """The LoRA set of a model (one per denoiser module, shared by the engines on it)."""
    with _SETS_GUARD:
        return _SETS.setdefault(model, LoraSet())


class LoraSet:
    def __init__(self):
        self.loras: OrderedDict[str, Lora] = OrderedDict()
        self._base: dict[tuple, torch.Tensor] = {}  # (component, module path) -> the base weight
        self.text_version = 0  # bumped when a text encoder's weights change: prompt caches go stale

    def scales(self) -> dict[str, float]:
        return {name: lora.scale for name, lora in self.loras.items()}

    def apply(self, components: dict):
        """Write base + the LoRAs' deltas into every touched weight (the base alone where none
        is left, and forget it)."""
        touched = set(self._base) | {k for lora in self.loras.values() for k in lora.deltas}
        if any(component.startswith("text_encoder") for component, _ in touched):
            self.text_version += 1
        for key in touched:
            weight = _module(components, key).weight
            base = self._base.setdefault(key, weight.detach().clone())
            deltas = [lora.scale * lora.deltas[key] for lora in self.loras.values() if key in lora.deltas]
            with torch.no_grad():
                if not deltas:
                    weight.copy_(base)
                    del self._base[key]
                    continue
                fused = base.float() + sum(d.to(base.device) for d in deltas)
                weight.copy_(fused.to(weight.dtype))


def read(source, family, components: dict) -> dict:
    """(component, module path) -> dW of the LoRA at `source` (a file or folder, or a state dict),
    checked against the model's modules."""
    import diffusers

    if "lora" not in family.supports:
        raise LoraLoadError(f"LoRAs run on UNet models (SD 1.x / 2.x, SDXL); a {family.pipeline_class} model "
                            "takes none yet")
    reader = getattr(diffusers, family.pipeline_class)
    try:
        state, alphas = reader.lora_state_dict(source)
    except Exception as e:  # diffusers raises many kinds for a corrupt or foreign file
        raise LoraLoadError(f"could not read the LoRA {_name(source)}: {type(e).__name__}: {e}") from e
    if any("lora_magnitude_vector" in k for k in state) or any("lora_B" in k and k.endswith(".bias") for k in state):
        raise LoraLoadError(f"the LoRA {_name(source)} is a DoRA or has LoRA biases, which the engine does not fuse")
    pairs: dict[tuple, dict] = {}
    for key, tensor in state.items():
        head, _, tail = key.partition(".")
        path, kind = _split_key(tail)
        if kind is None or head not in components:
            raise LoraLoadError(f"the LoRA {_name(source)} has a weight {key!r} for no part of this "
                                f"{family.pipeline_class} model")
        pairs.setdefault((head, path), {})[kind] = tensor
    deltas = {}
    for (component, path), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise LoraLoadError(f"the LoRA {_name(source)} lacks lora_{missing} of {component}.{path}")
        module = _module(components, (component, path))
        a, b = ab["A"].float(), ab["B"].float()
        rank = a.shape[0]
        alpha = _alpha(alphas, component, path, rank)
        delta = (b.flatten(1) @ a.flatten(1)) * (alpha / rank)
        if delta.numel() != module.weight.numel():
            raise LoraLoadError(f"the LoRA {_name(source)} was made for another model: {component}.{path} is "
                                f"{tuple(module.weight.shape)}, the LoRA's update {tuple(delta.shape)}")
        deltas[(component, path)] = delta.view(module.weight.shape).to(module.weight.device)
    if not deltas:
        raise LoraLoadError(f"the LoRA {_name(source)} has no weights")
    return deltas


def _split_key(tail: str) -> tuple[str, str | None]:
    """'down_blocks.0...to_q.lora_A.weight' -> ('down_blocks.0...to_q', 'A')."""
    for marker, kind in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
        if tail.endswith(marker):
            return tail[: -len(marker)], kind
    return tail, None


def _alpha(alphas, component: str, path: str, rank: int) -> float:
    """The module's alpha (kohya files carry one; peft files saved by diffusers mean alpha = rank)."""
    if not alphas:
        return float(rank)
    for key in (f"{component}.{path}.alpha", f"{path}.alpha"):
        if key in alphas:
            return float(alphas[key])
    return float(rank)


def _module(components: dict, key: tuple):
    component, path = key
    try:
        module = components[component].get_submodule(path)
    except AttributeError as e:
        raise LoraLoadError(f"this model has no {component}.{path} for the LoRA to adapt") from e
    if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        raise LoraLoadError(f"{component}.{path} is a {type(module).__name__}; LoRAs adapt linear and conv layers")
    return module


def _name(source) -> str:
    return "given as a state dict" if isinstance(source, dict) else repr(str(source))
