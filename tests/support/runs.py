"""The tiny run the reading tests share (tests/conftest.py's ``tiny_run_dir`` runs it once per
session): LeNet on a small Hard-MNIST, two explainers, two metrics, in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

#: overrides that shrink a config to seconds (keys of a dotted ``--set``)
TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "evaluation.n_samples": 16,
    "evaluation.batch_size": 8,
}
#: the tiny run's config (with :data:`TINY` as its overrides)
CFG = {
    "name": "t",
    "data": "hard_mnist",
    "model": "lenet",
    "explainers": ["saliency", "random"],
    "metrics": ["sparseness", "topk_iou"],
}

#: DiET at its smallest (one round, one epoch per phase, 3 test-time steps)
TINY_DIET = {
    "name": "diet",
    "n_train": 48,
    "rounds": 1,
    "mask_max_epochs": 1,
    "model_max_epochs": 1,
    "test_max_steps": 3,
}


def config(explainers: list, metrics: list, **extra) -> dict:
    """A hard_mnist / LeNet config with these explainers and metrics (and ``extra`` keys)."""
    return {
        "name": "t",
        "data": "hard_mnist",
        "model": "lenet",
        "explainers": explainers,
        "metrics": metrics,
        **extra,
    }


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of ``run_dir`` (``tmp_path / "run"``) for a test that changes a run."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    return out
