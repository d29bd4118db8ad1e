"""Sanity baseline for text: a random score per word."""

from __future__ import annotations

from typing import ClassVar

import torch

from ...ops.validation import OneOf, set_options
from ...registry import EXPLAINERS
from .base import TextExplainer, text_generators

DISTRIBUTIONS = ("uniform", "normal")


@EXPLAINERS.register(
    "text_random",
    description="Sanity baseline for text: an i.i.d. random score per word (uniform in [0, 1) or "
    "standard normal), seeded per text by the run's generator; ignores the model.",
)
class TextRandom(TextExplainer):
    """Noise per word slot, drawn from a per-text generator (zeros past the last word)."""

    name = "text_random"
    family: ClassVar[str] = "baseline"
    option_constraints: ClassVar[dict] = {"distribution": OneOf(DISTRIBUTIONS)}

    def __init__(self, distribution: str = "uniform"):
        set_options(self, distribution=distribution)

    def attribute(self, model, inputs, targets, *, generator=None):
        draw = torch.rand if self.distribution == "uniform" else torch.randn
        maps = [draw(inputs.max_words, generator=g) for g in text_generators(inputs, generator)]
        out = torch.stack(maps) if maps else torch.zeros(0, inputs.max_words)
        return out.to(inputs.device)
