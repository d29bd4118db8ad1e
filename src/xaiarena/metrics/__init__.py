"""Metrics. Importing this package registers every built-in metric."""

from . import agreement, complexity, faithfulness, localisation, robustness, sanity, text  # noqa: F401
from . import attribution_sums, focus, road, stability  # noqa: F401
from .base import CATEGORIES, EvalBatch, Metric, MetricOutput, OutputSpec, SamplePool

__all__ = ["CATEGORIES", "EvalBatch", "Metric", "MetricOutput", "OutputSpec", "SamplePool"]
