"""Robustness metrics that re-explain noisy inputs (see :mod:`xaiarena.metrics.robustness` for the
shared machinery: noise draws per sample and draw index, shared by every explainer, re-explained
in large batches; ``prediction_change``, ``abs``, ``normalise``; descriptive outputs):

* ``local_lipschitz_estimate`` (Alvarez-Melis & Jaakkola 2018): the largest ratio of the map's
  change to the input's change over Gaussian perturbations;
* ``relative_output_stability`` (Agarwal et al. 2022): the largest relative change of the map over
  the change of the model's logits.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from ..ops.validation import FINITE, POSITIVE, set_options
from ..registry import METRICS
from .base import EvalBatch, ExplainFn, MetricOutput
from .core import (
    SampleRNG,
    chunk_size,
    eval_mode,
    finite_rows,
    full_threads,
    predict,
    prepare,
    serial_bookkeeping,
)
from .robustness import _ReExplain

Normalise = bool | Literal["normalise_by_max", "normalise_by_negative"]


@METRICS.register(
    "local_lipschitz_estimate",
    description="Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): largest map change over "
    "input change under Gaussian input noise",
)
class LocalLipschitzEstimate(_ReExplain):
    """``max_i ||a(x) - a(x_i)||_2 / (||x - x_i||_2 + 1e-10)`` over ``nr_samples`` draws
    ``x_i = x + N(perturb_mean, perturb_std^2)`` per pixel and channel (Quantus 0.6's estimator of
    the paper's local Lipschitz constant: 200 draws, N(0, 0.1^2), not clipped). Maps are
    normalised per sample by their largest magnitude (``normalise: true``, Quantus' default;
    Quantus normalises by the batch's). ``prediction_change`` default ``ignore`` (Quantus').
    Lower is better; descriptive (a constant map scores 0).
    """

    name = "local_lipschitz_estimate"
    option_constraints: ClassVar[dict] = {
        **{k: v for k, v in _ReExplain.option_constraints.items() if not k.endswith("_bound")},
        "perturb_mean": FINITE,
        "perturb_std": POSITIVE,
    }
    reduce = "max"

    def __init__(
        self,
        nr_samples: int = 200,
        perturb_mean: float = 0.0,
        perturb_std: float = 0.1,
        clip: bool = False,
        prediction_change: str = "ignore",
        abs: bool = False,
        normalise: Normalise = True,
        batch_size: int | None = None,
    ):
        set_options(self, perturb_mean=perturb_mean, perturb_std=perturb_std)
        # the base's noise bounds are unused (Gaussian noise below); perturb_std passes its checks
        super().__init__(
            nr_samples, self.perturb_std, None, clip, prediction_change, abs, normalise, batch_size
        )

    def _noise(
        self, rng: SampleRNG, rows: torch.Tensor, draws: torch.Tensor, shape, device
    ) -> torch.Tensor:
        """Gaussian noise of the (sample ``rows[m]``, draw ``draws[m]``) items, own streams."""
        z = [
            torch.randn(tuple(shape), generator=rng.generator(int(r), "noise", int(d)))
            for r, d in zip(rows.tolist(), draws.tolist(), strict=True)
        ]
        z = torch.stack(z) if z else torch.empty(0, *shape)
        return (self.perturb_mean + self.perturb_std * z).to(device)

    def statistic(self, x, xp, a, ap):
        num = (a - ap).flatten(2).double().norm(dim=-1)
        den = (x - xp).flatten(2).double().norm(dim=-1)
        return (num / (den + 1e-10)).float()


@METRICS.register(
    "relative_output_stability",
    description="Relative Output Stability (Agarwal et al. 2022): max relative map change over "
    "the change of the logits",
)
class RelativeOutputStability(_ReExplain):
    """``max_i ||(a - a_i) / a||_2 / max(||h(x) - h(x_i)||_2, eps_min)`` over draws
    ``x_i = x + U(lower_bound, upper_bound)`` (Quantus: 200 draws, U(0.02, 0.2)), ``h`` the model's
    logits; zero entries of ``a`` are replaced by ``eps_min`` in the division, as in Quantus.
    ``prediction_change: exclude`` (default) keeps only draws whose prediction equals that of
    ``x`` (the paper's definition); ``nan`` is Quantus' behaviour. Lower is better; descriptive.
    The noisy copies' logits are computed once per draw and shared by every explainer.
    """

    name = "relative_output_stability"
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

    def output_statistic(
        self, a: torch.Tensor, ap: torch.Tensor, h: torch.Tensor, hp: torch.Tensor
    ) -> torch.Tensor:
        """Per-(draw, sample) value from maps (k, N, H, W) and logits (k, N, K)."""
        eps = self.eps_min
        num = ((a - ap) / (a + (a == 0) * eps)).flatten(2).double().norm(dim=-1)
        den = (h - hp).double().norm(dim=-1)
        den = den + (den == 0) * eps
        return (num / den).float()

    @serial_bookkeeping
    def evaluate(
        self,
        batch: EvalBatch,
        attributions,
        *,
        generator,
        explainers: dict[str, ExplainFn] | None = None,
    ) -> MetricOutput:
        # _ReExplain.evaluate's re-explanation loop, with the noisy copies' logits for every draw
        # (once, for all explainers) and given to the statistic
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
        with eval_mode(batch.model) as model:
            logits0 = predict(model, x, self.batch_size).float()
        pred0, finite = logits0.argmax(-1), finite_rows(logits0)
        per_call = max(1, chunk_size(x, self.batch_size) // max(n, 1))
        rows = torch.arange(n)
        for r0 in range(0, self.nr_samples, per_call):
            k = min(per_call, self.nr_samples - r0)
            draws = torch.arange(r0, r0 + k).repeat_interleave(n)
            noise = self._noise(rng, rows.repeat(k), draws, x.shape[1:], x.device).view(k, *x.shape)
            xp = x.unsqueeze(0) + noise
            if self.clip:
                xp = xp.clamp(0, 1)
            flat = xp.reshape(k * n, *x.shape[1:])
            with eval_mode(batch.model) as model:
                logits = predict(model, flat, self.batch_size).float()
            changed[r0 : r0 + k] = (logits.argmax(-1) != pred0.repeat(k)).view(k, n)
            finite &= finite_rows(logits).view(k, n).all(0)
            hp = logits.view(k, n, -1)
            for name, a in maps.items():
                with full_threads():
                    ap = explainers[name](
                        flat, targets.repeat(k), generator=rng.explainer_generator(name)
                    )
                ap = self._post(torch.as_tensor(ap).detach().to(x.device)).view(k, n, *x.shape[2:])
                remapped[name][r0 : r0 + k] = ~torch.isfinite(ap).flatten(2).all(-1)
                stats[name][r0 : r0 + k] = self.output_statistic(
                    a.unsqueeze(0), ap, logits0.unsqueeze(0), hp
                )
        return MetricOutput(
            scores={
                self.name: {
                    k: self._reduce(k, v, changed, remapped[k].any(0), finite, maps[k])
                    for k, v in stats.items()
                }
            }
        )


__all__ = ["LocalLipschitzEstimate", "RelativeOutputStability"]
