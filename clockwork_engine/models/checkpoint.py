"""The folder of a small trained module (the clockwork adaptor, the tiny decoder):
<name>_config.json (its metadata, with a format_version) beside <name>.safetensors. Loading
checks both; a problem raises the caller's error class naming the file and what is wrong."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from torch import nn


def public_config(config) -> dict:
    """A diffusers config without its private keys (_name_or_path, ...): those depend on how
    the model was loaded, not on what it is."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def save(folder: str, name: str, module: nn.Module, meta: dict):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}_config.json"), "w") as f:
        json.dump(meta, f, indent=1)


def read_meta(folder: str, name: str, what: str, error: type[Exception], format_version: int,
              validate: Callable[[dict], object]) -> dict:
    """The checked metadata of a folder of `what` (e.g. "an adaptor folder"); validate(meta)
    raises on a bad config."""
    cfg_path = os.path.join(folder, f"{name}_config.json")
    if not os.path.isfile(cfg_path) or not os.path.isfile(os.path.join(folder, f"{name}.safetensors")):
        raise error(f"{folder!r} is not {what} (needs {name}_config.json and {name}.safetensors)")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
        validate(meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise error(f"{cfg_path} is corrupt: {type(e).__name__}: {e}") from e
    if meta.get("format_version") != format_version:
        raise error(f"{cfg_path}: format_version {meta.get('format_version')} != {format_version}")
    return meta


def load_weights(module: nn.Module, folder: str, name: str, error: type[Exception]) -> nn.Module:
    """module with the folder's weights, in eval mode without gradients."""
    from safetensors.torch import load_file

    weights = os.path.join(folder, f"{name}.safetensors")
    try:
        module.load_state_dict(load_file(weights))
    except Exception as e:  # safetensors header errors, missing/unexpected keys, shape mismatches
        raise error(f"could not load {weights}: {type(e).__name__}: {e}") from e
    return module.eval().requires_grad_(False)
