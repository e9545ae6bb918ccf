"""A tiny latent decoder: a drop-in for the VAE decoder at a fraction of its cost.

Same interface as vae.decode: unscaled latents [B, C, h, w] -> image [B, 3, h*f, w*f] in
[-1, 1]. Plain 3x3 convolutions and ReLU, nearest upsampling by 2 per level, no norms and no
attention (the demo VAE decoder has both; the demo's tiny one costs 0.23 of its 0.51 GFLOPs
per image). It is distilled from one VAE's decoder (`clockwork distill-decoder`) and runs
only on that VAE: its folder records the VAE's fingerprint, checked at load.

Folder: tiny_decoder.safetensors + tiny_decoder_config.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from clockwork_engine.clockwork.adaptors import model_fingerprint, num_parameters
from clockwork_engine.models import checkpoint

FORMAT_VERSION = 1
FOLDER = "tiny_decoder"  # inside a model directory: its tiny decoder, if it ships one


@dataclass(frozen=True)
class TinyDecoderConfig:
    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 32, 16)  # per level, low to high resolution; len - 1 upsamplings
    blocks: tuple[int, ...] = (2, 1, 1)  # residual blocks per level

    def __post_init__(self):
        for name in ("channels", "blocks"):
            if isinstance(getattr(self, name), list):  # from JSON
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.channels) != len(self.blocks) or not self.channels:
            raise ValueError(f"channels {self.channels} and blocks {self.blocks} need one entry per level")
        if any(c < 1 for c in self.channels) or any(b < 0 for b in self.blocks) or self.latent_channels < 1:
            raise ValueError(f"bad tiny decoder config {self}")

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.channels) - 1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class Block(nn.Module):
    """relu(x + conv(relu(conv(x))))"""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(channels, channels), _conv(channels, channels)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class TinyDecoder(nn.Module):
    def __init__(self, config: TinyDecoderConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_conv(config.latent_channels, config.channels[0]), nn.ReLU()]
        prev = config.channels[0]
        for level, (ch, n) in enumerate(zip(config.channels, config.blocks, strict=True)):
            if level:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(prev, ch), nn.ReLU()]
            layers += [Block(ch) for _ in range(n)]
            prev = ch
        layers.append(_conv(prev, 3))
        self.layers = nn.Sequential(*layers)

    def forward(self, z):  # [B, C, h, w] unscaled latents -> [B, 3, h*f, w*f] in about [-1, 1]
        return self.layers(z)


class TinyDecoderLoadError(ValueError):
    """A tiny decoder folder is missing, corrupt or made for another VAE."""


def save(folder: str, decoder: TinyDecoder, *, vae_fingerprint: str, training: dict | None = None):
    checkpoint.save(folder, "tiny_decoder", decoder, {
        "format_version": FORMAT_VERSION, "decoder": asdict(decoder.config), "vae_fingerprint": vae_fingerprint,
        "parameters": num_parameters(decoder), "training": training or {}})


def for_choice(choice: str, decoder_dir: str | None, vae, device):
    """EngineConfig.decoder's decoder: None for "vae" (the model's own), the model directory's
    tiny decoder for "tiny", else the tiny decoder folder named; on the device, in the VAE's dtype."""
    if choice == "vae":
        return None
    source = decoder_dir if choice == "tiny" else choice
    if source is None:
        raise ValueError(f"decoder 'tiny' needs a tiny decoder: a model directory with {FOLDER}/ "
                         "(clockwork distill-decoder makes one), or its folder as config.decoder")
    decoder, _ = load(source, vae)
    return decoder.to(device, vae.dtype)


def load(folder: str, vae=None) -> tuple[TinyDecoder, dict]:
    """(decoder, metadata); with vae, also checks the decoder was distilled from that VAE.
    TinyDecoderLoadError names what is wrong."""
    meta = checkpoint.read_meta(folder, "tiny_decoder", "a tiny decoder folder", TinyDecoderLoadError, FORMAT_VERSION,
                                lambda m: TinyDecoderConfig(**m["decoder"]))
    decoder = checkpoint.load_weights(TinyDecoder(TinyDecoderConfig(**meta["decoder"])), folder, "tiny_decoder",
                                      TinyDecoderLoadError)
    if vae is not None:
        check_compatible(meta, folder, vae)
    return decoder, meta


def vae_upscale(vae) -> int:
    """How many pixels a latent of this VAE spans per side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_compatible(meta: dict, folder: str, vae):
    """A tiny decoder stands in only for the VAE it was distilled from."""
    fingerprint = model_fingerprint(vae)
    if meta.get("vae_fingerprint") != fingerprint:
        raise TinyDecoderLoadError(f"tiny decoder {folder!r} was distilled from VAE {meta.get('vae_fingerprint')}, "
                                   f"this VAE is {fingerprint}")
    c = TinyDecoderConfig(**meta["decoder"])
    want, got = (vae.config.latent_channels, vae_upscale(vae)), (c.latent_channels, c.upscale)
    if want != got:
        raise TinyDecoderLoadError(f"tiny decoder {folder!r} takes (latent channels, upscale) {got}; "
                                   f"this VAE has {want}")
