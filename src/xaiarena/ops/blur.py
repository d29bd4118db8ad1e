"""Gaussian blur of image batches (the ``blur`` baseline of explainers and fill of metrics)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

#: how the image is extended past its border: ``replicate`` repeats the edge pixel; ``reflect``
#: mirrors the image about it (falling back to ``replicate`` where the kernel radius is not
#: smaller than the image, which ``reflect`` cannot pad)
Padding = Literal["replicate", "reflect"]
#: how the kernel's exponent is written: ``square_over_variance`` is ``-t**2 / (2 sigma**2)``,
#: ``scaled_square`` is ``-0.5 * (t / sigma)**2``. They are the same Gaussian and differ only in
#: float rounding (the last bits of some weights); each caller keeps the form it always used, so
#: that maps and scores stay bit-identical to earlier versions.
KernelForm = Literal["square_over_variance", "scaled_square"]


def gaussian_kernel(
    sigma: float,
    radius: int,
    dtype: torch.dtype,
    device: torch.device | str,
    form: KernelForm = "scaled_square",
) -> torch.Tensor:
    """The normalised 1-D Gaussian ``(2 radius + 1,)`` of standard deviation ``sigma``."""
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = (
        torch.exp(-(t**2) / (2 * sigma**2))
        if form == "square_over_variance"
        else torch.exp(-0.5 * (t / sigma) ** 2)
    )
    return k / k.sum()


def gaussian_blur(
    images: torch.Tensor,
    sigma: float,
    *,
    padding: Padding = "reflect",
    kernel: KernelForm = "scaled_square",
) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, kernel radius ``ceil(3 sigma)`` (at
    least 1); ``sigma <= 0`` returns a copy. ``padding`` and ``kernel``: see :data:`Padding` and
    :data:`KernelForm`."""
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    k = gaussian_kernel(sigma, radius, images.dtype, images.device, kernel)
    n, c, h, w = images.shape
    mode = padding if padding == "replicate" or radius < min(h, w) else "replicate"
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)
