"""The latency harness the comparisons share: every timed call encodes a new prompt."""

from clockwork_engine.eval import compare


class _Recorder:
    def __init__(self):
        self.calls = []

    def generate(self, prompt, **kw):
        self.calls.append((prompt, kw))


def test_latency_gives_every_call_a_fresh_prompt():
    shared, other = _Recorder(), _Recorder()  # two variants may share one engine (and its prompt cache)
    variants = {"a": (shared, {"mode": "full"}), "b": (shared, {"mode": "clockwork"}), "c": (other, {"steps": 2})}
    timings = compare.latency(variants, repeats=3, warmup=1)
    assert set(timings) == {"a", "b", "c"} and all(t["repeats"] == 3 for t in timings.values())
    prompts = [p for p, _ in shared.calls + other.calls]
    assert len(prompts) == 3 * (3 + 1) and len(set(prompts)) == len(prompts)  # never a cached prompt
    assert all(kw["seed"] == 0 for _, kw in shared.calls + other.calls)
    assert [kw["mode"] for _, kw in shared.calls].count("clockwork") == 4


def test_fresh_prompts_are_never_held_out_captions():
    from clockwork_engine.demo import shapes

    assert not any(shapes.is_held_out(p) for p in compare.fresh_prompts(50))


def test_paired_speedup_pairs_each_round_and_survives_slow_phases():
    # Round 2 runs on a machine twice as slow for both variants: the per-round ratio stays 2.
    base = [0.2, 0.4, 0.2, 0.21]
    fast = [0.1, 0.2, 0.1, 0.1]
    timings = {"full": compare.summary(base), "clockwork": compare.summary(fast)}
    assert timings["full"]["times_s"] == base
    assert compare.paired_speedup(timings, "full", "clockwork") == 2.0
    ticks = iter(range(100))
    timed = compare.interleaved({"a": lambda: next(ticks), "b": lambda: next(ticks)}, repeats=3, warmup=0)
    assert [len(t["times_s"]) for t in timed.values()] == [3, 3]
