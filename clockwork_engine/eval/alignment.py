"""Prompt alignment in the shapes world: does the image show what its caption asks for?

Colour, position and size come from the classifier (classifier.py). Shape is measured
from pixels: the pixels nearest to the asked colour's palette entry form a mask, and the
share of its bounding box it fills tells the shape (square ~1, circle ~pi/4, triangle
~1/2). The measurement needs no training and reads decoded, slightly blurred images too.
"""

from __future__ import annotations

import torch

from clockwork_engine.datasets import shapes
from clockwork_engine.eval import classifier as C

SIZE_THRESHOLDS = (6.5 / shapes.IMAGE_SIZE, 9.5 / shapes.IMAGE_SIZE)  # between small/medium/large


def _cell(v: float) -> int:
    return 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)


PALETTE = torch.tensor([shapes.BACKGROUND, *shapes.COLOURS.values()], dtype=torch.float32) / 255  # [8, 3]
FILL_THRESHOLDS = (0.64, 0.9)  # triangle < 0.64 <= circle < 0.9 <= square


def nearest_palette(image: torch.Tensor) -> torch.Tensor:
    """image [3,H,W] in [0,1] -> [H,W] index of each pixel's nearest PALETTE entry (0: background)."""
    return (image.permute(1, 2, 0)[:, :, None, :] - PALETTE).pow(2).sum(-1).argmin(-1)  # of [H, W, 8]


def colour_mask(image: torch.Tensor, colour: str) -> torch.Tensor:
    """image [3,H,W] in [0,1] -> [H,W] bool: pixels whose nearest palette entry is `colour`."""
    return nearest_palette(image) == 1 + C.COLOURS.index(colour)


def shape_of(mask: torch.Tensor) -> str | None:
    """The shape a mask shows, from how much of its bounding box it fills; None if too small."""
    if int(mask.sum()) < 6:
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum()) / float(box)
    return "triangle" if fill < FILL_THRESHOLDS[0] else ("circle" if fill < FILL_THRESHOLDS[1] else "square")


def read(model: C.ShapesClassifier, images: torch.Tensor):
    """images [B,3,64,64] in [0,1] -> (features [B,64], presence probs [B,21], geometry [B,7,3])."""
    f, logits, geo = model(images.float() * 2 - 1)
    return f, logits.sigmoid(), geo


def score(scene: shapes.Scene, presence: torch.Tensor, geometry: torch.Tensor, image: torch.Tensor) -> dict[str, bool]:
    """Per-attribute correctness of one image (presence [21], geometry [7,3], image [3,H,W] in [0,1])."""
    colour_probs = presence.view(len(C.COLOURS), -1).max(1).values  # [7]
    if not scene.is_pair:
        colour = C.COLOURS[int(colour_probs.argmax())]
        shape = shape_of(colour_mask(image, colour))
        out = {"colour": colour == scene.colour, "shape": shape == scene.shape}
        out["colour_and_shape"] = out["colour"] and out["shape"]
        cx, cy, half = geometry[C.COLOURS.index(colour)].tolist()
        if scene.position:
            out["position"] = (_cell(cy), _cell(cx)) == shapes.POSITIONS[scene.position]
        if scene.size:
            predicted = "small" if half < SIZE_THRESHOLDS[0] else ("large" if half > SIZE_THRESHOLDS[1] else "")
            out["size"] = predicted == scene.size
        out["all"] = all(out.values())
        return out
    top2 = {C.COLOURS[int(k)] for k in colour_probs.topk(2).indices}
    shapes_ok = all(shape_of(colour_mask(image, c)) == s for c, s in ((scene.colour, scene.shape),
                                                                      (scene.colour2, scene.shape2)))
    out = {"objects": top2 == {scene.colour, scene.colour2} and shapes_ok}
    (x1, y1, _), (x2, y2, _) = (geometry[C.COLOURS.index(c)].tolist() for c in (scene.colour, scene.colour2))
    out["relation"] = {"left of": x1 < x2, "right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[scene.relation]
    out["all"] = out["objects"] and out["relation"]
    return out


def summarize(scores: list[dict[str, bool]]) -> dict[str, dict[str, float]]:
    """{attribute: {"accuracy": fraction, "n": count}} over the images that state it."""
    keys = sorted({k for s in scores for k in s})
    return {k: {"accuracy": sum(s[k] for s in scores if k in s) / max(1, sum(k in s for s in scores)),
                "n": sum(k in s for s in scores)} for k in keys}


def mask_iou(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Intersection over union of the drawn shapes (pixels whose nearest palette entry is not
    the background) with a control mask. image [3,H,W] in [0,1], mask [H,W] bool."""
    drawn = nearest_palette(image) != 0
    union = int((drawn | mask).sum())
    return int((drawn & mask).sum()) / union if union else 1.0
