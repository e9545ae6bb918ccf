"""Prepared compile artifacts: what `clockwork compile` (compile_command.py) writes and an
engine loads at start.

    clockwork compile --model DIR --sizes 512x512,768x768 --batch 1,4     (writes DIR/compiled/)

The command runs one request of each (size, batch, mode) through the engine `clockwork serve`
would build for DIR (same backend, batching and buckets), so every step program it will run,
the text encoder and the decoder are compiled, then saves inductor's caches of them
(torch.compiler.save_cache_artifacts: FX graphs, AOTAutograd entries, Triton kernels and
autotuning results) as artifacts.bin beside a manifest.json (torch, triton, the device, what
was compiled). Engine.from_pretrained loads DIR/compiled/ (or config.compiled_dir) before the
first request: compiling a program is then a cache hit. Dynamo still traces each step
function; inductor does not run and no Triton kernel is built.

Artifacts are tied to the torch and triton versions and the GPU model that made them: others
are skipped with a warning (the engine compiles as if there were none). A file that cannot be
read is an error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings

import torch

FOLDER = "compiled"
ARTIFACTS = "artifacts.bin"
MANIFEST = "manifest.json"
log = logging.getLogger("clockwork_engine")

_loaded: set[str] = set()
_lock = threading.Lock()


class ArtifactsError(ValueError):
    """A compiled/ folder that cannot be used as it is (corrupt, or nothing to save)."""


def environment() -> dict:
    """What compiled code depends on: the versions and the device that would run it."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "triton": triton_version, "device": device}


def save(out_dir: str, compiled: list[dict]) -> dict:
    """Inductor's cache entries of everything compiled in this process -> out_dir. compiled:
    what was run to compile them (one dict a request shape), for the manifest."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        raise ArtifactsError("inductor cached nothing to save: the CPU inductor backend freezes the weights into "
                             "its programs, which inductor does not cache (artifacts are for the cuda backend)")
    data, info = saved
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ARTIFACTS), "wb") as f:
        f.write(data)
    manifest = {**environment(), "bytes": len(data), "compiled": compiled,
                "entries": {kind: len(keys) for kind, keys in info.artifacts.items()}}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def load(folder: str) -> bool:
    """Load folder's artifacts into inductor's caches (once a process). False where the folder
    has none or they were made for other versions or another device (a warning says which)."""
    folder = os.path.abspath(folder)
    path, manifest_path = os.path.join(folder, ARTIFACTS), os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return False
    with _lock:
        if folder in _loaded:
            return True
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            made = {key: manifest[key] for key in ("torch", "triton", "device")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArtifactsError(f"compiled artifacts {folder}: {MANIFEST} is missing or unreadable ({e}); "
                                 "run `clockwork compile` again") from e
        here = environment()
        if made != here:
            warnings.warn(f"compiled artifacts {folder} were made for {made}, not {here}: skipped (requests "
                          "compile as they come; `clockwork compile` makes new ones)", stacklevel=3)
            return False
        with open(path, "rb") as f:
            data = f.read()
        try:
            info = torch.compiler.load_cache_artifacts(data)  # None: torch logged why it could not read them
        except Exception as e:  # noqa: BLE001  (any decoding failure: the file is not what save() wrote)
            info, why = None, f" ({type(e).__name__}: {e})"
        else:
            why = ""
        if info is None:
            raise ArtifactsError(f"compiled artifacts {path} cannot be loaded{why}: a corrupt file; "
                                 "run `clockwork compile` again")
        _loaded.add(folder)
        log.info("loaded compiled artifacts from %s (%.1f MB)", folder, len(data) / 1e6)
        return True
