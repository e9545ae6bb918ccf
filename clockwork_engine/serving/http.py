"""The HTTP API: OpenAI's images API (POST /v1/images/generations) over an engine, plus
GET /healthz and GET /metrics (Prometheus). Thin: each request is checked by the engine
(request.parse), queued on its scheduler (continuous batching when config.batching is on) and
answered with base64 PNGs; a dropped connection cancels the request.

Status codes: 400 bad input (the engine's message), 401 a missing or wrong API key, 413 a body
over the size limit, 429 the queue is full, 504 past the request's deadline, 500 anything else
(logged). Errors have OpenAI's shape, {"error": {"message", "type", "code"}}, so OpenAI clients
raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import secrets
import threading
import time
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from clockwork_engine import request as requests
from clockwork_engine.request import NonFiniteError
from clockwork_engine.serving.middleware import BodyLimit, ReplicaHeader
from clockwork_engine.serving.scheduler import QueueFull

log = logging.getLogger("clockwork_engine.serving")
API_KEY_ENV = "CLOCKWORK_API_KEY"
MAX_BODY_BYTES = 64 * 1024
MAX_SCHEDULERS = 8  # engines kept for request-chosen schedulers (each shares the weights)


class ImageRequest(BaseModel):
    """OpenAI's images.generate fields, and the engine's own."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=16)
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. 128x128 (default: the model's)")
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = None
    user: str | None = None
    negative_prompt: str | None = Field(None, max_length=4000)
    steps: int | None = Field(None, ge=1, le=requests.MAX_STEPS)
    seed: int | None = Field(None, ge=0, lt=2**63, description="image k of n gets seed + k")
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    mode: Literal["full", "clockwork"] | None = None
    scheduler: str | None = Field(None, max_length=64, description="e.g. euler-a, dpm++2m-karras, unipc")
    timeout: float | None = Field(None, gt=0.0, le=3600.0, description="seconds; past it: 504")
    lora: dict[str, float] | None = Field(None, max_length=8, description="the LoRA set, {name: scale}, of LoRAs "
                                                                          "loaded into the model (default: its set)")


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    parts = size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"size must be WIDTHxHEIGHT (e.g. 128x128), got {size!r}")
    return int(parts[1]), int(parts[0])


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class _Metrics:
    def __init__(self, engines):
        self.registry = CollectorRegistry()
        self.requests = Counter("clockwork_requests", "Image requests by outcome", ["outcome"],
                                registry=self.registry)
        self.latency = Histogram("clockwork_request_latency_seconds", "Time from arrival to answer",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self.batch = Histogram("clockwork_batch_size", "Images in each batch step",
                               buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        queue = Gauge("clockwork_queue_depth", "Images waiting to start", registry=self.registry)
        queue.set_function(lambda: sum(e.batcher.queue_depth() for e in engines() if e.batcher))
        running = Gauge("clockwork_running_images", "Images being sampled", registry=self.registry)
        running.set_function(lambda: sum(e.batcher.running() for e in engines() if e.batcher))


def make_app(engine, *, api_key: str | None = None, model_name: str = "demo",
             max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API over one engine (config.batching "step" for continuous batching; "off" runs the
    requests one at a time, as generate() does). api_key: required as `Authorization: Bearer
    KEY` on /v1/ (default: the CLOCKWORK_API_KEY environment variable; unset: open)."""
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    engines = _Engines(engine)
    metrics = engines.metrics
    app = FastAPI(title="clockwork-engine", version="1", description="OpenAI-compatible image generation")
    app.add_middleware(BodyLimit, limit=max_body_bytes, error=_error)
    app.add_middleware(ReplicaHeader)
    _error_handlers(app, metrics)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        if not _authorized(request, api_key):
            return _error(401, "missing or wrong API key", "authentication_error")
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "clockwork-engine"}]}

    @app.post("/v1/images/generations")
    async def generations(body: ImageRequest, request: Request):
        arrived = time.monotonic()
        if not _authorized(request, api_key):
            metrics.requests.labels("unauthorized").inc()
            return _error(401, "missing or wrong API key", "authentication_error")
        try:
            target = await run_in_threadpool(engines.for_scheduler, body.scheduler)
            req = _parse(target, body)
        except (ValueError, TypeError, OverflowError) as e:
            metrics.requests.labels("bad_request").inc()
            return _error(400, str(e))
        try:
            images, outcome = await _run(target, req, request)
        except Exception as e:  # noqa: BLE001  (the service stays up; the caller gets the message)
            return _failure(e, metrics)
        if outcome == "cancelled":
            metrics.requests.labels("cancelled").inc()
            return Response(status_code=499)
        data = await run_in_threadpool(lambda: [_png_b64(im) for im in images])
        metrics.requests.labels("ok").inc()
        metrics.latency.observe(time.monotonic() - arrived)
        seeds = req.seeds if len(req.seeds) == req.rows else req.seeds * req.rows
        items = [{"b64_json": d, "seed": s} for d, s in zip(data, seeds, strict=True)]
        return {"created": int(time.time()), "data": items}

    app.state.engines = engines.by_scheduler
    return app


def _error_handlers(app: FastAPI, metrics):
    """Errors FastAPI answers itself (404, 405, a body that fails validation) in OpenAI's shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_, exc: RequestValidationError):
        metrics.requests.labels("bad_request").inc()
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return _error(400, "; ".join(parts) or "invalid request")


class _Engines:
    """The served engine and one engine per other scheduler a request names (shared weights),
    each reporting its batches to the metrics."""

    def __init__(self, engine):
        self.engine, self.by_scheduler, self._guard = engine, {}, threading.Lock()
        self.metrics = _Metrics(lambda: list(self.by_scheduler.values()))
        self._serve(None, engine)

    def _serve(self, name: str | None, served):
        if served.batcher is not None:
            served.batcher.tick_hooks.append(self.metrics.batch.observe)
        self.by_scheduler[name] = served
        return served

    def for_scheduler(self, scheduler: str | None):
        with self._guard:
            if scheduler in self.by_scheduler:
                return self.by_scheduler[scheduler]
            if len(self.by_scheduler) > MAX_SCHEDULERS:
                raise ValueError(f"at most {MAX_SCHEDULERS} schedulers are served at once")
            return self._serve(scheduler, self.engine.with_config(scheduler=scheduler))


# What a request may fail with -> (HTTP status, metrics outcome, OpenAI error type, code), first match
_FAILURES = (
    (QueueFull, 429, "queue_full", "rate_limit_error", "queue_full"),
    (requests.DeadlineExceeded, 504, "timeout", "timeout_error", "deadline_exceeded"),
    # too large for the device: the caller's to shrink
    (requests.DeviceMemoryError, 413, "too_large", "invalid_request_error", "request_too_large"),
    ((NonFiniteError, ValueError, TypeError), 400, "bad_request", "invalid_request_error", None),  # refused
)


def _failure(e: Exception, metrics) -> JSONResponse:
    for types, status, outcome, kind, code in _FAILURES:
        if isinstance(e, types):
            metrics.requests.labels(outcome).inc()
            return _error(status, str(e), kind, code)
    log.exception("image request failed", exc_info=e)
    metrics.requests.labels("error").inc()
    return _error(500, f"{type(e).__name__}: {e}", "server_error")


def _parse(engine, body: ImageRequest):
    """The engine's request for an API body: n images of one prompt, seeds seed, seed + 1, ..."""
    height, width = _size(body.size)
    seed = None if body.seed is None else [body.seed + k for k in range(body.n)]
    negative = None if body.negative_prompt is None else [body.negative_prompt] * body.n
    return requests.parse(engine, [body.prompt] * body.n, steps=body.steps, guidance_scale=body.guidance_scale,
                          seed=seed, height=height, width=width, mode=body.mode, timeout=body.timeout,
                          negative_prompt=negative, lora=body.lora)


def _authorized(request: Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    header = request.headers.get("authorization", "")
    return secrets.compare_digest(header.encode(), f"Bearer {api_key}".encode())


async def _run(engine, req, request: Request, poll_s: float = 0.05):
    """(images, "ok") or (None, "cancelled") when the client went away first."""
    batcher = engine.batcher
    if batcher is not None and batcher.accepts(req):
        future = batcher.submit(req)
        waiting, cancel = asyncio.wrap_future(future), future.cancel
    else:  # batching off: one request at a time on the engine's lock, cancellable at step boundaries
        gone = threading.Event()

        def check(i, n, x):
            if gone.is_set():
                raise _ClientGone()

        req.callback = check
        waiting, cancel = asyncio.get_running_loop().run_in_executor(None, engine.run_alone, req), gone.set
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=poll_s)
        if done:
            try:
                return waiting.result(), "ok"
            except (_ClientGone, asyncio.CancelledError):
                return None, "cancelled"
        if await request.is_disconnected():
            cancel()
            return None, "cancelled"


class _ClientGone(Exception):
    pass
