"""The conformance kit fails components that break the contract, naming the checks they fail."""

from __future__ import annotations

import pytest
import torch

from xaiarena.explainers import Explainer
from xaiarena.metrics import Metric, MetricOutput
from xaiarena.ops.validation import COUNT, set_options
from xaiarena.testing import ConformanceError, check_explainer, check_metric


class PerBatchNoise(Explainer):
    """Gradient times noise drawn for the whole batch at once: a map depends on its batch mates
    (the example plugin's VarGrad did this)."""

    name = "per_batch_noise"
    family = "gradient"
    option_constraints = {"n_samples": COUNT}

    def __init__(self, n_samples: int = 2):
        set_options(self, n_samples=n_samples)

    def attribute(self, model, inputs, targets, *, generator=None):
        noise = torch.randn(inputs.shape, generator=generator)
        return (inputs * noise).sum(1)


class Unchecked(Explainer):
    """Checks its option its own way, in its own words."""

    name = "unchecked"
    family = "baseline"

    def __init__(self, scale: float = 1.0):
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale

    def attribute(self, model, inputs, targets, *, generator=None):
        return inputs.sum(1) * self.scale


class BatchMean(Metric):
    """A score normalised by the batch: depends on the batch mates."""

    name = "batch_mean"
    category = "complexity"
    requires = ()

    def evaluate(self, batch, attributions, *, generator=None, explainers=None):
        return MetricOutput(
            scores={
                self.name: {
                    k: (v.flatten(1).sum(1) / v.sum()).float() for k, v in attributions.items()
                }
            }
        )


def _failed(report) -> set[str]:
    return {check for check, _ in report.failed}


def test_batch_dependent_noise_fails_batch_size_and_batch_mates():
    report = check_explainer(PerBatchNoise, raise_on_failure=False)
    assert {"batch size", "batch mates", "metadata"} <= _failed(report)  # metadata: not registered
    assert {"shape", "determinism", "bad options refused", "untouched"} <= set(report.passed)
    with pytest.raises(
        ConformanceError, match=r"explainer 'per_batch_noise' fails \d conformance check"
    ):
        check_explainer(PerBatchNoise)


def test_options_without_declared_constraints_fail():
    report = check_explainer(Unchecked, raise_on_failure=False)
    why = dict(report.failed)["bad options refused"]
    assert "scale" in why and "option_constraints" in why


def test_a_metric_normalised_by_its_batch_fails_batch_size():
    report = check_metric(BatchMean, raise_on_failure=False)
    assert {"batch size", "metadata"} <= _failed(report)  # reordering keeps the batch's sum
    assert {"shape", "determinism"} <= set(report.passed)


def test_registered_components_pass():
    assert check_explainer("saliency").ok
    assert check_metric("sparseness").ok
