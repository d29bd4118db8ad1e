"""Agreement between the maps of two explainers (no model calls).

Outputs are per *pair*: ``scores[metric]["<a>~<b>"]`` is an ``(N,)`` tensor.
With ``reference=None`` every unordered pair is scored once, ``a`` before
``b`` in the order of the ``attributions`` dict; with ``reference="name"``
every other explainer is compared to that one and the key is
``"<reference>~<other>"`` (:mod:`xaiarena.ops.pairs`).

Rankings break ties at random with each sample's own stream for ("ties",
explainer) (see ``core.SampleRNG``): an explainer's order is the same in every
pair it belongs to, and two constant maps agree only by chance.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..ops.pairs import explainer_pairs, has_pairs, pair_key
from ..ops.validation import COUNT, Interval, Null, OneOf, Text, option_error, set_options
from ..registry import METRICS
from .base import EvalBatch, Metric, MetricOutput
from .core import (
    SampleRNG,
    logger,
    nan_where,
    note_constant_maps,
    pearson,
    prepare,
    rank_positions,
    serial_bookkeeping,
)

#: the ``reference`` option of the agreement metrics
REFERENCE = [Text("an explainer's label"), Null("every pair")]


class _Agreement(Metric):
    category = "agreement"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ()
    option_constraints: ClassVar[dict] = {"reference": REFERENCE}

    def __init__(self, reference: str | None = None, abs: bool = False):
        set_options(self, reference=reference)
        self.abs = bool(abs)

    def applies_to(self, explainers: list[str]) -> bool:
        return has_pairs(explainers, self.reference)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        return explainer_pairs(names, self.reference, self.name)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps = {k: v.flatten(1) for k, v in prepare(batch, attributions).items()}
        maps = {k: v.abs() if self.abs else v for k, v in maps.items()}
        pairs = self.pairs(list(maps))
        if not pairs:
            logger.warning("%s: fewer than two explainers, no pair to compare", self.name)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        ranks = {}
        for k, v in maps.items():
            note_constant_maps(self.name, k, v)
            ranks[k] = rank_positions(v, rng.rand((v.shape[1],), "ties", k, device=v.device))
        scores = {pair_key(a, b): self.compare(ranks[a], ranks[b], maps[a]) for a, b in pairs}
        return MetricOutput(scores={self.name: scores})

    def compare(
        self, rank_a: torch.Tensor, rank_b: torch.Tensor, map_a: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample agreement of two rank maps (N, P); rank 0 is the most important pixel.
        ``map_a`` is the first map itself (N, P), after ``abs`` if set."""
        raise NotImplementedError


class _TopK(_Agreement):
    """``k``: a pixel count, a fraction of the pixels, or ``"support"``: per sample, the number of
    positive pixels of the first map of the pair (the ``reference``), for a map that is already a
    mask, such as LIME's top superpixels (``lime`` with ``num_features``). The reference's top-k
    set is then exactly its support and the other map is binarised at the same size."""

    option_constraints: ClassVar[dict] = {
        **_Agreement.option_constraints,
        "k": [
            COUNT,
            Interval(float, 0, 1, closed="neither", noun="a fraction of the pixels"),
            OneOf(["support"]),
        ],
    }

    def __init__(self, k: int | float | str = 0.1, reference: str | None = None, abs: bool = False):
        super().__init__(reference, abs)
        set_options(self, k=k)
        if self.k == "support" and reference is None:
            raise option_error(
                self.name,
                "k",
                k,
                "a pixel count or a fraction when reference is null",
                detail="k='support' needs a reference explainer, the map whose support is the mask",
            )

    def _k(self, map_a: torch.Tensor) -> torch.Tensor:
        """Per-sample ``k`` as an ``(N, 1)`` tensor; NaN scores where it is 0."""
        n, p = map_a.shape
        if self.k == "support":
            return (map_a > 0).sum(1, keepdim=True)
        k = self.k if isinstance(self.k, int) else max(1, round(self.k * p))
        if k > p:
            raise ValueError(f"k={self.k} is larger than the number of pixels ({p})")
        return torch.full((n, 1), k, device=map_a.device)

    def compare(self, rank_a, rank_b, map_a):
        k = self._k(map_a)
        inter = ((rank_a < k) & (rank_b < k)).sum(1).float()
        k = k[:, 0].float()
        out = self.score(inter, k)
        return nan_where(
            out, k == 0, self.name, "an empty reference mask (k: support, no positive pixel)"
        )

    def score(self, inter: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@METRICS.register(
    "agreement_topk_iou",
    description="Agreement: IoU of two explainers' top-k pixels (key '<a>~<b>')",
)
class TopKIoUAgreement(_TopK):
    """IoU of the two maps binarised at their top ``k`` pixels (``k`` a count or a
    fraction of the pixels, default 10%)."""

    name = "agreement_topk_iou"

    def score(self, inter, k):
        return inter / (2 * k - inter)


@METRICS.register(
    "agreement_topk_overlap",
    description="Agreement: share of top-k pixels two explainers have in common (key '<a>~<b>')",
)
class TopKOverlapAgreement(_TopK):
    """``|top_k(a) ∩ top_k(b)| / k`` (feature agreement, Krishna et al. 2022)."""

    name = "agreement_topk_overlap"

    def score(self, inter, k):
        return inter / k


@METRICS.register(
    "agreement_spearman",
    description="Agreement: Spearman rank correlation of two explainers' maps (key '<a>~<b>')",
)
class SpearmanAgreement(_Agreement):
    """Spearman rank correlation of the two maps (Pearson correlation of their ranks,
    ties broken at random so constant regions count like random ones). Range [-1, 1]."""

    name = "agreement_spearman"
    value_range = (-1.0, 1.0)

    def compare(self, rank_a, rank_b, map_a):
        r = pearson(rank_a.double(), rank_b.double())
        return nan_where(r, torch.isnan(r), self.name, "a map with a single pixel")
