"""How explainers call the model: scoped hooks, target scores, input gradients, scoring of
perturbed inputs in batches, and bilinear upsampling of coarse maps to the input's size.

Baselines (reference inputs) come from :func:`xaiarena.ops.fill.make_fill` with
``blur=BASELINE_BLUR``; per-sample random streams from :mod:`xaiarena.ops.seeding`; option
checks from :mod:`xaiarena.ops.validation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def forward_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """Register ``hook`` as a forward hook for the duration of the block, removed even on error."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def forward_pre_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """Register ``hook`` as a forward pre-hook for the duration of the block, removed even on
    error."""
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def target_scores(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``outputs[i, targets[i]]`` as ``(N,)``."""
    if outputs.ndim != 2:
        raise RuntimeError(
            f"the model must return (N, classes) scores, got shape {tuple(outputs.shape)}"
        )
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


def input_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``d model(x)[target] / dx`` for every row, in chunks of ``batch_size`` rows."""
    grads = torch.empty_like(inputs)
    with torch.enable_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            score = target_scores(model(x), targets[start : start + batch_size])
            (g,) = torch.autograd.grad(score.sum(), x)
            grads[start : start + batch_size] = g
    return grads


#: perturbed inputs are built for up to this many elements at once (fewer, larger tensor ops)
PREPARE_ELEMENTS = 2**23


def prepare_rows(batch_size: int, row_shape: Sequence[int], n_rows: int) -> int:
    """How many perturbed rows to build at once: a few forward batches, at most ~32 MB of
    float32."""
    per_row = max(1, math.prod(row_shape))
    group = max(1, min(4, PREPARE_ELEMENTS // (batch_size * per_row)))
    return max(1, min(n_rows, batch_size * group))


@torch.no_grad()
def forward_scores(
    model: nn.Module,
    n_rows: int,
    make_batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    softmax: bool = False,
    prepare: int | None = None,
) -> torch.Tensor:
    """Score ``n_rows`` perturbed inputs, ``batch_size`` per forward pass.

    ``make_batch(start, stop)`` returns the perturbed inputs of rows
    ``start:stop`` and their target classes; it is called for ``prepare`` rows
    at a time (a multiple of ``batch_size``; default one batch), which are then
    scored ``batch_size`` at a time. The result is ``(n_rows,)``.
    """
    prepare = batch_size if prepare is None else max(batch_size, prepare // batch_size * batch_size)
    out: torch.Tensor | None = None
    for start in range(0, n_rows, prepare):
        stop = min(start + prepare, n_rows)
        xs, ts = make_batch(start, stop)
        for a in range(0, stop - start, batch_size):
            logits = model(xs[a : a + batch_size])
            if softmax:
                logits = logits.softmax(1)
            s = target_scores(logits, ts[a : a + batch_size])
            if out is None:
                out = torch.empty(n_rows, dtype=s.dtype, device=s.device)
            out[start + a : start + a + len(s)] = s
    return out if out is not None else torch.empty(0)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``(N, h, w)`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[
        :, 0
    ]
