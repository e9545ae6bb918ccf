"""P.V for attention-map reuse: out[b] = probs[b] @ value[b].

probs [B*heads, N_q, N_k] (a cached softmax(QK^T/sqrt(d))), value [B*heads, N_k, d] ->
[B*heads, N_q, d] in value's dtype (fp32 accumulation). Fused attention kernels never
materialise P, so the reuse step needs its own P.V; this is its reference (torch.bmm).
CUDA tensors go to the Triton kernel (kernels/attention_pv.py), everything else to the reference.
"""

from __future__ import annotations

import torch


def attention_pv_reference(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if probs.dim() != 3 or value.dim() != 3 or probs.shape[0] != value.shape[0] or probs.shape[2] != value.shape[1]:
        raise ValueError(f"attention_pv needs probs [G, Nq, Nk] and value [G, Nk, d], got {tuple(probs.shape)} "
                         f"and {tuple(value.shape)}")
    if probs.dtype == value.dtype:
        return torch.bmm(probs, value)
    return torch.bmm(probs.float(), value.float()).to(value.dtype)


def attention_pv(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The public op (see the module docstring): the Triton kernel on CUDA, torch.bmm elsewhere."""
    if probs.is_cuda and value.is_cuda:
        # Imported here so the engine never imports triton unless it runs on a GPU.
        from clockwork_engine.kernels.attention_pv import attention_pv_triton

        return attention_pv_triton(probs, value)
    return attention_pv_reference(probs, value)
