"""Pascal VOC 2012 segmentation images with object masks, for localisation studies.

``voc2012_seg`` reads ``<data_dir>/voc2012_seg/<subset>.parquet`` (columns ``image``,
``mask``, ``file_name``, ``classes``; see ``shared/datasets/README.md``): each image with
its class-index mask (0 background, 1..20 the VOC classes, 255 void). There is no Hub
copy in this format, so a data folder is required.

**Selection.** ``min_object_fraction: 0.2`` keeps only the images whose object (the
``target_class`` mask at ``size`` x ``size``) covers at least 20 % of the image (object pixels
/ all pixels; void pixels are in the denominator, never object), before ``n_test``; a
DataError names the largest share when no image is left. Default 0: every image.

**What a sample is.** The image, resized to ``size`` x ``size`` (bilinear, the aspect ratio
is *not* kept: squashing keeps the whole object in view, a centre crop would cut it), and
a boolean mask of the pixels of ``target_class`` (mask resized with nearest neighbour).
Pixels of other classes count as background. The label of every image is
``target_class``'s VOC index; class names are the 21 VOC names (0 = background).

**Void pixels (255).** VOC marks object borders (a band about 5 px wide) and ambiguous
regions as void. They are never part of the object mask. The metrics see only the mask,
so ``fg_bg_attribution`` counts void pixels as background; the non-void region is kept
in ``task.meta["valid_masks"]`` (bool, like the test masks) and its share in
``task.meta["void_fraction"]``, and :func:`fg_bg_valid` recomputes the object/background
means with void excluded (``docs/studies.md`` reports both readings for the VOC study).

**Label spaces.** ``task.meta["label_maps"]["imagenet"]`` maps VOC classes with clear
ImageNet counterparts to those ImageNet classes (aeroplane -> airliner, warplane, wing),
so a pretrained ImageNet model's accuracy is defined: a prediction is correct when it is
one of the label's ImageNet classes. Explain the model's predicted class
(``evaluation.target: prediction``): the VOC label is not an ImageNet output.

There is no training split: the shared file is one fixed subset, meant for pretrained
models (``train`` is empty, and a model that needs training fails with a clear error).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..registry import DATASETS
from .base import Count, ImageSplit, Task, channel_stats, check_count

NAME = "voc2012_seg"
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOID = 255

#: VOC class -> ImageNet-1k indices (names in models/imagenet_classes.txt); classes without a
#: clear counterpart (person, chair, pottedplant, ...) are left out: accuracy is undefined there.
IMAGENET_CLASSES_OF = {
    "aeroplane": [404, 895, 908],  # airliner, warplane, wing
    "bicycle": [444, 671],  # bicycle-built-for-two, mountain_bike
    "bird": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)),
    "boat": [472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 871, 914],
    "bottle": [440, 720, 737, 898, 907],
    "bus": [654, 779, 874],  # minibus, school_bus, trolleybus
    "car": [436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "cat": list(range(281, 286)),
    "dog": list(range(151, 269)),
    "motorbike": [665, 670],  # moped, motor_scooter
    "train": [466, 547, 565, 705, 820, 829],
}


def _resize_pair(image, mask, size: int, where: str = ""):
    from PIL import Image

    img = image.convert("RGB").resize((size, size), Image.BILINEAR)
    if mask.mode not in ("P", "L"):
        raise DataError(
            f"dataset '{NAME}': {where}mask of mode {mask.mode}, expected a palette (P) or L image"
        )
    m = mask.resize((size, size), Image.NEAREST)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), np.asarray(m, dtype=np.uint8)


@DATASETS.register(
    NAME,
    description="Pascal VOC 2012 segmentation subset (local Parquet "
    "<data_dir>/voc2012_seg/<subset>.parquet): images resized to size x size with the mask of "
    "target_class (void 255 never in the mask); test split only, for pretrained models; labels map "
    "to ImageNet classes for accuracy",
    modality="image",
    num_classes=len(VOC_CLASSES),
    has_masks=True,
    ground_truth=("masks",),
)
def voc2012_seg(
    seed: int = 0,
    data_dir: str | None = None,
    subset: str = "aeroplane",
    target_class: str = "aeroplane",
    size: Annotated[int, Field(ge=16)] = 224,
    n_test: Count | None = None,
    min_object_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0,
) -> Task:
    """Images of ``subset`` that contain ``target_class``, with that class's object mask.

    ``min_object_fraction`` (0 = off) keeps only the images whose ``target_class`` mask covers at
    least that fraction of the image: object pixels / all pixels of the mask at ``size`` x ``size``
    (void pixels count in the denominator, never as object). ``n_test`` then keeps a seeded random
    subset of the images left (all by default).

    Longer than 80 lines because its signature declares every dataset option and the body reads,
    filters, subsamples and resizes in one pass, each step with its own error.
    """
    if target_class not in VOC_CLASSES[1:]:
        raise ValueError(
            f"target_class='{target_class}' is not a VOC class; valid: {', '.join(VOC_CLASSES[1:])}"
        )
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size={size!r} is not valid; give an int >= 16 (224 for ImageNet models)")
    if (
        isinstance(min_object_fraction, bool)
        or not isinstance(min_object_fraction, (int, float))
        or not 0.0 <= min_object_fraction <= 1.0
    ):
        raise ValueError(
            f"min_object_fraction={min_object_fraction!r} is not valid; give a fraction in [0, 1] "
            "(0.2: the object covers at least 20% of the image; 0: off)"
        )
    check_count(NAME, "n_test", n_test, allow_none=True)
    from .images import decoded_images, load_hf_splits, resolve_data_dir, split_source

    ds = load_hf_splits(NAME, "", (subset,), data_dir)[subset]
    source = split_source(NAME, subset, data_dir)
    missing = [c for c in ("image", "mask") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"dataset '{NAME}': {source} lacks column(s) {', '.join(map(repr, missing))}; expected "
            f"'image' and 'mask' (and optionally 'classes', 'file_name'), found {ds.column_names}"
        )
    cls = VOC_CLASSES.index(target_class)
    if "classes" in ds.column_names:
        rows = np.array([i for i, c in enumerate(ds["classes"]) if cls in c], dtype=np.int64)
    else:
        rows = np.arange(len(ds))
    select_first = min_object_fraction > 0  # the selection rule needs every candidate's mask

    def pick(candidates: np.ndarray) -> np.ndarray:
        if n_test is not None and n_test < len(candidates):
            rng = np.random.default_rng(seed)
            return np.sort(rng.choice(candidates, size=n_test, replace=False))
        return candidates

    if not select_first:
        rows = pick(rows)
    d = ds.select(rows)
    images, masks, valid, present = [], [], [], []
    decoded = zip(
        decoded_images(d, "image", name=NAME, source=source, rows=rows),
        decoded_images(d, "mask", name=NAME, source=source, rows=rows),
        strict=True,
    )
    for row, (img, mask) in zip(rows, decoded, strict=True):
        a, m = _resize_pair(img, mask, size, f"{source} row {row}: ")
        images.append(a)
        masks.append(m == cls)
        valid.append(m != VOID)
        present.append(
            sorted(int(c) for c in np.unique(m) if c not in (0, VOID))
        )  # classes at this size
    keep = np.array([m.any() for m in masks], dtype=bool)  # the class may vanish when shrunk a lot
    if not keep.any():
        raise DataError(
            f"dataset '{NAME}': no image of {source} contains '{target_class}' (at size {size})"
        )
    fractions = np.array([float(m.mean()) for m in masks])
    if select_first:
        keep &= fractions >= min_object_fraction
        if not keep.any():
            raise DataError(
                f"dataset '{NAME}': no image of {source} has '{target_class}' covering at least "
                f"{min_object_fraction:.1%} of the image "
                f"(min_object_fraction={min_object_fraction}; the largest share among its "
                f"{len(rows)} images is {fractions.max():.1%}); lower min_object_fraction"
            )
        chosen = set(pick(rows[keep]).tolist())
        keep &= np.array([r in chosen for r in rows.tolist()], dtype=bool)
    images_t = torch.from_numpy(np.stack(images)[keep])
    masks_t = torch.from_numpy(np.stack(masks)[keep])
    valid_t = torch.from_numpy(np.stack(valid)[keep])
    ids = torch.from_numpy(rows[keep])
    labels = torch.full((len(ids),), cls, dtype=torch.long)
    test = ImageSplit(images_t, labels, masks_t, ids)
    train = ImageSplit(
        torch.empty((0, 3, size, size), dtype=torch.uint8),
        torch.empty(0, dtype=torch.long),
        torch.empty((0, size, size), dtype=torch.bool),
    )
    mean, std = channel_stats(images_t)
    file_names = list(d["file_name"]) if "file_name" in d.column_names else [str(i) for i in rows]
    label_maps = {"imagenet": {VOC_CLASSES.index(k): v for k, v in IMAGENET_CLASSES_OF.items()}}
    return Task(
        name=NAME,
        train=train,
        test=test,
        class_names=list(VOC_CLASSES),
        mean=mean,
        std=std,
        meta={
            "source": str(resolve_data_dir(data_dir)),
            "subset": subset,
            "target_class": target_class,
            "file_names": [f for f, k in zip(file_names, keep, strict=True) if k],
            "valid_masks": valid_t,
            "void_fraction": float(1 - valid_t.float().mean()),
            # the target class's share of each test image (object pixels / all pixels, at size x
            # size)
            "object_fractions": [float(f) for f, k in zip(fractions, keep, strict=True) if k],
            "min_object_fraction": float(min_object_fraction),
            "label_maps": label_maps,
            "no_train_split": True,
            # VOC class indices present in each test image (for label-based neuron dissection)
            "image_classes": {"test": [c for c, k in zip(present, keep, strict=True) if k]},
        },
    )


def fg_bg_valid(
    attributions: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor | None = None,
    normalise: str = "max_abs",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean attribution inside and outside ``masks`` over the ``valid`` pixels only.

    The same quantity as the ``fg_bg_attribution`` metric (maps first divided by their
    largest magnitude with ``max_abs``, or used as they are with ``none``) except that
    pixels outside ``valid`` (VOC void) count as neither object nor background.
    """
    if normalise not in ("max_abs", "none"):
        raise ValueError(f"normalise='{normalise}' is not valid; choose max_abs or none")
    a = attributions.flatten(1).double()
    if normalise == "max_abs":
        s = a.abs().amax(1, keepdim=True)
        a = a / torch.where(s == 0, torch.ones_like(s), s)
    m = masks.flatten(1).bool()
    v = torch.ones_like(m) if valid is None else valid.flatten(1).bool()
    fg, bg = m & v, ~m & v
    fg_mean = (a * fg).sum(1) / fg.sum(1).clamp_min(1)
    bg_mean = (a * bg).sum(1) / bg.sum(1).clamp_min(1)
    nan = torch.tensor(float("nan"), dtype=a.dtype)
    return (
        torch.where(fg.sum(1) > 0, fg_mean, nan).float(),
        torch.where(bg.sum(1) > 0, bg_mean, nan).float(),
    )
