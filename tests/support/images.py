"""User data and models for the bring-your-own tests: an image folder with masks and a user's
model file."""

from __future__ import annotations

USER_MODEL_SOURCE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=2, width=4, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).amax((2, 3)))


def build(num_classes=2, width=4, in_channels=3):
    return Net(num_classes, width, in_channels)


NOT_A_MODULE = 3


def not_a_module():
    return "a string"
"""


def write_image_folder(
    root, masks_root=None, n_train: int = 6, n_test: int = 4, size: int = 16, seed: int = 0
):
    """``root/<split>/{left,right}/<i>.png``: noise with a bright square in the left or right half;
    masks (the square) under ``masks_root`` with the same layout."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, col in (("left", 1), ("right", size // 2 + 1)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            if masks_root is not None:
                (masks_root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                row = int(rng.integers(0, size - 6))
                img[row : row + 6, col : col + 6] = 230
                Image.fromarray(img).save(root / split / c / f"{i}.png")
                if masks_root is not None:
                    m = np.zeros((size, size), np.uint8)
                    m[row : row + 6, col : col + 6] = 1
                    Image.fromarray(m).save(masks_root / split / c / f"{i}.png")
