"""What the experiment runner calls to explain a whole evaluation set."""

from __future__ import annotations

import torch
from torch import nn

from ..utils import progress as _progress
from ._utils import base_seed
from .base import Explainer


def explain_in_batches(
    explainer: Explainer,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device | str,
    progress: bool = True,
) -> torch.Tensor:
    """Explain ``images`` (float pixel-space ``(N, C, H, W)``, any device) in batches on ``device``.

    Returns CPU float32 ``(N, H, W)`` maps. The model must already be on
    ``device`` (it is not moved). One seed is drawn from ``generator`` and every
    batch starts from a generator seeded with it; since explainers seed each
    sample from its own content (see :mod:`xaiarena.explainers._utils`), the maps
    do not depend on ``batch_size``.
    """
    if images.ndim != 4:
        raise ValueError(f"explain_in_batches: images must be (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"explain_in_batches: images must be float pixel-space tensors in [0, 1], got {images.dtype}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"explain_in_batches: batch_size={batch_size!r} must be an integer >= 1")
    targets = torch.as_tensor(targets).long().reshape(-1)
    if len(targets) != len(images):
        raise ValueError(f"explain_in_batches: {len(targets)} targets for {len(images)} images")
    device = torch.device(device)
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type != device.type:
        raise ValueError(
            f"explain_in_batches: the model is on {param.device} but device={device}; move it first "
            f"(model.to(device))"
        )
    n, _, h, w = images.shape
    out = torch.empty((n, h, w), dtype=torch.float32)
    seed = base_seed(generator)
    starts = range(0, n, batch_size)
    if progress:
        starts = _progress(starts, desc=f"explain {explainer.name}", total=len(starts), unit="batch")
    for start in starts:
        stop = min(start + batch_size, n)
        gen = torch.Generator().manual_seed(seed)
        xb = images[start:stop].to(device, torch.float32)
        tb = targets[start:stop].to(device)
        out[start:stop] = explainer.explain(model, xb, tb, generator=gen).to("cpu", torch.float32)
    return out
