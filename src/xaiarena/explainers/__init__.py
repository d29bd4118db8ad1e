"""Explainers. Importing this package registers every built-in explainer."""

from . import (  # noqa: F401  (registration)
    baselines,
    cam,
    diet,  # noqa: F401
    gradients,
    lrp,
    perturbation,
    propagation,
    text,
)
from .base import REDUCTIONS, Explainer, reduce_channels
from .diet import text as _diet_text  # noqa: F401  (registers text_diet; importing diet registers diet)

__all__ = ["Explainer", "REDUCTIONS", "reduce_channels"]
