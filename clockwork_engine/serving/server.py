"""clockwork serve: the HTTP API (serving/http.py) on uvicorn.

  clockwork serve --model demo --host 127.0.0.1 --port 8000
  curl -s localhost:8000/v1/images/generations -H 'content-type: application/json' \\
       -d '{"prompt": "a red circle", "n": 2, "seed": 1}'

Requests share model calls (--batching step: step-level continuous batching; "request": those
waiting together start together; "off": one at a time). --api-key (or CLOCKWORK_API_KEY) makes
/v1/ ask for `Authorization: Bearer KEY`. Several machines: serving/ray_app.py (Ray Serve).
"""

from __future__ import annotations

import argparse


def build_parser(p: argparse.ArgumentParser):
    p.add_argument("--model", default="demo",
                   help="'demo', 'demo-sd3', 'demo-flux' or a diffusers model directory")
    p.add_argument("--preset", default=None, help="a distilled student of the model (e.g. guided-8)")
    p.add_argument("--mode", choices=("full", "clockwork"), default=None, help="default mode (the model's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batching", choices=("off", "request", "step"), default="step")
    p.add_argument("--max-queue", type=int, default=64, help="images waiting to start; beyond: 429")
    p.add_argument("--timeout", type=float, default=60.0, help="default per-request time limit, seconds (504)")
    p.add_argument("--api-key", default=None, help="required bearer token (default: $CLOCKWORK_API_KEY)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda", "inductor"), default=None)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="the weights' dtype (default: float32, as loaded)")
    p.add_argument("--no-compile", action="store_true",
                   help="cuda backend: capture the step programs uncompiled (starts in seconds)")


def engine_for(model: str = "demo", preset: str | None = None, mode: str | None = None, batching: str = "step",
               max_queue: int = 64, timeout: float | None = 60.0, backend: str | None = None,
               dtype: str | None = None, compile: bool = True):
    """The engine a server runs: the model's default config with the serving settings."""
    from clockwork_engine.engine import Engine

    config = Engine.default_config(model, preset).with_(batching=batching, max_queue=max_queue,
                                                         request_timeout=timeout)
    if mode:
        config = config.with_(mode=mode)
    if backend:
        config = config.with_(backend=backend)
    import torch

    config = config.with_(compile=compile)
    return Engine.from_pretrained(model, config=config, preset=preset,
                                  torch_dtype=getattr(torch, dtype) if dtype else None)


def run(args) -> int:
    import uvicorn

    from clockwork_engine.serving.http import make_app

    engine = engine_for(args.model, args.preset, args.mode, args.batching, args.max_queue, args.timeout, args.backend,
                        args.dtype, not args.no_compile)
    app = make_app(engine, api_key=args.api_key, model_name=args.model if args.preset is None
                   else f"{args.model}/{args.preset}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
