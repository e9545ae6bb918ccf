"""`clockwork search-clock`: the clock search (clockwork/clock_search.py) on calibration
captions of the demo's training split, one schedule file a budget.

    clockwork search-clock --model demo --steps 20 --budget 11,14,17 --out 'clock_20_{budget}.json'
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time

from clockwork_engine.clockwork.clock_search import (
    FORMAT,
    adaptor_step_cost,
    flop_fraction,
    schedule_for,
    search,
)


def calibration_captions(n: int, seed: int = 0) -> list[str]:
    """n captions of the demo's training split (never the held-out captions the benches score)."""
    import numpy as np

    from clockwork_engine.datasets import shapes

    scenes = shapes.split_scenes("train")
    rng = np.random.default_rng(seed)
    return [scenes[i].caption for i in rng.integers(0, len(scenes), n)]


_OPTIONS = ("model", "steps", "budget", "adaptor", "cut", "captions", "candidates", "direction", "rounds", "guidance",
            "scheduler", "seed", "out")


def build_parser(ap):
    ap.add_argument("--model", default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget", required=True,
                    help="number of adaptor steps, or several (11,14,17): one search to the largest, one file each")
    ap.add_argument("--adaptor", default="model",
                    help="the adaptor searched with: 'model' (the model directory's, the one fitted for --steps "
                         "where it has several), 'identity', or an adaptor folder")
    ap.add_argument("--cut", type=int, default=None,
                    help="--adaptor identity: the split level (default 1, the paper's; 0: on a UNet DeepCache's cut, "
                         "an adaptor step runs only conv_in and the UNet's last layer; on a transformer no block)")
    ap.add_argument("--captions", type=int, default=16, help="calibration captions (demo training split)")
    ap.add_argument("--candidates", type=int, default=6,
                    help="steps evaluated per greedy round, the best-scoring ones (0: every remaining step)")
    ap.add_argument("--direction", choices=("local", "forward"), default="local",
                    help="local: from the evenly spread clock, move full steps while it pays (default); "
                         "forward: add adaptor steps greedily from none")
    ap.add_argument("--rounds", type=int, default=8, help="local: at most this many moves")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    ap.add_argument("--scheduler", default=None, help="sampler (default: the model's own)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the calibration batch")
    ap.add_argument("--out", required=True, help="schedule JSON to write ({budget} in it: one file a budget)")
    return ap


def _budgets(spec) -> list[int]:
    try:
        budgets = sorted({int(b) for b in str(spec).split(",")})
    except ValueError as e:
        raise ValueError(f"--budget takes adaptor-step counts, e.g. 12 or 11,14,17; got {spec!r}") from e
    return budgets


def run(args) -> list[dict]:
    budgets = _budgets(args.budget)
    if len(budgets) > 1 and "{budget}" not in args.out:
        raise ValueError("several budgets write one file each: put {budget} in --out, e.g. clock_{budget}.json")
    start = time.perf_counter()
    engine = _engine(args)
    guidance = engine.config.guidance_scale if args.guidance is None else args.guidance
    captions = calibration_captions(args.captions, args.seed)
    per_budget = _search_budgets(engine, captions, budgets, guidance, args)
    seconds = round(time.perf_counter() - start, 1)
    cost = adaptor_step_cost(engine, args.steps, guidance)
    folder = _adaptor_folder(args)
    command = "clockwork search-clock " + " ".join(  # every option spelled out, defaults too
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items()
        if k in _OPTIONS and v is not None)
    results = []
    runs = sum(one["evaluations"] for one in {id(v[2]): v[2] for v in per_budget.values()}.values())
    for budget in budgets:
        chosen, calibration_mse, one = per_budget[budget]
        result = {
            "format": FORMAT, "steps": args.steps, "adaptor_steps": chosen, "budget": budget,
            "budget_unit": "adaptor steps", "adaptor": args.adaptor, "adaptor_folder": folder,
            "cut": engine.split.cut,
            "scheduler": type(engine.scheduler).__name__, "guidance": guidance,
            "adaptor_step_flops_over_full": cost, "unet_flop_fraction": flop_fraction(cost, args.steps, chosen),
            "calibration_mse": calibration_mse,
            "calibration_mse_start": one["rounds"][0]["mse"] if args.direction == "local" else None,
            "search": {"seconds": seconds, "sampler_runs": runs, "budgets": budgets, "direction": args.direction,
                       "note": "the cost of the whole command (every budget listed); forward: one greedy run, "
                               "this file its round that left `budget`; local: one search a budget",
                       "candidates_per_round": args.candidates, "profile": one["profile"],
                       "rounds": one["rounds"]},
            "calibration": {"split": "demo train", "captions": captions, "seed": args.seed},
            "command": command,
        }
        out = args.out.replace("{budget}", str(budget))
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps({k: v for k, v in result.items() if k not in ("search", "calibration")}))
        print(f"wrote {out}")
        results.append(result)
    print(f"search: {seconds} s, {runs} sampler runs")
    return results


def _engine(args):
    """The clockwork engine the search runs: the model's adaptor (its own for the step count) or
    --adaptor's, at --cut for the identity adaptor, under --scheduler."""
    from clockwork_engine import Engine

    config = Engine.default_config(args.model).with_(mode="clockwork", steps=args.steps)
    if args.adaptor != "model":
        config = config.with_(adaptor=args.adaptor)
    if args.cut is not None:
        if args.adaptor != "identity":
            raise ValueError("--cut is the identity adaptor's split level; a trained adaptor carries its own")
        config = config.with_(cut=args.cut)
    if args.scheduler:
        config = config.with_(scheduler=args.scheduler)
    return Engine.from_pretrained(args.model, config=config)


def _search_budgets(engine, captions, budgets, guidance, args) -> dict:
    """budget -> (adaptor steps, calibration MSE, the search that found them): forward, one
    greedy run read at each budget; local, one search a budget."""
    from tqdm import tqdm

    if args.direction == "forward":
        pool = args.steps - 1 if args.candidates == 0 else args.candidates
        total = sum(args.steps - 1 - r if r == 0 else min(pool, args.steps - 1 - r) for r in range(budgets[-1]))
        with tqdm(total=total, desc="clock search (forward)") as bar:
            found = search(engine, captions, args.steps, budgets[-1], guidance, args.seed, args.candidates,
                           "forward", progress=lambda: bar.update(1))
        return {b: (*schedule_for(found, b), found) for b in budgets}
    per_budget = {}
    for b in budgets:
        with tqdm(desc=f"clock search (local, budget {b})") as bar:
            one = search(engine, captions, args.steps, b, guidance, args.seed, direction="local",
                         progress=lambda: bar.update(1), max_rounds=args.rounds)
        per_budget[b] = (one["adaptor_steps"], one["rounds"][-1]["mse"], one)
    return per_budget


def _adaptor_folder(args) -> str:
    """The adaptor searched with: "identity", the folder given, or the model's own for the step count."""
    if args.adaptor != "model":
        return args.adaptor
    from clockwork_engine.clockwork import adaptors as adaptor_io
    from clockwork_engine.engine import ADAPTOR_FOLDER
    from clockwork_engine.models import loading

    model_dir = loading.resolve(args.model)
    return os.path.relpath(adaptor_io.for_steps(os.path.join(model_dir, ADAPTOR_FOLDER), args.steps), model_dir)


def main(argv=None):
    ap = build_parser(argparse.ArgumentParser(prog="clockwork search-clock", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    import torch

    torch.set_grad_enabled(False)
    main()
