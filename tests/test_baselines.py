"""The peers the benchmarks compare against, on the tiny pipeline."""

import pytest
import torch
from conftest import make_tiny_pipeline

from clockwork_engine import Engine
from clockwork_engine.eval.baselines import DeepCacheBaseline, DiffusersBaseline


def test_diffusers_baseline_is_the_engines_full_mode():
    pipe = make_tiny_pipeline(seed=5)
    stock = DiffusersBaseline(pipe).generate(["a red circle"], steps=4, guidance_scale=4.0, seed=1)
    engine = Engine.from_pipeline(pipe).generate(["a red circle"], steps=4, guidance_scale=4.0, seed=1, output="pt")
    torch.testing.assert_close(engine, stock, atol=1e-4, rtol=0)


def test_deepcache_runs_and_leaves_the_shared_unet_as_it_was():
    pytest.importorskip("DeepCache", reason="the [bench] extra (DeepCache) is not installed")
    pipe = make_tiny_pipeline(seed=5)
    engine = Engine.from_pipeline(pipe)
    before = engine.generate("a red circle", steps=4, seed=1, output="pt")
    cached = DeepCacheBaseline(pipe, cache_interval=2).generate("a red circle", steps=4, seed=1)
    stock = DiffusersBaseline(pipe).generate("a red circle", steps=4, seed=1)
    assert cached.shape == stock.shape and not torch.allclose(cached, stock)  # it skipped work
    torch.testing.assert_close(engine.generate("a red circle", steps=4, seed=1, output="pt"), before, atol=0, rtol=0)
