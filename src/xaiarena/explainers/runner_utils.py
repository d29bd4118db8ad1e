"""Explain a whole image set in batches: a checked front door to :func:`xaiarena.stages.explain_in_batches`,
the one batching path of the runner and the functional API."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.seeding import base_seed
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
    sample from its own content (see :mod:`xaiarena.ops.seeding`), the maps
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
    if len(images) == 0:
        return torch.empty((0, *images.shape[2:]), dtype=torch.float32)
    from .. import stages  # the one batching path (the runner's and the functional API's)

    comp = stages.Compute(device=device, seed=base_seed(generator), batch_size=batch_size, show_progress=progress)
    return stages.explain_in_batches(comp, explainer, model, images.float(), targets, explainer.name)
