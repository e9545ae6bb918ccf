"""The peers table's verdicts (docs/make_results.py): when a clockwork row meets a DeepCache one."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs"))
import make_results as M  # noqa: E402


def row(times, ratio=2.0, accuracy=0.8, psnr=40.0, n=100):
    v = {"latency_ratio": ratio, "single_colour_and_shape": accuracy, "psnr_to_reference": psnr,
         "singles": {"colour_and_shape": {"accuracy": accuracy, "n": n}}}
    if times is not None:
        v["latency_times_s"] = times
    return v


def test_equal_times_meet_on_speed():
    times = [0.50, 0.52, 0.49, 0.51, 0.50]
    gm, se = M._paired_speed(row(times), row(times))
    assert gm == 1.0 and se == 1.0
    assert M._meets(row(times, ratio=1.9), row(times, ratio=2.0))["speed"]  # the pairs decide, not the medians


def test_a_steady_slowdown_misses_and_noise_around_a_tie_meets():
    deepcache = [0.50, 0.60, 0.45, 0.55, 0.50, 0.52]
    slower = [t * 1.05 for t in deepcache]  # 5% slower every round: no noise to hide in
    assert not M._meets(row(slower), row(deepcache))["speed"]
    noisy = [t * f for t, f in zip(deepcache, (1.04, 0.95, 1.03, 0.97, 1.05, 0.97), strict=True)]
    gm, se = M._paired_speed(row(noisy), row(deepcache))
    assert gm < 1 < gm * se and M._meets(row(noisy), row(deepcache))["speed"]


def test_without_per_call_times_the_speed_ups_decide():
    assert M._paired_speed(row(None), row([0.5, 0.5, 0.5])) is None
    assert not M._meets(row(None, ratio=1.9), row(None, ratio=2.0))["speed"]
    assert M._meets(row(None, ratio=2.0), row(None, ratio=2.0))["speed"]


def test_alignment_within_one_standard_error_and_psnr_within_the_tie():
    ours, theirs = row(None, accuracy=0.76, psnr=40.0 - M.PSNR_TIE_DB / 2), row(None, accuracy=0.8)
    meets = M._meets(ours, theirs)  # SE of the difference: sqrt((0.76 * 0.24 + 0.8 * 0.2) / 100) = 5.9 points
    assert meets["alignment"] and meets["psnr"]
    assert not M._meets(row(None, accuracy=0.70), theirs)["alignment"]
    assert not M._meets(row(None, psnr=39.9), theirs)["psnr"]


def run_of(variants: dict) -> dict:
    return {"variants": variants}


def test_the_table_lists_the_fastest_the_best_and_deepcaches_own_clock():
    rounds = [0.50, 0.52, 0.49, 0.51, 0.50]
    dc = row(rounds, ratio=2.0, accuracy=0.5, psnr=30.0)
    text = M._versus_deepcache(run_of({
        "deepcache_i3": dc,
        "cut0_deepcache_clock_i3": row([t * 0.95 for t in rounds], ratio=2.1, accuracy=0.5, psnr=30.0),
        "clock_fast": row([t * 0.90 for t in rounds], ratio=2.2, accuracy=0.5, psnr=30.5),
        "clock_sharp": row([t * 0.98 for t in rounds], ratio=2.05, accuracy=0.6, psnr=33.0),
        "clock_slow": row([t * 1.20 for t in rounds], ratio=1.7, accuracy=0.9, psnr=40.0),
    }))
    lines = [line for line in text.splitlines() if line.startswith("| deepcache_i3")]
    assert [line.split(" | ")[4] for line in lines] == ["clock_fast", "clock_sharp", "cut0_deepcache_clock_i3"]
    assert lines[0].endswith("meets all three (the fastest) |")
    assert lines[1].endswith("meets all three (the best PSNR) |")
    assert lines[2].endswith("meets all three (DeepCache's clock) |")


def test_the_table_says_what_the_best_candidate_misses_by():
    rounds = [0.50, 0.52, 0.49, 0.51, 0.50]
    text = M._versus_deepcache(run_of({
        "deepcache_i5": row(rounds, ratio=3.0, accuracy=0.5, psnr=30.0),
        "clock_slow": row([t * 1.10 for t in rounds], ratio=2.7, accuracy=0.6, psnr=31.0),
    }))
    line = next(line for line in text.splitlines() if line.startswith("| deepcache_i5"))
    assert "| clock_slow |" in line and "short: time ratio 0.909 (± 0.0%)" in line
