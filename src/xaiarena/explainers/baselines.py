"""Sanity baselines: maps that do not look at the model.

A faithful explainer should beat both: ``random`` is seeded noise, ``sobel`` an
edge detector (maps that look plausible but explain nothing, cf. Adebayo et al.
2018, "Sanity checks for saliency maps").
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from ..ops.seeding import sample_generators
from ..ops.validation import OneOf, set_options
from ..registry import EXPLAINERS
from .base import REDUCTIONS, Explainer, Reduction, reduce_channels

Distribution = Literal["uniform", "normal"]
DISTRIBUTIONS: tuple[str, ...] = Distribution.__args__


class _Baseline(Explainer):
    family: ClassVar[str] = "baseline"


@EXPLAINERS.register(
    "random",
    description="Sanity baseline: i.i.d. noise map (uniform in [0, 1) or standard normal), seeded "
    "by the run's generator per sample; ignores the model and the input's content.",
)
class RandomExplainer(_Baseline):
    """Noise at every pixel, drawn from a per-sample generator derived from ``generator``."""

    name = "random"
    option_constraints: ClassVar[dict] = {"distribution": OneOf(DISTRIBUTIONS)}

    def __init__(self, distribution: Distribution = "uniform"):
        set_options(self, distribution=distribution)

    def attribute(self, model, inputs, targets, *, generator=None):
        draw = torch.rand if self.distribution == "uniform" else torch.randn
        maps = torch.stack(
            [
                draw(tuple(inputs.shape[-2:]), generator=g)
                for g in sample_generators(inputs, generator)
            ]
        )
        return maps.to(inputs.device, inputs.dtype if inputs.is_floating_point() else torch.float32)


@EXPLAINERS.register(
    "sobel",
    description="Sanity baseline: Sobel edge magnitude of the input image (model independent), per "
    "channel with replicate padding, channels summed (option reduction).",
)
class SobelExplainer(_Baseline):
    """``sqrt(gx^2 + gy^2)`` per channel (3x3 Sobel kernels), then the channel ``reduction``."""

    name = "sobel"
    option_constraints: ClassVar[dict] = {"reduction": OneOf(REDUCTIONS)}

    def __init__(self, reduction: Reduction = "sum"):
        set_options(self, reduction=reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        x = inputs.detach().float()
        n, c, h, w = x.shape
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
        k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
        g = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), k)
        mag = g.pow(2).sum(1).sqrt().view(n, c, h, w)
        return reduce_channels(mag, self.reduction)
