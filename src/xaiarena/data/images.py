"""Real image datasets through Hugging Face ``datasets``.

Online, each name loads its Hub id. Offline, ``data_dir`` (or the environment variable
``XAIARENA_DATA_DIR``) names a folder holding ``<dataset>/<split>.parquet`` files in the
``datasets`` format; then only those files are read and the network is never touched.

Images stay uint8 ``(N, C, H, W)`` until batching. Each loaded dataset is checked
against its declared number of classes, image size and channel count, so one dataset
can never silently stand in for another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import DATASETS
from .base import ImageSplit, Task, channel_stats

DATA_DIR_ENV = "XAIARENA_DATA_DIR"


@dataclass(frozen=True)
class ImageSpec:
    hub_id: str
    image_col: str
    label_col: str
    num_classes: int
    channels: int
    size: int
    splits: tuple[str, str] = ("train", "test")
    hub_config: str | None = None
    description: str = ""


SPECS: dict[str, ImageSpec] = {
    "cifar10": ImageSpec("uoft-cs/cifar10", "img", "label", 10, 3, 32,
                         description="CIFAR-10: 32x32 RGB photos, 10 classes"),
    "cifar100": ImageSpec("uoft-cs/cifar100", "img", "fine_label", 100, 3, 32,
                          description="CIFAR-100: 32x32 RGB photos, 100 fine classes"),
    "svhn": ImageSpec("ufldl-stanford/svhn", "image", "label", 10, 3, 32, hub_config="cropped_digits",
                      description="SVHN cropped digits: 32x32 RGB house numbers, 10 classes"),
    "fashion_mnist": ImageSpec("zalando-datasets/fashion_mnist", "image", "label", 10, 1, 28,
                               description="Fashion-MNIST: 28x28 grayscale clothing, 10 classes"),
    "mnist": ImageSpec("ylecun/mnist", "image", "label", 10, 1, 28,
                       description="MNIST: 28x28 grayscale digits, 10 classes"),
    # no Hub copy: local Parquet only (github.com/jayaneetha/colorized-MNIST, see shared/datasets)
    "colorized_mnist": ImageSpec("", "image", "label", 10, 3, 28,
                                 description="Colorized MNIST: 28x28 white MNIST digits on a red, green "
                                 "or blue background, 10 classes"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$XAIARENA_DATA_DIR``, else None (use the Hub)."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def load_hf_splits(name: str, hub_id: str, splits: tuple[str, ...], data_dir, hub_config=None):
    """A ``DatasetDict`` of ``splits``, from local Parquet files when a data dir is set."""
    import datasets

    root = resolve_data_dir(data_dir)
    if root is not None:
        files = {s: str(root / name / f"{s}.parquet") for s in splits}
        missing = [f for f in files.values() if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(
                f"dataset '{name}': {', '.join(missing)} not found (data_dir={root}); "
                f"expected <data_dir>/{name}/<split>.parquet for splits {', '.join(splits)}"
            )
        return datasets.load_dataset("parquet", data_files=files)
    if not hub_id:
        raise FileNotFoundError(
            f"dataset '{name}' has no Hugging Face Hub copy; set data_dir (or ${DATA_DIR_ENV}) to a folder "
            f"holding {name}/<split>.parquet for splits {', '.join(splits)}"
        )
    return datasets.load_dataset(hub_id, hub_config)  # pragma: no cover - network


def decoded_images(d, column: str) -> list:
    """PIL images of an ``Image`` column, decoded straight from the encoded bytes (much faster
    than letting ``datasets`` build one row at a time); falls back to ``d[column]``."""
    import io

    from PIL import Image

    try:
        col = d.with_format("arrow")[:][column].combine_chunks()
        blobs = col.field("bytes").to_pylist()
    except Exception:  # not a struct of bytes (e.g. already decoded): let datasets decode
        return list(d[column])
    if any(b is None for b in blobs):
        return list(d[column])
    return [Image.open(io.BytesIO(b)) for b in blobs]


def _to_uint8(images, channels: int, size: int, name: str) -> torch.Tensor:
    arrays = []
    for img in images:
        img = img.convert("RGB" if channels == 3 else "L")
        if img.size != (size, size):
            raise ValueError(f"dataset '{name}': image of size {img.size}, expected {(size, size)}")
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


def _subsample(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def sampled_hf_splits(name: str, spec: Any, data_col: str, label_col: str, *, seed: int, data_dir,
                      n_train: int | None, n_test: int | None) -> tuple[list[tuple[Any, np.ndarray]], list[str]]:
    """The train and test splits of an HF dataset spec (``hub_id``, ``splits``, ``hub_config``,
    ``num_classes``), ``n_train`` / ``n_test`` rows drawn by ``seed`` (all when None), as
    ``[(rows, idx), (rows, idx)]``, and the class names. Checks the columns and the class count."""
    ds = load_hf_splits(name, spec.hub_id, spec.splits, data_dir, spec.hub_config)
    rng = np.random.default_rng(seed)
    parts = []
    for split, n in zip(spec.splits, (n_train, n_test), strict=True):
        d = ds[split]
        if data_col not in d.column_names or label_col not in d.column_names:
            raise ValueError(f"dataset '{name}' split '{split}' has columns {d.column_names}; "
                             f"expected '{data_col}' and '{label_col}'")
        idx = _subsample(len(d), n, rng)
        parts.append((d.select(idx), idx))
    feature = ds[spec.splits[0]].features[label_col]
    class_names = list(getattr(feature, "names", None) or [str(i) for i in range(spec.num_classes)])
    if len(class_names) != spec.num_classes:
        raise ValueError(f"dataset '{name}' has {len(class_names)} classes, expected {spec.num_classes}; "
                         f"is the file at the right path?")
    return parts, class_names


def load_image_dataset(name: str, *, seed: int = 0, data_dir=None, n_train: int | None = None,
                       n_test: int | None = None) -> Task:
    spec = SPECS[name]
    parts, class_names = sampled_hf_splits(name, spec, spec.image_col, spec.label_col, seed=seed,
                                           data_dir=data_dir, n_train=n_train, n_test=n_test)
    out = []
    for d, idx in parts:
        images = _to_uint8(decoded_images(d, spec.image_col), spec.channels, spec.size, name)
        labels = torch.as_tensor(d[spec.label_col], dtype=torch.long)
        out.append(ImageSplit(images, labels, ids=torch.as_tensor(idx)))
    mean, std = channel_stats(out[0].images)
    return Task(name=name, train=out[0], test=out[1], class_names=class_names, mean=mean, std=std,
                meta={"source": str(resolve_data_dir(data_dir) or spec.hub_id)})


def _register(name: str, spec: ImageSpec) -> None:
    def factory(seed: int = 0, data_dir: str | None = None, n_train: int | None = None,
                n_test: int | None = None) -> Task:
        return load_image_dataset(name, seed=seed, data_dir=data_dir, n_train=n_train, n_test=n_test)

    factory.__name__ = name
    hub = f"Hub: {spec.hub_id}; offline" if spec.hub_id else "no Hub copy; from"
    factory.__doc__ = f"{spec.description} ({hub}: <data_dir>/{name}/<split>.parquet)."
    DATASETS.register(name, description=factory.__doc__, modality="image", num_classes=spec.num_classes,
                      has_masks=False)(factory)


for _name, _spec in SPECS.items():
    _register(_name, _spec)
