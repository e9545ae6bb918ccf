"""The shapes world: procedural 64x64 images of flat-coloured shapes with captions.

Everything is a pure function of a seed, so the training stream, the held-out split and
the evaluation set are reproducible on any machine.

Single shape: "a small red circle in the top left" (size and position words optional).
Two shapes:   "a blue square left of a yellow triangle" (two distinct colours).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 0),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# Half-extent of a shape in pixels; "" (no size word) draws the medium size.
SIZES = {"small": 5.0, "": 8.0, "large": 11.0}
# Bounding-box centres on a 3x3 grid, as fractions of the image side.
GRID = (0.22, 0.5, 0.78)
POSITIONS: dict[str, tuple[int, int]] = {  # phrase -> (row, col)
    "in the top left": (0, 0),
    "at the top": (0, 1),
    "in the top right": (0, 2),
    "on the left": (1, 0),
    "in the center": (1, 1),
    "on the right": (1, 2),
    "in the bottom left": (2, 0),
    "at the bottom": (2, 1),
    "in the bottom right": (2, 2),
}
RELATIONS = ("left of", "right of", "above", "below")
HELD_OUT_PERCENT = 20  # of all captions, chosen by a hash of the caption text


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    cx: float  # bounding-box centre, pixels
    cy: float
    half: float  # half-extent, pixels


@dataclass(frozen=True)
class Scene:
    """What a caption asks for. Unset size/position are free choices when drawn."""

    colour: str
    shape: str
    size: str = ""  # "", "small", "large"
    position: str = ""  # "" or a key of POSITIONS
    relation: str = ""  # "" for a single shape, else a RELATIONS entry
    colour2: str = ""
    shape2: str = ""

    @property
    def caption(self) -> str:
        if self.relation:
            return f"{_noun(self.colour, self.shape)} {self.relation} {_noun(self.colour2, self.shape2)}"
        return " ".join(w for w in (_noun(self.size, self.colour, self.shape), self.position) if w)

    @property
    def is_pair(self) -> bool:
        return bool(self.relation)


def _noun(*words: str) -> str:
    phrase = " ".join(w for w in words if w)
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def all_scenes() -> list[Scene]:
    """Every caption of the grammar, in a fixed order."""
    singles = [
        Scene(c, s, size, pos)
        for c, s, size, pos in itertools.product(COLOURS, SHAPES, SIZES, ("", *POSITIONS))
    ]
    pairs = [
        Scene(c1, s1, relation=r, colour2=c2, shape2=s2)
        for c1, s1, r, c2, s2 in itertools.product(COLOURS, SHAPES, RELATIONS, COLOURS, SHAPES)
        if c1 != c2
    ]
    return singles + pairs


def is_held_out(caption: str) -> bool:
    digest = hashlib.sha256(caption.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELD_OUT_PERCENT


def split_scenes(split: str) -> list[Scene]:
    """split: "train" or "eval" (the held-out captions, never seen in training)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    return [s for s in all_scenes() if is_held_out(s.caption) == want_eval]


def layout(scene: Scene, rng: np.random.Generator) -> list[Shape]:
    """Place the shapes a scene asks for; free attributes are drawn from rng."""
    jitter = 0.05 * IMAGE_SIZE
    if not scene.is_pair:
        half = SIZES[scene.size] if scene.size else SIZES[rng.choice(list(SIZES))]
        if scene.position:
            row, col = POSITIONS[scene.position]
        else:
            row, col = rng.integers(0, 3, size=2)
        cx = GRID[col] * IMAGE_SIZE + rng.uniform(-jitter, jitter)
        cy = GRID[row] * IMAGE_SIZE + rng.uniform(-jitter, jitter)
        return [Shape(scene.colour, scene.shape, cx, cy, half)]
    # Two medium shapes on either side of the centre along the relation's axis.
    half = SIZES[""]
    lo, hi = GRID[0] * IMAGE_SIZE, GRID[2] * IMAGE_SIZE
    along = (lo + rng.uniform(-jitter, jitter), hi + rng.uniform(-jitter, jitter))
    across = (rng.uniform(lo, hi), rng.uniform(lo, hi))
    first, second = (0, 1) if scene.relation in ("left of", "above") else (1, 0)
    if scene.relation in ("left of", "right of"):
        p1, p2 = (along[first], across[0]), (along[second], across[1])
    else:
        p1, p2 = (across[0], along[first]), (across[1], along[second])
    return [
        Shape(scene.colour, scene.shape, p1[0], p1[1], half),
        Shape(scene.colour2, scene.shape2, p2[0], p2[1], half),
    ]


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def shape_mask(s: Shape) -> np.ndarray:
    dx, dy = _XX - s.cx, _YY - s.cy
    if s.shape == "circle":
        return dx * dx + dy * dy <= s.half * s.half
    if s.shape == "square":
        return (np.abs(dx) <= s.half) & (np.abs(dy) <= s.half)
    if s.shape == "triangle":  # apex up, base at the bottom of the box
        inside_y = (dy >= -s.half) & (dy <= s.half)
        return inside_y & (np.abs(dx) <= (dy + s.half) / 2)
    raise ValueError(f"unknown shape {s.shape!r}")


def render(shapes: list[Shape]) -> np.ndarray:
    """uint8 (64, 64, 3) image; later shapes are drawn on top."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    image[:] = BACKGROUND
    for s in shapes:
        image[shape_mask(s)] = COLOURS[s.colour]
    return image


def control_mask(shapes: list[Shape]) -> np.ndarray:
    """uint8 (64, 64, 3): white where any shape is drawn, black elsewhere (the demo
    ControlNet's control image: where the shapes go, not their colours)."""
    inside = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    for s in shapes:
        inside |= shape_mask(s)
    return np.repeat(inside[..., None] * np.uint8(255), 3, axis=-1)


def sample_batch(rng: np.random.Generator, scenes: list[Scene], batch_size: int):
    """(images uint8 [B,64,64,3], scenes [B], layouts [B][shapes]).

    Half single-shape, half two-shape scenes on average (there are many more pair captions).
    """
    singles = [s for s in scenes if not s.is_pair]
    pairs = [s for s in scenes if s.is_pair]
    images, picked, layouts = [], [], []
    for _ in range(batch_size):
        pool = pairs if (rng.random() < 0.5 and pairs) or not singles else singles
        scene = pool[rng.integers(0, len(pool))]
        shapes = layout(scene, rng)
        images.append(render(shapes))
        picked.append(scene)
        layouts.append(shapes)
    return np.stack(images), picked, layouts


def stream(seed: int, batch_size: int, split: str = "train"):
    """Endless, deterministic stream of batches from one split."""
    rng = np.random.default_rng(seed)
    scenes = split_scenes(split)
    while True:
        yield sample_batch(rng, scenes, batch_size)


def to_tensor(images: np.ndarray):
    """uint8 [B,H,W,3] -> float32 [B,3,H,W] in [-1, 1] (the VAE's range)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
