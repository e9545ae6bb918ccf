"""A full step through the split equals the unsplit UNet."""

import pytest
import torch
from conftest import TINY_UNET
from diffusers import UNet2DConditionModel

from clockwork_engine.unet_split import UNetSplit

FOUR_LEVELS = {**TINY_UNET, "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               "block_out_channels": (8, 16, 24, 32), "layers_per_block": 2}


@pytest.mark.parametrize("config, cut", [(TINY_UNET, 1), (TINY_UNET, 2), (FOUR_LEVELS, 1), (FOUR_LEVELS, 2),
                                         (FOUR_LEVELS, 3)])
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


def test_split_shares_parameters_and_leaves_the_unet_intact():
    unet = UNet2DConditionModel(**TINY_UNET)
    split = UNetSplit(unet, 1)
    assert unet.up_blocks[1].upsamplers is not None  # the view dropped it, not the UNet
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in unet.parameters())


def test_bad_cut():
    unet = UNet2DConditionModel(**TINY_UNET)
    with pytest.raises(ValueError, match=r"cut must be in \[1, 2\]"):
        UNetSplit(unet, 3)
