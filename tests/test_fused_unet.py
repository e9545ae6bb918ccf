"""ops.fused_unet: the fused GroupNorm + SiLU inside diffusers' resnets equals diffusers' own
forward (fp32, the CPU kernel), only while active() and never for stock diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from clockwork_engine import Engine, EngineConfig
from clockwork_engine.ops import fused_unet

GOOD = dict(steps=3, seed=0, height=16, width=16, output="latent")


@pytest.mark.parametrize("time_norm, temb", [("default", True), ("default", False), ("scale_shift", True)])
def test_fused_forward_equals_diffusers(time_norm, temb):
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=16, out_channels=24, temb_channels=12 if temb else None, groups=4,
                          time_embedding_norm=time_norm).eval()
    x, t = torch.randn(2, 16, 9, 7), torch.randn(2, 12) if temb else None
    want = block(x, t)
    assert fused_unet.install(block) == 1 and fused_unet.install(block) == 1  # again: nothing changes
    torch.testing.assert_close(block(x, t), want, rtol=0, atol=0)  # inactive: diffusers' forward itself
    with fused_unet.active():
        got = block(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unsupported_blocks_keep_their_forward():
    up = ResnetBlock2D(in_channels=8, temb_channels=None, groups=4, up=True)
    gelu = ResnetBlock2D(in_channels=8, temb_channels=None, groups=4, non_linearity="gelu")
    assert fused_unet.install(up) == fused_unet.install(gelu) == 0 and "forward" not in vars(up)


def counting(monkeypatch) -> list:
    """Calls of the fused op from fused_forward, counted."""
    calls, real = [], fused_unet.group_norm_act
    monkeypatch.setattr(fused_unet, "group_norm_act", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def test_the_engine_runs_fused_norms_with_diffusers_latents(tiny_pipe, monkeypatch):
    fused = Engine.from_pipeline(tiny_pipe)
    assert fused.config.fused_norms
    calls = counting(monkeypatch)
    got = fused.generate("a red circle", **GOOD)
    assert len(calls) > 0  # the engine's programs ran the fused op
    del calls[:]
    ref = tiny_pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, height=16, width=16,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).images[0]
    assert calls == []  # stock diffusers on the same UNet: its own ops
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    plain = fused.with_config(fused_norms=False)
    torch.testing.assert_close(plain.generate("a red circle", **GOOD), got, rtol=1e-5, atol=1e-5)
    assert calls == []  # fused_norms=False: none


def test_decoding_runs_fused_norms(tiny_pipe, monkeypatch):
    engine = Engine.from_pipeline(tiny_pipe)
    calls = counting(monkeypatch)
    latents = engine.generate("a red circle", **GOOD)
    n = len(calls)
    engine.decode(latents[None], "pt")
    assert len(calls) > n  # the VAE decoder's resnets


def test_bad_fused_norms_setting():
    with pytest.raises(ValueError, match="fused_norms must be True or False"):
        EngineConfig(fused_norms="yes")
