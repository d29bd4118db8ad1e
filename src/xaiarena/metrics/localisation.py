"""Localisation metrics: does the map point at the ground-truth object mask?

No model calls. Rankings by attribution break ties at random with each sample's
own stream for ("ties", explainer) (see ``core.SampleRNG``), so a constant map
scores like a random map (with a logged note). Samples whose
mask is empty (or, for background statistics, full) give NaN with a logged
reason.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..ops.validation import COUNT, Interval, OneOf, set_options
from ..registry import METRICS
from .base import EvalBatch, Metric, MetricOutput, OutputSpec
from .core import (
    SampleRNG,
    nan_where,
    note_constant_maps,
    prepare,
    require_masks,
    serial_bookkeeping,
    top1,
    topk_mask,
)

NORMALISATIONS = ("max_abs", "sum_abs", "none")


class _Localisation(Metric):
    category = "localisation"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ("masks",)

    def __init__(self, abs: bool = False):
        self.abs = bool(abs)

    def _setup(self, batch: EvalBatch, attributions, generator: torch.Generator | None):
        maps = prepare(batch, attributions)
        masks = require_masks(batch, self.name).flatten(1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        out = {}
        for name, a in maps.items():
            a = a.flatten(1)
            a = a.abs() if self.abs else a
            note_constant_maps(self.name, name, a)
            out[name] = (a, rng.rand((a.shape[1],), "ties", name, device=a.device))
        return out, masks

    def _finish(self, values: dict[str, torch.Tensor], masks: torch.Tensor) -> MetricOutput:
        empty = masks.sum(1) == 0
        return MetricOutput(
            scores={
                self.name: {
                    k: nan_where(v.float(), empty, self.name, "the ground-truth mask is empty", k)
                    for k, v in values.items()
                }
            }
        )


@METRICS.register(
    "topk_iou", description="Top-k IoU with the ground-truth mask, k = mask size (DiET protocol)"
)
class TopKIoU(_Localisation):
    """IoU between the ``k`` highest-attributed pixels and the mask, ``k`` = the number
    of mask pixels (the DiET protocol). 1 for a map that ranks the mask first."""

    name = "topk_iou"

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps, masks = self._setup(batch, attributions, generator)
        k = masks.sum(1)
        values = {}
        for name, (a, g) in maps.items():
            top = topk_mask(a, k, g)
            inter = (top & masks).sum(1).float()
            values[name] = inter / (2 * k - inter).clamp_min(1)
        return self._finish(values, masks)


@METRICS.register(
    "pointing_game",
    description="Pointing game (Zhang et al. 2018): is the highest-attributed pixel inside the "
    "mask?",
)
class PointingGame(_Localisation):
    """1 if the maximum of the map lies inside the mask, else 0 (a tied maximum is
    picked at random; Quantus counts a hit if any tied maximum is inside)."""

    name = "pointing_game"

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps, masks = self._setup(batch, attributions, generator)
        values = {}
        for name, (a, g) in maps.items():
            values[name] = masks.gather(1, top1(a, g).view(-1, 1)).squeeze(1).float()
        return self._finish(values, masks)


@METRICS.register(
    "relevance_mass_accuracy",
    description="Relevance mass accuracy (Arras et al. 2022): share of attribution inside the mask",
)
class RelevanceMassAccuracy(_Localisation):
    """``sum(a inside mask) / sum(a)``. With ``abs=True`` (default) magnitudes are used and
    the value is in [0, 1]; Quantus' default is ``abs=False`` (signed sums)."""

    name = "relevance_mass_accuracy"

    def __init__(self, abs: bool = True):
        super().__init__(abs)

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator=None, explainers=None) -> MetricOutput:
        maps = {k: v.flatten(1) for k, v in prepare(batch, attributions).items()}
        masks = require_masks(batch, self.name).flatten(1)
        values = {}
        for name, a in maps.items():
            a = (a.abs() if self.abs else a).double()
            total = a.sum(1)
            v = (a * masks).sum(1) / total
            values[name] = nan_where(v.float(), total == 0, self.name, "the map sums to zero", name)
        return self._finish(values, masks)


@METRICS.register(
    "relevance_rank_accuracy",
    description="Relevance rank accuracy (Arras et al. 2022): share of the top-|mask| pixels "
    "inside the mask",
)
class RelevanceRankAccuracy(_Localisation):
    """Fraction of the ``K`` highest-attributed pixels that lie in the mask, ``K`` = mask size."""

    name = "relevance_rank_accuracy"

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps, masks = self._setup(batch, attributions, generator)
        k = masks.sum(1)
        values = {
            name: (topk_mask(a, k, g) & masks).sum(1).float() / k.clamp_min(1)
            for name, (a, g) in maps.items()
        }
        return self._finish(values, masks)


@METRICS.register(
    "top_k_intersection",
    description="Top-k intersection (Theiner et al. 2021): share of the top-k pixels inside the "
    "mask",
)
class TopKIntersection(_Localisation):
    """Fraction of the ``k`` highest-attributed pixels inside the mask. ``k`` is a pixel
    count (int >= 1) or a fraction of the pixels (float in (0, 1)); Quantus' default is
    1000 pixels. ``concept_influence=True`` multiplies by ``H*W / |mask|`` (as Quantus)."""

    name = "top_k_intersection"
    option_constraints: ClassVar[dict] = {
        "k": [COUNT, Interval(float, 0, 1, closed="neither", noun="a fraction of the pixels")],
    }

    def __init__(self, k: int | float = 0.1, concept_influence: bool = False, abs: bool = False):
        super().__init__(abs)
        set_options(self, k=k)
        self.concept_influence = bool(concept_influence)

    def outputs(self) -> list[OutputSpec]:
        return [
            OutputSpec(
                self.name, True, (0.0, float("inf")) if self.concept_influence else (0.0, 1.0)
            )
        ]

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps, masks = self._setup(batch, attributions, generator)
        p = masks.shape[1]
        k = self.k if isinstance(self.k, int) else max(1, round(self.k * p))
        if k > p:
            raise ValueError(f"k={self.k} is larger than the number of pixels ({p})")
        values = {}
        for name, (a, g) in maps.items():
            v = (topk_mask(a, k, g) & masks).sum(1).float() / k
            if self.concept_influence:
                v = v * p / masks.sum(1).clamp_min(1)
            values[name] = v
        return self._finish(values, masks)


@METRICS.register(
    "fg_bg_attribution",
    description="Mean attribution inside vs outside the ground-truth mask (per-sample pair for "
    "paired tests)",
)
class ForegroundBackground(_Localisation):
    """Outputs ``fg_mean`` (mean attribution inside the mask), ``bg_mean`` (outside) and
    ``fg_minus_bg`` (their difference; higher is better). Only ``fg_minus_bg`` ranks explainers:
    a constant map has the best possible ``fg_mean`` (and the worst ``bg_mean``), so those two
    are descriptive (``ranked=False``); a constant map's ``fg_minus_bg`` is exactly 0. Maps are
    first divided per sample by their largest magnitude (``max_abs``, default; values in [-1, 1]),
    by their summed magnitude (``sum_abs``) or not at all (``none``), so that explainers with
    different scales are comparable."""

    name = "fg_bg_attribution"
    option_constraints: ClassVar[dict] = {
        "normalise": OneOf(NORMALISATIONS),
    }
    value_range = (-2.0, 2.0)

    def __init__(self, normalise: str = "max_abs", abs: bool = False):
        super().__init__(abs)
        set_options(self, normalise=normalise)

    def outputs(self) -> list[OutputSpec]:
        r = {"max_abs": 1.0, "sum_abs": 1.0, "none": float("inf")}[self.normalise]
        lo = 0.0 if self.abs else -r
        why = (
            "a constant map scores best on fg_mean and worst on bg_mean (its mean is the same "
            "inside and outside the mask): descriptive; fg_minus_bg is the ranked contrast"
        )
        return [
            OutputSpec("fg_mean", True, (lo, r), ranked=False, unranked_reason=why),
            OutputSpec("bg_mean", False, (lo, r), ranked=False, unranked_reason=why),
            OutputSpec("fg_minus_bg", True, (lo - r, r - lo)),
        ]

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator=None, explainers=None) -> MetricOutput:
        maps = {k: v.flatten(1).double() for k, v in prepare(batch, attributions).items()}
        masks = require_masks(batch, self.name).flatten(1)
        n_fg, n_bg = masks.sum(1), (~masks).sum(1)
        out = MetricOutput(scores={"fg_mean": {}, "bg_mean": {}, "fg_minus_bg": {}})
        for name, a in maps.items():
            a = a.abs() if self.abs else a
            if self.normalise != "none":
                s = a.abs().amax(1) if self.normalise == "max_abs" else a.abs().sum(1)
                a = a / torch.where(s == 0, torch.ones_like(s), s).unsqueeze(1)
            fg = ((a * masks).sum(1) / n_fg.clamp_min(1)).float()
            bg = ((a * ~masks).sum(1) / n_bg.clamp_min(1)).float()
            fg = nan_where(fg, n_fg == 0, "fg_mean", "the ground-truth mask is empty", name)
            bg = nan_where(
                bg, n_bg == 0, "bg_mean", "the ground-truth mask covers the whole image", name
            )
            out.scores["fg_mean"][name] = fg
            out.scores["bg_mean"][name] = bg
            out.scores["fg_minus_bg"][name] = fg - bg
        return out
