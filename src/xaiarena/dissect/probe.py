"""The probe set: the images neurons are dissected on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SPLITS = ("train", "test")


@dataclass
class Probe:
    """``index`` selects the probe images (positions) in ``task``'s ``split``."""

    task: Any
    split: str
    index: torch.Tensor
    key: str = ""  # its cache key (xaiarena.engine.cache.probe_key): set by the runner

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split='{self.split}' is not valid; valid: {', '.join(SPLITS)}")

    @property
    def data(self):
        return getattr(self.task, self.split)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def images(self) -> torch.Tensor:
        """uint8 ``(N, C, H, W)``."""
        return self.data.images[self.index]

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels[self.index]

    @property
    def masks(self) -> torch.Tensor | None:
        m = self.data.masks
        return None if m is None else m[self.index]

    @property
    def ids(self) -> torch.Tensor:
        return self.data.ids[self.index]


def select_probe(task, split: str, n_images: int | None, seed: int) -> Probe:
    """``n_images`` of ``task``'s ``split`` drawn by ``seed`` (all when None), in split order."""
    data = getattr(task, split)
    n = len(data)
    if n == 0:
        raise ValueError(
            f"the '{split}' split of dataset '{task.name}' is empty; dissect another split"
        )
    if n_images is None or n_images >= n:
        index = torch.arange(n)
    else:
        gen = torch.Generator().manual_seed(seed + 2)
        index = torch.randperm(n, generator=gen)[:n_images].sort().values
    return Probe(task, split, index)
