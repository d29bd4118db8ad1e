"""Model modes for the duration of a block, restored afterwards: eval mode, frozen parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag afterwards.

    ``model.train(was_training)`` would set all submodules to the root's flag, losing, for
    example, a frozen BatchNorm kept in eval mode inside a training model.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def frozen(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """No parameter gradients (``requires_grad=False``) and eval mode (train mode with
    ``train=True``) for the duration; every parameter's flag and every submodule's mode are
    restored afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            model.train(train)
            yield model
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
