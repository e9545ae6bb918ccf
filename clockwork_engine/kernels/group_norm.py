"""Fused GroupNorm -> affine -> (1 + scale) / shift -> activation -> (+ residual), in Triton.

One program per (sample, group). Pass 1 reads the group once and keeps per-lane Welford
statistics (fp32), merged across lanes at the end; pass 2 re-reads the group
and writes act(a) (+ residual). Elements are addressed through strides, so NCHW and
channels-last (and any other [B, C, H, W] strides) share the kernel. The activation is a
@triton.jit function passed as a constexpr, so each act compiles to its own specialisation.

Importing this module imports triton; clockwork_engine imports it lazily (CUDA path only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def identity(a):
    return a


@triton.jit
def silu(a):
    return a / (1.0 + tl.exp(-a))


ACTIVATIONS = {"identity": identity, "silu": silu}


@triton.jit
def _group_norm_act_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, scale_ptr, shift_ptr, res_ptr,
    C, W, HW, group_channels, group_size, groups, eps,
    sx_b, sx_c, sx_h, sx_w,
    sy_b, sy_c, sy_h, sy_w,
    sr_b, sr_c, sr_h, sr_w,
    ACT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)  # = b * groups + g
    b = pid // groups
    c0 = (pid % groups) * group_channels
    lanes = tl.arange(0, BLOCK)

    # Pass 1: per-lane Welford over the group's group_size = group_channels * HW elements.
    mean = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, group_size, BLOCK):
        e = start + lanes
        mask = e < group_size
        c = c0 + e // HW
        h = e % HW // W
        w = e % W
        v = tl.load(x_ptr + b * sx_b + c * sx_c + h * sx_h + w * sx_w, mask=mask, other=0.0).to(tl.float32)
        count_new = count + mask.to(tl.float32)
        delta = v - mean
        mean = tl.where(mask, mean + delta / tl.maximum(count_new, 1.0), mean)
        m2 = tl.where(mask, m2 + delta * (v - mean), m2)
        count = count_new
    # Merge the lanes in one step (Chan et al.): M2 = sum m2_i + sum n_i (mean_i - mean)^2.
    g_count = tl.sum(count, axis=0)
    g_mean = tl.sum(count * mean, axis=0) / g_count
    g_m2 = tl.sum(m2, axis=0) + tl.sum(count * (mean - g_mean) * (mean - g_mean), axis=0)
    rstd = 1.0 / tl.sqrt(g_m2 / g_count + eps)

    # Pass 2: a = n * weight[c] + bias[c], then the conditioning, activation and residual.
    for start in range(0, group_size, BLOCK):
        e = start + lanes
        mask = e < group_size
        c = c0 + e // HW
        h = e % HW // W
        w = e % W
        v = tl.load(x_ptr + b * sx_b + c * sx_c + h * sx_h + w * sx_w, mask=mask, other=0.0).to(tl.float32)
        w_c = tl.load(weight_ptr + c, mask=mask, other=0.0)
        a = (v - g_mean) * rstd * w_c + tl.load(bias_ptr + c, mask=mask, other=0.0)
        if HAS_SCALE:
            a = a * (1.0 + tl.load(scale_ptr + b * C + c, mask=mask, other=0.0))
        if HAS_SHIFT:
            a = a + tl.load(shift_ptr + b * C + c, mask=mask, other=0.0)
        a = ACT(a)
        if HAS_RESIDUAL:
            a = a + tl.load(res_ptr + b * sr_b + c * sr_c + h * sr_h + w * sr_w, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * sy_b + c * sy_c + h * sy_h + w * sy_w, a.to(y_ptr.dtype.element_ty), mask=mask)


def launch_config(group_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps) from the group size alone: large enough to keep a program's lanes
    busy, capped so registers stay bounded (SD's 10 x 64 x 64 groups loop over 4096-wide chunks)."""
    block = min(triton.next_power_of_2(group_size), 4096)
    return block, max(1, min(8, block // 256))


def group_norm_act_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float = 1e-5,
                          scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, act: str = "silu",
                          residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, C, H, W] (any strides) -> y like x (same memory format, x's dtype)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    if x.dim() != 4 or groups <= 0 or x.shape[1] % groups:
        raise ValueError(f"x must be [B, C, H, W] with C divisible by groups={groups}, got {tuple(x.shape)}")
    B, C, H, W = x.shape
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and tuple(t.shape) != (B, C):
            raise ValueError(f"{name} must be [B, C] = {(B, C)}, got {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    # The per-channel vectors are tiny: fp32 contiguous copies keep the kernel's loads simple.
    weight, bias = weight.float().contiguous(), bias.float().contiguous()
    has_scale, has_shift, has_residual = scale is not None, shift is not None, residual is not None
    # Absent operands get a valid dummy pointer; their constexpr flag compiles the load away.
    scale = scale.float().contiguous() if has_scale else weight
    shift = shift.float().contiguous() if has_shift else weight
    res = residual if has_residual else x
    group_size = C // groups * H * W
    block, num_warps = launch_config(group_size)
    _group_norm_act_kernel[(B * groups,)](
        x, y, weight, bias, scale, shift, res,
        C, W, H * W, C // groups, group_size, groups, eps,
        *x.stride(), *y.stride(), *res.stride(),
        ACT=ACTIVATIONS[act], HAS_SCALE=has_scale, HAS_SHIFT=has_shift, HAS_RESIDUAL=has_residual,
        BLOCK=block, num_warps=num_warps,
    )
    return y
