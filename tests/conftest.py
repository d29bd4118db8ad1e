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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): a second thread only adds spin-waiting, most of all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """tiny_bert trained on planted_sentiment, frozen (the checkpoint is shared by the text test
    modules through the session's base temp folder)."""
    from xaiarena.config import TrainingConfig
    from xaiarena.data import load_task
    from xaiarena.models import build_model, train_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = load_task("planted_sentiment", seed=0, n_train=1000, n_test=100)
    model = build_model("tiny_bert", task, seed=0)
    res = train_model(model, task, TrainingConfig(epochs=4, batch_size=32, lr=3e-3, optimizer="adamw"), seed=0,
                      device=torch.device("cpu"), show_progress=False,
                      checkpoint_dir=tmp_path_factory.getbasetemp() / "tiny_bert_planted")
    assert res.test_accuracy > 0.9, res.history
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return task, model
