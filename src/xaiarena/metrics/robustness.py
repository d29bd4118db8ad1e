"""Robustness metrics: how much does the map change when the input barely changes?

They re-explain noisy copies of the inputs through ``explainers[name](inputs,
targets, generator=...)``. The noise draws do not depend on the explainer:
draw ``r`` of a sample comes from that sample's own stream for ("noise", r)
(see ``core.SampleRNG``), is shared by every explainer (common random numbers),
and the draws are re-explained in large batches (several draws of the whole
batch per call). The generator given to an explainer is fresh for every call
and depends only on the run's draw and the explainer's name (explainers derive
each sample's randomness from it and the sample's content), so nothing depends
on how draws are chunked. Whether a draw changed the model's prediction is
computed once per draw, for all explainers.

An explainer whose map ignores its input (a constant map) is perfectly robust:
these outputs describe a method, they do not rank it (``ranked=False``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..ops.validation import COUNT, FINITE, POSITIVE, Null, OneOf, option_error, set_options
from ..registry import METRICS
from .base import EvalBatch, ExplainFn, Metric, MetricOutput, OutputSpec
from .core import (
    BATCH_SIZE,
    NONFINITE_OUTPUT,
    NORMALISE,
    Normalise,
    SampleRNG,
    chunk_size,
    eval_mode,
    finite_rows,
    full_threads,
    nan_where,
    normalise_maps,
    normalise_rule,
    predict,
    prepare,
    serial_bookkeeping,
)

#: why the robustness outputs are descriptive, not ranked
UNRANKED_REASON = (
    "a constant (input-independent) map scores a perfect 0: robustness describes a method next "
    "to its faithfulness, it does not rank methods on its own"
)

PREDICTION_CHANGE = ("ignore", "exclude", "nan")


class _ReExplain(Metric):
    """Base of the re-explanation metrics: noise draws, batched re-explanation, reduction."""

    option_constraints: ClassVar[dict] = {
        "nr_samples": COUNT,
        "lower_bound": FINITE,
        "upper_bound": [FINITE, Null("noise U(-lower_bound, lower_bound)")],
        "prediction_change": OneOf(PREDICTION_CHANGE),
        "normalise": NORMALISE,
        "batch_size": BATCH_SIZE,
    }

    category = "robustness"
    higher_is_better = False
    value_range = (0.0, math.inf)
    requires = ("model", "explainer")
    reduce = "max"

    def __init__(
        self,
        nr_samples: int,
        lower_bound: float,
        upper_bound: float | None,
        clip: bool,
        prediction_change: str,
        abs: bool,
        normalise: Normalise,
        batch_size: int | None,
    ):
        set_options(self, nr_samples=nr_samples, lower_bound=lower_bound, upper_bound=upper_bound)
        if upper_bound is None and lower_bound <= 0:
            raise option_error(
                self.name,
                "lower_bound",
                lower_bound,
                "a number > 0 when upper_bound is null",
                detail="the noise is U(-lower_bound, lower_bound)",
            )
        if upper_bound is not None and upper_bound <= lower_bound:
            raise option_error(
                self.name, "upper_bound", upper_bound, f"larger than lower_bound ({lower_bound!r})"
            )
        self.clip = bool(clip)
        set_options(self, prediction_change=prediction_change)
        self.abs = bool(abs)
        set_options(self, normalise=normalise, batch_size=batch_size)
        self.normalise = normalise_rule(self.normalise)

    def outputs(self) -> list[OutputSpec]:
        return [
            OutputSpec(
                self.name,
                self.higher_is_better,
                self.value_range,
                ranked=False,
                unranked_reason=UNRANKED_REASON,
            )
        ]

    def _noise(
        self, rng: SampleRNG, rows: torch.Tensor, draws: torch.Tensor, shape, device
    ) -> torch.Tensor:
        """Noise for the (sample ``rows[m]``, draw ``draws[m]``) items, each from its own stream."""
        u = rng.rand_items(rows.tolist(), draws.tolist(), shape, "noise", device=device)
        if self.upper_bound is None:
            return (2 * u - 1) * self.lower_bound
        return self.lower_bound + u * (self.upper_bound - self.lower_bound)

    def _post(self, a: torch.Tensor) -> torch.Tensor:
        a = normalise_maps(a.float(), self.normalise)
        return a.abs() if self.abs else a

    def statistic(
        self, x: torch.Tensor, xp: torch.Tensor, a: torch.Tensor, ap: torch.Tensor
    ) -> torch.Tensor:
        """Per-(draw, sample) value from inputs (k, N, C, H, W) and maps (k, N, H, W)."""
        raise NotImplementedError

    @serial_bookkeeping
    def evaluate(
        self,
        batch: EvalBatch,
        attributions,
        *,
        generator,
        explainers: dict[str, ExplainFn] | None = None,
    ) -> MetricOutput:
        maps = {k: self._post(v) for k, v in prepare(batch, attributions).items()}
        missing = [k for k in maps if not explainers or k not in explainers]
        if missing:
            raise ValueError(
                f"metric '{self.name}' re-explains noisy inputs and needs explainers[name] for "
                f"{', '.join(missing)}; pass explainers={{name: explain(inputs, targets, "
                f"generator=...)}}"
            )
        x = batch.inputs.float()
        n = x.shape[0]
        targets = batch.targets.to(x.device).long().view(-1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        stats = {k: torch.empty(self.nr_samples, n, device=x.device) for k in maps}
        remapped = {
            k: torch.zeros(self.nr_samples, n, dtype=torch.bool, device=x.device) for k in maps
        }
        changed = torch.zeros(self.nr_samples, n, dtype=torch.bool, device=x.device)
        # a map of a model without a finite output explains nothing: NaN (one forward pass per
        # batch)
        with eval_mode(batch.model) as model:
            logits0 = predict(model, x, self.batch_size)
        pred0, finite = (
            logits0.argmax(-1),
            finite_rows(logits0),
        )  # finite: on x and (if checked) every draw
        chunk = chunk_size(x, self.batch_size)
        per_call = max(1, chunk // max(n, 1))  # noise draws re-explained per call
        rows = torch.arange(n)
        for r0 in range(0, self.nr_samples, per_call):
            k = min(per_call, self.nr_samples - r0)
            draws = torch.arange(r0, r0 + k).repeat_interleave(n)  # draw-major, like xp below
            noise = self._noise(rng, rows.repeat(k), draws, x.shape[1:], x.device).view(k, *x.shape)
            xp = x.unsqueeze(0) + noise
            if self.clip:
                xp = xp.clamp(0, 1)
            flat = xp.reshape(k * n, *x.shape[1:])
            if self.prediction_change != "ignore":
                with eval_mode(batch.model) as model:
                    logits = predict(model, flat, self.batch_size)
                changed[r0 : r0 + k] = (logits.argmax(-1) != pred0.repeat(k)).view(k, n)
                finite &= finite_rows(logits).view(k, n).all(0)
            for name, a in maps.items():
                # a batch larger than a chunk (the whole set, needs_whole_set) is re-explained in
                # chunks: an explainer's maps do not depend on their batch mates
                parts, tk = [], targets.repeat(k)
                for j in range(0, len(flat), chunk):
                    with full_threads():
                        part = explainers[name](
                            flat[j : j + chunk],
                            tk[j : j + chunk],
                            generator=rng.explainer_generator(name),
                        )
                    parts.append(torch.as_tensor(part).detach().to(x.device))
                ap = torch.cat(parts).view(k, n, *x.shape[2:])
                # normalised per noise draw: an _over_set rule takes one scale over its n maps
                ap = torch.stack([self._post(d) for d in ap])
                remapped[name][r0 : r0 + k] = ~torch.isfinite(ap).flatten(2).all(-1)
                stats[name][r0 : r0 + k] = self.statistic(x.unsqueeze(0), xp, a.unsqueeze(0), ap)
        return MetricOutput(
            scores={
                self.name: {
                    k: self._reduce(k, v, changed, remapped[k].any(0), finite, maps[k])
                    for k, v in stats.items()
                }
            }
        )

    def _reduce(
        self,
        name: str,
        stats: torch.Tensor,
        changed: torch.Tensor,
        bad_maps: torch.Tensor,
        finite: torch.Tensor,
        a: torch.Tensor,
    ) -> torch.Tensor:
        bad_values = (~torch.isfinite(stats)).any(0)
        if self.prediction_change == "nan":
            keep = torch.ones_like(changed)
            bad = changed.any(0)
            reason = "a noisy copy changed the prediction (prediction_change='nan')"
        elif self.prediction_change == "exclude":
            keep = ~changed
            bad = ~keep.any(0)
            reason = "every noisy copy changed the prediction (prediction_change='exclude')"
        else:
            keep = torch.ones_like(changed)
            bad = torch.zeros_like(bad_values)
            reason = ""
        stats = torch.nan_to_num(stats, nan=0.0)
        if self.reduce == "max":
            value = stats.masked_fill(~keep, -math.inf).amax(0)
        else:
            value = (stats * keep).sum(0) / keep.sum(0).clamp_min(1)
        value = nan_where(value, ~finite, self.name, NONFINITE_OUTPUT, name)
        bad = bad & finite
        value = nan_where(value, bad, self.name, reason, name)
        rest = bad_values & finite & ~bad
        value = nan_where(
            value, rest & bad_maps, self.name, "a re-explained map is not finite (NaN or inf)", name
        )
        zero = (a.flatten(1) == 0).all(1)
        value = nan_where(
            value, rest & ~bad_maps & zero, self.name, "the original map is all zeros", name
        )
        return nan_where(
            value,
            rest & ~bad_maps & ~zero,
            self.name,
            "the statistic is undefined for this map (a zero it divides by)",
            name,
        )


class _Sensitivity(_ReExplain):
    def __init__(
        self,
        nr_samples: int = 200,
        lower_bound: float = 0.2,
        upper_bound: float | None = None,
        clip: bool = False,
        prediction_change: str = "ignore",
        abs: bool = False,
        normalise: Normalise = False,
        batch_size: int | None = None,
    ):
        super().__init__(
            nr_samples,
            lower_bound,
            upper_bound,
            clip,
            prediction_change,
            abs,
            normalise,
            batch_size,
        )

    def statistic(self, x, xp, a, ap):
        num = (a - ap).flatten(2).norm(dim=-1)
        den = a.flatten(2).norm(dim=-1)
        return num / den.masked_fill(den == 0, float("nan"))


@METRICS.register(
    "max_sensitivity",
    description="Max-Sensitivity (Yeh et al. 2019): largest relative change of the map under "
    "uniform input noise",
)
class MaxSensitivity(_Sensitivity):
    """``max_i ||a(x) - a(x + e_i)||_F / ||a(x)||_F`` over ``nr_samples`` draws
    ``e_i ~ U(-lower_bound, lower_bound)`` per pixel (Quantus defaults: 200
    draws, 0.2, no clipping). Lower is better."""

    name = "max_sensitivity"
    reduce = "max"


@METRICS.register(
    "avg_sensitivity",
    description="Avg-Sensitivity (Yeh et al. 2019): mean relative change of the map under uniform "
    "input noise",
)
class AvgSensitivity(_Sensitivity):
    """As ``max_sensitivity`` with the mean over draws instead of the maximum. Lower is better."""

    name = "avg_sensitivity"
    reduce = "mean"


@METRICS.register(
    "relative_input_stability",
    description="Relative Input Stability (Agarwal et al. 2022): max relative map change over "
    "relative input change",
)
class RelativeInputStability(_ReExplain):
    """``max_i ||(a - a_i) / a||_2 / max(||(x - x_i) / x||_2, eps_min)`` over draws
    ``x_i = x + U(lower_bound, upper_bound)`` (Quantus: 200 draws, U(0.02, 0.2));
    zero entries of ``a`` and ``x`` are replaced by ``eps_min`` in the
    divisions, as in Quantus. ``prediction_change='exclude'`` (default) keeps
    only draws whose prediction equals that of ``x`` (the paper's definition);
    ``'nan'`` is Quantus' behaviour. Quantus 0.6's ``normalise=True`` is
    ``normalise='normalise_by_average_second_moment_estimate_over_set'`` (``True`` here is the
    per-sample ``normalise_by_max``). Lower is better."""

    name = "relative_input_stability"
    option_constraints: ClassVar[dict] = {**_ReExplain.option_constraints, "eps_min": POSITIVE}
    reduce = "max"

    def __init__(
        self,
        nr_samples: int = 200,
        lower_bound: float = 0.02,
        upper_bound: float | None = 0.2,
        clip: bool = False,
        prediction_change: str = "exclude",
        eps_min: float = 1e-6,
        abs: bool = False,
        normalise: Normalise = False,
        batch_size: int | None = None,
    ):
        super().__init__(
            nr_samples,
            lower_bound,
            upper_bound,
            clip,
            prediction_change,
            abs,
            normalise,
            batch_size,
        )
        set_options(self, eps_min=eps_min)

    def statistic(self, x, xp, a, ap):
        eps = self.eps_min
        num = ((a - ap) / (a + (a == 0) * eps)).flatten(2).double().norm(dim=-1)
        den = ((x - xp) / (x + (x == 0) * eps)).flatten(2).double().norm(dim=-1)
        den = den + (den == 0) * eps
        return (num / den).float()
