"""A full step through the split equals the unsplit UNet."""

import pytest
import torch
from conftest import TINY_UNET
from diffusers import UNet2DConditionModel

from clockwork_engine.clockwork.unet_split import UNetSplit

FOUR_LEVELS = {**TINY_UNET, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               "block_out_channels": (8, 16, 24, 32), "layers_per_block": 2}


@pytest.mark.parametrize("config, cut", [(TINY_UNET, 0), (TINY_UNET, 1), (TINY_UNET, 2), (FOUR_LEVELS, 0),
                                         (FOUR_LEVELS, 1), (FOUR_LEVELS, 2), (FOUR_LEVELS, 3)])
@pytest.mark.parametrize("hw", [(8, 8), (16, 24)])
def test_split_equals_unet(config, cut, hw):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    split = UNetSplit(unet, cut)
    x = torch.randn(2, 4, *hw)
    text = torch.randn(2, 5, 32)
    t = torch.tensor(421)
    with torch.no_grad():
        ref = unet(x, t, text).sample
        eps, r_out = split(x, t, text)
        hin = split.h_in(x, t, text)
    torch.testing.assert_close(eps, ref, atol=1e-5, rtol=1e-5)
    assert hin.r_in.shape == (2, split.r_in_channels, hw[0] // 2**cut, hw[1] // 2**cut)
    assert r_out.shape == (2, split.r_out_channels, hw[0] // 2**cut, hw[1] // 2**cut)


@pytest.mark.parametrize("cut", [0, 1])
def test_split_shares_parameters_and_leaves_the_unet_intact(cut):
    unet = UNet2DConditionModel(**FOUR_LEVELS)
    layers = [(len(b.resnets), len(getattr(b, "attentions", None) or ())) for b in unet.up_blocks]
    split = UNetSplit(unet, cut)
    assert unet.up_blocks[2].upsamplers is not None  # the view dropped it, not the UNet
    assert [(len(b.resnets), len(getattr(b, "attentions", None) or ())) for b in unet.up_blocks] == layers
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in unet.parameters())


def test_cut_0_is_deepcache_shallowest_branch():
    """At cut 0, H_out is the last up block's last layer: r_out is its input, r_in conv_in's output."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**FOUR_LEVELS).eval()
    split = UNetSplit(unet, 0)
    seen = {}
    unet.up_blocks[-1].resnets[-1].register_forward_pre_hook(lambda m, a: seen.update(last_in=a[0]))
    unet.conv_in.register_forward_hook(lambda m, a, out: seen.update(conv_in=out))
    x, text, t = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32), torch.tensor(421)
    with torch.no_grad():
        _, r_out = split(x, t, text)
        r_in = split.h_in(x, t, text).r_in
        unet(x, t, text)
    torch.testing.assert_close(torch.cat([r_out, seen["conv_in"]], 1), seen["last_in"])
    torch.testing.assert_close(r_in, seen["conv_in"])


def test_bad_cut():
    unet = UNet2DConditionModel(**TINY_UNET)
    with pytest.raises(ValueError, match=r"cut must be an int in \[0, 2\]"):
        UNetSplit(unet, 3)
    with pytest.raises(ValueError, match="cut must be an int"):
        UNetSplit(unet, 1.0)
