"""Post-processing of attribution maps, per sample (an explainer entry's ``postprocess:`` list).

Each function takes maps ``(N, ...)`` (images ``(N, H, W)``, texts ``(N, L)``) and returns maps of
the same shape and dtype; every sample is processed on its own (over all its other axes), so a
map never depends on its batch mates. The steps of a list run in order, e.g.
``postprocess: [abs, normalise_by_max]``.

* ``abs``: ``|a|``.
* ``normalise_by_max``: ``a / max |a|`` (Quantus ``normalise_by_max``); values in [-1, 1].
* ``normalise_by_negative``: positive values divided by the map's maximum, negative values
  divided by the magnitude of its minimum, zeros stay zero (Quantus
  ``normalise_func.normalise_by_negative`` with ``normalise_axes`` = every axis but the first);
  values in [-1, 1], signs kept, the largest positive value becomes 1 and the most negative -1.
* ``minmax``: ``(a - min) / (max - min)``; values in [0, 1]; a constant map becomes 0.

An all-zero map stays all zero under every step (Quantus leaves an all-zero *array* unchanged; on
a batch holding one all-zero sample its ``normalise_by_max`` gives NaN and its
``normalise_by_negative`` uninitialised values for that sample).

Quantus's ``normalise_by_negative(a)`` called *without* ``normalise_axes`` (as in the Captum +
Quantus tutorial's preprocessing of a whole batch) divides by the batch's maximum and minimum
instead; a metric that normalises again per sample with this rule (``normalise:
normalise_by_negative``) gives the same scores either way, because that removes any positive
scale of each sign's part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .registry import suggest


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(len(a), -1)


def _per_sample(stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N,)`` statistic broadcast against ``like`` ``(N, ...)``."""
    return stat.view(len(like), *([1] * (like.ndim - 1)))


def abs_(a: torch.Tensor) -> torch.Tensor:
    """``|a|``."""
    return a.abs()


def normalise_by_max(a: torch.Tensor) -> torch.Tensor:
    """``a / max |a|`` per sample; an all-zero map stays zero."""
    if a.numel() == 0:
        return a.clone()
    m = _per_sample(_flat(a).abs().amax(1), a)
    return torch.where(m > 0, a / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(a))


def normalise_by_negative(a: torch.Tensor) -> torch.Tensor:
    """Quantus's ``normalise_by_negative`` per sample: ``a / max`` where ``a > 0``, ``a / |min|`` where
    ``a < 0``, 0 elsewhere."""
    if a.numel() == 0:
        return a.clone()
    mx = _per_sample(_flat(a).amax(1), a)
    mn = _per_sample(_flat(a).amin(1), a)
    one = torch.ones_like(a)
    pos = a / torch.where(mx > 0, mx, one)
    # -(a / min) as Quantus writes it: bit-identical to a / |min|
    neg = -(a / torch.where(mn < 0, mn, -one))
    return torch.where(a > 0, pos, torch.where(a < 0, neg, torch.zeros_like(a)))


def minmax(a: torch.Tensor) -> torch.Tensor:
    """``(a - min) / (max - min)`` per sample; a constant map becomes 0."""
    if a.numel() == 0:
        return a.clone()
    mx = _per_sample(_flat(a).amax(1), a)
    mn = _per_sample(_flat(a).amin(1), a)
    span = mx - mn
    return torch.where(span > 0, (a - mn) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(a))


#: name -> step, in the order the docs list them
STEPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": abs_,
    "normalise_by_max": normalise_by_max,
    "normalise_by_negative": normalise_by_negative,
    "minmax": minmax,
}

#: steps that give a zero (e.g. a text map's padding) a non-zero value
MOVES_ZERO: frozenset[str] = frozenset({"minmax"})


def check(names: Sequence[str]) -> list[str]:
    """``names`` as a list if every one is a step; else ValueError naming the bad one and the valid ones."""
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if name not in STEPS:
            hint = suggest(str(name), list(STEPS))
            did = f" (did you mean '{hint}'?)" if hint else ""
            raise ValueError(f"unknown postprocess step {name!r}{did}; valid: {', '.join(STEPS)}")
        out.append(name)
    return out


def apply(maps: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Run the steps ``names`` in order on ``maps`` ``(N, ...)``; no steps: ``maps`` unchanged."""
    for name in check(names):
        maps = STEPS[name](maps)
    return maps
