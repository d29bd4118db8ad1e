"""Tiny models, inputs and batches that the conformance checks use when not given any.

They are small on purpose (every check runs in about a second on a laptop CPU) and fixed
(seeded), so a failing check fails the same way on every machine:

* images: a seeded LeNet on 3 x 32 x 32 that declares its CAM layer (:func:`tiny_image_model`) and
  four blocky images (:func:`tiny_images`, several SLIC superpixels each); for learned explainers a
  small task of such images (:func:`tiny_image_task`);
* texts: a randomly initialised ``tiny_bert`` and texts of ``planted_sentiment``
  (:func:`tiny_text_model`, :func:`tiny_texts`), both offline;
* metrics: a fixed random 3-class conv net on 1 x 16 x 16 images with blob masks and a
  bag-of-tokens model on synthetic :class:`~xaiarena.data.text.TextBatch` es
  (:func:`tiny_image_batch`, :func:`tiny_text_batch`), with explain functions of several kinds
  (:func:`gradient_fn`, :func:`noisy_gradient_fn`, :func:`hashed_random_fn`, :func:`constant_fn`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..metrics.base import EvalBatch, SamplePool
from ..ops.seeding import sample_generators


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- explainers: images


def tiny_image_model(seed: int = 0) -> nn.Module:
    """A seeded LeNet (4/8 channels) on 3 x 32 x 32 pixel-space inputs, 10 classes, in eval mode;
    it declares its CAM layer."""
    from ..models.vision import ImageClassifier, LeNet

    torch.manual_seed(seed)
    net = LeNet(3, 10, (32, 32), channels=(4, 8), hidden=(16,), kernel_size=3)
    return ImageClassifier(net, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)).eval()


def tiny_images(n: int = 4, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` blocky 3 x 32 x 32 images in [0, 1] (4 x 4 blocks of colour plus a little noise: SLIC
    finds several superpixels) and targets ``(n,)`` among 10 classes."""
    g = gen(seed)
    blocks = torch.rand(n, 3, 4, 4, generator=g)
    x = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.05 * torch.rand(
        n, 3, 32, 32, generator=g
    )
    targets = torch.tensor([0, 3, 5, 9] * (n // 4 + 1))[:n]
    return x.clamp(0, 1), targets


def tiny_image_task(model: nn.Module, n_train: int = 48, n_test: int = 16, seed: int = 7):
    """Training data for a learned explainer: blocky images like :func:`tiny_images`, labelled by
    ``model``'s own predictions (a :class:`~xaiarena.data.base.Task`)."""
    from ..data.base import ImageSplit, Task

    def split(n: int, s: int) -> ImageSplit:
        x, _ = tiny_images(n, s)
        with torch.no_grad():
            labels = model(x).argmax(1)
        return ImageSplit(x.mul(255).round().to(torch.uint8), labels)

    return Task(
        "xaiarena_testing",
        split(n_train, seed),
        split(n_test, seed + 1),
        [str(c) for c in range(10)],
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),
    )


# --------------------------------------------------------------------------- explainers: texts


@functools.lru_cache(maxsize=1)
def tiny_text_task(n_train: int = 64, n_test: int = 16):
    """``planted_sentiment`` (built in, offline), small."""
    from ..data import load_task

    return load_task("planted_sentiment", seed=0, n_train=n_train, n_test=n_test)


def tiny_text_model(seed: int = 0) -> nn.Module:
    """A randomly initialised ``tiny_bert`` (MiniLM's tokenizer, offline) for ``planted_sentiment``,
    in eval mode with frozen parameters."""
    from ..models import build_model

    model = build_model("tiny_bert", tiny_text_task(), seed=seed).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_texts(model: nn.Module, n: int = 6) -> tuple[Any, torch.Tensor]:
    """``n`` test texts of ``planted_sentiment`` encoded by ``model`` and their labels."""
    task = tiny_text_task()
    return model.encode(task.test.texts[:n]), task.test.labels[:n]


# --------------------------------------------------------------------------- metrics

SIDE = 16


class TinyConvNet(nn.Module):
    """A fixed random 3-class conv net on 1 x SIDE x SIDE inputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = gen(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * (SIDE // 2) ** 2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class NaNModel(nn.Module):
    """Wraps a model; every output is NaN (a diverged model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * float("nan")


class BagOfTokens(nn.Module):
    """3-class linear model on the mean embedding of the attended tokens of a TextBatch."""

    def __init__(self, vocab: int = 400, seed: int = 0):
        super().__init__()
        self.emb = nn.Parameter(torch.randn(vocab, 3, generator=gen(seed)))

    def forward(self, x):
        m = x.attention_mask.float()
        return (self.emb[x.input_ids] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)


def tiny_image_batch(n: int, seed: int = 0, model: nn.Module | None = None) -> EvalBatch:
    """``n`` smooth random 1 x 16 x 16 images with blob masks, random targets = labels, sample ids
    100.., the batch its own evaluation set (``pool``)."""
    g = gen(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, SIDE + 2, SIDE + 2, generator=g), 3, 1)
    masks = x[:, 0] > x[:, 0].flatten(1).median(1).values.view(-1, 1, 1)
    y = torch.randint(0, 3, (n,), generator=g)
    ids = torch.arange(100, 100 + n)
    return EvalBatch(
        model or TinyConvNet(), x, y, y, masks, sample_ids=ids, pool=SamplePool(x, y, ids)
    )


def tiny_text_batch(n: int, seed: int = 0, model: nn.Module | None = None) -> EvalBatch:
    """``n`` synthetic texts of 3..12 one-token words, random rationales, ids 500.."""
    from ..data.text import TextBatch

    g = gen(seed)
    n_words = torch.randint(3, 13, (n,), generator=g)
    width = int(n_words.max()) + 2
    ids = torch.zeros(n, width, dtype=torch.long)
    att = torch.zeros(n, width, dtype=torch.long)
    wid = torch.full((n, width), -1, dtype=torch.long)
    words = []
    for i, k in enumerate(n_words.tolist()):
        toks = torch.randint(110, 400, (k,), generator=g)
        ids[i, : k + 2] = torch.cat([torch.tensor([101]), toks, torch.tensor([102])])
        att[i, : k + 2] = 1
        wid[i, 1 : k + 1] = torch.arange(k)
        words.append([f"t{t}" for t in toks.tolist()])
    x = TextBatch(ids, att, wid, words, n_words, 12, {"pad": 0, "mask": 103, "unk": 100})
    masks = (torch.rand(n, 12, generator=g) < 0.3) & x.word_mask
    masks[:, 0] = True
    y = torch.randint(0, 3, (n,), generator=g)
    return EvalBatch(model or BagOfTokens(), x, y, y, masks, sample_ids=torch.arange(500, 500 + n))


def subset(batch: EvalBatch, idx) -> EvalBatch:
    """Rows ``idx`` (a list or LongTensor) of ``batch``, every field."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    return EvalBatch(
        batch.model,
        batch.inputs[idx],
        batch.targets[idx],
        batch.labels[idx],
        None if batch.masks is None else batch.masks[idx],
        None if batch.sample_ids is None else batch.sample_ids[idx],
        batch.pool,
    )


def gradient_fn(default_model: nn.Module):
    """``explain(inputs, targets, generator=None, model=...)``: |d score / d input|."""

    def explain(inputs, targets, generator=None, model=default_model):
        with torch.enable_grad():
            xi = inputs.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).gather(1, targets.view(-1, 1)).sum(), xi)
        return g.abs().sum(1).detach()

    return explain


def noisy_gradient_fn(default_model: nn.Module):
    """A randomised explainer (SmoothGrad-like, 2 draws) with per-sample randomness from the
    generator and each sample's content, as xaiarena's explainers do."""
    grad = gradient_fn(default_model)

    def explain(inputs, targets, generator=None, model=default_model):
        gens = sample_generators(inputs, generator)
        out = 0
        for _ in range(2):
            noise = torch.stack([0.1 * torch.randn(inputs.shape[1:], generator=g) for g in gens])
            out = out + grad(inputs + noise, targets, model=model)
        return out / 2

    return explain


def hashed_random_fn():
    """A model-independent random map: U(0, 1) seeded by each input's content only."""

    def explain(inputs, targets, generator=None, model=None):
        gens = sample_generators(inputs, gen(0))
        return torch.stack([torch.rand(inputs.shape[2:], generator=g) for g in gens])

    return explain


def constant_fn(value: float = 0.0):
    """A constant map."""

    def explain(inputs, targets, generator=None, model=None):
        return torch.full((inputs.shape[0], *inputs.shape[2:]), value)

    return explain


def metric_setup(modality: str, n: int = 12, model: nn.Module | None = None):
    """A batch of ``n`` samples, maps of four explainers (a constant one among them, so that ties
    matter) and, for images, their explain functions (re-explaining metrics call them)."""
    if modality == "text":
        batch = tiny_text_batch(n, model=model)
        g = gen(7)
        shape = batch.inputs.shape
        maps = {
            "a": torch.rand(shape, generator=g),
            "b": torch.randint(0, 3, shape, generator=g).float(),
            "const": torch.zeros(shape),
            "c": torch.rand(shape, generator=g),
        }
        return batch, maps, None
    batch = tiny_image_batch(n, model=model)
    good = (
        batch.model if model is None else getattr(model, "model", model)
    )  # NaNModel: its inner model
    fns = {
        "a": gradient_fn(batch.model),
        "b": noisy_gradient_fn(batch.model),
        "const": constant_fn(1.0),
        "c": hashed_random_fn(),
    }  # re-explanations explain the batch's model
    maps = {k: f(batch.inputs, batch.targets, generator=gen(3), model=good) for k, f in fns.items()}
    return batch, maps, fns
