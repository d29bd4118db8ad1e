"""Models. Importing this package registers every built-in model."""

from . import vision  # noqa: F401
from .training import TrainResult, train_model
from .vision import ImageClassifier

__all__ = ["ImageClassifier", "TrainResult", "train_model", "build_model"]


def build_model(name: str, task, **params):
    """Instantiate the registered model ``name`` for ``task``."""
    from ..registry import MODELS

    return MODELS.get(name)(task, **params)
