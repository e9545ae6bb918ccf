"""Soak: 500 generate() calls on the demo pipeline, resident memory before and after.

    python benches/bench_soak.py [--calls 500]
    python benches/bench_soak.py --backend inductor --steps 8 --calls 200 --warmup 20

Mixed prompts (new ones keep arriving, so the prompt LRU fills and evicts), modes and seeds.
Memory growth after warm-up must stay under 5%: every cache (prompt embeddings, step
programs, attention maps) is bounded. Writes benches/results/soak_demo.json
(soak_demo_<backend>.json with --backend). With the inductor backend fix the step count:
every (steps, mode) pair is a key with its own compiled programs, and the mixed 4-8 steps
of both modes make 10 keys, more than max_graphs (8) keeps, so each call would compile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="one step count (default: 4 to 8, mixed)")
    ap.add_argument("--backend", default=None, choices=("cpu", "cuda", "inductor"), help="default: the engine's")
    args = ap.parse_args()

    from clockwork_engine import Engine
    from clockwork_engine.datasets import shapes

    config = Engine.default_config("demo").with_(prompt_cache_size=64)
    engine = Engine.from_pretrained("demo", config=config.with_(backend=args.backend) if args.backend else config)
    captions = [s.caption for s in shapes.all_scenes()]
    modes = ["full", engine.config.mode]
    samples = []
    start = time.perf_counter()
    for k in range(args.calls):
        steps = args.steps or 4 + k % 5
        engine.generate(captions[(k * 7919) % len(captions)], steps=steps, seed=k, mode=modes[k % 2])
        if k + 1 == args.warmup:
            warm = rss_mb()
        if (k + 1) % 50 == 0:
            samples.append({"calls": k + 1, "rss_mb": rss_mb()})
    end = rss_mb()
    write(f"soak_demo_{args.backend}.json" if args.backend else "soak_demo.json", {
        "command": "python " + " ".join(sys.argv), "backend": engine.graphs.backend, "calls": args.calls,
        "steps": args.steps or "4-8", "rss_after_warmup_mb": warm,
        "rss_end_mb": end, "growth": end / warm - 1, "samples": samples, "seconds": time.perf_counter() - start,
        "prompt_cache_entries": len(engine.prompts), "program_cache_keys": len(engine.graphs.keys()),
        "bounds": {"prompt_cache_size": engine.config.prompt_cache_size, "max_graphs": engine.config.max_graphs,
                   "max_attention_bytes": engine.config.max_attention_bytes}, "machine": machine()})


if __name__ == "__main__":
    main()
