"""A small CNN that reads a shapes-world image back: which (colour, shape)s are present,
and where each colour's shape is and how large it is. Its penultimate features give the
domain FID (the FID of this world: Inception knows nothing of it).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from clockwork_engine.datasets import shapes

COLOURS = list(shapes.COLOURS)
PAIRS = [(c, s) for c in COLOURS for s in shapes.SHAPES]  # presence classes, colour-major
FEATURE_DIM = 64
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "classifier.safetensors")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(), nn.MaxPool2d(2))


class ShapesClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_block(3, 32), _block(32, 64), _block(64, 96), _block(96, 128))  # 64 -> 4
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 256), nn.SiLU(), nn.Linear(256, FEATURE_DIM))
        self.presence = nn.Linear(FEATURE_DIM, len(PAIRS))
        # Per colour: bounding-box centre (x, y) and half-extent, as fractions of the side.
        self.geometry = nn.Linear(FEATURE_DIM, len(COLOURS) * 3)

    def forward(self, images: torch.Tensor):
        """images [B,3,64,64] in [-1,1] -> (features [B,64], presence logits [B,21], geometry [B,7,3])."""
        f = self.features(self.body(images))
        h = torch.nn.functional.silu(f)
        return f, self.presence(h), self.geometry(h).view(-1, len(COLOURS), 3)


def targets(layouts: list[list[shapes.Shape]]):
    """(presence [B,21] {0,1}, geometry [B,7,3], colour mask [B,7]) from drawn layouts."""
    n = len(layouts)
    presence = torch.zeros(n, len(PAIRS))
    geometry = torch.zeros(n, len(COLOURS), 3)
    mask = torch.zeros(n, len(COLOURS))
    side = shapes.IMAGE_SIZE
    for i, layout in enumerate(layouts):
        for s in layout:
            c = COLOURS.index(s.colour)
            presence[i, PAIRS.index((s.colour, s.shape))] = 1
            geometry[i, c] = torch.tensor([s.cx / side, s.cy / side, s.half / side])
            mask[i, c] = 1
    return presence, geometry, mask


def load(path: str = WEIGHTS) -> ShapesClassifier:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"classifier weights {path} are missing; train them with "
                                f"python -m clockwork_engine.eval.train_classifier")
    model = ShapesClassifier()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)
