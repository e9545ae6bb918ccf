"""Prepared compile artifacts: what `clockwork compile` writes and an engine loads at start.

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


# ----------------------------------------------------------------- clockwork compile
def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().partition("x")
        if not (w.isdigit() and h.isdigit()):
            raise ValueError(f"--sizes takes WIDTHxHEIGHT values (e.g. 512x512,768x768), got {part!r}")
        sizes.append((int(w), int(h)))
    return sizes


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{what} takes positive ints separated by commas, got {text!r}")
    return values


def build_parser(p):
    p.add_argument("--model", default="demo", help="'demo' or a diffusers model directory")
    p.add_argument("--preset", default=None, help="a distilled student of the model")
    p.add_argument("--sizes", default=None, help="WIDTHxHEIGHT,... (default: the model's size)")
    p.add_argument("--batch", default="1", help="images per request, e.g. 1,4; under step batching, list the "
                                                 "batch buckets the traffic reaches")
    p.add_argument("--mode", default=None, help="full,clockwork (default: the model's mode)")
    p.add_argument("--batching", choices=("off", "request", "step"), default="step",
                   help="as `clockwork serve` will run (its step programs differ)")
    p.add_argument("--backend", choices=("auto", "cuda"), default=None)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="the weights' dtype, as `clockwork serve --dtype` will load them")
    p.add_argument("--out", default=None, help="the artifacts' folder (default: MODEL/compiled)")


def run(args) -> int:
    import time

    from .engine import _model_dir
    from .serving.server import engine_for

    batches = _ints(args.batch, "--batch")
    engine = engine_for(args.model, args.preset, None, args.batching, max_queue=max(64, max(batches)),
                        timeout=None, backend=args.backend, dtype=args.dtype)
    if engine.graphs.cuda_compile is None:
        raise ArtifactsError("clockwork compile prepares the compiled cuda backend's programs: it needs a GPU "
                             f"(this engine runs the {engine.graphs.backend!r} backend)")
    sizes = _sizes(args.sizes) if args.sizes else [(engine.default_size, engine.default_size)]
    modes = args.mode.split(",") if args.mode else [engine.config.mode]
    out = args.out or os.path.join(_model_dir(args.model, args.preset), FOLDER)
    compiled = []
    for width, height in sizes:
        for batch in batches:
            for mode in modes:
                t0 = time.perf_counter()
                engine.generate(["a photo"] * batch, height=height, width=width, mode=mode, output="pt", seed=0)
                compiled.append({"width": width, "height": height, "batch": batch, "mode": mode,
                                 "batching": args.batching, "seconds": round(time.perf_counter() - t0, 1)})
                print(f"compiled {width}x{height} batch {batch} {mode}: {compiled[-1]['seconds']} s", flush=True)
    manifest = save(out, compiled)
    print(f"wrote {os.path.join(out, ARTIFACTS)} ({manifest['bytes'] / 1e6:.1f} MB, {manifest['entries']})")
    return 0
