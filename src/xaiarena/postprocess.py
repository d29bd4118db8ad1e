"""Post-processing of attribution maps (an explainer entry's ``postprocess:`` list; metrics'
``normalise`` rules).

Each function takes maps ``(N, ...)`` (images ``(N, H, W)``, texts ``(N, L)``) and returns maps of
the same shape and dtype. The steps of a list run in order, e.g. ``postprocess: [abs,
normalise_by_max]``.

* ``abs``: ``|a|``.
* ``normalise_by_max``: ``a / max |a|`` (Quantus ``normalise_by_max``); values in [-1, 1].
* ``normalise_by_negative``: positive values divided by the maximum, negative values divided by
  the magnitude of the minimum, zeros stay zero (Quantus ``normalise_func.normalise_by_negative``);
  values in [-1, 1], signs kept, the largest positive value becomes 1 and the most negative -1.
* ``normalise_by_average_second_moment_estimate``: ``a / sqrt(mean(a**2))`` (Quantus's rule of
  the same name, the default ``normalise_func`` of its relative stability metrics): the values'
  root mean square becomes 1; no fixed range.
* ``minmax``: ``(a - min) / (max - min)``; values in [0, 1]; a constant map becomes 0.

**Per sample or over the set.** The rules above are per sample (over all axes but the first):
a map never depends on its batch mates. Each normalisation also exists *over the set*, with
the suffix ``_over_set`` (``normalise_by_negative_over_set``, ...): one scale (one maximum, one
minimum, one second moment) for every map of the call, which is what Quantus does when its
``normalise_func`` is called without ``normalise_axes`` (its default axes include the batch).
The result then depends on which maps are in the call, so xaiarena defines the set: an
explainer entry's steps run once on the maps of the whole evaluation set (one dataset, one
explained model, after ``only_correct``), never on a batch of ``evaluation.batch_size``; a
metric with an ``_over_set`` ``normalise`` rule is given the whole evaluation set in one call
(``Metric.needs_whole_set``), and its re-explained maps are normalised over one noise draw of
that set. Results therefore never depend on ``evaluation.batch_size``; they do depend on the
evaluation set, as the source's did on its batch.

An all-zero map stays all zero under every step (Quantus leaves an all-zero *array* unchanged; on
a batch holding one all-zero sample its per-sample ``normalise_by_max`` gives NaN, its
``normalise_by_negative`` uninitialised values and its second-moment rule skips the whole batch
with a warning).

Without ``normalise_axes`` Quantus's ``normalise_by_negative(a)`` (as the Captum + Quantus
tutorial's preprocessing of a whole batch calls it) is ``normalise_by_negative_over_set``; a
metric that normalises again per sample with this rule (``normalise: normalise_by_negative``)
gives the same scores either way, because that removes any positive scale of each sign's part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from .registry import suggest

#: the scope of a normalisation: each map on its own, or one scale for every map of the call
SCOPES = ("sample", "set")
#: the suffix of a step name that normalises over the set
SET_SUFFIX = "_over_set"


def _amax(a: torch.Tensor, over: str) -> torch.Tensor:
    """The maximum of each map (``over="sample"``, shape ``(N, 1, ...)``) or of all (a scalar)."""
    if over == "set":
        return a.amax()
    return a.reshape(len(a), -1).amax(1).view(len(a), *([1] * (a.ndim - 1)))


def _amin(a: torch.Tensor, over: str) -> torch.Tensor:
    return -_amax(-a, over)


def abs_(a: torch.Tensor) -> torch.Tensor:
    """``|a|``."""
    return a.abs()


def normalise_by_max(a: torch.Tensor, over: str = "sample") -> torch.Tensor:
    """``a / max |a|`` per sample (or over the set); an all-zero map stays zero."""
    if a.numel() == 0:
        return a.clone()
    m = _amax(a.abs(), over)
    return torch.where(m > 0, a / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(a))


def normalise_by_negative(a: torch.Tensor, over: str = "sample") -> torch.Tensor:
    """Quantus's ``normalise_by_negative`` per sample (or over the set): ``a / max`` where
    ``a > 0``, ``a / |min|`` where ``a < 0``, 0 elsewhere."""
    if a.numel() == 0:
        return a.clone()
    mx, mn = _amax(a, over), _amin(a, over)
    one = torch.ones_like(mx)
    pos = a / torch.where(mx > 0, mx, one)
    # -(a / min) as Quantus writes it: bit-identical to a / |min|
    neg = -(a / torch.where(mn < 0, mn, -one))
    return torch.where(a > 0, pos, torch.where(a < 0, neg, torch.zeros_like(a)))


def normalise_by_average_second_moment_estimate(
    a: torch.Tensor, over: str = "sample"
) -> torch.Tensor:
    """``a / sqrt(mean(a**2))`` per sample (or over the set; Quantus's rule of the same name,
    Binder et al. 2022); an all-zero map stays zero."""
    if a.numel() == 0:
        return a.clone()
    sq = a.double().square()
    if over == "set":
        ms = sq.mean()
    else:
        ms = sq.reshape(len(a), -1).mean(1).view(len(a), *([1] * (a.ndim - 1)))
    rms = ms.sqrt().to(a.dtype)
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    return torch.where(rms > 0, a / safe, torch.zeros_like(a))


def minmax(a: torch.Tensor) -> torch.Tensor:
    """``(a - min) / (max - min)`` per sample; a constant map becomes 0."""
    if a.numel() == 0:
        return a.clone()
    mx, mn = _amax(a, "sample"), _amin(a, "sample")
    span = mx - mn
    return torch.where(
        span > 0, (a - mn) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(a)
    )


#: the normalisations, per sample; each also exists over the set (name + SET_SUFFIX)
NORMALISATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "normalise_by_max": normalise_by_max,
    "normalise_by_negative": normalise_by_negative,
    "normalise_by_average_second_moment_estimate": normalise_by_average_second_moment_estimate,
}

#: name -> step, in the order the docs list them
STEPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": abs_,
    **NORMALISATIONS,
    "minmax": minmax,
    **{name + SET_SUFFIX: partial(fn, over="set") for name, fn in NORMALISATIONS.items()},
}

#: steps that give a zero (e.g. a text map's padding) a non-zero value
MOVES_ZERO: frozenset[str] = frozenset({"minmax"})
#: steps whose scale counts the zeros of a map (a text map's padding would change it)
_SECOND_MOMENT = "normalise_by_average_second_moment_estimate"
COUNTS_ZEROS: frozenset[str] = frozenset({_SECOND_MOMENT, _SECOND_MOMENT + SET_SUFFIX})


def over_set(name: str | None) -> bool:
    """Whether the step (or a metric's ``normalise`` rule) ``name`` normalises over the set."""
    return bool(name) and str(name).endswith(SET_SUFFIX)


def per_sample(name: str) -> bool:
    """Whether the step ``name`` processes each map on its own."""
    return not over_set(name)


def check(names: Sequence[str]) -> list[str]:
    """``names`` as a list if every one is a step; else ValueError naming the bad one and the valid
    ones."""
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
