"""Attention-map reuse (Hunter et al. 2024): cache softmax(QK^T/sqrt(d)) at one step and
reuse it at later steps, computing only V, P.V and the output projection there.

Config / State / apply, as diffusers' cache hooks:
  ReuseConfig     which layers ("self", "cross", "all" or module names) and a byte cap
  ReuseContext    the state the step program sets: the action of this step
                  ("off" | "compute" | "reuse") and the map buffers of the request
  apply_reuse     installs a ReuseAttnProcessor on the chosen Attention modules of a UNet
                  (once per UNet; engines sharing the UNet share its context)
With action "off" a layer runs its original processor, so installing changes nothing.
The action is a Python value fixed when a step program is built (one program per
(step kind, action)), never a branch on tensor data. At "compute", P is formed
explicitly (QK^T, softmax) and copied into the map buffer; maps that would exceed the byte
cap are not cached and those layers compute normally at reuse steps (counted in
`over_cap`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from clockwork_engine.ops.attention_pv import attention_pv

ACTIONS = ("off", "compute", "reuse")


@dataclass(frozen=True)
class ReuseConfig:
    layers: str = "all"  # "self", "cross", "all", or comma-separated Attention module names
    max_bytes: int = 512 * 2**20  # cap on cached maps per request


class ReuseContext:
    def __init__(self, config: ReuseConfig):
        self.config = config
        self.action = "off"
        self.maps: dict[str, torch.Tensor] = {}  # layer -> [B'*heads, N_q, N_k], the request's buffers
        self.over_cap: set[str] = set()
        self.lock = threading.RLock()  # held by the engine around a request on this UNet

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps.values())


class ReuseAttnProcessor:
    def __init__(self, name: str, original, ctx: ReuseContext):
        self.name, self.original, self.ctx = name, original, ctx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        ctx = self.ctx
        reusing = ctx.action == "reuse" and self.name in ctx.maps
        if not (ctx.action == "compute" or reusing):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        value = attn.head_to_batch_dim(attn.to_v(context))  # [B*heads, N_k, d]
        if reusing:
            probs = ctx.maps[self.name]
        else:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(context))
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], query.shape[0] // attn.heads)
            probs = attn.get_attention_scores(query, key, attention_mask)  # [B*heads, N_q, N_k]
            self._store(probs)
        out = attn.batch_to_head_dim(attention_pv(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _store(self, probs):
        ctx = self.ctx
        buffer = ctx.maps.get(self.name)
        if buffer is not None and buffer.shape == probs.shape:
            buffer.copy_(probs)  # the static buffer a captured reuse step reads
        elif ctx.nbytes() + probs.numel() * probs.element_size() <= ctx.config.max_bytes:
            ctx.maps[self.name] = probs.clone()
        else:
            ctx.over_cap.add(self.name)


def _selected(name: str, module, layers: str) -> bool:
    if layers == "all":
        return True
    if layers in ("self", "cross"):
        return (layers == "cross") == bool(module.is_cross_attention)
    return name in {n.strip() for n in layers.split(",")}


def apply_reuse(unet, config: ReuseConfig) -> ReuseContext:
    """Install reuse processors on the chosen layers (once per UNet) and return the context."""
    from diffusers.models.attention_processor import Attention

    ctx = getattr(unet, "_clockwork_reuse", None)
    if ctx is not None:
        if ctx.config != config:
            raise ValueError("this UNet already has attention reuse with another ReuseConfig")
        return ctx
    if config.layers not in ("all", "self", "cross"):
        names = {n for n, m in unet.named_modules() if isinstance(m, Attention)}
        unknown = {n.strip() for n in config.layers.split(",")} - names
        if unknown:
            raise ValueError(f"no Attention modules named {sorted(unknown)}")
    ctx = ReuseContext(config)
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and _selected(name, module, config.layers):
            module.set_processor(ReuseAttnProcessor(name, module.processor, ctx))
    unet._clockwork_reuse = ctx
    return ctx


def reuse_denoiser(denoise, ctx: ReuseContext, action: str, maps: dict):
    """Wrap a denoiser so the step it runs in computes or reuses attention maps."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")

    def wrapped(*args):
        ctx.action, ctx.maps = action, maps
        try:
            return denoise(*args)
        finally:
            ctx.action = "off"

    return wrapped


def map_bytes(unet_config: dict, batch: int, height: int, width: int, text_tokens: int, config: ReuseConfig,
              dtype_bytes: int = 2, cfg: bool = True) -> dict:
    """Bytes of maps cached for one request (latent height/width), counted on a meta-device
    UNet built from the config: no weights, no compute."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    sizes = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and _selected(name, module, config.layers):
            def hook(mod, args, kwargs, n=name):
                hs = args[0] if args else kwargs["hidden_states"]
                n_q = hs.shape[2] * hs.shape[3] if hs.dim() == 4 else hs.shape[1]
                n_k = text_tokens if mod.is_cross_attention else n_q
                sizes[n] = hs.shape[0] * mod.heads * n_q * n_k * dtype_bytes

            module.register_forward_pre_hook(hook, with_kwargs=True)
    b = batch * (2 if cfg else 1)
    with torch.device("meta"), torch.no_grad():
        unet(torch.empty(b, unet.config.in_channels, height, width), torch.tensor(1),
             torch.empty(b, text_tokens, unet.config.cross_attention_dim))
    return {"per_layer": sizes, "total": sum(sizes.values())}


def reuse_actions(num_steps: int, reuse_steps) -> list[str]:
    """Per step: "reuse" on the reuse steps, "compute" on the step before each run of them
    (its maps are the ones reused), "off" elsewhere (the original, fused attention)."""
    reuse = set(reuse_steps or ())
    if 0 in reuse:
        raise ValueError("step 0 cannot reuse attention maps: none are cached before it")
    if any(i >= num_steps for i in reuse):
        raise ValueError(f"attention reuse steps {sorted(i for i in reuse if i >= num_steps)} are beyond "
                         f"the {num_steps} steps of this request")
    actions = ["reuse" if i in reuse else "off" for i in range(num_steps)]
    for i in range(num_steps - 1):
        if actions[i] == "off" and actions[i + 1] == "reuse":
            actions[i] = "compute"
    return actions


def with_reuse(kinds: list[str], reuse_steps) -> list[str]:
    """Step kinds with "+compute" / "+reuse" where attention maps are cached / reused."""
    actions = reuse_actions(len(kinds), reuse_steps)
    for i, action in enumerate(actions):
        # An adaptor step runs no layer of L, so the maps of L's attention layers a reuse run
        # needs come from the last full step before it: that step computes (stores) them too.
        if action == "compute" and kinds[i] == "clockwork.adaptor":
            full = [j for j in range(i) if kinds[j] == "clockwork.full"]
            if full and actions[full[-1]] == "off":
                actions[full[-1]] = "compute"
    return [k if a == "off" else f"{k}+{a}" for k, a in zip(kinds, actions, strict=True)]
