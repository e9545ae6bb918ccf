"""The request scheduler: step-level continuous batching with each row's image its own,
joins at step boundaries (clockwork: at the clock's full ticks), leaves, deadlines, a bounded
queue, cancellation, and a failing request that takes no other down."""

import threading
import time
from concurrent.futures import CancelledError

import pytest
from conftest import make_tiny_pipeline

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.request import DeadlineExceeded
from clockwork_engine.serving import QueueFull

TOL = 1e-4  # a row against the request alone: only the batch's float summation order differs


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(seed=4)


def engines(pipe, scheduler=None, policy="step", **config):
    alone = Engine.from_pipeline(pipe, config=EngineConfig(mode="clockwork", adaptor="identity", **config))
    if scheduler:
        alone = alone.with_config(scheduler=scheduler)
    return alone, alone.with_config(batching=policy)


def request(k, mode="clockwork"):
    return dict(prompt=["a red circle", "a blue square left of a green triangle", "a black triangle"][k % 3],
                steps=(3, 5, 4, 6)[k % 4], seed=k, guidance_scale=(5.0, 1.0, 7.5)[k % 3] if k % 3 else 5.0,
                height=16, width=16, mode=mode, output="latent")


def close(a, b):
    return (a - b).abs().max().item() <= TOL


class Ticks:
    """Records (rows, lane ticks) of every batch step; can submit more work from a given step."""

    def __init__(self, engine, at=None, then=None):
        self.engine, self.at, self.then, self.log = engine, at, then, []
        engine.batcher.tick_hooks.append(self)

    def __call__(self, rows):
        self.log.append(rows)
        if self.at is not None and len(self.log) == self.at:
            self.then()


@pytest.mark.parametrize("scheduler", [None, "euler-a", "dpm++3m", "heun"])
def test_rows_joining_mid_flight_get_their_own_images(pipe, scheduler):
    alone, batched = engines(pipe, scheduler)
    reqs = [request(k, mode) for k in range(6) for mode in ("clockwork", "full")]
    expected = [alone.generate(**r) for r in reqs]
    late = []
    ticks = Ticks(batched, at=2, then=lambda: late.extend(batched.batcher.submit(_parse(batched, r))
                                                          for r in reqs[4:]))
    first = [batched.batcher.submit(_parse(batched, r)) for r in reqs[:4]]
    results = [f.result(timeout=120) for f in first] + [None] * (len(reqs) - 4)
    while len(late) < len(reqs) - 4:
        time.sleep(0.01)
    results[4:] = [f.result(timeout=120) for f in late]
    assert all(close(got, want) for got, want in zip(results, expected, strict=True))
    assert max(ticks.log) > 2  # rows of several requests shared model calls
    assert batched.batcher.counts["ok"] == len(reqs)


def _parse(engine, kwargs):
    from clockwork_engine import request as requests

    return requests.parse(engine, **kwargs)


def test_generate_from_threads_is_batched_and_exact(pipe):
    alone, batched = engines(pipe)
    reqs = [request(k) for k in range(8)] + [dict(request(8), prompt=["a red circle", "a blue square"], seed=[3, 4])]
    expected = [alone.generate(**r) for r in reqs]
    ticks = Ticks(batched)
    out = [None] * len(reqs)

    def call(k):
        out[k] = batched.generate(**reqs[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(reqs))]
    with batched.runner.lock:  # all of them wait, then start as one batch
        for t in threads:
            t.start()
        while batched.batcher.queue_depth() + batched.batcher.running() < 4:
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=120)
    assert all(close(got, want) for got, want in zip(out, expected, strict=True))
    assert max(ticks.log) >= 4


def test_clockwork_rows_join_only_at_full_ticks(pipe):
    from clockwork_engine.serving.lane import Lane

    _, batched = engines(pipe)
    lane = Lane(batched.runner, (16, 16, "clockwork", True, batched.operating_point(4)), (1, 2, 4))
    kinds = batched.step_kinds(5, "clockwork")
    assert kinds[:3] == ["clockwork.full", "clockwork.adaptor", "clockwork.full"]
    lane.rows = [object()]  # a running lane at tick 3 (an adaptor tick comes next at 3)
    lane.tick = 3
    assert not lane.can_join(kinds)
    lane.tick = 4
    assert lane.can_join(kinds)
    assert lane.can_join(batched.step_kinds(5, "full")) is False  # a full-mode row needs a full lane
    full_lane = Lane(batched.runner, (16, 16, "full", True, None), (1, 2, 4))
    full_lane.rows, full_lane.tick = [object()], 3
    assert full_lane.can_join(batched.step_kinds(5, "full"))


def stall(engine, first):
    """Submit `first` while the model is busy (the caller holds its lock) and wait until the
    scheduler has taken it: the scheduler then waits on the lock and starts nothing more."""
    future = engine.batcher.submit(first)
    while engine.batcher.queue_depth():
        time.sleep(0.005)
    return future


def test_request_policy_starts_only_an_empty_lane(pipe):
    alone, batched = engines(pipe, policy="request")
    reqs = [dict(request(k), guidance_scale=5.0) for k in (0, 1, 2)]  # one lane (CFG on); 3, 5 and 4 steps
    expected = [alone.generate(**r) for r in reqs]
    ticks = Ticks(batched)
    with batched.runner.lock:
        futures = [stall(batched, _parse(batched, reqs[0]))]  # the lane starts with the first alone
        futures += [batched.batcher.submit(_parse(batched, r)) for r in reqs[1:]]
    assert all(close(f.result(timeout=120), want) for f, want in zip(futures, expected, strict=True))
    # the two that waited did not join the running lane; they started together once it was empty
    assert ticks.log == [1] * 3 + [2] * 4 + [1] * 1


def test_deadline_drops_the_request_and_frees_its_row(pipe):
    alone, batched = engines(pipe)
    keep = request(1)
    with pytest.raises(DeadlineExceeded):
        batched.generate(**request(0), timeout=0.0)
    slow = batched.batcher.submit(_parse(batched, dict(request(3), timeout=0.05, steps=200)))
    ok = batched.batcher.submit(_parse(batched, keep))
    assert close(ok.result(timeout=120), alone.generate(**keep))
    with pytest.raises(DeadlineExceeded):
        slow.result(timeout=120)
    assert batched.batcher.running() == 0
    # without batching the limit holds too, checked at each step boundary
    with pytest.raises(DeadlineExceeded):
        alone.generate(**dict(request(3), steps=200), timeout=0.05)


def test_full_queue_refuses_at_once_and_loses_nothing(pipe):
    alone, batched = engines(pipe, max_queue=3)
    accepted, refused = [], 0
    with batched.runner.lock:
        accepted.append((0, stall(batched, _parse(batched, request(0)))))
        for k in range(1, 12):
            try:
                accepted.append((k, batched.batcher.submit(_parse(batched, request(k)))))
            except QueueFull:
                refused += 1
    assert len(accepted) == 1 + 3 and refused == 8
    for k, future in accepted:
        assert close(future.result(timeout=120), alone.generate(**request(k)))


def test_cancelled_request_frees_its_place(pipe):
    alone, batched = engines(pipe)
    with batched.runner.lock:
        dropped = batched.batcher.submit(_parse(batched, request(0)))
        kept = batched.batcher.submit(_parse(batched, request(1)))
        assert dropped.cancel()
    assert close(kept.result(timeout=120), alone.generate(**request(1)))
    with pytest.raises(CancelledError):
        dropped.result()
    assert batched.batcher.counts["cancelled"] == 1


def test_a_failing_request_takes_no_other_down(pipe, monkeypatch):
    alone, batched = engines(pipe)
    encode = batched.conditioning.encode

    def flaky(prompts, *args, **kw):
        if "poison" in " ".join(prompts):
            raise RuntimeError("the text encoder failed")
        return encode(prompts, *args, **kw)

    monkeypatch.setattr(batched.conditioning, "encode", flaky)
    bad = batched.batcher.submit(_parse(batched, dict(request(0), prompt="poison")))
    good = batched.batcher.submit(_parse(batched, request(1)))
    with pytest.raises(RuntimeError, match="text encoder failed"):
        bad.result(timeout=120)
    assert close(good.result(timeout=120), alone.generate(**request(1)))
    assert batched.generate(**request(2)).shape == alone.generate(**request(2)).shape  # still serving


def test_what_is_not_batched_runs_alone(pipe):
    alone, batched = engines(pipe)
    steps = []
    got = batched.generate(**request(1), callback=lambda i, n, x: steps.append(i))
    assert close(got, alone.generate(**request(1))) and steps == list(range(5))
    assert not batched.batcher.accepts(_parse(batched, dict(request(1), callback=print)))
    with pytest.raises(ValueError, match="not batched"):
        batched.batcher.submit(_parse(batched, dict(request(1), callback=print)))


def test_bad_batching_settings_are_refused():
    with pytest.raises(ValueError, match="batching"):
        EngineConfig(batching="always")
    with pytest.raises(ValueError, match="batch_buckets"):
        EngineConfig(batch_buckets=(4, 2))
    with pytest.raises(ValueError, match="max_queue"):
        EngineConfig(max_queue=0)
    with pytest.raises(ValueError, match="request_timeout"):
        EngineConfig(request_timeout=float("nan"))


@pytest.mark.parametrize("family, mode", [("sdxl", "full"), ("sd3", "full"), ("sd3", "clockwork")])
def test_rows_batch_with_their_added_conditioning(tmp_path_factory, family, mode):
    """SDXL's added conditioning (pooled text, time ids), SD3's pooled projections and its
    clockwork features (the middle blocks' token residual) ride in the lane's row-doubled
    buffers: each row gets the image it gets alone."""
    from test_sd3 import make_sd3_pipeline
    from test_sdxl import make_sdxl_pipeline

    pipe = (make_sdxl_pipeline if family == "sdxl" else make_sd3_pipeline)(tmp_path_factory.mktemp("tok"))
    alone = Engine.from_pipeline(pipe, config=EngineConfig(mode=mode, adaptor="identity"))
    batched = alone.with_config(batching="step")
    calls = [("a red circle", 3, 5.0), ("a blue square", 4, 5.0), ("a green ring", 2, 2.0)]
    reqs = [dict(prompt=p, steps=s, seed=k, height=16, width=16, output="latent", guidance_scale=g)
            for k, (p, s, g) in enumerate(calls)]
    expected = [alone.generate(**r) for r in reqs]
    ticks = Ticks(batched)
    with batched.runner.lock:
        futures = [batched.batcher.submit(_parse(batched, r)) for r in reqs]
    assert all(close(f.result(timeout=120), want) for f, want in zip(futures, expected, strict=True))
    assert max(ticks.log) == 3
