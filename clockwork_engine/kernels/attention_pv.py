"""P.V for attention-map reuse in Triton: out[g] = probs[g] @ value[g].

probs [G, Nq, Nk] (cached softmax maps, G = batch*heads), value [G, Nk, d] -> [G, Nq, d]
in value's dtype. One program per (g, Nq tile, d tile); it walks Nk in BLOCK_K steps with
tl.dot into an fp32 accumulator. Operands are cast to fp32 before the dot, so probs and
value may have different dtypes (fp32 / fp16 / bf16). Elements are addressed through
strides, so transposed or sliced views need no copy. Edges are masked, so Nq, Nk and d
need not be multiples of the blocks (e.g. Nk = 77 text tokens, d = 40).

Dot precision: fp16 and bf16 values are exact in TF32 (10 mantissa bits), so when both
inputs are 16-bit the fp32 dot uses TF32 tensor cores at no accuracy cost; when an input
is fp32 it uses IEEE fp32 (as torch.bmm does) unless torch allows TF32 matmuls.

Importing this module imports triton; clockwork_engine imports it lazily (CUDA path only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _attention_pv_kernel(
    p_ptr, v_ptr, o_ptr,
    Nq, Nk, d,
    sp_g, sp_q, sp_k,
    sv_g, sv_k, sv_d,
    so_g, so_q, so_d,
    PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)  # int64: g * stride can pass 2**31 at SD sizes
    rq = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q] query rows
    rd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D] value columns
    rk = tl.arange(0, BLOCK_K)
    p_rows = p_ptr + g * sp_g + rq[:, None] * sp_q  # [BLOCK_Q, 1]
    v_cols = v_ptr + g * sv_g + rd[None, :] * sv_d  # [1, BLOCK_D]
    q_in = rq[:, None] < Nq
    d_in = rd[None, :] < d

    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, Nk, BLOCK_K):
        k = k0 + rk
        # Masked lanes load 0, so padded keys add nothing to the sum.
        p = tl.load(p_rows + k[None, :] * sp_k, mask=q_in & (k[None, :] < Nk), other=0.0)  # [BLOCK_Q, BLOCK_K]
        v = tl.load(v_cols + k[:, None] * sv_k, mask=(k[:, None] < Nk) & d_in, other=0.0)  # [BLOCK_K, BLOCK_D]
        acc = tl.dot(p.to(tl.float32), v.to(tl.float32), acc, input_precision=PRECISION)

    out = o_ptr + g * so_g + rq[:, None] * so_q + rd[None, :] * so_d
    tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=q_in & d_in)


def _block(n: int, cap: int) -> int:
    """Power of two covering n, within [16, cap] (tl.dot needs every block dim >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def attention_pv_triton(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """probs [G, Nq, Nk] @ value [G, Nk, d] -> [G, Nq, d] in value's dtype (fp32 accumulation)."""
    if probs.dim() != 3 or value.dim() != 3 or probs.shape[0] != value.shape[0] or probs.shape[2] != value.shape[1]:
        raise ValueError(f"attention_pv needs probs [G, Nq, Nk] and value [G, Nk, d], got {tuple(probs.shape)} "
                         f"and {tuple(value.shape)}")
    if probs.dtype not in DTYPES or value.dtype not in DTYPES:
        raise TypeError(f"attention_pv_triton supports {DTYPES}, got {probs.dtype} and {value.dtype}")
    if probs.device != value.device:
        raise ValueError(f"probs and value on different devices: {probs.device} and {value.device}")
    G, Nq, Nk = probs.shape
    d = value.shape[2]
    out = torch.empty((G, Nq, d), device=value.device, dtype=value.dtype)
    if out.numel() == 0:
        return out
    if Nk == 0:  # an empty sum; the kernel would store zeros too, but skip the launch
        return out.zero_()
    half_only = probs.element_size() == 2 and value.element_size() == 2
    precision = "tf32" if half_only or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # One d tile covers SD head dims up to 128 so each probs tile is read once; 64 query rows
    # x 64 keys keeps the fp32 operand tiles small enough to pipeline.
    block_q, block_k, block_d = _block(Nq, 64), _block(Nk, 64), _block(d, 128)
    grid = (G, triton.cdiv(Nq, block_q), triton.cdiv(d, block_d))
    _attention_pv_kernel[grid](
        probs, value, out,
        Nq, Nk, d,
        *probs.stride(), *value.stride(), *out.stride(),
        PRECISION=precision,
        BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=block_d,
        num_warps=4 if block_q * block_d <= 64 * 64 else 8,
    )
    return out
