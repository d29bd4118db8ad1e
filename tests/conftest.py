"""Shared fixtures: a small Hard-MNIST task and a LeNet trained on it (once per session)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("XAIARENA_QUIET", "1")


@pytest.fixture(scope="session")
def small_task():
    from xaiarena.data import load_task

    return load_task("hard_mnist", seed=0, n_train=3000, n_test=200)


@pytest.fixture(scope="session")
def trained_lenet(small_task):
    """A LeNet trained for 3 epochs on ``small_task`` (clearly better than chance)."""
    from xaiarena.config import TrainingConfig
    from xaiarena.models import build_model, train_model

    model = build_model("lenet", small_task, seed=0)
    train_model(model, small_task, TrainingConfig(epochs=3, batch_size=64, lr=2e-3), seed=0,
                device=torch.device("cpu"), show_progress=False)
    return model.eval()


@pytest.fixture()
def batch(small_task):
    """Eight pixel-space test images, their labels and ground-truth masks."""
    idx = torch.arange(8)
    return small_task.test.float_images(idx), small_task.test.labels[idx], small_task.test.masks[idx]
