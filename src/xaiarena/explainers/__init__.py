"""Explainers. Importing this package registers every built-in explainer."""

from .base import REDUCTIONS, Explainer, reduce_channels

__all__ = ["Explainer", "REDUCTIONS", "reduce_channels"]
