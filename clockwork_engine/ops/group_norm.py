"""GroupNorm -> per-(sample, channel) scale/shift -> activation (-> + residual), fused.

    y = act( GN(x; groups, eps) * weight[c] + bias[c] ) * ... written in full:
    n  = (x - mean_g) / sqrt(var_g + eps)            statistics per (sample, group), fp32
    a  = n * weight[c] + bias[c]                     the GroupNorm affine
    a  = a * (1 + scale[b, c]) + shift[b, c]         optional time-embedding conditioning
    y  = act(a) (+ residual)                         act in {"identity", "silu"}

x: [B, C, H, W] (NCHW or channels-last); scale/shift: [B, C]; residual: like x.

group_norm_act dispatches to a fused kernel that must match group_norm_act_reference:
  CUDA tensors  torch.ops.clockwork (extension built with CUDA), else the Triton kernel
  CPU tensors   torch.ops.clockwork (the C++ extension clockwork_engine._C)
  otherwise     the reference, which is also the path whenever autograd must record the op
                (the fused kernels have no backward), for dtypes other than fp32/fp16/bf16,
                and when CLOCKWORK_DISABLE_EXT=1 (read per call: "fused on vs off" comparisons).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

ACTIVATIONS = ("identity", "silu")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def _load_extension():
    try:
        from clockwork_engine import _C  # its import registers torch.ops.clockwork
    except ImportError:
        return None

    @torch.library.register_fake("clockwork::group_norm_act")
    def _(x, weight, bias, groups, eps, scale, shift, act, residual):
        # Mirrors the kernels: NCHW- or channels-last-contiguous x keeps its strides, others come back NCHW.
        if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
            return torch.empty_like(x)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    return _C


_NOT_LOADED = object()
_extension_module = _NOT_LOADED  # a plain global rather than functools.cache: dynamo guards on it, never re-traces it


def _extension():
    """clockwork_engine._C, imported on first use, or None if it is not built."""
    global _extension_module
    if _extension_module is _NOT_LOADED:
        _extension_module = _load_extension()
    return _extension_module


def extension_available() -> bool:
    """Whether the C++ extension (torch.ops.clockwork) is built and loads."""
    return _extension() is not None


def _fusable(x, weight, bias, scale, shift, residual) -> bool:
    if os.environ.get("CLOCKWORK_DISABLE_EXT") == "1" or x.dtype not in FUSED_DTYPES:
        return False
    if residual is not None and residual.dtype != x.dtype:
        return False
    tensors = [t for t in (x, weight, bias, scale, shift, residual) if t is not None]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def group_norm_act(x, weight, bias, groups: int, eps: float = 1e-5, scale=None, shift=None,
                   act: str = "silu", residual=None) -> torch.Tensor:
    """The fused op (see the module docstring for the formula and the dispatch)."""
    args = (x, weight, bias, groups, eps, scale, shift, act, residual)
    if not _fusable(x, weight, bias, scale, shift, residual):
        return group_norm_act_reference(*args)
    ext = _extension()
    if x.device.type == "cuda":
        if ext is not None and ext.built_with_cuda:
            return torch.ops.clockwork.group_norm_act(*args)
        try:
            from clockwork_engine.kernels.group_norm import group_norm_act_triton
        except ImportError:  # no triton in this environment
            return group_norm_act_reference(*args)
        return group_norm_act_triton(*args)
    if x.device.type == "cpu" and ext is not None:
        return torch.ops.clockwork.group_norm_act(*args)
    return group_norm_act_reference(*args)
