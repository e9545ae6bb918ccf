"""Attention-map reuse vs cutting steps, on the demo pipeline at 20 DPM++ steps.

    python benches/bench_reuse.py [--singles 100 --pairs 50] [--guidance 5]

Reference: the full 20-step output. Reuse variants: late reuse (last 4 / last 8 steps) and
the greedy schedules from `clockwork search-reuse` (benches/results/reuse_greedy_k{4,8}.json,
calibrated on training captions; the evaluation uses held-out ones). Few-step baselines:
16, 14 and 12 steps. Latency is measured in one run (interleaved); compare a reuse row with
the few-step row of the same measured latency. Also the bytes of maps cached per image.
Writes benches/results/quality_reuse.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG scale of every variant (default: the demo's recommended one, its clockwork_engine.json)")
    args = ap.parse_args()

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.demo import models
    from clockwork_engine.eval.compare import compare
    from clockwork_engine.reuse.attention import ReuseConfig, map_bytes
    from clockwork_engine.reuse.search import late, load
    from clockwork_engine.tools.flops import SD15_UNET

    n = args.steps
    base = Engine.from_pretrained("demo", config=EngineConfig(mode="full", attention_reuse=()))
    guidance = Engine.default_config("demo").guidance_scale if args.guidance is None else args.guidance
    variants = {f"full_{n}_steps": (base, dict(steps=n, mode="full"))}
    schedules = {"late_4": late(4, n), "late_8": late(8, n)}
    for k in (4, 8):
        path = os.path.join(RESULTS, f"reuse_greedy_k{k}.json")
        if os.path.exists(path):
            schedules[f"greedy_{k}"] = load(path)
    for name, steps in schedules.items():
        variants[f"reuse_{name}"] = (base.with_config(attention_reuse=steps), dict(steps=n, mode="full"))
    for m in (16, 14, 12):
        variants[f"full_{m}_steps"] = (base, dict(steps=m, mode="full"))
    result = compare(variants, args.singles, args.pairs, guidance=guidance, latency_repeats=5)
    for name, steps in schedules.items():
        result["variants"][f"reuse_{name}"]["reuse_steps"] = list(steps)
    demo_bytes = map_bytes(dict(models.UNET_CONFIG), 1, 16, 16, models.TEXT_MAX_LENGTH, ReuseConfig(), dtype_bytes=4)
    sd_bytes = map_bytes(dict(SD15_UNET), 1, 64, 64, 77, ReuseConfig(), dtype_bytes=2)
    sd_self = map_bytes(dict(SD15_UNET), 1, 64, 64, 77, ReuseConfig(layers="self"), dtype_bytes=2)
    result["map_bytes_per_image"] = {
        "demo_64px_fp32_cfg": demo_bytes["total"],
        "sd15_512px_fp16_cfg_all_layers": sd_bytes["total"], "sd15_512px_fp16_cfg_self_only": sd_self["total"],
        "sd15_largest_layer_fp16_cfg": max(sd_bytes["per_layer"].values())}
    write("quality_reuse.json", {"command": "python " + " ".join(sys.argv), "steps": n, **result})


if __name__ == "__main__":
    main()
