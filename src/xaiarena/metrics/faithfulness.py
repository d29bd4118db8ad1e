"""Faithfulness metrics: does removing what the map calls important change the model?

All of them perturb in pixel space (models normalise internally), rank pixels
with ties broken at random (a constant map behaves like a random one) and run
their forward passes batched over samples, steps and explainers at once. What
does not depend on the attribution (the unperturbed image, the fully perturbed
image, FaithfulnessCorrelation's random subsets, random orders) is evaluated
once per sample and shared by every explainer (common random numbers).

See ``docs/metrics.md`` for definitions and the correspondence with Quantus 0.6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from ..ops.validation import (
    COUNT,
    FRACTION,
    POSITIVE,
    Interval,
    ListOf,
    Null,
    OneOf,
    set_options,
)
from ..registry import METRICS
from .base import EvalBatch, MetricOutput, OutputSpec
from .core import (
    NONFINITE_OUTPUT,
    NORMALISE,
    SIMILARITIES,
    Normalise,
    auc,
    chunk_size,
    eval_mode,
    finite_rows,
    forward,
    logger,
    nan_where,
    normalise_maps,
    normalise_rule,
    rank_positions,
    read_output,
    serial_bookkeeping,
    similarity,
)
from .perturbation_curves import (
    PerturbationMetric,
    masked_scores,
    patch_grid,
    score_images,
    steps_counts,
    units_to_pixels,
)

UNITS = ("pixel", "patch")
ORDERS = ("morf", "lerf", "random")
#: a percentage of the pixels
PERCENTAGE = Interval(float, 0, 100, closed="right")


def _unit_grid(
    unit: str, h: int, w: int, patch_size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    if unit == "pixel":
        return torch.arange(h * w, device=device).view(h, w), h * w
    return patch_grid(h, w, patch_size, device)


def _check_patch(patch_size: int, h: int, w: int) -> None:
    if patch_size > min(h, w):
        raise ValueError(f"patch_size={patch_size} is larger than the image ({h}x{w})")


# --------------------------------------------------------------------------- keep / remove


@METRICS.register(
    "pixel_perturbation",
    description="Keep only / remove the top p% pixels: accuracy and drop in target probability",
)
class PixelPerturbation(PerturbationMetric):
    """Keep only the top ``p``% pixels (the rest filled) and remove the top ``p``%.

    For each ``p`` in ``percentages`` four outputs: ``keep{p}_accuracy`` (the
    model still predicts the label; higher is better), ``keep{p}_drop`` (target
    score of the original minus that of the kept image; lower is better),
    ``remove{p}_accuracy`` (lower is better) and ``remove{p}_drop`` (higher is
    better).
    """

    name = "pixel_perturbation"
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "percentages": [PERCENTAGE, ListOf(PERCENTAGE, unique=True)],
    }
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ("model", "labels")

    def __init__(
        self,
        percentages: Sequence[float] = (10, 20, 50),
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, percentages=percentages)
        if isinstance(self.percentages, float):
            self.percentages = (self.percentages,)

    def outputs(self) -> list[OutputSpec]:
        lo, hi = self._bounded()
        drop = (lo - hi, hi - lo)
        out = []
        for p in self.percentages:
            out += [
                OutputSpec(f"keep{p:g}_accuracy", True, (0.0, 1.0)),
                OutputSpec(f"keep{p:g}_drop", False, drop),
                OutputSpec(f"remove{p:g}_accuracy", False, (0.0, 1.0)),
                OutputSpec(f"remove{p:g}_drop", True, drop),
            ]
        return out

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        labels = batch.labels.to(x.device).long().view(-1)
        n, _, h, w = x.shape
        ranks = self.unit_ranks(maps, rng)
        npix = torch.full((n,), h * w, device=x.device)
        counts = torch.tensor([round(p / 100 * h * w) for p in self.percentages], device=x.device)
        counts = counts.view(1, -1).expand(n, -1)
        out = MetricOutput()
        if not maps:
            return out
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            keep = masked_scores(
                model, x, fill_img, ranks, counts, npix, targets, self.output, self.batch_size
            )
            remove = masked_scores(
                model, fill_img, x, ranks, counts, npix, targets, self.output, self.batch_size
            )
        for j, p in enumerate(self.percentages):
            for kind, res in (("keep", keep), ("remove", remove)):
                # an accuracy from NaN logits would look real (argmax of NaN is an arbitrary class)
                acc = (res.preds[:, :, j] == labels).float()
                drop = base.scores.view(1, -1) - res.scores[:, :, j]
                ok = res.finite[:, :, j] & base.finite.view(1, -1)
                out.scores[f"{kind}{p:g}_accuracy"] = self.split_checked(
                    acc, res.finite[:, :, j], maps, f"{kind}{p:g}_accuracy"
                )
                out.scores[f"{kind}{p:g}_drop"] = self.split_checked(
                    drop, ok, maps, f"{kind}{p:g}_drop"
                )
        return out


# --------------------------------------------------------------------------- curves


@METRICS.register(
    "pixel_flipping",
    description="Pixel flipping (Bach et al. 2015): AUC of the target score as top pixels are "
    "removed",
)
class PixelFlipping(PerturbationMetric):
    """Remove pixels in order of attribution, ``features_in_step`` at a time.

    Curve: target score after each step (Quantus ``PixelFlipping``: no
    unperturbed point, the last point has every pixel removed). Score: the
    area under the curve with x scaled to [0, 1] (Quantus' per-sample AUC
    divided by ``steps - 1``); lower is better. ``features_in_step=None``
    uses ``ceil(H*W / n_steps)``.
    """

    name = "pixel_flipping"
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "features_in_step": [COUNT, Null("ceil(H*W / n_steps)")],
        "n_steps": COUNT,
    }
    higher_is_better = False
    value_range = (0.0, 1.0)

    def __init__(
        self,
        features_in_step: int | None = None,
        n_steps: int = 50,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, features_in_step=features_in_step, n_steps=n_steps)

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec(self.name, False, self._bounded())]

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        npix = h * w
        step = self.features_in_step or math.ceil(npix / self.n_steps)
        if step > npix:
            raise ValueError(
                f"features_in_step={step} is larger than the number of pixels ({npix})"
            )
        n_points = math.ceil(npix / step)
        counts = (torch.arange(1, n_points + 1, device=x.device) * step).clamp(max=npix)
        out = MetricOutput(curve_x={self.name: counts.float() / npix})
        if not maps:
            return out
        with eval_mode(batch.model) as model:
            res = masked_scores(
                model,
                fill_img,
                x,
                self.unit_ranks(maps, rng),
                counts.expand(n, -1),
                torch.full((n,), npix, device=x.device),
                targets,
                self.output,
                self.batch_size,
            )
        out.curves[self.name] = self.split(res.scores, maps)
        out.scores[self.name] = self.split_checked(auc(res.scores), res.finite.all(-1), maps)
        return out


class _PatchCurve(PerturbationMetric):
    """Removes non-overlapping patches ordered by their summed attribution."""

    def _patch_ranks(self, maps, rng, x, patch_size: int, order: str):
        n, _, h, w = x.shape
        _check_patch(patch_size, h, w)
        ids, n_patches = patch_grid(h, w, patch_size, x.device)
        if order == "random":  # independent of the attribution: one order per sample, shared
            u = rng.rand((n_patches,), "order", device=x.device)
            r = rank_positions(u, torch.zeros_like(u))
            return units_to_pixels(r, ids).unsqueeze(0), n_patches, True
        return (
            self.unit_ranks(maps, rng, ids, n_patches, descending=order == "morf"),
            n_patches,
            False,
        )

    def _run(self, batch, maps, x, targets, fill_img, ranks, n_patches, n_points):
        n = x.shape[0]
        counts = torch.arange(1, n_points + 1, device=x.device).expand(n, -1)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            res = masked_scores(
                model,
                fill_img,
                x,
                ranks,
                counts,
                torch.full((n,), n_patches, device=x.device),
                targets,
                self.output,
                self.batch_size,
            )
        return base, res, counts[0]


@METRICS.register(
    "region_perturbation",
    description="Region perturbation (Samek et al. 2016): drop in target score as patches are "
    "removed",
)
class RegionPerturbation(_PatchCurve):
    """Remove ``patch_size`` patches in ``order`` (morf, lerf or random), up to
    ``regions_evaluation``.

    Curve: score(x) - score(x with the first k patches removed), k = 1..L
    (Quantus ``RegionPerturbation``). Score: its area with x scaled to [0, 1].
    Higher is better for MoRF, lower for LeRF; ``random`` is an explainer-free
    baseline (one random order per sample, shared by all explainers).
    """

    name = "region_perturbation"
    option_constraints: ClassVar[dict] = {
        **_PatchCurve.option_constraints,
        "patch_size": COUNT,
        "order": OneOf(ORDERS),
        "regions_evaluation": COUNT,
    }
    higher_is_better = True
    value_range = (-1.0, 1.0)  # with output="probability"; see outputs()

    def __init__(
        self,
        patch_size: int = 8,
        order: str = "morf",
        regions_evaluation: int = 100,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, patch_size=patch_size, order=order, regions_evaluation=regions_evaluation)

    def outputs(self) -> list[OutputSpec]:
        lo, hi = self._bounded()
        return [OutputSpec(self.name, self.order != "lerf", (lo - hi, hi - lo))]

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        ranks, n_patches, shared = self._patch_ranks(maps, rng, x, self.patch_size, self.order)
        n_points = min(self.regions_evaluation, n_patches)
        out = MetricOutput()
        if not maps:
            return out
        base, res, counts = self._run(batch, maps, x, targets, fill_img, ranks, n_patches, n_points)
        curve = base.scores.view(1, -1, 1) - res.scores
        finite = res.finite.all(-1) & base.finite.view(1, -1)
        if shared:
            curve, finite = curve.expand(len(maps), -1, -1), finite.expand(len(maps), -1)
        out.curve_x[self.name] = counts.float()
        out.curves[self.name] = self.split(curve, maps)
        out.scores[self.name] = self.split_checked(auc(curve), finite, maps)
        return out


@METRICS.register(
    "selectivity",
    description="Selectivity (Montavon et al. 2018): AUC of the target score as top patches are "
    "removed",
)
class Selectivity(_PatchCurve):
    """Remove every ``patch_size`` patch in MoRF order; curve: target score after each removal.

    Score: area under the curve with x scaled to [0, 1] (Quantus
    ``Selectivity`` AUC / (steps - 1)); lower is better.
    """

    name = "selectivity"
    option_constraints: ClassVar[dict] = {**_PatchCurve.option_constraints, "patch_size": COUNT}
    higher_is_better = False
    value_range = (0.0, 1.0)

    def __init__(
        self,
        patch_size: int = 8,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, patch_size=patch_size)

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec(self.name, False, self._bounded())]

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        ranks, n_patches, _ = self._patch_ranks(maps, rng, x, self.patch_size, "morf")
        out = MetricOutput()
        if not maps:
            return out
        _, res, counts = self._run(batch, maps, x, targets, fill_img, ranks, n_patches, n_patches)
        out.curve_x[self.name] = counts.float()
        out.curves[self.name] = self.split(res.scores, maps)
        out.scores[self.name] = self.split_checked(auc(res.scores), res.finite.all(-1), maps)
        return out


@METRICS.register(
    "aopc",
    description="AOPC (Samek et al. 2016) for MoRF and LeRF orders over pixel or patch steps",
)
class AOPC(PerturbationMetric):
    """Area over the perturbation curve for MoRF and LeRF orders.

    ``steps`` curve points after the unperturbed one; point ``k`` removes
    ``round(k / steps * fraction * U)`` units (pixels, or ``patch_size``
    patches ranked by summed attribution). ``AOPC = mean_{k=0..steps}
    [score(x) - score(x_k)]``. Outputs ``aopc_morf`` (higher is better),
    ``aopc_lerf`` (lower is better) and ``aopc_morf_minus_lerf`` (the area
    between the two curves; higher is better).
    """

    name = "aopc"
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "unit": OneOf(UNITS),
        "patch_size": COUNT,
        "steps": COUNT,
        "fraction": FRACTION,
    }
    higher_is_better = True
    value_range = (-1.0, 1.0)  # with output="probability"; see outputs()

    def __init__(
        self,
        unit: str = "patch",
        patch_size: int = 4,
        steps: int = 20,
        fraction: float = 1.0,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, unit=unit, patch_size=patch_size, steps=steps, fraction=fraction)

    def outputs(self) -> list[OutputSpec]:
        lo, hi = self._bounded()
        d = (lo - hi, hi - lo)
        return [
            OutputSpec("aopc_morf", True, d),
            OutputSpec("aopc_lerf", False, d),
            OutputSpec("aopc_morf_minus_lerf", True, (2 * d[0], 2 * d[1])),
        ]

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        if self.unit == "patch":
            _check_patch(self.patch_size, h, w)
        ids, n_units = _unit_grid(self.unit, h, w, self.patch_size, x.device)
        out = MetricOutput()
        if not maps:
            return out
        ranks = [
            self.unit_ranks(maps, rng, ids, n_units, tag="morf"),
            self.unit_ranks(maps, rng, ids, n_units, descending=False, tag="lerf", note=False),
        ]
        nu = torch.full((n,), n_units, device=x.device)
        counts = steps_counts(nu, self.steps, self.fraction)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            res = masked_scores(
                model,
                fill_img,
                x,
                torch.cat(ranks),
                counts,
                nu,
                targets,
                self.output,
                self.batch_size,
                shared={"b": base},
            )
        curve = base.scores.view(1, -1, 1) - res.scores
        e = len(maps)
        morf, lerf = curve[:e].mean(-1), curve[e:].mean(-1)
        fin = res.finite.all(-1) & base.finite.view(1, -1)
        fin_morf, fin_lerf = fin[:e], fin[e:]
        x_axis = counts[0].float() / n_units
        for key, c in (("aopc_morf", curve[:e]), ("aopc_lerf", curve[e:])):
            out.curve_x[key] = x_axis
            out.curves[key] = self.split(c, maps)
        out.scores["aopc_morf"] = self.split_checked(morf, fin_morf, maps, "aopc_morf")
        out.scores["aopc_lerf"] = self.split_checked(lerf, fin_lerf, maps, "aopc_lerf")
        out.scores["aopc_morf_minus_lerf"] = self.split_checked(
            morf - lerf, fin_morf & fin_lerf, maps, "aopc_morf_minus_lerf"
        )
        return out


class _InsertionDeletion(PerturbationMetric):
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "steps": COUNT,
        "unit": OneOf(UNITS),
        "patch_size": COUNT,
    }
    insert: bool = False

    def __init__(
        self,
        steps: int = 50,
        unit: str = "pixel",
        patch_size: int = 4,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, steps=steps, unit=unit, patch_size=patch_size)

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec(self.name, self.higher_is_better, self._bounded())]

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        if self.unit == "patch":
            _check_patch(self.patch_size, h, w)
        ids, n_units = _unit_grid(self.unit, h, w, self.patch_size, x.device)
        nu = torch.full((n,), n_units, device=x.device)
        counts = steps_counts(nu, self.steps)
        out = MetricOutput(curve_x={self.name: counts[0].float() / n_units})
        if not maps:
            return out
        ranks = self.unit_ranks(maps, rng, None if self.unit == "pixel" else ids, n_units)
        a_img, b_img = (x, fill_img) if self.insert else (fill_img, x)
        with eval_mode(batch.model) as model:
            res = masked_scores(
                model, a_img, b_img, ranks, counts, nu, targets, self.output, self.batch_size
            )
        out.curves[self.name] = self.split(res.scores, maps)
        out.scores[self.name] = self.split_checked(auc(res.scores), res.finite.all(-1), maps)
        return out


@METRICS.register(
    "insertion",
    description="Insertion AUC (Petsiuk et al. 2018): pixels inserted in attribution order into a "
    "blurred substrate",
)
class Insertion(_InsertionDeletion):
    """Start from the substrate (``fill``, default a Gaussian blur of the image) and
    insert the original pixels in attribution order over ``steps`` steps; score:
    area under the target-score curve (x in [0, 1]); higher is better."""

    name = "insertion"
    higher_is_better = True
    value_range = (0.0, 1.0)
    insert = True

    def __init__(
        self,
        steps: int = 50,
        unit: str = "pixel",
        patch_size: int = 4,
        fill: str | float = "blur",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(steps, unit, patch_size, fill, output, batch_size, blur_sigma)


@METRICS.register(
    "deletion",
    description="Deletion AUC (Petsiuk et al. 2018): pixels removed in attribution order",
)
class Deletion(_InsertionDeletion):
    """Remove pixels in attribution order (replaced by ``fill``, default black)
    over ``steps`` steps; score: area under the target-score curve (x in
    [0, 1]); lower is better."""

    name = "deletion"
    higher_is_better = False
    value_range = (0.0, 1.0)


@METRICS.register(
    "irof",
    description="IROF (Rieger & Hansen 2020): area over the curve as SLIC segments are removed",
)
class IROF(PerturbationMetric):
    """Iterative removal of features over SLIC superpixels.

    Segments (``skimage.segmentation.slic`` on the image, as Quantus, computed
    once per sample and shared by all explainers) are ranked by mean
    attribution and removed one by one (filled with ``fill``, default the
    sample's mean). Curve: score(x_k) / score(x), k = 1..n_segments (padded with
    the fully removed value for samples with fewer segments). Score: Quantus'
    IROF divided by the number of segments, ``1 - trapz(curve) / n_segments``;
    higher is better.
    """

    name = "irof"
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "n_segments": COUNT,
        "compactness": POSITIVE,
    }
    higher_is_better = True
    value_range = (-math.inf, 1.0)

    def __init__(
        self,
        n_segments: int = 100,
        compactness: float = 10.0,
        fill: str | float = "mean",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, n_segments=n_segments, compactness=compactness)

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        """SLIC labels (N, H, W), renumbered 0..n_segments-1 per sample."""
        from ..explainers.perturbation import slic_segments

        segs = slic_segments(x, self.n_segments, self.compactness)
        return torch.as_tensor(np.stack(segs), dtype=torch.long, device=x.device)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n = x.shape[0]
        out = MetricOutput()
        if not maps:
            return out
        seg = self.segments(x)
        n_seg = seg.view(n, -1).amax(1) + 1
        ranks = self.unit_ranks(maps, rng, seg, n_seg, reduce="mean")
        # curves padded to n_segments points (SLIC gives at most about that many), so that their
        # width does not depend on which samples share the batch
        width = max(self.n_segments, int(n_seg.max()))
        counts = torch.arange(1, width + 1, device=x.device).expand(n, -1)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            res = masked_scores(
                model, fill_img, x, ranks, counts, n_seg, targets, self.output, self.batch_size
            )
        ratio = res.scores / base.scores.view(1, -1, 1)
        valid = counts <= n_seg.view(-1, 1)  # trapezoid (k, k+1) counts when k+1 <= n_segments
        trapz = ((ratio[..., 1:] + ratio[..., :-1]) / 2 * valid[:, 1:]).sum(-1)
        irof = 1 - trapz / n_seg
        finite = res.finite.all(-1) & base.finite.view(1, -1)
        few = (n_seg < 2).expand_as(finite) & finite
        zero = (base.scores == 0).expand_as(finite) & finite & ~few
        out.curve_x[self.name] = counts[0].float()
        out.curves[self.name] = self.split(ratio, maps)
        scores = {}
        for i, name in enumerate(maps):
            v = self.nan_nonfinite(irof[i], finite[i], name)
            v = nan_where(v, few[i], self.name, "fewer than 2 SLIC segments", name)
            scores[name] = nan_where(
                v, zero[i], self.name, "the target score of the unperturbed image is 0", name
            )
        out.scores[self.name] = scores
        return out


# --------------------------------------------------------------------------- correlation


@METRICS.register(
    "faithfulness_correlation",
    description="FaithfulnessCorrelation (Bhatt et al. 2020): correlation of subset attribution "
    "sums with output drops",
)
class FaithfulnessCorrelation(PerturbationMetric):
    """Correlation, over ``nr_runs`` random pixel subsets of ``subset_size``, between the
    summed attribution of the subset and the drop in the target output when the
    subset is replaced by ``fill``.

    The subsets do not depend on the attribution: they are drawn once per
    sample and their forward passes shared by every explainer (common random
    numbers). Defaults follow Quantus: 100 runs, 224 pixels, black fill, logits,
    Pearson. Higher is better; range [-1, 1].

    ``normalise`` (per sample, before ``abs``, as Quantus orders them): true or
    ``normalise_by_max`` divides by a positive constant, which leaves a correlation unchanged;
    ``normalise_by_negative`` scales the positive and the negative part differently, which
    changes it (older Quantus releases' default ``normalise_func``).
    """

    name = "faithfulness_correlation"
    option_constraints: ClassVar[dict] = {
        **PerturbationMetric.option_constraints,
        "normalise": NORMALISE,
        "nr_runs": Interval(int, 2, None),
        "subset_size": COUNT,
        "similarity": OneOf(SIMILARITIES),
    }
    higher_is_better = True
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        nr_runs: int = 100,
        subset_size: int = 224,
        fill: str | float = "black",
        similarity: str = "pearson",
        abs: bool = False,
        output: str = "logit",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
        normalise: Normalise = False,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(
            self,
            normalise=normalise,
            nr_runs=nr_runs,
            subset_size=subset_size,
            similarity=similarity,
        )
        self.normalise = normalise_rule(self.normalise)
        self.abs = bool(abs)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        npix = h * w
        if self.subset_size >= npix:
            raise ValueError(
                f"subset_size={self.subset_size} must be smaller than the number of pixels ({npix})"
            )
        out = MetricOutput()
        if not maps:
            return out
        a_all = torch.stack(
            [normalise_maps(m.reshape(n, npix), self.normalise) for m in maps.values()]
        )
        if self.abs:
            a_all = a_all.abs()
        a_all = a_all.double()
        subsets = self.subsets(rng, n, npix).to(x.device)  # (N, R, S): drawn per sample, shared
        r_runs = self.nr_runs
        att = torch.empty(len(maps), n * r_runs, dtype=torch.float64, device=x.device)
        y_pert = torch.empty(n * r_runs, device=x.device)
        ok = torch.empty(n * r_runs, dtype=torch.bool, device=x.device)
        bs = chunk_size(x, self.batch_size)
        total = n * r_runs  # items are run-major: item i is run i // n of sample i % n
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            for i in range(0, total, bs):
                items = torch.arange(i, min(i + bs, total), device=x.device)
                ni, ri = items % n, items // n
                idx = subsets[ni, ri]
                mask = torch.zeros(len(ni), npix, dtype=torch.bool, device=x.device).scatter_(
                    1, idx, True
                )
                xp = torch.where(mask.view(-1, 1, h, w), fill_img[ni], x[ni])
                logits = forward(model, xp)
                y_pert[items] = read_output(logits, targets[ni], self.output)
                ok[items] = finite_rows(logits)
                att[:, items] = a_all[:, ni].gather(2, idx.expand(len(maps), -1, -1)).sum(-1)
        delta = base.scores.view(1, n) - y_pert.view(r_runs, n)  # (R, N)
        finite = base.finite & ok.view(r_runs, n).all(0)
        flat_delta = finite & (delta.T == delta.T[:, :1]).all(1)
        u_drops = rng.rand((r_runs,), "ties", "drops", device=x.device)
        scores = {}
        for j, name in enumerate(maps):
            sums = att[j].view(r_runs, n).T
            u_sums = rng.rand((r_runs,), "ties", name, "sums", device=x.device)
            r = similarity(self.similarity, sums, delta.T, u_sums, u_drops)
            undefined = (
                torch.isnan(r) & finite
            )  # pearson of a constant vector; spearman breaks ties instead
            flat_sums = undefined & (sums == sums[:, :1]).all(1)
            r = nan_where(r, ~finite, self.name, NONFINITE_OUTPUT, name)
            r = nan_where(
                r,
                flat_sums,
                self.name,
                "the attribution sums are constant across runs (e.g. a constant map)",
                name,
            )
            r = nan_where(
                r,
                undefined & flat_delta & ~flat_sums,
                self.name,
                "the output drops are constant across runs",
                name,
            )
            scores[name] = r
        out.scores[self.name] = scores
        logger.debug(
            "%s: %d forward passes shared by %d explainers", self.name, total + n, len(maps)
        )
        return out

    def subsets(self, rng, n: int, npix: int) -> torch.Tensor:
        """(N, R, S) pixel indices: ``nr_runs`` uniform random subsets of ``subset_size`` pixels per
        sample, all drawn from the sample's own stream (one draw of R x P uniforms)."""
        return (
            torch.stack(
                [
                    torch.rand(self.nr_runs, npix, generator=rng.generator(i, "subsets"))
                    .topk(self.subset_size, dim=1)
                    .indices
                    for i in range(n)
                ]
            )
            if n
            else torch.empty(0, self.nr_runs, self.subset_size, dtype=torch.long)
        )
