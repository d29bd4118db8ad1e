"""Metrics. Importing this package registers every built-in metric."""

from .base import CATEGORIES, EvalBatch, Metric, MetricOutput

__all__ = ["CATEGORIES", "EvalBatch", "Metric", "MetricOutput"]
