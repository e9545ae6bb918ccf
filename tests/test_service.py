"""Service use: many threads on one engine, determinism, bad input under property tests."""

import math
import threading

import pytest
import torch
from conftest import make_tiny_pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockwork_engine import Engine, EngineConfig


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pipeline(make_tiny_pipeline(seed=4),
                                config=EngineConfig(mode="clockwork", adaptor="identity", max_graphs=4))


REQUESTS = [
    dict(prompt="a red circle", steps=3, seed=1, height=16, width=16, mode="clockwork"),
    dict(prompt=["a blue square", "a green triangle"], steps=4, seed=2, height=16, width=24, mode="full"),
    dict(prompt="a yellow circle left of a red square", steps=2, seed=3, height=24, width=16, mode="clockwork",
         guidance_scale=1.0),
    dict(prompt="a black triangle", steps=5, seed=4, height=16, width=16, mode="full", guidance_scale=7.5),
    dict(prompt="a purple square", steps=4, seed=5, height=16, width=16, mode="clockwork"),
]


def test_threads_get_exactly_their_own_images(engine):
    alone = [engine.generate(output="latent", **r) for r in REQUESTS]
    errors, mismatches = [], []

    def worker(tid):
        try:
            for k in range(25):
                idx = (tid + k) % len(REQUESTS)
                out = engine.generate(output="latent", **REQUESTS[idx])
                if not torch.equal(out, alone[idx]):
                    mismatches.append((tid, k, idx))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches
    assert len(engine.graphs.keys()) <= 4  # bounded program cache under a mixed load


def test_same_request_same_image_whatever_ran_before(engine):
    a = engine.generate(output="latent", **REQUESTS[0])
    engine.generate(output="latent", **REQUESTS[1])
    with pytest.raises(ValueError):
        engine.generate("x", steps=0)
    assert torch.equal(engine.generate(output="latent", **REQUESTS[0]), a)


texts = st.one_of(st.text(max_size=300), st.binary(max_size=50), st.integers(), st.none(),
                  st.lists(st.text(max_size=40), max_size=20))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=texts, steps=st.one_of(st.integers(-5, 3), st.floats(allow_nan=True), st.none()),
       guidance=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 10), st.text(max_size=3)),
       seed=st.one_of(st.integers(-2, 2**64), st.none(), st.text(max_size=2)),
       size=st.one_of(st.integers(-16, 80), st.none()))
def test_any_input_is_served_or_cleanly_refused(engine, prompt, steps, guidance, seed, size):
    try:
        out = engine.generate(prompt, steps=steps, guidance_scale=guidance, seed=seed, height=size, width=size,
                              output="latent")
    except (ValueError, TypeError) as e:
        assert str(e)  # a message naming the problem
    else:
        assert torch.isfinite(out).all() if torch.is_tensor(out) else all(torch.isfinite(o).all() for o in out)
    # ...and the engine keeps serving the same answer
    assert torch.equal(engine.generate(output="latent", **REQUESTS[0]), engine.generate(output="latent", **REQUESTS[0]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_guidance(engine, bad):
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        engine.generate("a red circle", guidance_scale=bad, steps=2)
