"""LoRA adapters fused into a model's weights in place.

A LoRA is read by diffusers' own reader (the pipeline class's `lora_state_dict`: peft,
kohya and older diffusers files), so the engine takes what `load_lora_weights` takes. Each
adapted layer gets W = W_base + sum_i scale_i * (alpha_i / r_i) * B_i A_i, written into the
same parameter tensor: the step programs and CUDA graphs read those tensors, so loading,
rescaling or unloading a LoRA recaptures and recompiles nothing. The base weights of every
touched layer are kept, so unloading the last LoRA restores them bit for bit.

The LoRAs belong to the model (every engine on the same modules sees them), as the lock that
serialises its device work does: the loaded ones (by name), the default set a request without
its own runs under (name -> scale), and the set fused into the weights now. A request carries
its set (request.loras); the runner fuses it under the model's lock before the request (or a
batch step of its lane) runs, so a request runs under one set from start to end.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

_SETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SETS_GUARD = threading.Lock()


class LoraLoadError(ValueError):
    """A LoRA file is unreadable, of a kind the engine does not fuse, or made for another model."""


def set_for(model) -> LoraSet:
    """The LoRA set of a model (one per denoiser module, shared by the engines on it)."""
    with _SETS_GUARD:
        return _SETS.setdefault(model, LoraSet())


class LoraSet:
    def __init__(self):
        self.library: OrderedDict[str, dict] = OrderedDict()  # name -> (component, module path) -> dW
        self.default: dict[str, float] = {}  # the set a request without its own runs under
        self.fused: tuple = ()  # ((name, scale), ...) in the weights now
        self._base: dict[tuple, torch.Tensor] = {}  # (component, module path) -> the base weight
        self.text_version = 0  # bumped when a text encoder's weights change: prompt caches go stale

    def resolve(self, loras: dict | None) -> tuple:
        """A request's set as a key: its own ({name: scale}) or the default (None)."""
        if loras is None:
            return tuple(sorted(self.default.items()))
        if not isinstance(loras, dict):
            raise TypeError(f"lora must be a {{name: scale}} dict, got {type(loras).__name__}")
        unknown = sorted(set(loras) - set(self.library))
        if unknown:
            raise ValueError(f"no LoRA named {unknown} is loaded; loaded: {list(self.library)}")
        return tuple(sorted(loras.items()))

    def use(self, components: dict, key: tuple):
        """Fuse the set `key` ((name, scale), ...) into the weights, if it is not there already."""
        if key != self.fused:
            self.apply(components, dict(key))

    def apply(self, components: dict, active: dict[str, float]):
        """Write base + the active LoRAs' deltas into every touched weight (the base alone where
        none is active, and forget it)."""
        touched = set(self._base) | {k for name in active for k in self.library[name]}
        if any(component.startswith("text_encoder") for component, _ in touched):
            self.text_version += 1
        for key in touched:
            weight = _module(components, key).weight
            base = self._base.setdefault(key, weight.detach().clone())
            deltas = [scale * self.library[name][key] for name, scale in active.items() if key in self.library[name]]
            with torch.no_grad():
                if not deltas:
                    weight.copy_(base)
                    del self._base[key]
                    continue
                fused = base.float() + sum(d.to(base.device) for d in deltas)
                weight.copy_(fused.to(weight.dtype))
        self.fused = tuple(sorted(active.items()))


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base weights (state dict names) of the denoiser's layers a fused LoRA has changed:
    what identifies the model an adaptor was fitted for is its base, under any LoRA."""
    fused = set_for(model)._base
    return {f"{path}.weight": w for (component, path), w in fused.items() if not component.startswith("text_encoder")}


class ModelLoras:
    """A runner's view of its model's LoRAs (runner.lora): changes under the model's lock."""

    def __init__(self, model, components: dict, family, lock, frozen: bool):
        """frozen: the step programs hold the weights as constants (a change would not reach them)."""
        self.set, self.components, self.family = set_for(model), components, family
        self.lock, self.frozen = lock, frozen
        self._prompts_version = self.set.text_version  # of the text encoders the caller's prompt caches saw

    def load(self, source, name: str | None = None, scale: float = 1.0) -> str:
        """Add a LoRA to the default set (a running request finishes first); returns its name."""
        if self.frozen:
            raise ValueError("a LoRA changes the weights in place; step programs compiled with frozen weights "
                             "(backend 'inductor', or inductor='freezing') would not see it: use backend 'cpu' or "
                             "'cuda'")
        scale = _scale(scale, "scale")
        deltas = read(source, self.family, self.components)
        with self.lock:
            name = name or f"lora_{len(self.set.library)}"
            self.set.library[name] = deltas
            self.set.default[name] = scale
            self.set.use(self.components, self.set.resolve(None))
        return name

    def set_scales(self, scales: dict[str, float]):
        """Rescale LoRAs of the default set (a scale for a loaded LoRA outside it adds it)."""
        self.set.resolve(scales)  # names it does not know are refused
        scales = {name: _scale(v, f"scale of {name}") for name, v in scales.items()}
        with self.lock:
            self.set.default.update(scales)
            self.set.use(self.components, self.set.resolve(None))

    def unload(self, name: str | None = None):
        """Drop one LoRA (None: every one); with none fused the base weights are back bit for bit."""
        if name is not None and name not in self.set.library:
            raise ValueError(f"no LoRA named {name!r}; loaded: {list(self.set.library)}")
        with self.lock:
            for key in [name] if name is not None else list(self.set.library):
                del self.set.library[key]
                self.set.default.pop(key, None)
            self.set.apply(self.components, dict(self.set.resolve(None)))

    @property
    def default(self) -> dict[str, float]:
        """The default set (name -> scale): what a request without its own runs under."""
        return dict(self.set.default)

    @property
    def fused(self) -> tuple:
        """The set in the weights now ((name, scale), ...): the running request's."""
        return self.set.fused

    @property
    def loaded(self) -> bool:
        return bool(self.set.library)

    def drop_stale_prompts(self, conditioning):
        """Clear the caller's prompt caches if a LoRA changed a text encoder since they were filled."""
        if self.set.text_version != self._prompts_version:
            for encoder in vars(conditioning).values():
                if hasattr(encoder, "clear") and hasattr(encoder, "encode"):
                    encoder.clear()
            self._prompts_version = self.set.text_version

    def key(self, loras: dict | None) -> tuple:
        """A request's set, resolved now ((name, scale), ...; None: the default set)."""
        return tuple((name, _scale(scale, f"scale of LoRA {name}")) for name, scale in self.set.resolve(loras))

    def use(self, key: tuple):
        """Fuse a request's set before its steps run (the caller holds the lock)."""
        self.set.use(self.components, key)


def _scale(value, name: str) -> float:
    from clockwork_engine import validate

    return validate.finite_float(value, name)


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
