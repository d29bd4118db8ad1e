"""Metrics. Importing this package registers every built-in metric."""

from . import (  # noqa: F401
    agreement,
    attribution_sums,
    complexity,
    faithfulness,
    focus,
    localisation,
    road,
    robustness,
    sanity,
    stability,
    text,
)
from .base import CATEGORIES, EvalBatch, Metric, MetricOutput, OutputSpec, SamplePool

__all__ = ["CATEGORIES", "EvalBatch", "Metric", "MetricOutput", "OutputSpec", "SamplePool"]
