"""Tasks: train/test splits plus everything a stage downstream needs to know."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from pydantic import Field

from ..errors import DataError

#: A count option of a dataset (``n_train``, ``n_test``, ...): an integer >= 1. Declared in the
#: loaders' signatures, so the config validator rejects ``n_train: 0`` before any work (it checks
#: options against the factories' type hints; the hints must be read with their constraints,
#: ``typing.get_type_hints(..., include_extras=True)``).
Count = Annotated[int, Field(ge=1)]
#: an integer >= 0 (``noise_bands``)
NonNegativeInt = Annotated[int, Field(ge=0)]
#: an optional count (None = all)
OptionalCount = Annotated[int | None, Field(ge=1)]
#: a share strictly between 0 and 1 (``test_fraction``, ``band_width``)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
#: a level in [0, 1] (``noise_level``)
UnitInterval = Annotated[float, Field(ge=0, le=1)]


def check_count(dataset: str, option: str, value: Any, *, allow_none: bool = False) -> None:
    """The same rule as :data:`Count` for callers of the Python API (a DataError naming the
    option)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alt = " (or null: all rows)" if allow_none else ""
        raise DataError(
            f"dataset '{dataset}': {option}={value!r} is not valid; it must be an integer >= 1{alt}"
        )


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
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = len(self.images)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images")
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.images.shape[2:]):
            raise ValueError(
                f"masks shape {tuple(self.masks.shape)} does not match images "
                f"{tuple(self.images.shape)}"
            )
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
class TextSplit:
    """Raw texts with labels, for ``modality == "text"`` tasks.

    ``rationales`` (optional) are ground-truth word masks: one bool tensor per
    text, aligned with the text's whitespace-separated words
    (:func:`xaiarena.data.text.split_words`). ``ids`` are stable integer sample
    ids within the split. Tokenisation belongs to the model (its tokenizer).
    """

    texts: list[str]
    labels: torch.Tensor
    rationales: list[torch.Tensor] | None = None
    ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.texts = [str(t) for t in self.texts]
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        n = len(self.texts)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} texts")
        if self.rationales is not None:
            if len(self.rationales) != n:
                raise ValueError(f"{len(self.rationales)} rationales for {n} texts")
            self.rationales = [torch.as_tensor(r, dtype=torch.bool) for r in self.rationales]
            for i, (t, r) in enumerate(zip(self.texts, self.rationales, strict=True)):
                if r.ndim != 1 or len(r) != len(t.split()):
                    raise ValueError(
                        f"rationale {i} has {tuple(r.shape)} entries for {len(t.split())} words"
                    )
        if self.ids is None:
            self.ids = torch.arange(n)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def masks(self) -> list[torch.Tensor] | None:
        """The rationales (ground truth), under the name image splits use."""
        return self.rationales

    def subset(self, index: torch.Tensor) -> TextSplit:
        idx = torch.as_tensor(index).reshape(-1).tolist()
        return TextSplit(
            [self.texts[i] for i in idx],
            self.labels[idx],
            None if self.rationales is None else [self.rationales[i] for i in idx],
            self.ids[idx],
        )


@dataclass
class Task:
    """A classification task: splits, modality, class names and normalisation stats."""

    name: str
    train: ImageSplit | TextSplit
    test: ImageSplit | TextSplit
    class_names: list[str]
    modality: str = "image"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.modality == "text":  # variable-length texts: no fixed input shape
            return ()
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def has_masks(self) -> bool:
        return self.test.masks is not None

    def description(self, whole_meta: bool = False) -> str | None:
        """The task without its samples, as JSON: what a model is built from (name, classes,
        modality, normalisation, input shape, and the entries of ``meta`` that are plain JSON
        data, not per-sample arrays or maps with integer keys), so that a process can rebuild a
        trained model from its checkpoint without loading the data (:meth:`without_samples`).
        None for texts (a text model may take its tokenizer from the data), and with
        ``whole_meta`` (for a model that may read any of ``meta``: user code) where an entry of
        ``meta`` is not plain JSON."""
        if self.modality != "image":
            return None
        doc = {
            "name": self.name,
            "class_names": list(self.class_names),
            "modality": self.modality,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_shape": list(self.input_shape),
        }
        if not _plain(doc):
            return None
        doc["meta"] = {k: v for k, v in self.meta.items() if _plain({k: v})}
        if whole_meta and len(doc["meta"]) < len(self.meta):
            return None
        return json.dumps(doc, allow_nan=False)

    @classmethod
    def without_samples(cls, description: str) -> Task:
        """The task of :meth:`description` with empty splits (images of its input shape) and the
        plain entries of its ``meta``."""
        doc = json.loads(description)
        shape = tuple(doc["input_shape"])

        def empty() -> ImageSplit:
            return ImageSplit(
                torch.empty((0, *shape), dtype=torch.uint8), torch.empty(0, dtype=torch.long)
            )

        return cls(
            doc["name"],
            empty(),
            empty(),
            list(doc["class_names"]),
            doc["modality"],
            tuple(doc["mean"]),
            tuple(doc["std"]),
            doc["meta"],
        )

    def test_names(self, index: torch.Tensor | None = None) -> list[str] | None:
        """The names of test samples ``index`` (positions in the test split; all when None), where
        the dataset names them: ``meta["file_names"]``, one per test sample in split order
        (``voc2012_seg``: the VOC file, ``image_folder``: the path below the root). None when it
        does not."""
        names = self.meta.get("file_names")
        if not names or len(names) != len(self.test):
            return None
        idx = range(len(names)) if index is None else torch.as_tensor(index).reshape(-1).tolist()
        return [str(names[i]) for i in idx]


def _plain(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` is plain JSON data (it reads back equal: no tuples, arrays, int keys)."""
    try:
        return json.loads(json.dumps(doc, allow_nan=False)) == doc
    except (TypeError, ValueError):
        return False


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
