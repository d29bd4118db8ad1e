"""Device handling for the studies: evaluation.batch_size: auto and amp (CUDA only; CPU
unchanged)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from xaiarena.config import load_config
from xaiarena.engine.batching import auto_batch_size
from xaiarena.errors import ConfigError
from xaiarena.runner import run

BASE = {
    "data": {"name": "hard_mnist", "n_train": 200, "n_test": 40},
    "model": {"name": "lenet", "channels": [8, 16]},
    "training": {"epochs": 1, "batch_size": 32},
    "evaluation": {"n_samples": 12, "batch_size": 8},
    "explainers": ["gradcam", "saliency"],
    "metrics": ["topk_iou", {"name": "insertion", "steps": 5}],
}


def test_batch_size_accepts_auto_and_names_bad_values():
    assert (
        load_config({**BASE, "evaluation": {"batch_size": "auto"}}).evaluation.batch_size == "auto"
    )
    assert load_config(BASE).evaluation.batch_size == 8
    for bad in ("big", 0, True):
        with pytest.raises(ConfigError, match="evaluation.batch_size.*integer >= 1, or 'auto'"):
            load_config({**BASE, "evaluation": {"batch_size": bad}})


def test_auto_batch_size_is_the_fixed_default_on_cpu():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    assert auto_batch_size(model, torch.rand(4, 3, 2, 2), torch.device("cpu")) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_batch_size_on_cuda_is_a_bounded_power_of_two():  # pragma: no cover - GPU only
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    ).cuda()
    model(torch.rand(1, 3, 32, 32, device="cuda"))
    bs = auto_batch_size(model, torch.rand(4, 3, 32, 32), torch.device("cuda"))
    assert 8 <= bs <= 1024 and bs & (bs - 1) == 0


def test_amp_and_auto_batch_size_leave_cpu_runs_unchanged(tmp_path):
    fixed = {**BASE, "evaluation": {"n_samples": 12, "batch_size": 64}}
    plain = run(fixed, out=tmp_path / "plain", show_progress=False)
    auto = run(
        {
            **fixed,
            "amp": True,
            "device": "cpu",
            "evaluation": {"n_samples": 12, "batch_size": "auto"},
        },
        out=tmp_path / "auto",
        show_progress=False,
    )
    pd.testing.assert_frame_equal(plain.summary, auto.summary)
    assert torch.equal(plain.attributions("gradcam"), auto.attributions("gradcam"))
    assert auto.info["datasets"]["hard_mnist"]["evaluation_batch_size"] == 64
