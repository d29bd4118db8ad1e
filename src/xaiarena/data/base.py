"""Tasks: train/test splits plus everything a stage downstream needs to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ImageSplit:
    """Images kept as uint8 ``(N, C, H, W)`` until batching (``float() / 255`` then).

    ``masks`` (bool ``(N, H, W)``) are ground-truth localisation masks where the
    dataset has them. ``ids`` are stable integer sample ids within the split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.images.shape[2:]):
            raise ValueError(f"masks shape {tuple(self.masks.shape)} does not match images {tuple(self.images.shape)}")
        if self.ids is None:
            self.ids = torch.arange(n)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageSplit:
        return ImageSplit(
            self.images[index],
            self.labels[index],
            None if self.masks is None else self.masks[index],
            self.ids[index],
        )

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Pixel-space float images in [0, 1] (models normalise internally)."""
        imgs = self.images if index is None else self.images[index]
        return imgs.float().div_(255.0)


@dataclass
class Task:
    """A classification task: splits, modality, class names and normalisation stats."""

    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: list[str]
    modality: str = "image"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def has_masks(self) -> bool:
        return self.test.masks is not None


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
