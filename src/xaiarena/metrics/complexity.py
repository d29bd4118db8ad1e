"""Complexity metrics: how concentrated is a map? (no model calls)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..ops.validation import set_options
from ..registry import METRICS
from .base import EvalBatch, Metric, MetricOutput
from .core import (
    NORMALISE,
    Normalise,
    nan_where,
    normalise_maps,
    normalise_rule,
    prepare,
    serial_bookkeeping,
)


class _MapMetric(Metric):
    category = "complexity"
    requires = ()
    option_constraints: ClassVar[dict] = {"normalise": NORMALISE}

    def __init__(self, abs: bool = True, normalise: Normalise = True):
        self.abs = bool(abs)
        set_options(self, normalise=normalise)
        self.normalise = normalise_rule(self.normalise)

    def _maps(self, batch: EvalBatch, attributions) -> dict[str, torch.Tensor]:
        out = {}
        for name, a in prepare(batch, attributions).items():
            a = normalise_maps(a.double().flatten(1), self.normalise)
            out[name] = a.abs() if self.abs else a
        return out


@METRICS.register(
    "sparseness",
    description="Sparseness (Chalasani et al. 2020): Gini index of the attribution magnitudes",
)
class Sparseness(_MapMetric):
    """Gini index of ``|a|`` (after per-sample max normalisation and ``+1e-7``, as Quantus):
    ``sum_i (2i - P - 1) a_(i) / (P sum_i a_i)`` over the sorted values. 1 means all
    relevance on one pixel; higher is better (sparser)."""

    name = "sparseness"
    higher_is_better = True
    value_range = (0.0, 1.0)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator=None, explainers=None
    ) -> MetricOutput:
        scores = {}
        for name, a in self._maps(batch, attributions).items():
            a = torch.sort(a + 1e-7, dim=1).values
            p = a.shape[1]
            i = torch.arange(1, p + 1, device=a.device, dtype=a.dtype)
            scores[name] = (((2 * i - p - 1) * a).sum(1) / (p * a.sum(1))).float()
        return MetricOutput(scores={self.name: scores})


@METRICS.register(
    "complexity",
    description="Complexity (Bhatt et al. 2020): entropy of the attribution magnitudes",
)
class Complexity(_MapMetric):
    """Shannon entropy of ``|a| / sum |a|`` (natural log, ``+1e-12`` inside the log, as
    Quantus). 0 for all relevance on one pixel, ``log(H*W)`` for a uniform map; lower is
    better."""

    name = "complexity"
    higher_is_better = False
    value_range = (0.0, math.inf)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator=None, explainers=None
    ) -> MetricOutput:
        scores = {}
        for name, a in self._maps(batch, attributions).items():
            total = a.abs().sum(1, keepdim=True)
            p = a / total.clamp_min(1e-300)
            h = -(p * torch.log(p + 1e-12)).sum(1).float()
            scores[name] = nan_where(
                h, total.view(-1) == 0, self.name, "the map is all zeros", name
            )
        return MetricOutput(scores={self.name: scores})
