"""Clock search: which steps run the adaptor, found by a greedy, perturbation-guided search.

    clockwork search-clock --model demo --steps 20 --budget 11,14,17 --out 'clock_20_{budget}.json'
    clockwork generate "a red circle" --clock-schedule clock_20_14.json

On calibration captions (the demo's training split; never the held-out captions the benches
score) and one fixed noise draw, the distance of a clock's final latents from the full model's
(mean squared error) is the score; a perturbation made late travels least (the ODE argument),
one made where consecutive low-res features differ most travels furthest, and the score sees
both. Two searches:

- local (default): start from the clock with the full steps spread evenly (the alternating
  clock 2 at half the steps adaptor), or DeepCache's interval patterns (full steps 0, N, 2N, ...)
  where they have that many adaptor steps, whichever scores best, and move one full step to a
  neighbouring adaptor step while the best such move lowers the score (at most --rounds moves;
  every move evaluated each round);
- forward: from no adaptor step, add one a round, the step whose adaptor keeps the latents
  closest. Round 1 evaluates every step (the perturbation profile: each step alone on the
  adaptor); later rounds only the `candidates` steps that scored best when last measured
  (--candidates 0: every remaining step, the exact greedy, as search-reuse). One search
  serves several budgets (--budget 11,14,17: each is the round that left that many).

Greedy growth is myopic here: adaptor steps in a row compound (each reuses the last one's
estimate), and a clock grown one step at a time fills runs the evenly spread clock avoids. At
20 steps with the identity adaptor, greedy removal from an all-adaptor clock gave 11 adaptor
steps 16x the calibration error of the alternating clock's 10 (0.138 vs 0.0088), which is why
local search starts from the spread clock.

--adaptor identity --cut 0 searches the training-free clockwork at DeepCache's cut (an
adaptor step runs conv_in and the UNet's last layer, unet_split.py): from DeepCache's own
clock, the search can only lower the calibration error.

The budget counts adaptor steps (each saves about the same: the UNet's low-res middle L
instead of the adaptor); the file records the UNet FLOP fraction the schedule runs too. The
schedule file (JSON) holds the steps, the chosen adaptor_steps, the budget, the adaptor it
was searched with, the search's wall-clock cost and number of sampler runs, the calibration
captions and the command; EngineConfig takes it through `with_schedule(config, path)` and
the CLI through `--clock-schedule FILE` (a schedule searched with the identity adaptor sets it
and its cut too).
"""

from __future__ import annotations

import json
import warnings

import torch

FORMAT = "clockwork-clock-schedule/1"


def load(path: str) -> dict:
    """A schedule file's contents, checked: {"steps", "adaptor_steps", "adaptor", ...}."""
    try:
        with open(path) as f:
            data = json.load(f)
        steps = int(data["steps"])
        adaptor_steps = [int(i) for i in data["adaptor_steps"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a clock schedule file: {type(e).__name__}: {e}") from e
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a clock schedule file (format {data.get('format')!r}, want {FORMAT!r})")
    if steps < 1 or any(not 0 < i < steps for i in adaptor_steps):
        raise ValueError(f"{path}: adaptor steps {adaptor_steps} must lie in [1, {steps - 1}]")
    return {**data, "steps": steps, "adaptor_steps": sorted(adaptor_steps)}


def with_schedule(config, path: str):
    """config (an EngineConfig) running the schedule file's clock at its step count, clockwork on;
    a schedule searched with the identity adaptor also sets adaptor="identity"."""
    data = load(path)
    changes = dict(mode="clockwork", steps=data["steps"], adaptor_steps=tuple(data["adaptor_steps"]))
    if data.get("adaptor") == "identity":
        changes.update(adaptor="identity", cut=int(data.get("cut", 1)))
    return config.with_(**changes)


def flop_fraction(adaptor_step_cost: float, steps: int, adaptor_steps) -> float:
    """UNet cost of the schedule over the full model's, an adaptor step costing adaptor_step_cost
    of a full step."""
    k = len(set(adaptor_steps))
    return (steps - k + k * adaptor_step_cost) / steps


def adaptor_step_cost(engine, steps: int, guidance: float) -> float:
    """FLOPs of an adaptor step over a full step's, for this engine's adaptor at `steps` steps (the
    operating point a request of that many steps runs; one image, CFG batch as guidance asks), from
    torch.utils.flop_counter on two requests of `steps` steps (all full; step 1 on the adaptor) for
    a prompt already encoded (text encoding counted in neither)."""
    from torch.utils.flop_counter import FlopCounterMode

    kw = dict(steps=steps, guidance_scale=guidance, seed=0, output="latent")
    clock = engine.with_config(mode="clockwork", adaptor_steps=(1,))

    def flops(mode):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clock.generate("a red circle", mode=mode, **kw)  # encodes the prompt, builds the programs
            with FlopCounterMode(display=False) as counter:
                clock.generate("a red circle", mode=mode, **kw)
        return counter.get_total_flops()

    full = flops("full")
    full_step = full / steps
    return max(0.0, (flops("clockwork") - full + full_step) / full_step)


def spread(steps: int, budget: int) -> list[int]:
    """`budget` adaptor steps of `steps` with the full steps spread evenly (step 0 among them): the
    alternating clock 2 for budget steps // 2, DeepCache's interval pattern where the interval
    divides the steps."""
    full = steps - budget
    keep = {round(k * steps / full) for k in range(full)}
    return sorted(set(range(1, steps)) - keep)


def deepcache_clock(steps: int, interval: int) -> list[int]:
    """DeepCache's clock at `interval`: the adaptor steps, every step off its full steps 0, N, 2N, ..."""
    return [i for i in range(1, steps) if i % interval]


def uniform(steps: int, budget: int) -> dict[int, list[int]]:
    """DeepCache's clocks of `budget` adaptor steps: interval N -> deepcache_clock(steps, N), for
    every N that leaves that many (8 steps, 6: intervals 4 to 7)."""
    clocks = {n: deepcache_clock(steps, n) for n in range(2, steps + 1)}
    return {n: c for n, c in clocks.items() if len(c) == budget}


def search(engine, captions: list[str], steps: int, budget: int, guidance: float, seed: int = 0,
           candidates: int = 6, direction: str = "local", progress=None, max_rounds: int = 8) -> dict:
    """The greedy clock for `budget` adaptor steps of `steps`; engine: a clockwork engine (its
    adaptor is the one searched with). Returns {"adaptor_steps", "profile", "rounds",
    "evaluations", "direction"}; rounds[k] holds the step the round moved ("step"), the adaptor
    steps after it ("adaptor_steps") and their calibration MSE.

    forward: from no adaptor step, add the step whose adaptor keeps the final latents closest
    to the full model's; the profile is round 1 (each step alone); a round evaluates the
    `candidates` steps that scored best when last measured (0: all). local: from the best of
    the evenly spread clock (spread()) and DeepCache's (uniform()), move one full step to a
    neighbouring adaptor step (a swap) while the best such move lowers the MSE, at most
    max_rounds moves; every move is evaluated."""
    if not 0 < budget < steps:
        raise ValueError(f"budget must be in [1, {steps - 1}], got {budget}")
    if candidates < 0:
        raise ValueError(f"candidates must be >= 0 (0: every remaining step), got {candidates}")
    if direction not in ("forward", "local"):
        raise ValueError(f"direction must be 'forward' or 'local', got {direction!r}")
    calibration = _Calibration(engine, captions, steps, guidance, seed, progress)
    if direction == "local":
        chosen, rounds, profile = _local(calibration, steps, budget, max_rounds)
    else:
        chosen, rounds, profile = _forward(calibration, steps, budget, candidates)
    return {"adaptor_steps": sorted(chosen), "profile": profile, "rounds": rounds,
            "evaluations": calibration.evaluations, "direction": direction}


class _Calibration:
    """The full model's final latents on the calibration captions, and the MSE of a clock's."""

    def __init__(self, engine, captions, steps, guidance, seed, progress):
        self.engine, self.progress = engine, progress
        self.kw = dict(steps=steps, guidance_scale=guidance, output="latent")
        size = engine.config.max_batch_size  # captions go in calls of at most this many; call k draws seed + k
        self.calls = [(list(captions[i:i + size]), seed + i // size) for i in range(0, len(captions), size)]
        self.reference = self._latents(engine, "full")
        self.evaluations = 1

    def _latents(self, engine, mode):
        return torch.cat([engine.generate(batch, mode=mode, seed=s, **self.kw) for batch, s in self.calls])

    def mse(self, adaptor_steps) -> float:
        run = self.engine.with_config(mode="clockwork", adaptor_steps=tuple(sorted(adaptor_steps)))
        with warnings.catch_warnings():  # the fitted-for-another-clock/steps warnings: known here
            warnings.simplefilter("ignore")
            out = self._latents(run, "clockwork")
        self.evaluations += 1
        if self.progress:
            self.progress()
        return float(out.sub(self.reference).pow(2).mean())


def _local(cal: _Calibration, steps: int, budget: int, max_rounds: int):
    """From the best of the spread and DeepCache clocks, swap a full step with a neighbouring
    adaptor step while the best swap lowers the MSE."""
    starts = {"spread": spread(steps, budget)}
    for interval, clock in uniform(steps, budget).items():
        if clock not in starts.values():
            starts[f"deepcache_i{interval}"] = clock
    scored = {name: cal.mse(start) for name, start in starts.items()}
    first = min(scored, key=lambda name: (scored[name], name))
    chosen, current = set(starts[first]), scored[first]
    rounds = [{"step": None, "adaptor_steps": sorted(chosen), "mse": current, "start": first,
               "starts": {name: {"adaptor_steps": starts[name], "mse": v} for name, v in scored.items()}}]
    for _ in range(max_rounds):
        moves = {}  # (full step made adaptor, adaptor step made full) -> the set
        for f in sorted(set(range(1, steps)) - chosen):
            for a in (f - 1, f + 1):
                if a in chosen:
                    moves[(f, a)] = (chosen - {a}) | {f}
        measured = {m: cal.mse(v) for m, v in moves.items()}
        if not measured:
            break
        best = min(measured, key=lambda m: (measured[m], m))
        if measured[best] >= current:
            break
        chosen, current = moves[best], measured[best]
        rounds.append({"step": list(best), "adaptor_steps": sorted(chosen), "mse": current,
                       "evaluated": len(measured)})
    return chosen, rounds, []


def _forward(cal: _Calibration, steps: int, budget: int, candidates: int):
    """From no adaptor step, add the step whose adaptor keeps the latents closest, `budget` times."""
    chosen, rounds, profile = set(), [], []
    score: dict[int, float] = {}  # each step's MSE when last measured
    for _ in range(budget):
        pool = sorted(set(range(1, steps)) - chosen, key=lambda i: (score.get(i, 0.0), i))
        if candidates and profile:
            pool = pool[:candidates]
        measured = {c: cal.mse(chosen | {c}) for c in pool}
        score.update(measured)
        profile = profile or [{"step": i, "mse": v} for i, v in sorted(measured.items())]
        best = min(measured, key=lambda c: (measured[c], c))
        chosen = chosen | {best}
        rounds.append({"step": best, "adaptor_steps": sorted(chosen), "mse": measured[best],
                       "evaluated": sorted(measured)})
    return chosen, rounds, profile


def schedule_for(found: dict, budget: int) -> tuple[list[int], float]:
    """(adaptor steps, calibration MSE) of a forward search's round that left `budget` adaptor
    steps: a forward search to budget B holds every smaller budget's."""
    for r in found["rounds"]:
        if len(r["adaptor_steps"]) == budget:
            return r["adaptor_steps"], r["mse"]
    raise ValueError(f"the {found['direction']} search passed no schedule of {budget} adaptor steps")
