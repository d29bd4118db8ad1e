"""Agreement between the maps of two explainers (no model calls).

Outputs are per *pair*: ``scores[metric]["<a>~<b>"]`` is an ``(N,)`` tensor.
With ``reference=None`` every unordered pair is scored once, ``a`` before
``b`` in the order of the ``attributions`` dict; with ``reference="name"``
every other explainer is compared to that one and the key is
``"<reference>~<other>"``.

Rankings break ties at random, with one generator per explainer derived from
the run's seed and the explainer's name: an explainer's order is the same in
every pair it belongs to, and two constant maps agree only by chance.
"""

from __future__ import annotations

import torch

from ..registry import METRICS
from .base import EvalBatch, Metric, MetricOutput
from .core import (
    draw_seed,
    explainer_generator,
    logger,
    nan_where,
    pearson,
    prepare,
    rank_positions,
    serial_bookkeeping,
)

PAIR_SEPARATOR = "~"


def pair_key(a: str, b: str) -> str:
    return f"{a}{PAIR_SEPARATOR}{b}"


class _Agreement(Metric):
    category = "agreement"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ()

    def __init__(self, reference: str | None = None, abs: bool = False):
        if reference is not None and (not isinstance(reference, str) or not reference):
            raise ValueError(f"reference={reference!r} is not valid; give an explainer name or null for all pairs")
        self.reference = reference
        self.abs = bool(abs)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        if self.reference is None:
            return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        if self.reference not in names:
            raise ValueError(f"reference='{self.reference}' is not among the explainers; valid: {', '.join(names)}")
        return [(self.reference, b) for b in names if b != self.reference]

    @serial_bookkeeping
    def evaluate(self, batch: EvalBatch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps = {k: v.flatten(1) for k, v in prepare(batch, attributions).items()}
        maps = {k: v.abs() if self.abs else v for k, v in maps.items()}
        pairs = self.pairs(list(maps))
        if not pairs:
            logger.warning("%s: fewer than two explainers, no pair to compare", self.name)
        seed = draw_seed(generator)
        ranks = {k: rank_positions(v, explainer_generator(seed, k, generator.device)) for k, v in maps.items()}
        scores = {pair_key(a, b): self.compare(ranks[a], ranks[b]) for a, b in pairs}
        return MetricOutput(scores={self.name: scores})

    def compare(self, rank_a: torch.Tensor, rank_b: torch.Tensor) -> torch.Tensor:
        """Per-sample agreement of two rank maps (N, P); rank 0 is the most important pixel."""
        raise NotImplementedError


class _TopK(_Agreement):
    def __init__(self, k: int | float = 0.1, reference: str | None = None, abs: bool = False):
        super().__init__(reference, abs)
        ok = (isinstance(k, int) and not isinstance(k, bool) and k >= 1) or (isinstance(k, float) and 0 < k < 1)
        if not ok:
            raise ValueError(f"k={k!r} is not valid; give a pixel count (int >= 1) or a fraction in (0, 1)")
        self.k = k

    def _k(self, p: int) -> int:
        k = self.k if isinstance(self.k, int) else max(1, round(self.k * p))
        if k > p:
            raise ValueError(f"k={self.k} is larger than the number of pixels ({p})")
        return k


@METRICS.register("agreement_topk_iou", description="Agreement: IoU of two explainers' top-k pixels (key '<a>~<b>')")
class TopKIoUAgreement(_TopK):
    """IoU of the two maps binarised at their top ``k`` pixels (``k`` a count or a
    fraction of the pixels, default 10%)."""

    name = "agreement_topk_iou"

    def compare(self, rank_a, rank_b):
        k = self._k(rank_a.shape[1])
        inter = ((rank_a < k) & (rank_b < k)).sum(1).float()
        return inter / (2 * k - inter)


@METRICS.register("agreement_topk_overlap", description="Agreement: share of top-k pixels two explainers have in common (key '<a>~<b>')")
class TopKOverlapAgreement(_TopK):
    """``|top_k(a) ∩ top_k(b)| / k`` (feature agreement, Krishna et al. 2022)."""

    name = "agreement_topk_overlap"

    def compare(self, rank_a, rank_b):
        k = self._k(rank_a.shape[1])
        return ((rank_a < k) & (rank_b < k)).sum(1).float() / k


@METRICS.register("agreement_spearman", description="Agreement: Spearman rank correlation of two explainers' maps (key '<a>~<b>')")
class SpearmanAgreement(_Agreement):
    """Spearman rank correlation of the two maps (Pearson correlation of their ranks,
    ties broken at random so constant regions count like random ones). Range [-1, 1]."""

    name = "agreement_spearman"
    value_range = (-1.0, 1.0)

    def compare(self, rank_a, rank_b):
        r = pearson(rank_a.double(), rank_b.double())
        return nan_where(r, torch.isnan(r), self.name, "a map with a single pixel")
