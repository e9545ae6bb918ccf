"""The fused GroupNorm + SiLU (ops.group_norm_act) inside diffusers' ResnetBlock2D, across a
UNet or a VAE: one kernel for each of a resnet's two norms and their activations, where ATen
runs GroupNorm's statistics, its normalization and the SiLU as separate kernels.

    install(model)        each supported ResnetBlock2D of the model gets fused_forward
    with active(): ...    the engine's uncompiled step programs and eager decodes run inside it

fused_forward runs the fused kernels only while active() and never under torch.compile (there
inductor fuses the original ops itself); elsewhere it is diffusers' own forward, so stock
diffusers on the same UNet computes exactly as before. Supported: SiLU resnets without a
resampler inside (SD 1.x/2.x, SDXL, their VAEs), time embedding "default" (added before
norm2, as diffusers does) or "scale_shift" (the kernel's scale and shift after norm2).
"""

from __future__ import annotations

import threading
import types
from contextlib import contextmanager

import torch

from clockwork_engine.ops.group_norm import group_norm_act

_depth = 0  # how many callers are inside active(); a plain global: dynamo never traces active()
_lock = threading.Lock()


@contextmanager
def active():
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1


def activating(fn):
    """fn run inside active() (a denoiser of an uncompiled step program)."""

    def run(*args, **kwargs):
        with active():
            return fn(*args, **kwargs)

    return run


def _norm_act(norm: torch.nn.GroupNorm, x, scale=None, shift=None):
    return group_norm_act(x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale=scale, shift=shift, act="silu")


def fused_forward(self, input_tensor, temb, *args, **kwargs):
    from diffusers.models.resnet import ResnetBlock2D

    if not _depth or torch.compiler.is_compiling() or self.training or input_tensor.dim() != 4:
        return ResnetBlock2D.forward(self, input_tensor, temb, *args, **kwargs)
    hidden = self.conv1(_norm_act(self.norm1, input_tensor))
    if self.time_emb_proj is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        temb = self.time_emb_proj(temb)[:, :, None, None]
    if self.time_embedding_norm == "scale_shift":
        if temb is None:
            raise ValueError("`temb` should not be None when `time_embedding_norm` is scale_shift")
        scale, shift = temb[:, :, 0, 0].chunk(2, dim=1)
        hidden = _norm_act(self.norm2, hidden, scale=scale, shift=shift)
    else:
        if self.time_embedding_norm == "default" and temb is not None:
            hidden = hidden + temb
        hidden = _norm_act(self.norm2, hidden)
    hidden = self.conv2(self.dropout(hidden))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    return (input_tensor + hidden) / self.output_scale_factor


def supported(block) -> bool:
    from diffusers.models.resnet import ResnetBlock2D

    return (type(block) is ResnetBlock2D and isinstance(block.nonlinearity, torch.nn.SiLU)
            and all(isinstance(n, torch.nn.GroupNorm) and n.affine for n in (block.norm1, block.norm2))
            and block.upsample is None and block.downsample is None
            and block.time_embedding_norm in ("default", "scale_shift"))


def install(model: torch.nn.Module) -> int:
    """fused_forward on every supported ResnetBlock2D of model (again: nothing changes); how many."""
    count = 0
    for block in model.modules():
        if supported(block):
            if not isinstance(block.__dict__.get("forward"), types.MethodType):
                block.forward = types.MethodType(fused_forward, block)
            count += 1
    return count
