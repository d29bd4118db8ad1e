"""Conformance tests run for EVERY registered explainer: the conformance kit
(:func:`xaiarena.testing.check_explainer`) on the kit's tiny models and inputs (a seeded LeNet on
32x32 images, a random tiny BERT for texts; learned explainers are fitted on a small task first).
Expensive knobs are turned down per explainer in ``CHEAP`` (an explainer added later runs with
its defaults).
"""

from __future__ import annotations

import pytest
import torch

from tests.support.models import tiny_lenet
from xaiarena.registry import EXPLAINERS
from xaiarena.testing import check_explainer

#: cheap settings for the tests (defaults are sized for 64x64 benchmarks)
CHEAP: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 3, "stdevs": 0.05},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"window": 8, "stride": 8},
    "lime": {"n_samples": 24, "n_segments": 12},
    "kernel_shap": {"n_samples": 24, "n_segments": 12},
    "captum_lime": {"n_samples": 12},
    "deeplift_shap": {"n_samples": 2},
    "text_lime": {"n_samples": 40},
    "text_kernel_shap": {"n_samples": 40},
    "text_integrated_gradients": {"n_steps": 8},
    "diet": {
        "upsample_factor": 4,
        "rounds": 2,
        "n_train": 48,
        "batch_size": 16,
        "mask_lr": 500.0,
        "mask_max_epochs": 3,
        "model_max_epochs": 2,
        "lr_cells": None,
        "test_lr": 12.0,
        "test_max_steps": 12,
        "seed": 3,
    },
    "text_diet": {
        "n_train": 32,
        "rounds": 1,
        "mask_max_epochs": 1,
        "model_max_epochs": 1,
        "test_max_steps": 4,
        "batch_size": 16,
        "seed": 0,
    },
}


def image_explainers() -> list[str]:
    out = []
    for entry in EXPLAINERS:
        if "image" in entry.meta.get("modality", ()) and entry.meta.get("family") != "learned":
            out.append(entry.name)
    return out


NAMES = image_explainers()
#: image DiET trains f_s on a small task first (the slowest case): in the integration tier
SLOW = {"diet"}
ALL = [
    pytest.param(n, marks=pytest.mark.integration) if n in SLOW else n for n in EXPLAINERS.names()
]


def make(name: str):
    return EXPLAINERS.create(name, **CHEAP.get(name, {}))


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_there_is_something_to_test():
    expected = {
        "gradcam",
        "gradcam_pp",
        "xgradcam",
        "layercam",
        "hirescam",
        "scorecam",
        "ablationcam",
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "gradient_shap",
        "smoothgrad",
        "occlusion",
        "lime",
        "kernel_shap",
        "captum_lime",
        "random",
        "sobel",
        "lrp",
        "deeplift",
        "deeplift_shap",
        "guided_backprop",
        "guided_gradcam",
        "eigencam",
    }
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", ALL)
def test_every_explainer_passes_the_conformance_kit(name):
    """:func:`xaiarena.testing.check_explainer` on every registered explainer (images, texts,
    learned): metadata, option validation in the one format, the (N, H, W) / (N, L) contract,
    determinism under a seed, batch = one by one, independence from the batch mates, inputs,
    weights and modes untouched, hooks released (also when the model raises)."""
    check_explainer(name, CHEAP.get(name, {}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, model, data):
    x, t = data
    ex = make(name)
    cpu = ex.explain(model, x, t, generator=gen())
    cuda_model = tiny_lenet().cuda()
    out = ex.explain(cuda_model, x.cuda(), t.cuda(), generator=gen())
    assert out.device.type == "cuda"
    scale = cpu.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(out.cpu() / scale, cpu / scale, rtol=0, atol=2e-3)
