"""Text explainers: ``(N, L)`` word scores for a :class:`~xaiarena.data.text.TextBatch`.

See :mod:`xaiarena.explainers.text.base` for the interface and ``docs/text.md``.
Importing this package registers them.
"""

from . import attention, baselines, gradients, perturbation  # noqa: F401  (registration)
from .base import TextExplainer, text_generators

__all__ = ["TextExplainer", "text_generators"]
