"""Timing helpers shared by the benchmark scripts: interleaved repeats, medians, JSON out."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time each fn `repeats` times, alternating between them so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: summary(ts) for name, ts in times.items()}


@contextlib.contextmanager
def fused_ops_off():
    """The engine's fused C++/Triton ops off: CLOCKWORK_DISABLE_EXT is read per call."""
    os.environ["CLOCKWORK_DISABLE_EXT"] = "1"
    try:
        yield
    finally:
        os.environ.pop("CLOCKWORK_DISABLE_EXT", None)


class FusedOpsOff:
    """An engine whose generate() runs with the fused ops off (the eager torch reference)."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *args, **kwargs):
        with fused_ops_off():
            return self.engine.generate(*args, **kwargs)


def summary(ts: list[float]) -> dict:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_s": statistics.median(ts), "p25_s": q[0], "p75_s": q[2], "min_s": min(ts), "max_s": max(ts),
            "repeats": len(ts)}


def machine() -> dict:
    return {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def write(name: str, result: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path
