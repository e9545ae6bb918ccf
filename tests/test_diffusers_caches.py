"""diffusers' own caches on an SD3 pipeline (eval/diffusers_caches.py), the peers of clockwork on
transformers: driven as a CacheMixin pipeline drives them, each runs, repeats itself after a
reset, changes the latents, and leaves the transformer as it was when removed; FirstBlockCache
does not run on SD3 (its last joint block returns no text stream)."""

import pytest
import torch
from test_sd3 import make_sd3_pipeline

from clockwork_engine.eval import diffusers_caches

STEPS = 8
# two prompts: a cache that halves the CFG batch must halve every batched input (FasterCache)
CALL = dict(prompt=["a red circle", "a blue square"], guidance_scale=5.0, height=16, width=16, output_type="latent")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = make_sd3_pipeline(tmp_path_factory.mktemp("tok"))
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe):
    return pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1), **CALL).images


@pytest.mark.parametrize("kind, settings", [
    ("mag", dict(threshold=0.06)),
    ("taylorseer", dict(cache_interval=2, disable_cache_before_step=1)),
    ("pab", dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800))),
    ("faster", dict(spatial_attention_block_skip_range=2)),
])
def test_each_cache_runs_on_sd3_and_comes_off_cleanly(pipe, kind, settings):
    full = run(pipe)
    ratios = diffusers_caches.calibrate_mag(pipe, STEPS, generator=torch.Generator().manual_seed(1), **CALL) \
        if kind == "mag" else None
    if ratios is not None:
        assert len(ratios) == STEPS and all(r > 0 for r in ratios)
    cache = diffusers_caches.CachedTransformer(pipe.transformer, kind, STEPS, mag_ratios=ratios, **settings)
    try:
        cache.reset()
        first = run(pipe)
        cache.reset()
        again = run(pipe)
    finally:
        cache.remove()
    assert torch.isfinite(first).all() and torch.equal(first, again)  # no state leaks from one image to the next
    assert not torch.equal(first, full)  # it skipped work
    assert torch.equal(run(pipe), full)  # removed: the transformer is as it was


def test_first_block_cache_does_not_run_on_sd3(pipe):
    cache = diffusers_caches.CachedTransformer(pipe.transformer, "first_block", STEPS, threshold=0.2)
    try:
        with pytest.raises(TypeError, match="NoneType"):
            run(pipe)
    finally:
        cache.remove()
    assert torch.isfinite(run(pipe)).all()


def test_an_unknown_cache_is_refused(pipe):
    with pytest.raises(ValueError, match="unknown diffusers cache 'teacache'"):
        diffusers_caches.CachedTransformer(pipe.transformer, "teacache", STEPS)
