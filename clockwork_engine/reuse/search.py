"""Reuse schedules for attention-map reuse: late reuse and a greedy, perturbation-guided search.

late(k, n):   reuse in the last k of n steps (the ODE argument: a perturbation made late
              is carried less far, so it moves the final image least).
greedy:       on a calibration set of captions, add reuse steps one at a time, each time
              the step whose reuse keeps the final latents closest (mean squared error) to
              the full model's, until the budget of k reuse steps (each saves about the same
              time) is spent. Saved as JSON {"steps", "reuse_steps", ...}; the engine loads
              it with EngineConfig(attention_reuse=load(path)).

    clockwork search-reuse --model demo --steps 20 --budget 8 --out schedule.json
"""

from __future__ import annotations

import argparse
import json

import torch


def late(k: int, num_steps: int) -> tuple[int, ...]:
    if not 0 <= k < num_steps:
        raise ValueError(f"late reuse needs 0 <= k < steps, got k={k}, steps={num_steps}")
    return tuple(range(num_steps - k, num_steps))


def load(path: str) -> tuple[int, ...]:
    try:
        with open(path) as f:
            data = json.load(f)
        steps = tuple(int(i) for i in data["reuse_steps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a reuse schedule file: {type(e).__name__}: {e}") from e
    return steps


def greedy(engine, captions: list[str], steps: int, budget: int, guidance: float = 5.0, seed: int = 0,
           progress=None) -> dict:
    """{"steps", "reuse_steps", "mse_per_round"} for a reuse budget of `budget` steps."""
    if not 0 < budget < steps:
        raise ValueError(f"budget must be in [1, {steps - 1}], got {budget}")
    kw = dict(steps=steps, guidance_scale=guidance, seed=seed, output="latent", mode=engine.config.mode)
    reference = engine.generate(list(captions), **kw)
    chosen: set[int] = set()
    history = []
    for _ in range(budget):
        best = None
        for candidate in sorted(set(range(1, steps)) - chosen):
            out = engine.with_config(attention_reuse=tuple(sorted(chosen | {candidate}))).generate(list(captions), **kw)
            mse = float((torch.stack(out) if isinstance(out, list) else out).sub(reference).pow(2).mean())
            if best is None or mse < best[1]:
                best = (candidate, mse)
            if progress:
                progress()
        chosen.add(best[0])
        history.append({"added": best[0], "mse": best[1]})
    return {"steps": steps, "reuse_steps": sorted(chosen), "mse_per_round": history, "guidance": guidance,
            "calibration_captions": len(captions)}


def build_parser(ap):
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget", type=int, default=8, help="number of reuse steps")
    ap.add_argument("--captions", type=int, default=8, help="calibration captions (demo training split)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--layers", default="all", help="all, self, cross or Attention module names")
    ap.add_argument("--out", required=True, help="schedule JSON to write")
    return ap


def run(args) -> dict:
    import numpy as np
    from tqdm import tqdm

    from clockwork_engine import Engine, EngineConfig
    from clockwork_engine.datasets import shapes

    engine = Engine.from_pretrained(args.model, config=EngineConfig(attention_reuse=(), reuse_layers=args.layers))
    rng = np.random.default_rng(0)
    scenes = shapes.split_scenes("train")
    captions = [scenes[i].caption for i in rng.integers(0, len(scenes), args.captions)]
    total = sum(args.steps - 1 - r for r in range(args.budget))
    with tqdm(total=total, desc="greedy reuse search") as bar:
        result = greedy(engine, captions, args.steps, args.budget, args.guidance, progress=lambda: bar.update(1))
    result["layers"] = args.layers
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return result


def main(argv=None):
    ap = build_parser(argparse.ArgumentParser(prog="clockwork search-reuse", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(ap.parse_args(argv))
