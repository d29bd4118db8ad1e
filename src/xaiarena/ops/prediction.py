"""Model outputs over many inputs, a batch at a time: the one batched prediction.

:func:`predict_in_batches` slices ``inputs`` (anything with ``len()`` and slicing: a tensor, a
:class:`~xaiarena.data.text.TextBatch`, an index into a split), turns each slice into the
model's input (``prepare``: to the device, uint8 to [0, 1] floats, ...), runs ``model`` on it and
keeps what ``keep`` makes of the outputs (float logits on the CPU, predicted classes, ...).
Autograd and the model's mode are the caller's (call it inside ``torch.no_grad()`` /
:func:`~xaiarena.ops.modes.eval_mode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def predict_in_batches(
    model: Callable[[Any], torch.Tensor],
    inputs: Any,
    batch_size: int,
    *,
    prepare: Callable[[Any], Any] | None = None,
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
    empty: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``keep(model(prepare(inputs[i:i + batch_size])))`` for every batch, concatenated; with no
    inputs, ``empty()`` (default: an empty float tensor ``(0, 0)``)."""
    out = []
    for start in range(0, len(inputs), batch_size):
        xb = inputs[start : start + batch_size]
        y = model(prepare(xb) if prepare is not None else xb)
        out.append(keep(y) if keep is not None else y)
    if out:
        return torch.cat(out)
    return empty() if empty is not None else torch.empty(0, 0)


def pixels(batch: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Images as float pixels in [0, 1] on ``device``: uint8 divided by 255, floats as they are."""
    x = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch.float()
    return x if device is None else x.to(device)


def on_cpu(logits: torch.Tensor) -> torch.Tensor:
    """Float32 logits on the CPU."""
    return logits.float().cpu()


def classes_on_cpu(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes (argmax over the last dimension) on the CPU."""
    return logits.argmax(1).cpu()
