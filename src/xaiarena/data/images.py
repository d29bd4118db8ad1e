"""Real image datasets through Hugging Face ``datasets``.

Online, each name loads its Hub id. Offline, ``data_dir`` (or the environment variable
``XAIARENA_DATA_DIR``) names a folder holding ``<dataset>/<split>.parquet`` files in the
``datasets`` format; then only those files are read and the network is never touched.

Images stay uint8 ``(N, C, H, W)`` until batching. Each loaded dataset is checked
against its declared number of classes, image size and channel count, so one dataset
can never silently stand in for another.

Data problems raise :class:`~xaiarena.errors.DataError` naming the file, row, column or
key (the CLI prints it on one line and exits 2): a data folder that does not exist or
lacks the dataset's folder or split file (what is there is listed), a Parquet file that
is empty, truncated, corrupt or has no rows, a missing column (expected vs found), image
bytes that do not decode, images of the wrong size, labels outside the class range.
Option values (``n_train: 0``) are declared in the loaders' signatures
(:data:`~xaiarena.data.base.Count`) and fail at config time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import Count, ImageSplit, Task, channel_stats, check_count

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
    "cifar10": ImageSpec(
        "uoft-cs/cifar10",
        "img",
        "label",
        10,
        3,
        32,
        description="CIFAR-10: 32x32 RGB photos, 10 classes",
    ),
    "cifar100": ImageSpec(
        "uoft-cs/cifar100",
        "img",
        "fine_label",
        100,
        3,
        32,
        description="CIFAR-100: 32x32 RGB photos, 100 fine classes",
    ),
    "svhn": ImageSpec(
        "ufldl-stanford/svhn",
        "image",
        "label",
        10,
        3,
        32,
        hub_config="cropped_digits",
        description="SVHN cropped digits: 32x32 RGB house numbers, 10 classes",
    ),
    "fashion_mnist": ImageSpec(
        "zalando-datasets/fashion_mnist",
        "image",
        "label",
        10,
        1,
        28,
        description="Fashion-MNIST: 28x28 grayscale clothing, 10 classes",
    ),
    "mnist": ImageSpec(
        "ylecun/mnist",
        "image",
        "label",
        10,
        1,
        28,
        description="MNIST: 28x28 grayscale digits, 10 classes",
    ),
    # no Hub copy: local Parquet only (github.com/jayaneetha/colorized-MNIST, see shared/datasets)
    "colorized_mnist": ImageSpec(
        "",
        "image",
        "label",
        10,
        3,
        28,
        description="Colorized MNIST: 28x28 white MNIST digits on a red, green "
        "or blue background, 10 classes",
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$XAIARENA_DATA_DIR``, else None (use the Hub)."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def local_split_files(name: str, splits: tuple[str, ...], data_dir) -> dict[str, Path]:
    """``{split: <root>/<name>/<split>.parquet}``, each checked to exist and be a readable Parquet
    file with rows (``root`` from ``data_dir`` or ``$XAIARENA_DATA_DIR``); else a DataError that
    says what the folders hold."""
    root = resolve_data_dir(data_dir)
    assert root is not None
    source = "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
    expected = f"expected {root}/{name}/<split>.parquet for splits {', '.join(splits)}"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"dataset '{name}': {source} '{root}' {what}; {expected}")
    folder = root / name
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            f"dataset '{name}': {source} '{root}' has no folder '{name}' (its dataset folders: "
            f"{', '.join(have) or 'none'}); {expected}"
        )
    files = {s: folder / f"{s}.parquet" for s in splits}
    missing = [f.name for f in files.values() if not f.is_file()]
    if missing:
        have = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise DataError(
            f"dataset '{name}': {folder} has no {', '.join(missing)} (it holds: "
            f"{', '.join(have) or 'nothing'}); {expected}"
        )
    for f in files.values():
        check_parquet(name, f)
    return files


def check_parquet(name: str, path: Path) -> None:
    """A DataError unless ``path`` is a Parquet file whose footer reads and that has rows."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        size = path.stat().st_size
        raise DataError(
            f"dataset '{name}': {path} ({size} bytes) is not a readable Parquet file: empty, "
            f"truncated or corrupt ({_first_line(exc)})"
        ) from None
    if meta.num_rows == 0:
        raise DataError(f"dataset '{name}': {path} has no rows")


def load_hf_splits(name: str, hub_id: str, splits: tuple[str, ...], data_dir, hub_config=None):
    """A ``DatasetDict`` of ``splits``, from local Parquet files when a data dir is set
    (:func:`local_split_files` checks them first)."""
    import datasets

    if resolve_data_dir(data_dir) is not None:
        out = {}
        for split, f in local_split_files(
            name, splits, data_dir
        ).items():  # one by one: each its own schema
            try:
                out[split] = datasets.load_dataset("parquet", data_files={split: str(f)})[split]
            except Exception as exc:  # noqa: BLE001 - corrupt pages behind a readable footer, ...
                cause = exc.__cause__ or exc
                raise DataError(
                    f"dataset '{name}': cannot read {f} ({_first_line(cause)})"
                ) from None
        return datasets.DatasetDict(out)
    if not hub_id:
        raise DataError(
            f"dataset '{name}' has no Hugging Face Hub copy; set data_dir (or ${DATA_DIR_ENV}) to "
            f"a folder holding {name}/<split>.parquet for splits {', '.join(splits)}"
        )
    try:  # pragma: no cover - network
        return datasets.load_dataset(hub_id, hub_config)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, ...
        raise DataError(
            f"dataset '{name}': cannot load '{hub_id}' from the Hugging Face Hub "
            f"({_first_line(exc)}); offline, set data_dir (or ${DATA_DIR_ENV}) to a folder holding "
            f"{name}/<split>.parquet for splits {', '.join(splits)}"
        ) from None


def split_source(name: str, split: str, data_dir, hub_id: str = "") -> str:
    """Where a split was read from, for messages: its Parquet file, or the Hub id and split."""
    root = resolve_data_dir(data_dir)
    return (
        str(root / name / f"{split}.parquet")
        if root is not None
        else f"{hub_id} (Hub), split '{split}'"
    )


def decoded_images(d, column: str, *, name: str = "", source: str = "", rows=None) -> list:
    """Decoded PIL images of an ``Image`` column, straight from the encoded bytes (much faster than
    letting ``datasets`` build one row at a time; falls back to ``d[column]``).

    Bytes that do not decode raise a DataError naming the dataset, ``source`` (the file) and the
    row in it (``rows[i]``: the file row of ``d``'s row ``i``; ``i`` when not given).
    """
    import io

    from PIL import Image

    def where(i: int) -> str:
        row = int(rows[i]) if rows is not None else i
        return f"dataset '{name}': {source or 'data'} row {row}, column '{column}'"

    try:
        col = d.with_format("arrow")[:][column].combine_chunks()
        blobs = col.field("bytes").to_pylist()
    except Exception:  # noqa: BLE001 - not a struct of bytes (e.g. already decoded): let datasets decode
        blobs = None
    if blobs is None or any(b is None for b in blobs):
        out = []
        for i in range(len(d)):
            try:
                out.append(d[i][column])
            except Exception as exc:  # noqa: BLE001 - PIL/datasets raise many types for bad images
                raise DataError(f"{where(i)}: not a decodable image ({_first_line(exc)})") from None
        return out
    images = []
    for i, b in enumerate(blobs):
        try:
            img = Image.open(io.BytesIO(b))
            img.load()
        except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, OSError (truncated), ...
            raise DataError(
                f"{where(i)}: {len(b)} bytes that are not a decodable image ({_first_line(exc)})"
            ) from None
        images.append(img)
    return images


def _to_uint8(
    images, channels: int, size: int, name: str, source: str = "", rows=None
) -> torch.Tensor:
    arrays = []
    for i, img in enumerate(images):
        img = img.convert("RGB" if channels == 3 else "L")
        if img.size != (size, size):
            row = int(rows[i]) if rows is not None else i
            raise DataError(
                f"dataset '{name}': {source or 'data'} row {row}: image of size {img.size}, "
                f"expected {(size, size)}"
            )
        a = np.asarray(img, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


def _subsample(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def sampled_hf_splits(
    name: str,
    spec: Any,
    data_col: str,
    label_col: str,
    *,
    seed: int,
    data_dir,
    n_train: int | None,
    n_test: int | None,
) -> tuple[list[tuple[Any, np.ndarray, str]], list[str]]:
    """The train and test splits of an HF dataset spec (``hub_id``, ``splits``, ``hub_config``,
    ``num_classes``), ``n_train`` / ``n_test`` rows drawn by ``seed`` (all when None), as
    ``[(rows, idx, source), (rows, idx, source)]`` (``source``: the file, for messages), and the
    class names. Checks the columns and the class count (DataError)."""
    check_count(name, "n_train", n_train, allow_none=True)
    check_count(name, "n_test", n_test, allow_none=True)
    ds = load_hf_splits(name, spec.hub_id, spec.splits, data_dir, spec.hub_config)
    rng = np.random.default_rng(seed)
    parts = []
    for split, n in zip(spec.splits, (n_train, n_test), strict=True):
        d = ds[split]
        source = split_source(name, split, data_dir, spec.hub_id)
        missing = [c for c in (data_col, label_col) if c not in d.column_names]
        if missing:
            raise DataError(
                f"dataset '{name}': {source} lacks column(s) {', '.join(map(repr, missing))}; "
                f"expected '{data_col}' (the data) and '{label_col}' (the label), found "
                f"{d.column_names}"
            )
        idx = _subsample(len(d), n, rng)
        parts.append((d.select(idx), idx, source))
    feature = ds[spec.splits[0]].features[label_col]
    class_names = list(getattr(feature, "names", None) or [str(i) for i in range(spec.num_classes)])
    if len(class_names) != spec.num_classes:
        raise DataError(
            f"dataset '{name}': column '{label_col}' of "
            f"{split_source(name, spec.splits[0], data_dir, spec.hub_id)} declares "
            f"{len(class_names)} classes, expected {spec.num_classes}; is the file at the right "
            "path?"
        )
    return parts, class_names


def checked_labels(
    name: str, values, num_classes: int, source: str, column: str, rows
) -> torch.Tensor:
    """``values`` as a long tensor, or a DataError naming the file, column and first bad row when a
    label is missing, not an integer, or outside ``0..num_classes-1`` (checked before training)."""
    arr = np.asarray(values, dtype=object)
    ok_type = np.array(
        [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr], dtype=bool
    )
    ok = ok_type.copy()
    ok[ok_type] = [0 <= int(v) < num_classes for v in arr[ok_type]]
    if not ok.all():
        bad = np.flatnonzero(~ok)
        shown = sorted({repr(arr[i]) for i in bad[:20]})
        raise DataError(
            f"dataset '{name}': {source} column '{column}' has {len(bad)} label(s) outside "
            f"0..{num_classes - 1} ({', '.join(shown[:5])}; first at row {int(rows[bad[0]])})"
        )
    return torch.as_tensor(arr.astype(np.int64), dtype=torch.long)


def load_image_dataset(
    name: str,
    *,
    seed: int = 0,
    data_dir=None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Task:
    spec = SPECS[name]
    parts, class_names = sampled_hf_splits(
        name,
        spec,
        spec.image_col,
        spec.label_col,
        seed=seed,
        data_dir=data_dir,
        n_train=n_train,
        n_test=n_test,
    )
    out = []
    for d, idx, source in parts:
        decoded = decoded_images(d, spec.image_col, name=name, source=source, rows=idx)
        images = _to_uint8(decoded, spec.channels, spec.size, name, source, idx)
        labels = checked_labels(
            name, d[spec.label_col], spec.num_classes, source, spec.label_col, idx
        )
        out.append(ImageSplit(images, labels, ids=torch.as_tensor(idx)))
    mean, std = channel_stats(out[0].images)
    return Task(
        name=name,
        train=out[0],
        test=out[1],
        class_names=class_names,
        mean=mean,
        std=std,
        meta={"source": str(resolve_data_dir(data_dir) or spec.hub_id)},
    )


def _register(name: str, spec: ImageSpec) -> None:
    def factory(
        seed: int = 0,
        data_dir: str | None = None,
        n_train: Count | None = None,
        n_test: Count | None = None,
    ) -> Task:
        return load_image_dataset(
            name, seed=seed, data_dir=data_dir, n_train=n_train, n_test=n_test
        )

    factory.__name__ = name
    hub = f"Hub: {spec.hub_id}; offline" if spec.hub_id else "no Hub copy; from"
    factory.__doc__ = f"{spec.description} ({hub}: <data_dir>/{name}/<split>.parquet)."
    DATASETS.register(
        name,
        description=factory.__doc__,
        modality="image",
        num_classes=spec.num_classes,
        has_masks=False,
        ground_truth=(),
    )(factory)


for _name, _spec in SPECS.items():
    _register(_name, _spec)
