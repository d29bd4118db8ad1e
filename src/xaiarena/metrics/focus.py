"""Focus (Arias-Duart et al. 2022, "Focus! Rating XAI Methods and Finding Biases", FUZZ-IEEE).

Each evaluation sample is placed in a 2x2 mosaic with one other image of its class and two
images of other classes, all drawn from the evaluation set the batch comes from
(``EvalBatch.pool``); every explainer explains the mosaic for the sample's class, and the score
is the share of the map's positive relevance that lies on the two images of that class. See
:meth:`Focus.mosaics` for how the mosaics are drawn.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..ops.validation import OneOf, set_options
from ..registry import METRICS
from .base import EvalBatch, ExplainFn, Metric, MetricOutput
from .core import (
    BATCH_SIZE,
    NONFINITE_OUTPUT,
    SampleRNG,
    eval_mode,
    finite_rows,
    full_threads,
    nan_where,
    predict,
    prepare,
    serial_bookkeeping,
)

MOSAIC_SIZES = ("double", "same")


@METRICS.register(
    "focus",
    description="Focus (Arias-Duart et al. 2022): share of positive relevance on the "
    "target-class images of a 2x2 mosaic",
)
class Focus(Metric):
    """Positive relevance on the mosaic's two images of the sample's class over the positive
    relevance of the whole mosaic (``sum(max(a, 0) on them) / (sum(max(a, 0)) + 1e-9)``, as
    Quantus 0.6; a map without positive relevance scores 0). Higher is better, [0, 1]; a map that
    ignores the classes scores about 0.5.

    The mosaic of a sample: the sample, one other evaluation sample of its label, and two
    evaluation samples of other labels, in random quadrants (:meth:`mosaics`). ``mosaic_size:
    double`` (default, the paper's) keeps every image at full size (a ``2H x 2W`` mosaic: the model
    must accept larger inputs, e.g. a CNN with global pooling); ``same`` halves each image (2x2
    average pooling, ``H`` and ``W`` even) so that the mosaic has the model's input size. The
    explainers re-explain the mosaics for the sample's label (``explainers[name](mosaics, labels,
    generator=...)``); the maps passed in are not used.
    """

    name = "focus"
    option_constraints: ClassVar[dict] = {
        "mosaic_size": OneOf(MOSAIC_SIZES),
        "batch_size": BATCH_SIZE,
    }
    category = "localisation"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ("model", "explainer", "labels")

    def __init__(
        self, mosaic_size: str = "double", abs: bool = False, batch_size: int | None = None
    ):
        set_options(self, mosaic_size=mosaic_size)
        self.abs = bool(abs)
        set_options(self, batch_size=batch_size)

    def mosaics(
        self, batch: EvalBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """Every sample's mosaic: ``(mosaics (N, C, H', W'), target (N, 4), ok (N,), reasons)``.

        ``target[i, q]``: quadrant ``q`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)
        holds an image of sample ``i``'s label. The partners come from ``batch.pool`` (the whole
        evaluation set; the runner and ``xaiarena.evaluate`` pass it), ordered by sample id, never
        from the batch's other samples: from sample ``i``'s own stream (``"mosaic"``), one pool
        sample of its label other than itself, then two distinct pool samples of other labels, all
        uniformly; the four images (the sample first) go to a uniformly random permutation of the
        quadrants. A sample without such partners gets ``ok`` False and its reason.
        """
        return self._mosaics(batch, SampleRNG.for_batch(batch, generator, self.name))

    def _mosaics(
        self, batch: EvalBatch, rng: SampleRNG
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        pool = batch.pool
        if pool is None:
            raise ValueError(
                "metric 'focus' builds mosaics from the evaluation set: batch.pool is None; pass "
                "EvalBatch(..., pool=SamplePool(inputs, labels, sample_ids)) (the runner and "
                "xaiarena.evaluate do)"
            )
        x = batch.inputs.float()
        n, c, h, w = x.shape
        if tuple(pool.inputs.shape[1:]) != (c, h, w):
            raise ValueError(
                f"batch.pool.inputs has shape {tuple(pool.inputs.shape)}; expected (P, {c}, {h}, "
                f"{w})"
            )
        if self.mosaic_size == "same" and (h % 2 or w % 2):
            raise ValueError(
                f"mosaic_size='same' halves each image and needs even sides, got {h}x{w}; "
                "use mosaic_size='double'"
            )
        order = torch.argsort(torch.as_tensor(pool.sample_ids).reshape(-1).cpu())
        pool_ids = torch.as_tensor(pool.sample_ids).reshape(-1).cpu()[order]
        pool_labels = torch.as_tensor(pool.labels).reshape(-1).cpu().long()[order]
        ids = (
            torch.as_tensor(batch.sample_ids).reshape(-1).cpu()
            if batch.sample_ids is not None
            else torch.full((n,), -1, dtype=pool_ids.dtype)
        )
        labels = batch.labels.reshape(-1).cpu().long()
        picks = torch.zeros(n, 3, dtype=torch.long)  # pool rows (in id order) of the three partners
        quads = torch.zeros(
            n, 4, dtype=torch.long
        )  # quadrant of the sample, its partner, the two others
        ok = torch.ones(n, dtype=torch.bool)
        reasons = [""] * n
        for i in range(n):
            same = torch.nonzero((pool_labels == labels[i]) & (pool_ids != ids[i])).flatten()
            other = torch.nonzero(pool_labels != labels[i]).flatten()
            if len(same) < 1 or len(other) < 2:
                ok[i] = False
                reasons[i] = (
                    f"the evaluation set has no other sample of class {int(labels[i])}"
                    if len(same) < 1
                    else "the evaluation set has fewer than 2 samples of other classes"
                )
                continue
            g = rng.generator(i, "mosaic")
            picks[i, 0] = same[torch.randint(len(same), (1,), generator=g)]
            picks[i, 1:] = other[torch.randperm(len(other), generator=g)[:2]]
            quads[i] = torch.randperm(4, generator=g)
        rows = order[picks]  # rows of pool.inputs
        partners = (
            pool.inputs[rows.flatten()].to(device=x.device, dtype=x.dtype).view(n, 3, c, h, w)
        )
        images = torch.cat(
            [x.unsqueeze(1), partners], 1
        )  # (N, 4, C, H, W): sample, same, other, other
        if self.mosaic_size == "same":
            images = F.avg_pool2d(images.flatten(0, 1), 2).view(n, 4, c, h // 2, w // 2)
        qh, qw = images.shape[-2:]
        mosaic = torch.zeros(n, c, 2 * qh, 2 * qw, device=x.device, dtype=x.dtype)
        target = torch.zeros(n, 4, dtype=torch.bool)
        for k in range(4):  # image k of every sample into its quadrant
            for q in range(4):
                sel = torch.nonzero(quads[:, k] == q).flatten().to(x.device)
                if len(sel):
                    r, col = divmod(q, 2)
                    mosaic[sel, :, r * qh : (r + 1) * qh, col * qw : (col + 1) * qw] = images[
                        sel, k
                    ]
        target[torch.arange(n), quads[:, 0]] = True
        target[torch.arange(n), quads[:, 1]] = True
        target &= ok.view(-1, 1)
        return mosaic, target.to(x.device), ok.to(x.device), reasons

    @serial_bookkeeping
    def evaluate(
        self,
        batch: EvalBatch,
        attributions,
        *,
        generator,
        explainers: dict[str, ExplainFn] | None = None,
    ) -> MetricOutput:
        maps = prepare(batch, attributions)
        missing = [k for k in maps if not explainers or k not in explainers]
        if missing:
            raise ValueError(
                "metric 'focus' re-explains mosaics and needs explainers[name] for "
                f"{', '.join(missing)}; "
                "pass explainers={name: explain(inputs, targets, generator=...)}"
            )
        out = MetricOutput()
        if not maps:
            return out
        rng = SampleRNG.for_batch(batch, generator, self.name)
        mosaic, target, ok, reasons = self._mosaics(batch, rng)
        labels = batch.labels.to(mosaic.device).long().view(-1)
        n = len(mosaic)
        with eval_mode(batch.model) as model:
            try:
                finite = finite_rows(predict(model, mosaic, self.batch_size))
            except RuntimeError as exc:
                raise ValueError(
                    f"focus: the model cannot score the {tuple(mosaic.shape[-2:])} mosaics "
                    f"({exc}); with a model of fixed input size use mosaic_size='same' (each image "
                    "halved)"
                ) from exc
        qh, qw = mosaic.shape[-2] // 2, mosaic.shape[-1] // 2
        quad = torch.zeros(4, *mosaic.shape[-2:], dtype=torch.bool, device=mosaic.device)
        for q in range(4):
            r, col = divmod(q, 2)
            quad[q, r * qh : (r + 1) * qh, col * qw : (col + 1) * qw] = True
        on_target = (target.float() @ quad.flatten(1).float()).bool().view(n, *mosaic.shape[-2:])
        scores = {}
        for name in maps:
            with full_threads():  # the explainer's generator: the run's draw and its name only
                am = explainers[name](mosaic, labels, generator=rng.explainer_generator(name))
            am = torch.as_tensor(am).detach().to(mosaic.device).float()
            bad_map = ~torch.isfinite(am).flatten(1).all(1)
            am = torch.nan_to_num(am.abs() if self.abs else am).clamp_min(0).flatten(1).double()
            value = ((am * on_target.flatten(1)).sum(1) / (am.sum(1) + 1e-9)).float()
            value = nan_where(value, ~finite, self.name, NONFINITE_OUTPUT, name)
            value = nan_where(
                value,
                finite & bad_map,
                self.name,
                "the map of the mosaic is not finite (NaN or inf)",
                name,
            )
            for reason in sorted({r for r in reasons if r}):
                why = torch.tensor([r == reason for r in reasons], device=mosaic.device)
                value = nan_where(value, why & finite & ~bad_map, self.name, reason, name)
            scores[name] = value
        out.scores[self.name] = scores
        return out


__all__ = ["MOSAIC_SIZES", "Focus"]
