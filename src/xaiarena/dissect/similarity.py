"""Similarity between neurons and concepts, as defined by CLIP-Dissect (Oikarinen & Weng, ICLR
2023).

Every function takes

``activations``
    ``(N, M)``: one row per probe image, one column per neuron (conv channels already
    pooled over space, see :mod:`.activations`);
``scores``
    ``(N, K)``: the concept-image matrix ``P``, one column per concept (CLIP cosine
    similarities, or 0/1 ground truth from the ``annotations`` scorer),

and returns ``(M, K)``: how well each concept describes each neuron, higher is better. A
neuron's label is the concept of its largest value. The definitions and default
hyper-parameters are those of the paper and of the authors' code (``similarity.py`` in
Trustworthy-ML-Lab/CLIP-dissect); this is an independent implementation, checked against
hand-computed values in ``tests/unit/dissect/test_dissect.py``. ``docs/dissect.md`` writes the
formulas out and lists the three places where this code guards a division the authors' code leaves
to produce NaN or infinity.

The functions keep the dtype of their inputs (float32 in runs, float64 in the tests) and
work through the neurons in chunks so that the ``(top_k, neurons, K)`` gathers of a
20,000-word concept set stay within a few hundred MB.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch.nn import functional as F

from ..registry import SIMILARITIES
from .options import OptionError, check_similarity_options

#: upper bound on the elements of one gathered ``(rows, neurons, K)`` block
_CHUNK_ELEMENTS = 32_000_000


def _check(name: str, activations: torch.Tensor, scores: torch.Tensor, **options: Any) -> None:
    check_similarity_options(name, **options)
    if activations.ndim != 2 or scores.ndim != 2:
        raise ValueError(
            f"activations and scores must be 2-D (images x neurons, images x concepts); got "
            f"{tuple(activations.shape)} and {tuple(scores.shape)}"
        )
    if len(activations) != len(scores):
        raise ValueError(
            f"{len(activations)} rows of activations but {len(scores)} rows of concept scores "
            "(both must have one row per probe image)"
        )
    if scores.shape[1] == 0 or activations.shape[1] == 0:
        raise ValueError("no concepts or no neurons to compare")


def _top_k(name: str, activations: torch.Tensor, top_k: int) -> torch.Tensor:
    n = len(activations)
    if top_k > n:
        raise OptionError(
            name,
            "top_k",
            f"{name}: top_k={top_k} is more than the {n} probe "
            f"images; use top_k <= {n} or probe more images",
            top_k,
        )
    return torch.topk(activations, k=top_k, dim=0).indices  # (top_k, M), most activating first


def _chunks(m: int, rows: int, k: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, rows * k))
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def _log_p_concept_given_top(
    probs: torch.Tensor, top: torch.Tensor, weights: torch.Tensor | None, min_prob: float
) -> torch.Tensor:
    """``(M, K)``: sum over each neuron's top images of ``log(1 + w (p - 1) + min_prob)``
    (``log(p + min_prob)`` when ``weights`` is None)."""
    out = []
    for sl in _chunks(top.shape[1], top.shape[0], probs.shape[1]):
        p = probs[top[:, sl]]  # (top_k, c, K)
        if weights is not None:
            p = 1 + weights.view(-1, 1, 1) * (p - 1)
        out.append(torch.log(p + min_prob).sum(0))
    return torch.cat(out)


def _pmi(log_p_given: torch.Tensor, lam: float) -> torch.Tensor:
    """``log p(c | neuron) - lam * log p(c)`` with ``p(c)`` the mean of ``p(c | neuron)`` over the
    layer's neurons (computed in log space)."""
    log_p = torch.logsumexp(log_p_given, dim=0, keepdim=True) - math.log(log_p_given.shape[0])
    return log_p_given - lam * log_p


@SIMILARITIES.register(
    "soft_wpmi",
    description="Soft weighted pointwise mutual information (CLIP-Dissect's default): the top_k "
    "most activating images are each in the neuron's set with a probability falling linearly from "
    "p_start to p_end; p(concept | image) = softmax(a * P) over concepts",
    paper_default=True,
)
def soft_wpmi(
    activations: torch.Tensor,
    scores: torch.Tensor,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    p_start: float = 0.998,
    p_end: float = 0.97,
    min_prob: float = 1e-7,
) -> torch.Tensor:
    """SoftWPMI(neuron m, concept c) = log p(c | B_m) - lam * log p(c).

    ``q = softmax(a * scores)`` row-wise is p(concept | image). The ``top_k`` images with the
    largest activation of neuron m, ranked ``j = 0, ..., top_k - 1``, belong to the neuron's
    set B_m with probability ``w_j = p_start - j / top_k * (p_start - p_end)``, so
    ``log p(c | B_m) = sum_j log(1 + w_j (q[j, c] - 1) + min_prob)``;
    ``p(c) = mean over the layer's neurons of p(c | B_m)``.
    """
    _check(
        "soft_wpmi",
        activations,
        scores,
        top_k=top_k,
        a=a,
        lam=lam,
        p_start=p_start,
        p_end=p_end,
        min_prob=min_prob,
    )
    top = _top_k("soft_wpmi", activations, top_k)
    probs = F.softmax(a * scores, dim=1)
    steps = torch.arange(top_k, dtype=scores.dtype, device=scores.device)
    weights = p_start - steps / top_k * (p_start - p_end)
    return _pmi(_log_p_concept_given_top(probs, top, weights, min_prob), lam)


@SIMILARITIES.register(
    "wpmi",
    description="Weighted pointwise mutual information: log p(c | top_k images) - lam * log p(c), "
    "p(concept | image) = softmax(a * P)",
)
def wpmi(
    activations: torch.Tensor,
    scores: torch.Tensor,
    top_k: int = 28,
    a: float = 2.0,
    lam: float = 0.6,
    min_prob: float = 1e-7,
) -> torch.Tensor:
    """WPMI(m, c) = sum over neuron m's ``top_k`` images of ``log(q[j, c] + min_prob)`` minus
    ``lam`` times log of that quantity's exponential averaged over the layer's neurons."""
    _check("wpmi", activations, scores, top_k=top_k, a=a, lam=lam, min_prob=min_prob)
    top = _top_k("wpmi", activations, top_k)
    probs = F.softmax(a * scores, dim=1)
    return _pmi(_log_p_concept_given_top(probs, top, None, min_prob), lam)


@SIMILARITIES.register(
    "rank_reorder",
    description="Rank reorder: how little the neuron's top activations change when its top images "
    "are re-ranked by the concept's score (|.|^p error against a random-permutation baseline), "
    "divided by the concept's mean score on those images to the power scale_p; seeded",
)
def rank_reorder(
    activations: torch.Tensor,
    scores: torch.Tensor,
    p: float = 3.0,
    top_fraction: float = 0.05,
    scale_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-(error / baseline) / mean_score ** scale_p for each neuron and concept.

    For neuron m, take its ``n = int(N * top_fraction)`` most activating images with
    activations ``t_0 >= ... >= t_{n-1}`` and their concept scores ``S`` (n, K). For concept
    c, give image j the activation of the same rank in the concept's ordering:
    ``r_j = sorted(t)[rank of S[j, c] among S[:, c], ascending]``, and measure
    ``error = mean_j |t_j - r_j| ** p``. The baseline is ``mean |sorted(t) - sorted(t)[perm]| ** p``
    over 5 random permutations (``generator``). The result is divided by the concept's mean
    score on the n images to the power ``scale_p`` (clamped at 1e-12: the authors' code
    gives NaN for a negative mean), and negated so that higher is better.
    """
    _check("rank_reorder", activations, scores, p=p, top_fraction=top_fraction, scale_p=scale_p)
    n_img = len(activations)
    n = int(n_img * top_fraction)
    if n < 2:
        raise OptionError(
            "rank_reorder",
            "top_fraction",
            f"rank_reorder: top_fraction={top_fraction} of {n_img} probe images "
            f"keeps {n} image(s); rank_reorder needs at least 2 (raise top_fraction "
            "or probe more images)",
            top_fraction,
        )
    values, top = torch.topk(activations, k=n, dim=0)  # (n, M), descending
    ascending = values.flip(0)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(5)], dim=1).to(
        values.device
    )
    out = []
    for sl in _chunks(values.shape[1], n, scores.shape[1]):
        s = scores[top[:, sl]]  # (n, c, K)
        mean_s = s.mean(0)  # (c, K)
        ranks = torch.argsort(torch.argsort(s, dim=0, stable=True), dim=0, stable=True)
        asc = ascending[:, sl]  # (n, c)
        reorg = torch.gather(asc.unsqueeze(-1).expand_as(s), 0, ranks)
        err = (values[:, sl].unsqueeze(-1) - reorg).abs().pow(p).mean(0)  # (c, K)
        shuffled = asc[perms]  # (n, 5, c)
        base = (asc.unsqueeze(1) - shuffled).abs().pow(p).mean(dim=(0, 1))  # (c,)
        base = base.clamp_min(torch.finfo(values.dtype).tiny)
        out.append(-(err / base.unsqueeze(-1)) / mean_s.clamp_min(1e-12).pow(scale_p))
    return torch.cat(out)


def _unit_columns(x: torch.Tensor, min_norm: float) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True).clamp_min(min_norm)


@SIMILARITIES.register(
    "cos_similarity_cubed",
    description="Cosine similarity of the neuron's activations and the concept's scores across "
    "images, each centred and raised to the third power",
)
def cos_similarity_cubed(
    activations: torch.Tensor, scores: torch.Tensor, min_norm: float = 1e-3
) -> torch.Tensor:
    """cos(((A - mean A) ** 3)[:, m], ((P - mean P) ** 3)[:, c]), means over images, norms clamped
    at ``min_norm``."""
    _check("cos_similarity_cubed", activations, scores, min_norm=min_norm)
    a = _unit_columns((activations - activations.mean(0, keepdim=True)) ** 3, min_norm)
    s = _unit_columns((scores - scores.mean(0, keepdim=True)) ** 3, min_norm)
    return a.T @ s


@SIMILARITIES.register(
    "cos_similarity",
    description="Cosine similarity of the neuron's activations and the concept's scores across "
    "images",
)
def cos_similarity(activations: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """cos(A[:, m], P[:, c]) across the probe images (a zero column gives 0, not NaN)."""
    _check("cos_similarity", activations, scores)
    tiny = torch.finfo(activations.dtype).tiny
    return _unit_columns(activations, tiny).T @ _unit_columns(scores, tiny)


def compute(
    name: str, activations: torch.Tensor, scores: torch.Tensor, *, seed: int = 0, **options: Any
) -> torch.Tensor:
    """The registered similarity ``name`` with ``options``; a seeded generator for those that
    draw."""
    entry = SIMILARITIES.entry(name)
    kwargs = dict(options)
    if "generator" in inspect.signature(entry.factory).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return entry.factory(activations, scores, **kwargs)
