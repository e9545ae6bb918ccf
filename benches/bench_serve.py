"""Serving under load: open-loop Poisson arrivals against `clockwork serve` on loopback, for the
serialized engine (--batching off: one request at a time, an unbounded wait), request-level
batching and step-level continuous batching.

    python benches/bench_serve.py                 # the demo, clockwork, 8 steps, CFG
    python benches/bench_serve.py --quick         # fewer requests a rate (a smoke run)

Phases, each against a fresh server process (its own 2 cores' worth of threads):
  capacity     the serialized engine's service rate, from back-to-back requests (1 in flight)
  saturation   every mode with 32 requests in flight: images per second
  rates        offered rates of 0.5x to 3x the serialized capacity, Poisson arrivals, bounded
               in count and time: throughput, p50 / p95 / p99 latency, goodput (the share of
               the offered requests answered with an image within the deadline), lost requests
  soak         step batching, 2000 requests: the server's resident memory after warm-up and at
               the end
Writes benches/results/serve_demo.json and serve_latency.png (latency against offered rate).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, machine, write  # noqa: E402

MODES = ("off", "request", "step")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, batching: str, max_queue: int):
        self.port = free_port()
        cmd = [sys.executable, "-m", "clockwork_engine.tools.cli", "serve", "--port", str(self.port), "--batching", batching,
               "--max-queue", str(max_queue), "--timeout", "600"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session):
        for _ in range(600):
            try:
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the server did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def post(session, url, prompt, seed, results, timeout):
    start = time.monotonic()
    try:
        async with session.post(url + "/v1/images/generations", json={"prompt": prompt, "seed": seed},
                                timeout=aiohttp_timeout(timeout)) as r:
            await r.read()
            results.append((r.status, time.monotonic() - start))
    except (asyncio.TimeoutError, OSError):
        results.append((None, time.monotonic() - start))


def aiohttp_timeout(seconds):
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


async def open_loop(session, url, rate, count, max_s, prompts, rng, wait_s):
    """Poisson arrivals at `rate` a second: `count` requests or `max_s` seconds of arrivals,
    whichever ends first; then wait at most wait_s for the stragglers (the rest are lost)."""
    results, tasks = [], []
    t0 = time.monotonic()
    arrival = 0.0
    for k in range(count):
        arrival += rng.expovariate(rate)
        if arrival > max_s:
            break
        await asyncio.sleep(max(0.0, t0 + arrival - time.monotonic()))
        tasks.append(asyncio.create_task(post(session, url, rng.choice(prompts), k, results, max_s + wait_s)))
    offered_s = time.monotonic() - t0
    done, pending = await asyncio.wait(tasks, timeout=wait_s) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    return results, len(tasks), offered_s, time.monotonic() - t0


async def closed_loop(session, url, in_flight, count, prompts, rng):
    results = []
    queue = list(range(count))

    async def worker():
        while queue:
            k = queue.pop()
            await post(session, url, rng.choice(prompts), k, results, 600)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return results, time.monotonic() - t0


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summarize(results, offered, offered_s, wall_s, deadline):
    ok = [lat for status, lat in results if status == 200]
    return {"offered": offered, "offered_s": round(offered_s, 2), "answered_ok": len(ok),
            "errors": {str(s): sum(1 for st, _ in results if st == s) for s in {st for st, _ in results if st != 200}},
            "lost": offered - len(results), "throughput_rps": round(len(ok) / wall_s, 2),
            "p50_s": pct(ok, 50), "p95_s": pct(ok, 95), "p99_s": pct(ok, 99),
            "goodput": round(sum(1 for lat in ok if lat <= deadline) / max(1, offered), 3)}


async def run(args):
    import aiohttp

    from clockwork_engine.datasets import shapes

    prompts = sorted({s.caption for s in shapes.split_scenes("eval")})
    rng = random.Random(0)
    out = {"model": "demo", "mode": "clockwork (the demo's default: 8 steps, CFG)", "deadline_s": args.deadline,
           "machine": machine(), "phases": {}}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        # capacity of the serialized engine
        server = ServerProcess("off", args.max_queue)
        try:
            await server.ready(session)
            await closed_loop(session, server.url, 1, 5, prompts, rng)  # warm-up
            res, wall = await closed_loop(session, server.url, 1, args.capacity_requests, prompts, rng)
            capacity = len(res) / wall
            service = [lat for _, lat in res]
        finally:
            server.stop()
        out["serialized_capacity_rps"] = round(capacity, 2)
        out["serialized_service_p50_s"] = statistics.median(service)
        print(f"serialized capacity {capacity:.2f} req/s", flush=True)
        rates = [round(f * capacity, 2) for f in args.factors]
        out["rates_rps"], out["rate_factors"] = rates, args.factors
        for mode in MODES:
            server = ServerProcess(mode, args.max_queue)
            try:
                await server.ready(session)
                await closed_loop(session, server.url, 8, 16, prompts, rng)  # warm-up: programs of each bucket
                res, wall = await closed_loop(session, server.url, 32, args.saturation_requests, prompts, rng)
                phase = {"saturation": summarize(res, args.saturation_requests, wall, wall, args.deadline), "rates": []}
                print(mode, "saturation", phase["saturation"]["throughput_rps"], "req/s", flush=True)
                for rate in rates:
                    res, offered, offered_s, wall = await open_loop(session, server.url, rate, args.requests,
                                                                    args.max_s, prompts, rng, args.wait_s)
                    row = {"rate_rps": rate, **summarize(res, offered, offered_s, wall, args.deadline)}
                    phase["rates"].append(row)
                    print(mode, row, flush=True)
                    await asyncio.sleep(1.0)
                if mode == "step" and args.soak:
                    await closed_loop(session, server.url, 16, 200, prompts, rng)
                    before = server.rss_mb()
                    res, wall = await closed_loop(session, server.url, 16, args.soak, prompts, rng)
                    after = server.rss_mb()
                    phase["soak"] = {"requests": args.soak, "ok": sum(1 for s, _ in res if s == 200),
                                     "rss_after_warmup_mb": round(before, 1), "rss_end_mb": round(after, 1),
                                     "growth": round(after / before - 1, 4),
                                     "throughput_rps": round(len(res) / wall, 2)}
                    print("soak", phase["soak"], flush=True)
                out["phases"][mode] = phase
            finally:
                server.stop()
    return out


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"off": "serialized", "request": "request-level batching", "step": "step-level continuous batching"}
    for mode, phase in out["phases"].items():
        xs = [r["rate_rps"] for r in phase["rates"]]
        ax.plot(xs, [r["p99_s"] for r in phase["rates"]], marker="o", label=f"{labels[mode]} p99")
        ax.plot(xs, [r["p50_s"] for r in phase["rates"]], marker=".", linestyle="--", label=f"{labels[mode]} p50")
    ax.axvline(out["serialized_capacity_rps"], color="grey", linewidth=0.8)
    ax.set_xlabel("offered rate (requests/s; grey: serialized capacity)")
    ax.set_ylabel("latency (s)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("demo, clockwork, 8 steps, CFG, 2 CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0],
                    help="offered rates as multiples of the serialized capacity")
    ap.add_argument("--requests", type=int, default=200, help="at most this many arrivals a rate")
    ap.add_argument("--max-s", type=float, default=15.0, help="at most this many seconds of arrivals a rate")
    ap.add_argument("--wait-s", type=float, default=30.0, help="then wait this long for the answers")
    ap.add_argument("--deadline", type=float, default=1.0, help="goodput: answered within this many seconds")
    ap.add_argument("--capacity-requests", type=int, default=30)
    ap.add_argument("--saturation-requests", type=int, default=160)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--soak", type=int, default=2000, help="requests of the memory soak (0: none)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few requests, no soak")
    ap.add_argument("--out", default="serve_demo.json")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_s, args.wait_s, args.saturation_requests, args.capacity_requests, args.soak = \
            20, 4.0, 10.0, 24, 6, 0
        args.factors = [0.5, 1.5]
    out = asyncio.run(run(args))
    out["command"] = " ".join(["python", "benches/bench_serve.py"] + sys.argv[1:])
    write(args.out, out)
    plot(out, os.path.join(RESULTS, os.path.splitext(args.out)[0] + "_latency.png"))


if __name__ == "__main__":
    main()
