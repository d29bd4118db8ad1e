"""Faithfulness metrics that compare sums of attribution with changes of the model's output.

* ``infidelity`` (Yeh et al. 2019): the expected squared error between the attribution-weighted
  perturbation ``sum_i a_i (x_i - x~_i)`` and the output drop ``f(x) - f(x~)``;
* ``sensitivity_n`` (Ancona et al. 2018): the correlation between the attribution summed over a
  random subset of ``n`` pixels and the output drop when the subset is removed, for several ``n``;
* ``monotonicity_correlation`` (Nguyen & Martinez 2020): the rank correlation between the
  attribution of groups of pixels and the output variance when each group alone is replaced.

The perturbations of ``infidelity`` and ``sensitivity_n`` do not depend on the attribution: they
are drawn from each sample's stream, scored once, and shared by every explainer, so ``E``
explainers cost the forward passes of one. ``monotonicity_correlation`` groups pixels by each
explainer's order (its forward passes cannot be shared), but its random fill values are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from ..ops.validation import (
    COUNT,
    NON_NEGATIVE,
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
    SampleRNG,
    chunk_size,
    eval_mode,
    nan_where,
    normalise_maps,
    normalise_rule,
    serial_bookkeeping,
    similarity,
)
from .forward_queue import ForwardQueue
from .perturbation_curves import PerturbationMetric, patch_grid, score_images

INFIDELITY_PERTURBATIONS = ("noisy_baseline", "patches")


class _SumMetric(PerturbationMetric):
    """Maps as an (E, N, P) stack after the ``normalise`` / ``abs`` options (Quantus' order)."""

    normalise: str | None = None
    abs: bool = False

    def _stack(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        a = torch.stack([normalise_maps(m.flatten(1), self.normalise) for m in maps.values()])
        return a.abs() if self.abs else a

    def _correlate(
        self,
        name: str,
        sums: torch.Tensor,
        drops: torch.Tensor,
        finite: torch.Tensor,
        rng: SampleRNG,
        tag: object,
    ) -> torch.Tensor:
        """Row-wise ``similarity`` of ``sums`` and ``drops`` (N, R), NaN (logged) if undefined."""
        r, why = self._similarity(name, sums, drops, finite, rng, tag)
        return self._log_nan(r, why, name)

    def _similarity(
        self,
        name: str,
        sums: torch.Tensor,
        drops: torch.Tensor,
        finite: torch.Tensor,
        rng: SampleRNG,
        tag: object,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Row-wise ``similarity`` (N,) and, per reason, where it is NaN (unlogged)."""
        r_len = sums.shape[1]
        u_sums = rng.rand((r_len,), "ties", name, "sums", tag, device=sums.device)
        u_drops = rng.rand((r_len,), "ties", name, "drops", tag, device=sums.device)
        r = similarity(self.similarity, sums, drops, u_sums, u_drops)
        undefined = torch.isnan(r) & finite  # pearson of a constant vector; spearman breaks ties
        flat_sums = undefined & (sums == sums[:, :1]).all(1)
        why = {
            NONFINITE_OUTPUT: ~finite,
            "the attribution sums are constant (e.g. a constant map)": flat_sums,
            "the output changes are constant": undefined & ~flat_sums,
        }
        return r.masked_fill(~finite, float("nan")), why

    def _log_nan(self, r: torch.Tensor, why: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """``r`` with NaN, logged with its reason, where each mask of ``why`` is set."""
        for reason, where in why.items():
            r = nan_where(r, where, self.name, reason, name)
        return r


# --------------------------------------------------------------------------- infidelity


@METRICS.register(
    "infidelity",
    description="Infidelity (Yeh et al. 2019): squared error between attribution-weighted "
    "perturbations and output drops",
)
class Infidelity(_SumMetric):
    """``mean_r (beta * sum_i a_i I_ri - (f(x) - f(x - I_r)))^2``, ``I_r = x - x~_r``.

    ``perturbation: noisy_baseline`` (default; the paper's and its code's Gaussian perturbation):
    ``x~_r = clip(b + noise_std * z_r, 0, 1)`` with ``b`` the ``fill`` (black: the paper's zero
    baseline) and ``z_r ~ N(0, 1)`` per pixel and channel, ``n_perturb_samples`` draws per sample
    shared by every explainer. ``perturbation: patches`` is Quantus 0.6's ``Infidelity``: for each
    of ``patch_sizes``, the patches are replaced by ``fill`` cumulatively in row-major order (one
    perturbation per patch), deterministic. ``optimal_scaling`` (default true, the paper's code)
    scales each map per sample by ``beta = mean(drop * sum) / mean(sum^2)`` before the error, so
    that the score does not depend on the map's scale (Quantus 0.6 does not: ``false``, beta = 1).
    Lower is better; ``output`` logit (the paper's and Quantus').
    """

    name = "infidelity"
    option_constraints: ClassVar[dict] = {
        **_SumMetric.option_constraints,
        "perturbation": OneOf(INFIDELITY_PERTURBATIONS),
        "n_perturb_samples": COUNT,
        "noise_std": POSITIVE,
        "patch_sizes": [COUNT, ListOf(COUNT)],
        "normalise": NORMALISE,
    }
    higher_is_better = False
    value_range = (0.0, math.inf)

    def __init__(
        self,
        perturbation: str = "noisy_baseline",
        n_perturb_samples: int = 100,
        noise_std: float = 0.2,
        patch_sizes: Sequence[int] = (4,),
        optimal_scaling: bool = True,
        fill: str | float = "black",
        output: str = "logit",
        abs: bool = False,
        normalise: bool | Literal["normalise_by_max", "normalise_by_negative"] = False,
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(
            self,
            perturbation=perturbation,
            n_perturb_samples=n_perturb_samples,
            noise_std=noise_std,
            patch_sizes=patch_sizes,
        )
        if isinstance(self.patch_sizes, int):
            self.patch_sizes = (self.patch_sizes,)
        self.optimal_scaling = bool(optimal_scaling)
        self.abs = bool(abs)
        set_options(self, normalise=normalise)
        self.normalise = normalise_rule(self.normalise)

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec(self.name, False, (0.0, math.inf))]

    def n_perturbations(self, h: int, w: int) -> int:
        """Perturbations per sample: ``n_perturb_samples``, or one per patch of every patch size."""
        if self.perturbation == "noisy_baseline":
            return self.n_perturb_samples
        return sum(patch_grid(h, w, ps, torch.device("cpu"))[1] for ps in self.patch_sizes)

    def _perturbations(
        self, x: torch.Tensor, fill_img: torch.Tensor, rng: SampleRNG, i: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbed images (R, C, H, W) of sample ``i`` and their groups (R,) (patch size)."""
        if self.perturbation == "noisy_baseline":
            z = torch.randn(
                (self.n_perturb_samples, *x.shape[1:]), generator=rng.generator(i, "noise")
            )
            xt = (fill_img[i] + self.noise_std * z.to(x.device, x.dtype)).clamp(0, 1)
            return xt, torch.zeros(len(xt), dtype=torch.long)
        h, w = x.shape[-2:]
        images, groups = [], []
        for g, ps in enumerate(self.patch_sizes):
            ids, n_patches = patch_grid(h, w, ps, x.device)
            cum = ids.unsqueeze(0) <= torch.arange(n_patches, device=x.device).view(
                -1, 1, 1
            )  # (K, H, W)
            images.append(torch.where(cum.unsqueeze(1), fill_img[i], x[i]))
            groups.append(torch.full((n_patches,), g, dtype=torch.long))
        return torch.cat(images), torch.cat(groups)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        out = MetricOutput()
        if self.perturbation == "patches" and max(self.patch_sizes) > min(h, w):
            raise ValueError(
                f"patch size {max(self.patch_sizes)} is larger than the image ({h}x{w})"
            )
        if not maps:
            return out
        a = self._stack(maps).double()  # (E, N, P)
        per_sample = self.n_perturbations(h, w)
        sums, groups = [], torch.zeros(per_sample, dtype=torch.long)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            queue = ForwardQueue(model, n * per_sample, x, self.output, self.batch_size)
            for i in range(n):
                xt, groups = self._perturbations(x, fill_img, rng, i)
                weights = (x[i] - xt).sum(1).flatten(1).double()  # (R, P): I summed over channels
                sums.append(a[:, i] @ weights.T)  # (E, R)
                queue.push(
                    xt,
                    torch.arange(i * per_sample, (i + 1) * per_sample),
                    targets[i].expand(len(xt)),
                )
            queue.close()
        s = (
            torch.stack(sums, 1)
            if sums
            else torch.empty(len(maps), 0, per_sample, dtype=torch.float64)
        )  # (E, N, R)
        drop = (base.scores.view(-1, 1) - queue.scores.view(n, per_sample)).double()  # (N, R)
        finite = base.finite & queue.finite.view(n, per_sample).all(1)
        if self.optimal_scaling:
            num, den = (drop * s).mean(-1, keepdim=True), (s * s).mean(-1, keepdim=True)
            beta = torch.where(
                den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den)
            )  # a zero map: beta 0
            s = beta * s
        err = (s - drop) ** 2  # (E, N, R)
        g = groups.to(x.device)
        per_group = torch.stack([err[..., g == k].mean(-1) for k in range(int(g.max()) + 1)], -1)
        value = per_group.mean(
            -1
        ).float()  # Quantus: mean over perturbations per patch size, then over sizes
        out.scores[self.name] = self.split_checked(value, finite.expand(len(maps), -1), maps)
        return out


# --------------------------------------------------------------------------- sensitivity-n


#: an entry of ``n_values``: a pixel count, or a fraction of the pixels
N_VALUE = [COUNT, Interval(float, 0, 1, closed="neither", noun="a fraction of the pixels")]


@METRICS.register(
    "sensitivity_n",
    description="Sensitivity-n (Ancona et al. 2018): correlation of attribution sums over random "
    "n-pixel subsets with the output drops",
)
class SensitivityN(_SumMetric):
    """For each ``n`` of ``n_values`` (pixel counts, or fractions of the pixels): ``nr_subsets``
    uniform random subsets of ``n`` pixels per sample; the correlation (``similarity``, Pearson as
    the paper) over the subsets between the attribution summed over the subset and the drop
    ``f(x) - f(x with the subset set to fill)`` (black: the paper's zero baseline; target
    ``logit``). Curve: the correlation at each ``n`` (x = fraction of pixels); score: its mean over
    ``n_values``. Higher is better, [-1, 1]. The subsets are drawn per sample and shared by every
    explainer. A constant map (constant sums) has no correlation: NaN, logged.
    """

    name = "sensitivity_n"
    option_constraints: ClassVar[dict] = {
        **_SumMetric.option_constraints,
        "n_values": [*N_VALUE, ListOf(N_VALUE, unique=True)],
        "nr_subsets": Interval(int, 2, None),
        "similarity": OneOf(SIMILARITIES),
    }
    higher_is_better = True
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        n_values: Sequence[int | float] = (0.01, 0.03, 0.1, 0.2, 0.5, 0.8),
        nr_subsets: int = 100,
        fill: str | float = "black",
        similarity: str = "pearson",
        output: str = "logit",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(self, n_values=n_values, nr_subsets=nr_subsets, similarity=similarity)
        if not isinstance(self.n_values, tuple):
            self.n_values = (self.n_values,)

    def sizes(self, npix: int) -> list[int]:
        """The subset size of each of ``n_values`` for an image of ``npix`` pixels."""
        out = [v if isinstance(v, int) else max(1, round(v * npix)) for v in self.n_values]
        for v, k in zip(self.n_values, out, strict=True):
            if k >= npix:
                raise ValueError(
                    f"n_values entry {v!r} means {k} pixels; it must be fewer than the "
                    f"{npix} pixels"
                )
        return out

    def subsets(self, rng: SampleRNG, i: int, t: int, n: int, npix: int, device) -> torch.Tensor:
        """(R, P) bool: sample ``i``'s ``nr_subsets`` random ``n``-pixel subsets
        (``n_values[t]``)."""
        u = torch.rand((self.nr_subsets, npix), generator=rng.generator(i, "subsets", t))
        idx = u.topk(n, dim=1).indices
        return (
            torch.zeros(self.nr_subsets, npix, dtype=torch.bool).scatter_(1, idx, True).to(device)
        )

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        maps, x, targets, fill_img, rng = self._setup(batch, attributions, generator)
        n, _, h, w = x.shape
        npix = h * w
        sizes = self.sizes(npix)
        t_len, r_len = len(sizes), self.nr_subsets
        out = MetricOutput(curve_x={self.name: torch.tensor(sizes, dtype=torch.float32) / npix})
        if not maps:
            return out
        a = self._stack(maps).double()
        sums = torch.empty(len(maps), n, t_len, r_len, dtype=torch.float64, device=x.device)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            queue = ForwardQueue(model, n * t_len * r_len, x, self.output, self.batch_size)
            for i in range(n):
                for t, k in enumerate(sizes):
                    m = self.subsets(rng, i, t, k, npix, x.device)
                    sums[:, i, t] = a[:, i] @ m.double().T
                    xt = torch.where(m.view(-1, 1, h, w), fill_img[i], x[i])
                    start = (i * t_len + t) * r_len
                    queue.push(xt, torch.arange(start, start + r_len), targets[i].expand(r_len))
            queue.close()
        drops = base.scores.view(n, 1, 1) - queue.scores.view(n, t_len, r_len)
        ok = queue.finite.view(n, t_len, r_len).all(-1) & base.finite.view(n, 1)
        curves, scores = {}, {}
        for j, name in enumerate(maps):
            per_n, why = [], {}
            for t in range(t_len):
                r, w = self._similarity(name, sums[j, :, t], drops[:, t].double(), ok[:, t], rng, t)
                per_n.append(r)
                for reason, where in w.items():
                    why[reason] = why.get(reason, torch.zeros_like(where)) | where
            curves[name] = torch.stack(per_n, 1)
            # NaN where any n is undefined, each reason logged once for all n
            scores[name] = self._log_nan(curves[name].mean(1), why, name)
        out.curves[self.name] = curves
        out.scores[self.name] = scores
        return out


# ------------------------------------------------------------------ monotonicity correlation


@METRICS.register(
    "monotonicity_correlation",
    description="Monotonicity correlation (Nguyen & Martinez 2020): rank correlation of group "
    "attributions with the output variance when each group is replaced",
)
class MonotonicityCorrelation(_SumMetric):
    """Pixels sorted by attribution (ascending, ties at random) in groups of ``features_in_step``
    (default ``ceil(H·W / n_steps)``); each group alone is replaced by ``fill``, ``nr_samples``
    times; its variance ``mean_r (f(x~) - f(x))^2 / f(x)^2`` (not divided when ``|f(x)| < eps``)
    is correlated (``similarity``, default Spearman) with the group's summed attribution (of
    ``|a|`` with ``abs``, default true). ``fill: uniform`` (default, Quantus') replaces a group by
    one U(0, 1) value per sample, group and draw (shared by every explainer); any other fill is
    deterministic and is scored once. Higher is better, [-1, 1].
    """

    name = "monotonicity_correlation"
    option_constraints: ClassVar[dict] = {
        **_SumMetric.option_constraints,
        "nr_samples": COUNT,
        "features_in_step": [COUNT, Null("ceil(H*W / n_steps)")],
        "n_steps": Interval(int, 2, None),
        "similarity": OneOf(SIMILARITIES),
        "eps": NON_NEGATIVE,
    }
    higher_is_better = True
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        nr_samples: int = 10,
        features_in_step: int | None = None,
        n_steps: int = 50,
        fill: str | float = "uniform",
        similarity: str = "spearman",
        abs: bool = True,
        eps: float = 1e-5,
        output: str = "probability",
        batch_size: int | None = None,
        blur_sigma: float = 5.0,
    ):
        super().__init__(fill, output, batch_size, blur_sigma)
        set_options(
            self,
            nr_samples=nr_samples,
            features_in_step=features_in_step,
            n_steps=n_steps,
            similarity=similarity,
        )
        self.abs = bool(abs)
        set_options(self, eps=eps)

    def step(self, npix: int) -> int:
        step = self.features_in_step or math.ceil(npix / self.n_steps)
        if math.ceil(npix / step) < 2:
            raise ValueError(
                f"features_in_step={step} leaves fewer than 2 groups of the {npix} pixels"
            )
        return step

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        uniform = self.fill == "uniform"
        maps, x, targets, fill_img, rng = self._setup(
            batch, attributions, generator, fill=0.0 if uniform else None
        )
        n, c, h, w = x.shape
        npix = h * w
        step = self.step(npix)
        g_len = math.ceil(npix / step)
        r_len = self.nr_samples if uniform else 1
        out = MetricOutput()
        if not maps:
            return out
        e = len(maps)
        a = self._stack(maps).double()
        groups = (
            self.unit_ranks(maps, rng, descending=False).flatten(2) // step
        )  # (E, N, P): group of each pixel
        att = torch.zeros(e, n, g_len, dtype=torch.float64, device=x.device).scatter_add_(
            2, groups, a
        )
        per_push = max(
            1, chunk_size(x, self.batch_size) // r_len
        )  # groups per push: about one forward chunk
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, self.output, self.batch_size)
            queue = ForwardQueue(model, e * n * g_len * r_len, x, self.output, self.batch_size)
            # (N, G, R): one fill value per sample, group and draw, shared by every explainer
            fill_values = rng.rand((g_len, r_len), "fill", device=x.device) if uniform else None
            for i in range(n):
                values = fill_values[i] if uniform else None
                for j in range(e):
                    gid = groups[j, i].view(h, w)
                    for k0 in range(0, g_len, per_push):
                        ks = torch.arange(k0, min(g_len, k0 + per_push), device=x.device)
                        sel = (
                            (gid.unsqueeze(0) == ks.view(-1, 1, 1)).unsqueeze(1).unsqueeze(1)
                        )  # (K, 1, 1, H, W)
                        fillv = (
                            values[ks].view(-1, r_len, 1, 1, 1)
                            if uniform
                            else fill_img[i].unsqueeze(0).unsqueeze(0)
                        )
                        xt = torch.where(sel, fillv, x[i]).reshape(-1, c, h, w)  # (K·R, C, H, W)
                        start = ((j * n + i) * g_len + k0) * r_len
                        queue.push(
                            xt, torch.arange(start, start + len(xt)), targets[i].expand(len(xt))
                        )
            queue.close()
        y = base.scores.view(1, n, 1, 1).double()
        inv = torch.where(y.abs() >= self.eps, 1 / y.abs(), torch.ones_like(y)) ** 2
        var = ((queue.scores.view(e, n, g_len, r_len).double() - y) ** 2).mean(-1) * inv[..., 0]
        ok = queue.finite.view(e, n, g_len, r_len).flatten(2).all(-1) & base.finite.view(1, n)
        out.scores[self.name] = {
            name: self._correlate(name, att[j], var[j], ok[j], rng, "groups")
            for j, name in enumerate(maps)
        }
        return out


__all__ = ["Infidelity", "MonotonicityCorrelation", "SensitivityN"]
