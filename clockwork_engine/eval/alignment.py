"""Prompt alignment in the shapes world: does the image show what its caption asks for?"""

from __future__ import annotations

import torch

from ..demo import shapes
from . import classifier as C

SIZE_THRESHOLDS = (6.5 / shapes.IMAGE_SIZE, 9.5 / shapes.IMAGE_SIZE)  # between small/medium/large


def _cell(v: float) -> int:
    return 0 if v < 1 / 3 else (1 if v < 2 / 3 else 2)


def read(model: C.ShapesClassifier, images: torch.Tensor):
    """images [B,3,64,64] in [0,1] -> (features [B,64], presence probs [B,21], geometry [B,7,3])."""
    f, logits, geo = model(images.float() * 2 - 1)
    return f, logits.sigmoid(), geo


def score(scene: shapes.Scene, presence: torch.Tensor, geometry: torch.Tensor) -> dict[str, bool]:
    """Per-attribute correctness of one image (presence [21], geometry [7,3])."""
    if not scene.is_pair:
        colour, shape = C.PAIRS[int(presence.argmax())]
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
    top2 = {C.PAIRS[int(k)] for k in presence.topk(2).indices}
    out = {"objects": top2 == {(scene.colour, scene.shape), (scene.colour2, scene.shape2)}}
    (x1, y1, _), (x2, y2, _) = (geometry[C.COLOURS.index(c)].tolist() for c in (scene.colour, scene.colour2))
    out["relation"] = {"left of": x1 < x2, "right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[scene.relation]
    out["all"] = out["objects"] and out["relation"]
    return out


def summarize(scores: list[dict[str, bool]]) -> dict[str, dict[str, float]]:
    """{attribute: {"accuracy": fraction, "n": count}} over the images that state it."""
    keys = sorted({k for s in scores for k in s})
    return {k: {"accuracy": sum(s[k] for s in scores if k in s) / max(1, sum(k in s for s in scores)),
                "n": sum(k in s for s in scores)} for k in keys}
