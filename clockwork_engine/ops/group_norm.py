"""GroupNorm -> per-(sample, channel) scale/shift -> activation (-> + residual), fused.

    y = act( GN(x; groups, eps) * weight[c] + bias[c] ) * ... written in full:
    n  = (x - mean_g) / sqrt(var_g + eps)            statistics per (sample, group), fp32
    a  = n * weight[c] + bias[c]                     the GroupNorm affine
    a  = a * (1 + scale[b, c]) + shift[b, c]         optional time-embedding conditioning
    y  = act(a) (+ residual)                         act in {"identity", "silu"}

x: [B, C, H, W] (NCHW or channels-last); scale/shift: [B, C]; residual: like x.
This file holds the torch reference; dispatch to fused kernels is added by the kernels
work (issue 4) and must match this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("identity", "silu")


def group_norm_act_reference(x, weight, bias, groups: int, eps: float = 1e-5, scale=None, shift=None,
                             act: str = "silu", residual=None) -> torch.Tensor:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if x.dim() != 4 or x.shape[1] % groups:
        raise ValueError(f"x must be [B, C, H, W] with C divisible by groups={groups}, got {tuple(x.shape)}")
    y = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps)
    if scale is not None:
        y = y * (1 + scale.float()[:, :, None, None])
    if shift is not None:
        y = y + shift.float()[:, :, None, None]
    if act == "silu":
        y = F.silu(y)
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def group_norm_act(x, weight, bias, groups: int, eps: float = 1e-5, scale=None, shift=None,
                   act: str = "silu", residual=None) -> torch.Tensor:
    """The fused op (see the module docstring for the formula)."""
    return group_norm_act_reference(x, weight, bias, groups, eps, scale, shift, act, residual)
