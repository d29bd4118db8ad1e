"""What a removed pixel shows: the baselines of explainers and the fills of metrics.

One function, :func:`make_fill`, builds the image ``(N, C, H, W)`` that perturbed pixels take
(pixel space): ``black`` zeros, ``white`` ones, ``mean`` each image's per-channel mean colour,
``blur`` a Gaussian blur of the image, ``uniform`` U(0, 1) noise drawn from each sample's own
generator (so that a sample's fill does not depend on its batch mates), or a number (a constant).
The explainers' ``blur`` baseline uses :data:`BASELINE_BLUR` (sigma an eighth of the shorter
image side, replicate padding); the metrics' ``blur`` fill :data:`FILL_BLUR` with the metric's
``blur_sigma`` (reflect padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .blur import KernelForm, Padding, gaussian_blur

#: the named fills (a metric's fill may also be a number, a constant); the explainers' baselines
FillName = Literal["black", "white", "mean", "blur", "uniform"]
FILLS: tuple[str, ...] = FillName.__args__


def default_blur_sigma(images: torch.Tensor) -> float:
    """An eighth of the shorter image side, at least 1 (8 px at 64x64)."""
    return max(1.0, min(images.shape[-2:]) / 8.0)


@dataclass(frozen=True)
class Blur:
    """How the ``blur`` fill blurs: ``sigma`` (None: :func:`default_blur_sigma`), ``padding`` and
    ``kernel`` as in :func:`~xaiarena.ops.blur.gaussian_blur`."""

    sigma: float | None = None
    padding: Padding = "reflect"
    kernel: KernelForm = "scaled_square"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        sigma = default_blur_sigma(images) if self.sigma is None else self.sigma
        return gaussian_blur(images, sigma, padding=self.padding, kernel=self.kernel)


#: the explainers' ``blur`` baseline (IG, GradientSHAP, DeepLIFT, occlusion, LIME, KernelSHAP)
BASELINE_BLUR = Blur(None, "replicate", "square_over_variance")
#: the metrics' ``blur`` fill (with the metric's ``blur_sigma``)
FILL_BLUR = Blur(5.0, "reflect", "scaled_square")


def make_fill(
    images: torch.Tensor,
    fill: str | float,
    *,
    generators: Sequence[torch.Generator] | None = None,
    blur: Blur = FILL_BLUR,
) -> torch.Tensor:
    """The image ``(N, C, H, W)`` that perturbed pixels of ``images`` take (see the module
    docstring). ``uniform`` needs ``generators``, one CPU generator per sample; ``blur`` says
    how ``blur`` blurs."""
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        return torch.full_like(images, float(fill))
    if fill == "black":
        return torch.zeros_like(images)
    if fill == "white":
        return torch.ones_like(images)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if fill == "blur":
        return blur(images)
    if fill == "uniform":
        if generators is None:
            raise ValueError("the uniform fill needs per-sample generators")
        if len(generators) == 0:
            return torch.empty(0, *images.shape[1:], device=images.device, dtype=images.dtype)
        noise = torch.stack([torch.rand(images.shape[1:], generator=g) for g in generators])
        return noise.to(images.device, images.dtype)
    raise ValueError(
        f"fill={fill!r} is not valid; it must be one of {', '.join(FILLS)} or a number"
    )
