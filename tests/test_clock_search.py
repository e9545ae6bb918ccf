"""search-clock (clock_search.py) and clock schedule files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.clockwork import clock_search
from clockwork_engine.tools.cli import main as cli

CAPTIONS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def identity_engine(tiny_pipe):
    return Engine.from_pipeline(tiny_pipe, config=EngineConfig(mode="clockwork", adaptor="identity"))


def _mse(engine, adaptor_steps, steps=5):
    kw = dict(steps=steps, guidance_scale=3.0, seed=0, output="latent")
    ref = engine.generate(CAPTIONS, mode="full", **kw)
    out = engine.with_config(adaptor_steps=tuple(adaptor_steps)).generate(CAPTIONS, mode="clockwork", **kw)
    return float((out - ref).pow(2).mean())


def test_exact_greedy_picks_the_least_perturbing_step_each_round(identity_engine):
    found = clock_search.search(identity_engine, CAPTIONS, steps=5, budget=2, guidance=3.0, candidates=0,
                                direction="forward")
    profile = {p["step"]: p["mse"] for p in found["profile"]}
    assert sorted(profile) == [1, 2, 3, 4]
    first, second = found["rounds"]
    # round 1 with nothing chosen is the profile: its minimum, and the MSE is what a run gives
    assert first["step"] == min(profile, key=profile.get) and first["adaptor_steps"] == [first["step"]]
    assert first["mse"] == pytest.approx(_mse(identity_engine, [first["step"]]), rel=1e-5)
    assert first["evaluated"] == [1, 2, 3, 4] and len(second["evaluated"]) == 3
    assert found["adaptor_steps"] == second["adaptor_steps"] == sorted([first["step"], second["step"]])
    # the chosen pair is the best pair containing the first choice
    pairs = {c: _mse(identity_engine, sorted({first["step"], c})) for c in range(1, 5) if c != first["step"]}
    assert second["step"] == min(pairs, key=pairs.get)
    assert second["mse"] == pytest.approx(pairs[second["step"]], rel=1e-5)
    # 1 reference + 4 + 3 greedy runs (round 1 is the profile)
    assert found["evaluations"] == 1 + 4 + 3


def test_candidates_limit_the_runs_per_round(identity_engine):
    found = clock_search.search(identity_engine, CAPTIONS, steps=5, budget=2, guidance=3.0, candidates=1,
                                direction="forward")
    profile = {p["step"]: p["mse"] for p in found["profile"]}
    assert found["evaluations"] == 1 + 4 + 1
    first, second = found["rounds"]
    assert len(first["evaluated"]) == 4  # round 1: the profile
    # round 2: only the best-scoring remaining step of the profile
    assert second["evaluated"] == [min(set(profile) - {first["step"]}, key=profile.get)]
    assert found["rounds"][0]["step"] == min(profile, key=profile.get)
    assert len(found["adaptor_steps"]) == 2 and 0 not in found["adaptor_steps"]


def test_spread_clock():
    assert clock_search.spread(20, 10) == list(range(1, 20, 2))  # the alternating clock 2
    assert clock_search.spread(20, 15) == [i for i in range(1, 20) if i % 4]  # DeepCache interval 4's pattern
    assert clock_search.spread(8, 7) == list(range(1, 8))
    for steps, budget in ((20, 14), (50, 37), (8, 5)):
        clock = clock_search.spread(steps, budget)
        assert len(clock) == budget and 0 not in clock and max(clock) < steps


def test_uniform_clocks_are_deepcache_s():
    assert clock_search.uniform(20, 13) == {3: [i for i in range(1, 20) if i % 3]}  # full steps 0, 3, ..., 18
    assert clock_search.uniform(50, 40) == {5: [i for i in range(1, 50) if i % 5]}
    assert clock_search.uniform(8, 4) == {2: [1, 3, 5, 7]}
    assert clock_search.uniform(8, 6) == {4: [1, 2, 3, 5, 6, 7], 5: [1, 2, 3, 4, 6, 7], 6: [1, 2, 3, 4, 5, 7],
                                          7: [1, 2, 3, 4, 5, 6]}
    assert clock_search.uniform(20, 12) == {}  # no interval leaves 12 of 20


def test_local_search_starts_from_the_better_of_spread_and_deepcache(identity_engine):
    spread, deepcache = clock_search.spread(8, 5), clock_search.uniform(8, 5)[3]
    assert spread != deepcache
    found = clock_search.search(identity_engine, CAPTIONS, steps=8, budget=5, guidance=3.0, direction="local",
                                max_rounds=0)
    (start,) = found["rounds"]
    clocks = {"spread": spread, "deepcache_i3": deepcache}
    scores = {name: _mse(identity_engine, clock, steps=8) for name, clock in clocks.items()}
    assert {k: v["mse"] for k, v in start["starts"].items()} == pytest.approx(scores, rel=1e-5)
    assert start["start"] == min(scores, key=scores.get)
    assert found["adaptor_steps"] == clocks[start["start"]]
    assert found["evaluations"] == 1 + 2


def test_calibration_captions_beyond_a_call_go_in_several(identity_engine):
    """More captions than one generate() call takes: calls of max_batch_size, call k seeded seed + k."""
    small = identity_engine.with_config(max_batch_size=2)
    captions = ["a red circle", "a large blue square", "a green triangle"]
    found = clock_search.search(small, captions, steps=4, budget=2, guidance=3.0, seed=5, max_rounds=0)
    kw = dict(steps=4, guidance_scale=3.0, output="latent")
    ref = torch.cat([small.generate(captions[:2], mode="full", seed=5, **kw),
                     small.generate(captions[2:], mode="full", seed=6, **kw)])
    run = small.with_config(mode="clockwork", adaptor_steps=tuple(found["adaptor_steps"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.cat([run.generate(captions[:2], mode="clockwork", seed=5, **kw),
                         run.generate(captions[2:], mode="clockwork", seed=6, **kw)])
    assert found["rounds"][0]["mse"] == pytest.approx(float(out.sub(ref).pow(2).mean()), rel=1e-5)


def test_local_search_only_moves_while_it_pays(identity_engine):
    found = clock_search.search(identity_engine, CAPTIONS, steps=6, budget=3, guidance=3.0, direction="local")
    start, *moves = found["rounds"]
    assert start["adaptor_steps"] == clock_search.spread(6, 3)
    assert start["mse"] == pytest.approx(_mse(identity_engine, start["adaptor_steps"], steps=6), rel=1e-5)
    mses = [r["mse"] for r in found["rounds"]]
    assert mses == sorted(mses, reverse=True) and len(set(mses)) == len(mses)  # each move strictly better
    for before, after in zip(found["rounds"], moves, strict=False):
        made_adaptor, made_full = after["step"]
        assert set(after["adaptor_steps"]) == set(before["adaptor_steps"]) - {made_full} | {made_adaptor}
        assert abs(made_adaptor - made_full) == 1 and len(after["adaptor_steps"]) == 3
    # where it stopped, no single move is better
    final = set(found["adaptor_steps"])
    for f in set(range(1, 6)) - final:
        for a in (f - 1, f + 1):
            if a in final:
                assert _mse(identity_engine, sorted(final - {a} | {f}), steps=6) >= mses[-1] - 1e-12
    assert found["evaluations"] == 1 + 1 + sum(r["evaluated"] for r in moves) + (
        0 if len(moves) == 8 else _moves(final))


def _moves(chosen) -> int:  # the moves of the last, unaccepted round
    return sum(a in chosen for f in set(range(1, 6)) - chosen for a in (f - 1, f + 1))


@pytest.mark.parametrize("budget", [0, 5])
def test_budget_out_of_range(identity_engine, budget):
    with pytest.raises(ValueError, match="budget"):
        clock_search.search(identity_engine, CAPTIONS, steps=5, budget=budget, guidance=3.0)


def test_flop_fraction():
    assert clock_search.flop_fraction(0.25, 8, [1, 3, 5, 7]) == pytest.approx((4 + 4 * 0.25) / 8)
    assert clock_search.flop_fraction(0.25, 8, []) == 1.0


def _write_schedule(path, steps, adaptor_steps, **extra):
    path.write_text(json.dumps({"format": clock_search.FORMAT, "steps": steps, "adaptor_steps": adaptor_steps,
                                **extra}))
    return str(path)


def test_schedule_file_sets_the_config(tmp_path):
    path = _write_schedule(tmp_path / "s.json", 20, [5, 3, 19], adaptor="identity")
    config = clock_search.with_schedule(EngineConfig(), path)
    assert (config.mode, config.steps, config.adaptor_steps, config.adaptor) == ("clockwork", 20, (3, 5, 19),
                                                                                 "identity")
    assert config.clock().schedule(20).count(True) == 3
    assert config.cut == 1  # a file without one: the default cut
    deep_file = _write_schedule(tmp_path / "c0.json", 8, [1, 3], adaptor="identity", cut=0)
    deep = clock_search.with_schedule(EngineConfig(), deep_file)
    assert (deep.adaptor, deep.cut) == ("identity", 0)
    learned = clock_search.with_schedule(EngineConfig(), _write_schedule(tmp_path / "l.json", 8, [1, 2], cut=0))
    assert learned.adaptor is None and learned.adaptor_steps == (1, 2) and learned.cut == 1  # an adaptor has its own


@pytest.mark.parametrize("content, match", [
    ("not json", "not a clock schedule"),
    (json.dumps({"steps": 8, "adaptor_steps": [1]}), "format"),
    (json.dumps({"format": clock_search.FORMAT, "steps": 8, "adaptor_steps": [0, 1]}), r"\[1, 7\]"),
    (json.dumps({"format": clock_search.FORMAT, "steps": 8, "adaptor_steps": [8]}), r"\[1, 7\]"),
    (json.dumps({"format": clock_search.FORMAT, "steps": 8}), "KeyError"),
])
def test_bad_schedule_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        clock_search.load(str(path))


def test_search_clock_cli_writes_one_file_a_budget(tiny_dir, tmp_path):
    out = tmp_path / "clock_{budget}.json"
    assert cli(["search-clock", "--model", str(tiny_dir), "--steps", "4", "--budget", "1,2", "--captions", "2",
                "--candidates", "0", "--adaptor", "identity", "--guidance", "3", "--direction", "forward",
                "--out", str(out)]) == 0
    one, two = (json.loads((tmp_path / f"clock_{b}.json").read_text()) for b in (1, 2))
    assert one["budget"] == 1 and two["budget"] == 2
    assert set(one["adaptor_steps"]) < set(two["adaptor_steps"])  # the larger search's first addition
    assert one["adaptor_steps"] == [two["search"]["rounds"][0]["step"]]
    assert one["search"]["direction"] == "forward"
    # the default: a local search a budget, from the spread clock
    assert cli(["search-clock", "--model", str(tiny_dir), "--steps", "4", "--budget", "2", "--captions", "2",
                "--adaptor", "identity", "--guidance", "3", "--out", str(tmp_path / "local.json")]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    assert local["search"]["direction"] == "local" and local["search"]["rounds"][0]["adaptor_steps"] == [1, 3]
    assert local["calibration_mse"] <= local["calibration_mse_start"] and local["cut"] == 1
    for d in (one, two):
        assert d["steps"] == 4 and d["adaptor"] == "identity" and len(d["calibration"]["captions"]) == 2
        assert d["search"]["sampler_runs"] == 1 + 3 + 2 and d["search"]["seconds"] > 0
        assert d["command"].startswith("clockwork search-clock --model")
        assert 0 < d["unet_flop_fraction"] < 1
    # the file runs: generate takes it (its step count, identity adaptor)
    image = tmp_path / "out.png"
    assert cli(["generate", "a red circle", "--model", str(tiny_dir), "--clock-schedule",
                str(tmp_path / "clock_2.json"), "-o", str(image), "-q"]) == 0
    assert image.exists()
    # a schedule is for its own step count
    assert cli(["generate", "a red circle", "--model", str(tiny_dir), "--clock-schedule",
                str(tmp_path / "clock_2.json"), "--steps", "8", "-o", str(image), "-q"]) == 2


def test_search_clock_at_cut_0(tiny_dir, tmp_path):
    out = tmp_path / "c0.json"
    assert cli(["search-clock", "--model", str(tiny_dir), "--steps", "4", "--budget", "2", "--captions", "2",
                "--adaptor", "identity", "--cut", "0", "--rounds", "0", "--guidance", "3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["cut"] == 0
    assert clock_search.with_schedule(EngineConfig(), str(out)).cut == 0
    # a trained adaptor carries its cut
    assert cli(["search-clock", "--model", str(tiny_dir), "--steps", "4", "--budget", "2", "--cut", "0",
                "--out", str(out)]) == 2


def test_several_budgets_need_a_placeholder(tiny_dir, tmp_path):
    assert cli(["search-clock", "--model", str(tiny_dir), "--steps", "4", "--budget", "1,2",
                "--out", str(tmp_path / "c.json")]) == 2
