"""Shared by the benchmark scripts: interleaved timing (from eval.compare), the fused-ops-off
variant, machine info, JSON out."""

from __future__ import annotations

import json
import os
import platform

import torch

from clockwork_engine.eval.compare import interleaved  # noqa: F401  (re-exported for the benches)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class FusedOpsOff:
    """An engine whose generate() runs with the fused ops off (the eager torch reference):
    CLOCKWORK_DISABLE_EXT is read per call."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *args, **kwargs):
        os.environ["CLOCKWORK_DISABLE_EXT"] = "1"
        try:
            return self.engine.generate(*args, **kwargs)
        finally:
            os.environ.pop("CLOCKWORK_DISABLE_EXT", None)


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
