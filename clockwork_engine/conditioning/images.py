"""The inputs of an edit: the image (and mask) of an image-to-image or inpainting request,
checked and turned into what diffusers' VaeImageProcessor makes of them for its Img2Img and
Inpaint pipelines (pixels in [-1, 1]; a binarized single-channel mask, 1 = repaint)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

# A mask is binary-like when this share of its pixels lie within BINARY_SLACK of 0 or 1
# (anti-aliased edges are fine; a photo or a soft gradient is not a mask).
BINARY_SHARE, BINARY_SLACK = 0.9, 0.1
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}  # diffusers' pipeline defaults


@dataclass
class EditInputs:
    kind: str  # "img2img" or "inpaint"
    pixels: torch.Tensor  # [B, 3, H, W] float32 in [-1, 1]
    mask: torch.Tensor | None  # [B, 1, H, W] float32 in {0, 1}: 1 where the prompt repaints
    strength: float

    @property
    def height(self) -> int:
        return self.pixels.shape[2]

    @property
    def width(self) -> int:
        return self.pixels.shape[3]


def _as_tensor(item, where: str) -> torch.Tensor:
    """One PIL image, numpy array ([H, W(, C)] or [B, H, W, C]) or tensor ([C, H, W] or
    [B, C, H, W]) -> [B, C, H, W] float32 (uint8 scaled to [0, 1]; a PIL image goes the numpy way)."""
    from PIL import Image

    if isinstance(item, Image.Image):
        item = np.array(item.convert("RGB" if item.mode in ("RGBA", "P", "CMYK", "YCbCr") else item.mode))
    if isinstance(item, torch.Tensor):
        if item.dim() not in (3, 4):
            raise ValueError(f"{where} must be [C, H, W] or [B, C, H, W], got shape {tuple(item.shape)}")
        return (item[None] if item.dim() == 3 else item).detach().float().cpu()
    if not isinstance(item, np.ndarray):
        raise TypeError(f"{where} must be a PIL image, a numpy array or a tensor, got {type(item).__name__}")
    if item.dtype == np.uint8:
        t = torch.from_numpy(item.astype(np.float32) / 255.0)
    elif np.issubdtype(item.dtype, np.floating) or item.dtype == bool:
        t = torch.from_numpy(item.astype(np.float32))
    else:
        raise TypeError(f"{where} has dtype {item.dtype}; use uint8 (0-255) or float (0-1)")
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t.permute(2, 0, 1)[None]
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2)
    raise ValueError(f"{where} must be [H, W], [H, W, C] or [B, H, W, C], got shape {tuple(item.shape)}")


def _as_batch(value, name: str, channels: tuple[int, ...]) -> torch.Tensor:
    """PIL image(s), numpy arrays or tensors in [0, 1] (uint8 in [0, 255]), one or a list ->
    [B, C, H, W] float32 in [0, 1], each checked."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"{name} list is empty")
    out = []
    for k, item in enumerate(items):
        where = f"{name}[{k}]" if isinstance(value, (list, tuple)) else name
        t = _as_tensor(item, where)
        if t.shape[1] not in channels:
            raise ValueError(f"{where} has {t.shape[1]} channels; expected {' or '.join(map(str, channels))}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{where} has NaN or Inf values")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"{where} values must lie in [0, 1] (uint8 images in [0, 255]), "
                             f"got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
        out.append(t)
    sizes = {tuple(t.shape[2:]) for t in out}
    if len(sizes) != 1:
        raise ValueError(f"{name} images differ in size: {sorted(sizes)}")
    return torch.cat(out)


def _batch_to(t: torch.Tensor, count: int, name: str) -> torch.Tensor:
    if t.shape[0] == count:
        return t
    if t.shape[0] == 1:
        return t.expand(count, -1, -1, -1)
    raise ValueError(f"{name} has {t.shape[0]} images for {count} prompts (give one, or one a prompt)")


def edit_inputs(image, mask_image, strength, count: int, multiple: int, max_side: int, in_channels: int,
                height=None, width=None) -> EditInputs:
    """Check an edit request's image, mask and strength against the model and the batch."""
    if image is None:
        raise ValueError("mask_image needs an image to inpaint")
    kind = "img2img" if mask_image is None else "inpaint"
    if in_channels == 9 and kind == "img2img":
        raise ValueError("this is a 9-channel inpainting UNet: it needs a mask_image")
    if in_channels not in (4, 9):
        raise ValueError(f"edits need a 4-channel UNet (or a 9-channel inpainting one), this one takes {in_channels}")
    if strength is None:
        strength = DEFAULT_STRENGTH[kind]
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    rgb = _batch_to(_as_batch(image, "image", (3,)), count, "image")
    h, w = rgb.shape[2:]
    for side, value, name in ((h, height, "height"), (w, width, "width")):
        if value not in (None, side):
            raise ValueError(f"image is {w}x{h}; {name}={value} asks for another size (resize the image)")
        if side % multiple or not multiple <= side <= max_side:
            raise ValueError(f"image is {w}x{h}: each side must be a multiple of {multiple} in [{multiple}, "
                             f"{max_side}] (VAE factor x UNet downsampling)")
    mask = None
    if mask_image is not None:
        mask = _as_batch(mask_image, "mask_image", (1, 3))
        if mask.shape[1] == 3:
            if not (torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 1], mask[:, 2])):
                raise ValueError("mask_image must be single-channel (grey), got a colour image")
            mask = mask[:, :1]
        if tuple(mask.shape[2:]) != (h, w):
            raise ValueError(f"mask_image is {mask.shape[3]}x{mask.shape[2]}, the image {w}x{h}")
        near = ((mask < BINARY_SLACK) | (mask > 1 - BINARY_SLACK)).float().mean()
        if near < BINARY_SHARE:
            raise ValueError(f"mask_image is not binary-like: {100 * (1 - float(near)):.0f}% of its pixels are "
                             f"between {BINARY_SLACK} and {1 - BINARY_SLACK}")
        mask = _batch_to((mask >= 0.5).float(), count, "mask_image")  # binarized as diffusers' mask processor does
    return EditInputs(kind, rgb.contiguous() * 2 - 1, None if mask is None else mask.contiguous(), float(strength))
