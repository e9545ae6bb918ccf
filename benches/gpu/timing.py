"""Timing for the GPU check: wall clock with the device drained, device time by CUDA events,
and a deadline that every phase is sized against."""

from __future__ import annotations

import time

import torch

from clockwork_engine.eval.compare import interleaved


def sync():
    """Wait for the GPU: a call's time must include the work it queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced(fn):
    def call():
        fn()
        sync()

    return call


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def warm_up(fns: dict, calls: int) -> dict[str, list[float]]:
    """Run each fn `calls` times (CUDA graphs are captured and torch.compile compiles here);
    name -> the seconds of each call."""
    seconds = {}
    for name, fn in fns.items():
        seconds[name] = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def plan_repeats(warm: dict[str, list[float]], budget_s: float, low: int, high: int) -> int:
    """Interleaved rounds that fit in budget_s, from each variant's last warm-up call."""
    round_s = sum(ts[-1] for ts in warm.values())
    return max(low, min(high, int(budget_s / max(round_s, 1e-6))))


def measure(fns: dict, warmup: int, budget_s: float, low: int, high: int, before_timing=None) -> dict:
    """Medians of interleaved repeats after warm-up, each call timed to the drained device;
    before_timing() runs between the two (e.g. waiting for the machine to be quiet)."""
    fns = {name: synced(fn) for name, fn in fns.items()}
    warm = warm_up(fns, warmup)
    if before_timing is not None:
        before_timing()
    repeats = plan_repeats(warm, budget_s, low, high)
    timings = interleaved(fns, repeats, warmup=0)
    for name, t in timings.items():
        t["warmup_s"] = [round(s, 4) for s in warm[name]]
    return timings


def device_ms(fn, calls: int) -> float:
    """Mean ms of fn on the device over `calls` back-to-back calls (CUDA events; wall clock on a CPU)."""
    fn()
    sync()
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) * 1e3 / calls
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / calls
