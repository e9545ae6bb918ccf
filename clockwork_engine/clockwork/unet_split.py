"""H_in / L / H_out over a diffusers UNet2DConditionModel (Clockwork Diffusion's split).

    eps = H_out(L(r_in), skips)      with   r_in, skips = H_in(x)

At cut level k (default 1, the paper's choice for SD v1.5):
  H_in  = time embedding, conv_in, down_blocks[:k]; r_in is the output of down_blocks[k-1]
          (after its downsampler), e.g. 320 x 32 x 32 for SD v1.5 at 512 x 512.
  L     = down_blocks[k:], mid_block, up_blocks[:n-k], the last of these without its
          upsampler; r_out is its output (640 x 32 x 32 for SD v1.5).
  H_out = that upsampler, up_blocks[n-k:] (which consume H_in's skip connections),
          conv_norm_out, conv_act, conv_out.
Taking r_out before the upsampler reproduces the paper's 228.4 GFLOPs of always-run work.

At cut 0 (inside the full-resolution level, DeepCache's shallowest branch):
  H_in  = time embedding, conv_in; r_in is conv_in's output (320 x 64 x 64 for SD v1.5).
  L     = every down block, mid_block, every up block but the last layer (resnet, and its
          attention where the block has one) of the last; r_out is that layer's input
          (320 x 64 x 64 for SD v1.5).
  H_out = that last layer, on [r_out, r_in], then conv_norm_out, conv_act, conv_out.
The identity adaptor at cut 0 is DeepCache at cache_branch_id 0: a cached step runs only
conv_in and the UNet's last layer.
The three parts call the UNet's own modules, so split(x) equals unet(x) (tests/test_unet_split.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class HInOutput:
    r_in: torch.Tensor  # [B, C_in, h / 2^k, w / 2^k]
    skips: tuple  # skip tensors consumed by H_out's up blocks
    emb: torch.Tensor  # [B, E] time embedding (after the time MLP)


def _view(block, layers: slice):
    """A view of a diffusers block that runs only `layers` of its resnets (and attentions) and
    no resampler; it shares all modules (and parameters) with the block."""
    view = copy.copy(block)
    view.__dict__.pop("forward", None)  # a forward patched onto the block (DeepCache's) is bound to it
    view._modules = dict(block._modules)
    view.resnets = torch.nn.ModuleList(list(block.resnets)[layers])
    if getattr(block, "attentions", None) is not None:
        view.attentions = torch.nn.ModuleList(list(block.attentions)[layers])
    view.upsamplers = None
    return view


def _call_block(block, hidden, emb, text, **kw):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden, temb=emb, encoder_hidden_states=text, **kw)
    return block(hidden_states=hidden, temb=emb, **kw)


class UNetSplit(torch.nn.Module):
    def __init__(self, unet, cut: int = 1):
        super().__init__()
        cfg = unet.config
        n = len(unet.down_blocks)
        if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut < n:
            raise ValueError(f"cut must be an int in [0, {n - 1}] for a UNet with {n} levels, got {cut!r}")
        for field in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
            value = getattr(cfg, field, None)
            if value is not None and not (field == "addition_embed_type" and value == "text_time"):  # SDXL's is
                raise ValueError(f"UNets with {field}={value!r} are not supported by the split")
        if any(b.downsamplers is None for b in unet.down_blocks[:cut]):
            raise ValueError("every down block before the cut needs a downsampler")
        self.unet = unet
        self.cut = cut
        # The up blocks L and H_out run: plain lists, so the views (copies sharing the UNet's
        # submodules) are not registered as modules of their own.
        if cut == 0:
            last = unet.up_blocks[-1]
            if len(last.resnets) < 2:
                raise ValueError("cut 0 needs a last up block of two or more layers")
            # L ends inside the last up block; H_out runs its last layer.
            self._low_up = [*unet.up_blocks[:-1], _view(last, slice(None, -1))]
            self._out_up = [_view(last, slice(-1, None))]
            self._upsampler = None
            self.r_in_channels = unet.conv_in.out_channels
            self.r_out_channels = last.resnets[-2].out_channels
        else:
            last_low = unet.up_blocks[n - cut - 1]
            # L ends at the last low-resolution up block, without its upsampler: H_out runs that.
            self._low_up = [*unet.up_blocks[: n - cut - 1], _view(last_low, slice(None))]
            self._out_up = list(unet.up_blocks[n - cut :])
            self._upsampler = last_low.upsamplers
            self.r_in_channels = cfg.block_out_channels[cut - 1]
            self.r_out_channels = last_low.resnets[-1].out_channels
        self.time_embed_dim = unet.time_embedding.linear_2.out_features
        dim = cfg.cross_attention_dim  # an int, or one per block (all read the same encoder_hidden_states)
        self.text_embed_dim = dim if isinstance(dim, int) else dim[0]  # an adaptor's pooled text input
        self.scale = 2**cut  # r_in / r_out are 2^cut times smaller than the latents (cut 0: as large)
        self.layout = "conv"  # r_in / r_out are [B, C, h, w] feature maps (adaptors.py)

    def feature_shape(self, rows: int, text_tokens: int, height: int, width: int) -> tuple[int, int, int, int]:
        """r_out's shape for `rows` model rows over [rows, C, height, width] latents."""
        return (rows, self.r_out_channels, height // self.scale, width // self.scale)

    def h_in(self, x, t, text, timestep_cond=None, added=None) -> HInOutput:
        """added: SDXL's added conditioning (text_embeds, time_ids), folded into the time
        embedding as the UNet's forward does."""
        u = self.unet
        if u.config.center_input_sample:
            x = 2 * x - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=x, timestep=t), timestep_cond)
        if u.config.addition_embed_type == "text_time":
            emb = emb + u.get_aug_embed(emb=emb, encoder_hidden_states=text, added_cond_kwargs=added)
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        h = u.conv_in(x)
        skips = (h,)
        for block in u.down_blocks[: self.cut]:
            h, res = _call_block(block, h, emb, text)
            skips += res
        if self.cut == 0:  # r_in is conv_in's output, which L and H_out's last layer both read
            return HInOutput(r_in=h, skips=skips, emb=emb)
        # The last skip is r_in itself: L's first up block consumes it, not H_out.
        return HInOutput(r_in=h, skips=skips[:-1], emb=emb)

    def low(self, r_in, emb, text, skips=None, control=None) -> torch.Tensor:
        """skips: H_in's (a transformer split's L reads them; L here needs none of them).
        control: ControlNet residuals of L's skips (r_in's first) and of the mid block, added as
        the UNet adds them (after its whole down pass)."""
        u = self.unet
        h, skips = r_in, (r_in,)
        for block in u.down_blocks[self.cut :]:
            h, res = _call_block(block, h, emb, text)
            skips += res
        if control is not None:
            skips = tuple(s + r for s, r in zip(skips, control[0], strict=True))
        if u.mid_block is not None:
            if getattr(u.mid_block, "has_cross_attention", False):
                h = u.mid_block(h, emb, encoder_hidden_states=text)
            else:
                h = u.mid_block(h, emb)
        if control is not None:
            h = h + control[1]
        for block in self._low_up:
            k = len(block.resnets)
            h = _call_block(block, h, emb, text, res_hidden_states_tuple=skips[-k:])
            skips = skips[:-k]
        return h

    def h_out(self, r_out, skips, emb, text) -> torch.Tensor:
        u = self.unet
        h = r_out
        if self._upsampler is not None:
            for up in self._upsampler:
                h = up(h)
        for block in self._out_up:
            k = len(block.resnets)
            h = _call_block(block, h, emb, text, res_hidden_states_tuple=skips[-k:])
            skips = skips[:-k]
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)

    def forward(self, x, t, text, timestep_cond=None, added=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The full model: (eps, r_out)."""
        hin = self.h_in(x, t, text, timestep_cond, added)
        r_out = self.low(hin.r_in, hin.emb, text)
        return self.h_out(r_out, hin.skips, hin.emb, text), r_out
