"""Models. Importing this package registers every built-in model."""

from . import text, user, vision  # noqa: F401
from .text import TextClassifier
from .training import TrainResult, train_model
from .vision import ImageClassifier

__all__ = ["ImageClassifier", "TextClassifier", "TrainResult", "train_model", "build_model"]


def build_model(name: str, task, *, seed: int | None = None, **params):
    """Instantiate the registered model ``name`` for ``task``.

    With ``seed``, the initial weights depend on the seed only (not on the global RNG state).
    """
    import torch

    from ..registry import MODELS

    factory = MODELS.get(name)
    if seed is None:
        return factory(task, **params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(task, **params)


from . import pretrained  # noqa: E402, F401  (registers efficientnet_lite0, torchvision, timm)
