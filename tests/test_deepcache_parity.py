"""Clockwork's identity adaptor at cut 0 on DeepCache's clock is DeepCache (the PyPI package,
cache_branch_id 0, uniform intervals) on the same pipeline: same latents."""

import warnings

import pytest
import torch
from DeepCache import DeepCacheSDHelper

from clockwork_engine import Engine
from clockwork_engine.clockwork import clock_search


def deepcache_latents(pipe, prompt, steps, interval, guidance, seed, size):
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                    generator=torch.Generator().manual_seed(seed), output_type="latent").images
    finally:
        helper.disable()


def clockwork_latents(pipe, prompt, steps, interval, guidance, seed, size):
    cached = clock_search.deepcache_clock(steps, interval)  # the steps DeepCache serves from its cache
    engine = Engine.from_pipeline(pipe).with_config(mode="clockwork", adaptor="identity", cut=0,
                                                   adaptor_steps=tuple(cached))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine.generate([prompt] if isinstance(prompt, str) else prompt, steps=steps,
                               guidance_scale=guidance, seed=seed, height=size, width=size, output="latent")


@pytest.mark.parametrize("steps, interval", [(6, 2), (8, 3), (7, 5)])
def test_identity_cut_0_is_deepcache_tiny(tiny_pipe, steps, interval):
    """The tiny UNet's last up block has cross-attention: its last layer's attention runs too."""
    args = (["a red circle", "a blue square"], steps, interval, 4.0, 3, 16)
    ref = deepcache_latents(tiny_pipe, *args)
    got = clockwork_latents(tiny_pipe, *args)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # and it is not the full model
    full = Engine.from_pipeline(tiny_pipe).generate(args[0], steps=steps, guidance_scale=4.0, seed=3, height=16,
                                                    width=16, output="latent")
    assert (full - got).abs().max() > 1e-3


@pytest.mark.slow
def test_identity_cut_0_is_deepcache_demo():
    from clockwork_engine.demo.pipeline import load

    pipe = load()
    args = ("a small purple circle on the left", 20, 3, 3.0, 0, 128)
    torch.testing.assert_close(clockwork_latents(pipe, *args), deepcache_latents(pipe, *args), atol=1e-4, rtol=0)
