"""clockwork compile: a model's step programs compiled for the sizes and batches a server
will run, saved as artifacts (artifacts.py) that the engine loads at start.

    clockwork compile --model DIR --dtype float16 --sizes 512x512,768x768 --batch 1,2,4

Each (size, batch, mode) runs one request through the engine `clockwork serve` would build
for DIR (same backend and --batching), which compiles its step programs, text encoder and
decoder; inductor's caches of them go to DIR/compiled/ (or --out). Needs a GPU.
"""

from __future__ import annotations

import os
import time

from clockwork_engine.artifacts import ARTIFACTS, FOLDER, ArtifactsError, save
from clockwork_engine.engine import model_dir
from clockwork_engine.serving.server import engine_for


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
    p.add_argument("--model", default="demo",
                   help="'demo', 'demo-sd3', 'demo-flux' or a diffusers model directory")
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

    batches = _ints(args.batch, "--batch")
    engine = engine_for(args.model, args.preset, None, args.batching, max_queue=max(64, max(batches)),
                        timeout=None, backend=args.backend, dtype=args.dtype)
    if engine.graphs.cuda_compile is None:
        raise ArtifactsError("clockwork compile prepares the compiled cuda backend's programs: it needs a GPU "
                             f"(this engine runs the {engine.graphs.backend!r} backend)")
    sizes = _sizes(args.sizes) if args.sizes else [(engine.default_size, engine.default_size)]
    modes = args.mode.split(",") if args.mode else [engine.config.mode]
    out = args.out or os.path.join(model_dir(args.model, args.preset), FOLDER)
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
