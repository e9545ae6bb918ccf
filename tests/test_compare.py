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
    from clockwork_engine.datasets import shapes

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


def test_gflops_per_image_counts_every_model_call_of_a_new_prompt(tiny_dir):
    """Linear in the step count; what does not grow with it is one text encoding of the new
    prompt (the "" embedding of CFG stays cached) and one decode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clockwork_engine import Engine

    engine = Engine.from_pretrained(str(tiny_dir), config="full")
    kw = {"guidance_scale": 3.0, "mode": "full"}
    engine.prompts.encode([""])
    two, three, four = (compare.gflops_per_image(engine, {**kw, "steps": n}, f"a prompt for {n} steps")
                        for n in (2, 3, 4))
    per_step = three - two
    assert per_step > 0 and abs((four - three) - per_step) < 1e-9
    ids = engine.prompts.tokenizer(["x"], padding="max_length", max_length=engine.prompts.max_length,
                                   return_tensors="pt").input_ids
    with FlopCounterMode(display=False) as fixed, torch.no_grad():
        engine.text_encoder(ids)
        engine.vae.decode(torch.randn(1, 4, 8, 8))
    assert abs((two - 2 * per_step) - fixed.get_total_flops() / 1e9) < 1e-9
