"""Perturbation curves: the machinery shared by the faithfulness metrics that perturb pixels
in the order of a map.

Every perturbation-curve metric (pixel flipping, region perturbation,
selectivity, IROF, AOPC, insertion/deletion, keep/remove) evaluates images of
the form ``where(mask, A, B)``: ``A`` is what a perturbed pixel shows (the fill
for deletion, the original image for insertion), ``B`` what an untouched pixel
shows. The mask of curve point ``s`` is "the pixel's unit is among the first
``counts[n, s]`` units of the explainer's order", so one integer map per
explainer (the rank of each pixel's unit) describes the whole curve.

:func:`masked_scores` turns ``(explainer, sample, step)`` items into images in
chunks and runs one batched forward pass per chunk, for all explainers at once.
Points where nothing or everything is perturbed do not depend on the
attribution: they are computed once per sample and shared by every explainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..ops.validation import NON_NEGATIVE, OneOf, set_options
from .base import EvalBatch, Metric
from .core import (
    BATCH_SIZE,
    FILL,
    NONFINITE_OUTPUT,
    OUTPUTS,
    SampleRNG,
    chunk_size,
    fill_image,
    finite_rows,
    forward,
    nan_where,
    note_constant_maps,
    predict,
    prepare,
    rank_positions,
    read_output,
)


@dataclass
class Scored:
    """Target scores, predicted classes and whether the model's logits were finite, all shaped
    like the items evaluated."""

    scores: torch.Tensor
    preds: torch.Tensor
    finite: torch.Tensor


def score_images(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, output: str, batch_size: int | None
) -> Scored:
    """Target scores and predictions of ``x`` (call inside ``eval_mode``)."""
    logits = predict(model, x, batch_size)
    return Scored(read_output(logits, targets, output), logits.argmax(-1), finite_rows(logits))


def masked_scores(
    model: nn.Module,
    a_img: torch.Tensor,
    b_img: torch.Tensor,
    unit_ranks: torch.Tensor,
    counts: torch.Tensor,
    n_units: torch.Tensor,
    targets: torch.Tensor,
    output: str,
    batch_size: int | None,
    shared: dict[str, Scored] | None = None,
) -> Scored:
    """Scores of ``where(unit_ranks[e, n] < counts[n, s], a_img[n], b_img[n])``.

    ``unit_ranks`` (E, N, H, W) long, ``counts`` (N, S) long, ``n_units`` (N,).
    Returns scores and predictions shaped (E, N, S). Call inside ``eval_mode``.
    ``shared`` caches the all-A / all-B forward passes between calls.
    """
    e, n, h, w = unit_ranks.shape
    s = counts.shape[1]
    device = a_img.device
    all_a = counts >= n_units.view(-1, 1)  # (N, S): everything perturbed
    all_b = counts <= 0  # nothing perturbed
    scores = torch.empty(e, n, s, device=device)
    preds = torch.empty(e, n, s, dtype=torch.long, device=device)
    finite = torch.empty(e, n, s, dtype=torch.bool, device=device)
    shared = {} if shared is None else shared
    for key, where, img in (("a", all_a, a_img), ("b", all_b, b_img)):
        if bool(where.any()):
            if key not in shared:
                shared[key] = score_images(model, img, targets, output, batch_size)
            sc = shared[key].scores.view(n, 1).expand(n, s)
            pr = shared[key].preds.view(n, 1).expand(n, s)
            fi = shared[key].finite.view(n, 1).expand(n, s)
            scores[:, where] = sc[where]
            preds[:, where] = pr[where]
            finite[:, where] = fi[where]
    mixed = ~(all_a | all_b)
    items = torch.nonzero(mixed.unsqueeze(0).expand(e, n, s))  # (M, 3): explainer, sample, step
    if len(items):
        bs = chunk_size(a_img, batch_size)
        flat_ranks = unit_ranks.reshape(e * n, h, w)
        for i in range(0, len(items), bs):
            ei, ni, si = items[i : i + bs].unbind(1)
            mask = flat_ranks[ei * n + ni] < counts[ni, si].view(-1, 1, 1)
            x = torch.where(mask.unsqueeze(1), a_img[ni], b_img[ni])
            logits = forward(model, x)
            scores[ei, ni, si] = read_output(logits, targets[ni], output)
            preds[ei, ni, si] = logits.argmax(-1)
            finite[ei, ni, si] = finite_rows(logits)
    return Scored(scores, preds, finite)


# --------------------------------------------------------------------------- units


def patch_grid(h: int, w: int, patch_size: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Patch id of every pixel for non-overlapping ``patch_size`` patches, and their number.

    Follows Quantus: when a side is not a multiple of the patch size, the image
    is padded by ``floor(pad/2)`` before and ``ceil(pad/2)`` after, so border
    patches are smaller; patches are numbered row-major.
    """
    pad_h, pad_w = (-h) % patch_size, (-w) % patch_size
    rows = (torch.arange(h, device=device) + pad_h // 2) // patch_size
    cols = (torch.arange(w, device=device) + pad_w // 2) // patch_size
    n_cols = (w + pad_w) // patch_size
    ids = rows.view(-1, 1) * n_cols + cols.view(1, -1)
    return ids, ((h + pad_h) // patch_size) * n_cols


def unit_scores(
    attr: torch.Tensor, unit_ids: torch.Tensor, n_units: int, reduce: str = "sum"
) -> torch.Tensor:
    """Sum (or mean) of ``attr`` (N, H, W) over each unit; ``unit_ids`` (H, W) or (N, H, W).

    Units a sample does not have (fewer segments) get ``-inf`` so that they rank last.
    """
    n = attr.shape[0]
    ids = unit_ids.expand_as(attr).reshape(n, -1)
    total = torch.zeros(n, n_units, device=attr.device, dtype=torch.float64)
    total.scatter_add_(1, ids, attr.reshape(n, -1).double())
    count = torch.zeros(n, n_units, device=attr.device, dtype=torch.float64)
    count.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float64))
    out = total / count.clamp_min(1) if reduce == "mean" else total
    return out.masked_fill(count == 0, float("-inf"))


def units_to_pixels(unit_rank: torch.Tensor, unit_ids: torch.Tensor) -> torch.Tensor:
    """Per-pixel rank (N, H, W) from per-unit ranks (N, U) and unit ids (H, W) or (N, H, W)."""
    n = unit_rank.shape[0]
    ids = unit_ids.expand(n, *unit_ids.shape[-2:]).reshape(n, -1)
    return unit_rank.gather(1, ids).view(n, *unit_ids.shape[-2:])


# --------------------------------------------------------------------------- base class


class PerturbationMetric(Metric):
    """Base class of metrics that perturb pixels by an attribution order.

    Config options shared by all of them: ``fill`` (what a removed pixel shows:
    black, white, mean, blur, uniform or a number), ``blur_sigma`` (for
    ``fill='blur'``), ``output`` (``probability`` or ``logit`` of the target
    class) and ``batch_size`` (images per forward pass; ``None`` picks about
    2^20 input elements per pass).
    """

    category = "faithfulness"
    requires = ("model",)
    option_constraints: ClassVar[dict] = {
        "fill": FILL,
        "output": OneOf(OUTPUTS),
        "batch_size": BATCH_SIZE,
        "blur_sigma": NON_NEGATIVE,
    }

    def __init__(
        self,
        fill: str | float = "black",
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        set_options(self, fill=fill, output=output, batch_size=batch_size, blur_sigma=blur_sigma)

    def _bounded(self) -> tuple[float, float]:
        """Range of a target score: [0, 1] for probabilities, unbounded for logits."""
        return (0.0, 1.0) if self.output == "probability" else (-math.inf, math.inf)

    def _setup(
        self,
        batch: EvalBatch,
        attributions: dict[str, torch.Tensor],
        generator: torch.Generator,
        fill: str | float | None = None,
    ):
        """Checked maps, inputs, targets, the fill image and the batch's per-sample random
        streams."""
        maps = prepare(batch, attributions)
        x = batch.inputs.float()
        targets = batch.targets.to(x.device).long().view(-1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        fill_img = fill_image(x, self.fill if fill is None else fill, rng, self.blur_sigma)
        return maps, x, targets, fill_img, rng

    def unit_ranks(
        self,
        maps: dict[str, torch.Tensor],
        rng: SampleRNG,
        unit_ids: torch.Tensor | None = None,
        n_units: torch.Tensor | int | None = None,
        *,
        descending: bool = True,
        reduce: str = "sum",
        tag: str = "",
        note: bool = True,
    ) -> torch.Tensor:
        """(E, N, H, W) rank of every pixel's unit, most important first.

        Units are pixels (``unit_ids=None``), or ``unit_ids`` (H, W) / (N, H, W) with ``n_units``
        units (an int, or per sample (N,) for segmentations) scored by the ``reduce`` of the map
        over each unit. Ties are broken by each sample's stream for ("ties", explainer, ``tag``);
        a constant map gets a logged note (``note``).
        """
        out = []
        for name, a in maps.items():
            n, h, w = a.shape
            if unit_ids is None:
                s = a.reshape(n, -1)
                u = rng.rand((h * w,), "ties", name, tag, device=a.device)
            else:
                per = torch.as_tensor(n_units, device=a.device).reshape(-1).expand(n)
                width = int(per.max()) if n else 0
                s = unit_scores(a, unit_ids, width, reduce)
                u = rng.rand_ragged(per.tolist(), width, "ties", name, tag, device=a.device)
            if note:
                note_constant_maps(self.name, name, s)
            r = rank_positions(s, u, descending)
            out.append(r.view(n, h, w) if unit_ids is None else units_to_pixels(r, unit_ids))
        return torch.stack(out) if out else torch.empty(0)

    def nan_nonfinite(
        self, values: torch.Tensor, finite: torch.Tensor, name: str, output: str | None = None
    ) -> torch.Tensor:
        """``values`` (N,) with NaN, logged, where the model's output was not finite (``finite``
        (N,))."""
        return nan_where(values, ~finite, output or self.name, NONFINITE_OUTPUT, name)

    @staticmethod
    def split(values: torch.Tensor, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows of an (E, ...) tensor keyed by explainer name."""
        return {name: values[i] for i, name in enumerate(maps)}

    def split_checked(
        self,
        values: torch.Tensor,
        finite: torch.Tensor,
        maps: dict[str, torch.Tensor],
        output: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`split` of (E, N) ``values``, NaN (logged) where ``finite`` (E, N) is False."""
        return {
            name: self.nan_nonfinite(values[i], finite[i], name, output)
            for i, name in enumerate(maps)
        }


def steps_counts(
    n_units: torch.Tensor, steps: int, fraction: float = 1.0, include_start: bool = True
) -> torch.Tensor:
    """(N, S) units perturbed at each curve point: ``round(k / steps * fraction * n_units)``."""
    k = torch.arange(
        0 if include_start else 1, steps + 1, device=n_units.device, dtype=torch.float64
    )
    return torch.round(k.view(1, -1) / steps * fraction * n_units.view(-1, 1).double()).long()


__all__ = [
    "PerturbationMetric",
    "Scored",
    "masked_scores",
    "patch_grid",
    "score_images",
    "steps_counts",
    "unit_scores",
    "units_to_pixels",
]
