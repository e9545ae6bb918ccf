"""The attention-free adaptor phi that stands in for the model's middle L (a UNet's
low-resolution levels, a transformer's middle joint blocks).

    r_out(t) ~= phi(r_in(t), r_out(t+1), t_emb) = r_out(t+1) + Up(Blocks(Down([r_in, r_out(t+1)]) + P(t_emb)))

With text_embed_dim > 0 the conditioning vector is [SiLU(t_emb), mean-pooled text] (the paper's
optional pooled text input): the cond/uncond rows of a CFG batch then differ in phi's input by
more than what H_in's cross-attention left in r_in.

Down is a stride-2 3x3 conv, P a linear projection of the time embedding, Blocks are
ResNet blocks (GroupNorm -> SiLU -> conv, the time embedding added as a per-channel shift
inside the fused group_norm_act op), Up a stride-2 transposed conv whose weights start at
zero, so an untrained adaptor is the identity adaptor (reuse r_out(t+1) as it is).

On a transformer split (layout "tokens": r_in and r_out are [B, N, D] token streams, r_out
the middle blocks' residual) phi is token-wise, so it runs at every image size and token count:

    r_out(t) ~= r_out(t+1) + Out(Blocks(In([LN(r_in), LN(r_out(t+1))]), cond))

In a linear projection of the two, Blocks are pre-norm MLP blocks whose LayerNorm is shifted
and scaled by the conditioning vector (adaLN, as the transformer's own blocks are), Out a
linear layer that starts at zero (the identity adaptor again, untrained).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from clockwork_engine.models import checkpoint
from clockwork_engine.ops import group_norm_act

FORMAT_VERSION = 1
# Inside a model directory, beside its default clockwork_adaptor/: adaptors fitted for other
# operating points (step counts), one folder each (for_steps picks one for a request).
OPERATING_POINTS_FOLDER = "clockwork_adaptors"


@dataclass(frozen=True)
class AdaptorConfig:
    r_in_channels: int
    r_out_channels: int
    time_embed_dim: int
    hidden_channels: int
    groups: int = 32
    num_blocks: int = 2
    use_r_in: bool = True
    use_r_out: bool = True  # False: the "no previous features" ablation (the paper's failure case)
    text_embed_dim: int = 0  # > 0: also conditioned on the mean-pooled text embedding [B, text_embed_dim]
    layout: str = "conv"  # "conv": [B, C, h, w] feature maps (UNet); "tokens": [B, N, D] streams (transformer)

    def __post_init__(self):
        if self.layout not in ("conv", "tokens"):
            raise ValueError(f"layout must be 'conv' or 'tokens', got {self.layout!r}")
        if not (self.use_r_in or self.use_r_out):
            raise ValueError("the adaptor needs r_in, r_out(t+1) or both")
        if self.text_embed_dim < 0:
            raise ValueError(f"text_embed_dim must be >= 0, got {self.text_embed_dim}")
        if self.hidden_channels % self.groups:
            raise ValueError(f"hidden_channels {self.hidden_channels} must be divisible by groups {self.groups}")

    @classmethod
    def for_split(cls, split, hidden_channels: int | None = None, **kw) -> AdaptorConfig:
        hidden = hidden_channels or split.r_out_channels
        groups = kw.pop("groups", min(32, hidden) if split.layout == "conv" else 1)
        return cls(split.r_in_channels, split.r_out_channels, split.time_embed_dim, hidden, groups=groups,
                   layout=split.layout, **kw)


class _GroupNormParams(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, shift=None, residual=None):
        return group_norm_act(x, self.weight, self.bias, self.groups, shift=shift, act="silu", residual=residual)


class ResBlock(nn.Module):
    def __init__(self, channels: int, time_embed_dim: int, groups: int):
        super().__init__()
        self.norm1 = _GroupNormParams(channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.time_proj = nn.Linear(time_embed_dim, channels)
        self.norm2 = _GroupNormParams(channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h, emb_act):
        a = self.conv1(self.norm1(h))
        a = self.conv2(self.norm2(a, shift=self.time_proj(emb_act)))
        return h + a


class Adaptor(nn.Module):
    def __init__(self, config: AdaptorConfig):
        super().__init__()
        self.config = config
        c = config
        c_in = c.r_in_channels * c.use_r_in + c.r_out_channels * c.use_r_out
        self.down = nn.Conv2d(c_in, c.hidden_channels, 3, stride=2, padding=1)
        cond_dim = c.time_embed_dim + c.text_embed_dim
        self.cond_proj = nn.Linear(cond_dim, c.hidden_channels)
        self.blocks = nn.ModuleList(ResBlock(c.hidden_channels, cond_dim, c.groups) for _ in range(c.num_blocks))
        self.norm_out = _GroupNormParams(c.hidden_channels, c.groups)
        self.up = nn.ConvTranspose2d(c.hidden_channels, c.r_out_channels, 3, stride=2, padding=1)  # odd sizes too
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, r_in, r_out_prev, emb, text=None):
        """r_in [B, C_in, h, w], r_out_prev [B, C_out, h, w], emb [B, E], text [B, L, D] (the UNet's
        encoder_hidden_states; used when text_embed_dim > 0) -> r_out [B, C_out, h, w]."""
        c = self.config
        parts = ([r_in] if c.use_r_in else []) + ([r_out_prev] if c.use_r_out else [])
        cond = _condition(c, emb, text)  # [B, E (+ D)]
        h = self.down(torch.cat(parts, 1)) + self.cond_proj(cond)[:, :, None, None]
        for block in self.blocks:
            h = block(h, cond)
        delta = self.up(self.norm_out(h), output_size=r_in.shape[-2:])
        return r_out_prev + delta if c.use_r_out else delta


class _TokenBlock(nn.Module):
    """Pre-norm MLP over each token, its LayerNorm modulated by the conditioning (adaLN)."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(approximate="tanh"), nn.Linear(2 * width, width))

    def forward(self, h, cond):  # h [B, N, H], cond [B, E]
        shift, scale = self.modulation(cond)[:, None].chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class TokenAdaptor(nn.Module):
    """phi on a transformer split's token streams (layout "tokens")."""

    def __init__(self, config: AdaptorConfig):
        super().__init__()
        self.config = c = config
        c_in = c.r_in_channels * c.use_r_in + c.r_out_channels * c.use_r_out
        cond_dim = c.time_embed_dim + c.text_embed_dim
        self.norm_in = nn.LayerNorm(c.r_in_channels, elementwise_affine=False)
        self.norm_prev = nn.LayerNorm(c.r_out_channels, elementwise_affine=False)
        self.proj_in = nn.Linear(c_in, c.hidden_channels)
        self.blocks = nn.ModuleList(_TokenBlock(c.hidden_channels, cond_dim) for _ in range(c.num_blocks))
        self.norm_out = nn.LayerNorm(c.hidden_channels)
        self.proj_out = nn.Linear(c.hidden_channels, c.r_out_channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, r_in, r_out_prev, emb, text=None):
        """r_in [B, N, D_in], r_out_prev [B, N, D_out], emb [B, E], text [B, L, D_text] -> r_out [B, N, D_out]."""
        c = self.config
        parts = ([self.norm_in(r_in)] if c.use_r_in else []) + ([self.norm_prev(r_out_prev)] if c.use_r_out else [])
        cond = _condition(c, emb, text)
        h = self.proj_in(torch.cat(parts, -1))
        for block in self.blocks:
            h = block(h, cond)
        delta = self.proj_out(self.norm_out(h))
        return r_out_prev + delta if c.use_r_out else delta


def _condition(c: AdaptorConfig, emb, text):
    """[SiLU(t_emb)] or [SiLU(t_emb), mean-pooled text]: [B, E (+ D)]."""
    cond = nn.functional.silu(emb)
    if not c.text_embed_dim:
        return cond
    if text is None:
        raise ValueError("this adaptor is conditioned on text: pass the model's encoder_hidden_states")
    return torch.cat([cond, text.mean(1)], 1)


def build(config: AdaptorConfig) -> nn.Module:
    """The adaptor of a config's layout: Adaptor (UNet feature maps) or TokenAdaptor (transformer)."""
    return (Adaptor if config.layout == "conv" else TokenAdaptor)(config)


class IdentityAdaptor(nn.Module):
    """The training-free variant: reuse r_out(t+1) as it is."""

    def forward(self, r_in, r_out_prev, emb, text=None):
        return r_out_prev


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------- saving / loading
def model_fingerprint(unet, overrides: dict | None = None) -> str:
    """A cheap, stable identity of a UNet's weights: config, every tensor's name, shape and
    dtype, and a strided sample of its values. Private config keys (_name_or_path, ...)
    depend on how the model was loaded, not on what it is, and are left out. overrides: state
    dict entries to read instead (models/lora.base_weights: the base model under a fused LoRA)."""
    h = hashlib.sha256(json.dumps(checkpoint.public_config(unet.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted({**unet.state_dict(), **(overrides or {})}.items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 257)].float().cpu().numpy().tobytes()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(sample)
    return h.hexdigest()[:16]


class AdaptorLoadError(ValueError):
    """An adaptor checkpoint is missing, corrupt or made for another model/operating point."""


def save(folder: str, adaptor: nn.Module, *, cut: int, base_fingerprint: str, scheduler: str, steps: int,
         clock: dict, training: dict | None = None):
    checkpoint.save(folder, "adaptor", adaptor, {
        "format_version": FORMAT_VERSION, "adaptor": asdict(adaptor.config), "cut": cut,
        "base_fingerprint": base_fingerprint, "scheduler": scheduler, "steps": steps, "clock": clock,
        "parameters": num_parameters(adaptor), "training": training or {}})


def _validate(meta: dict):
    AdaptorConfig(**meta["adaptor"])
    if not isinstance(meta["cut"], int):
        raise TypeError("cut must be an int")


def read_meta(folder: str) -> dict:
    """The metadata of an adaptor folder (adaptor_config.json, checked), without its weights."""
    return checkpoint.read_meta(folder, "adaptor", "an adaptor folder", AdaptorLoadError, FORMAT_VERSION, _validate)


def load(folder: str) -> tuple[Adaptor, dict]:
    """(adaptor, metadata) from an adaptor folder; AdaptorLoadError names what is wrong."""
    meta = read_meta(folder)
    adaptor = checkpoint.load_weights(build(AdaptorConfig(**meta["adaptor"])), folder, "adaptor", AdaptorLoadError)
    return adaptor, meta


def for_steps(folder: str, steps: int, loras: tuple = ()) -> str:
    """The adaptor folder a model directory runs at `steps` sampler steps under the LoRA set
    `loras` ((name, scale), ...; () for none). `folder` is its default adaptor
    (clockwork_adaptor/); adaptors fitted for other operating points sit beside it in
    clockwork_adaptors/<name>/, each with its step count and the LoRA set it was fitted under
    (`clockwork distill --lora`) in its metadata. First one fitted for exactly this point (the
    default, else the first by name); else, as for no LoRA, the default when it was fitted for
    `steps` or when no other base-model adaptor was, else the first that was. Reads metadata
    only; an unreadable folder there is skipped."""
    import os

    others = os.path.join(os.path.dirname(os.path.abspath(folder)), OPERATING_POINTS_FOLDER)
    names = sorted(os.listdir(others)) if os.path.isdir(others) else []
    candidates = [folder] + [c for c in (os.path.join(others, n) for n in names) if os.path.isdir(c)]
    for point in dict.fromkeys([(steps, tuple(loras)), (steps, ())]):
        found = next((c for c in candidates if _fitted_point(c) == point), None)
        if found is not None:
            return found
    return folder


def _fitted_point(folder: str) -> tuple | None:
    """(steps, LoRA set) an adaptor was fitted for, from its metadata."""
    try:
        meta = read_meta(folder)
    except (AdaptorLoadError, OSError):
        return None
    lora = (meta.get("training") or {}).get("lora") or {}
    return meta.get("steps"), tuple(sorted(lora.items()))


def check_compatible(meta: dict, folder: str, split, base_fingerprint: str):
    """An adaptor runs only on the UNet it was trained for."""
    if meta.get("base_fingerprint") != base_fingerprint:
        raise AdaptorLoadError(f"adaptor {folder!r} was trained for model {meta.get('base_fingerprint')}, "
                               f"this UNet is {base_fingerprint}")
    c = meta["adaptor"]
    if c.get("layout", "conv") != split.layout:
        raise AdaptorLoadError(f"adaptor {folder!r} was fitted on a {c.get('layout', 'conv')} split; this model's "
                               f"split is {split.layout} ({type(split).__name__})")
    want = (split.r_in_channels, split.r_out_channels, split.time_embed_dim)
    got = (c["r_in_channels"], c["r_out_channels"], c["time_embed_dim"])
    if want != got:
        raise AdaptorLoadError(f"adaptor {folder!r} expects (r_in, r_out, t_emb) channels {got}; this UNet has {want}")
    text_dim = c.get("text_embed_dim", 0)
    if text_dim and text_dim != split.text_embed_dim:
        raise AdaptorLoadError(f"adaptor {folder!r} expects {text_dim}-d text embeddings; "
                               f"this UNet's are {split.text_embed_dim}-d")
