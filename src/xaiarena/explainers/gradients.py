"""Gradient-based explainers backed by Captum.

All of them attribute the model's raw output (the target class's logit) in
pixel space and reduce channels with the rule in their ``reduction`` option
(:func:`~xaiarena.explainers.base.reduce_channels`: ``sum``, ``abs_sum``,
``max_abs``, ``mean``). Defaults:

=====================  =================  ===========================================
method                 reduction          cost per sample (forward+backward passes)
=====================  =================  ===========================================
saliency               max_abs            1
input_x_gradient       sum                1
integrated_gradients   sum                n_steps (16)
gradient_shap          sum                n_samples (8)
smoothgrad             max_abs            nt_samples (8)
=====================  =================  ===========================================

Randomised methods (SmoothGrad noise, GradientSHAP draws, the ``uniform``
baseline) draw from per-sample generators derived from the call's generator
(see :mod:`xaiarena.ops.seeding`), so a sample's map does not depend on
its batch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

from ..ops.fill import BASELINE_BLUR, make_fill
from ..ops.seeding import sample_generators
from ..ops.validation import COUNT, NON_NEGATIVE, ListOf, Null, OneOf, set_options
from ..registry import EXPLAINERS
from .base import BASELINES, REDUCTIONS, Baseline, Explainer, Reduction, reduce_channels
from .model_calls import input_gradients

IGMethod = Literal[
    "gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"
]
NTType = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
IG_METHODS: tuple[str, ...] = IGMethod.__args__
NT_TYPES: tuple[str, ...] = NTType.__args__


def _grad_input(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``inputs`` that requires grad (Captum warns otherwise)."""
    return inputs.detach().clone().requires_grad_(True)


#: the ``reduction`` option of the gradient explainers (None: the explainer's default)
REDUCTION = [OneOf(REDUCTIONS), Null("the explainer's default")]


class _GradientExplainer(Explainer):
    family: ClassVar[str] = "gradient"
    default_reduction: ClassVar[str] = "sum"
    option_constraints: ClassVar[dict] = {"reduction": REDUCTION}

    def _init_reduction(self, reduction: str | None) -> None:
        set_options(self, reduction=reduction)
        if self.reduction is None:
            self.reduction = self.default_reduction


@EXPLAINERS.register(
    "saliency",
    description="Saliency / vanilla gradient (Simonyan et al. 2014, Captum Saliency): |d logit / d "
    "pixel|, channels reduced by max_abs (option reduction); 1 backward pass.",
)
class SaliencyExplainer(_GradientExplainer):
    """Gradient of the target logit w.r.t. the pixels (absolute value by default)."""

    name = "saliency"
    default_reduction = "max_abs"

    def __init__(self, absolute: bool = True, reduction: Reduction | None = None):
        self.absolute = bool(absolute)
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        attr = Saliency(model).attribute(_grad_input(inputs), target=targets, abs=self.absolute)
        return reduce_channels(attr, self.reduction)


@EXPLAINERS.register(
    "input_x_gradient",
    description="Input x Gradient (Shrikumar et al. 2016, Captum InputXGradient): pixel value "
    "times the target logit's gradient, channels summed (option reduction); 1 backward pass.",
)
class InputXGradientExplainer(_GradientExplainer):
    """``x * d logit / dx`` (signed)."""

    name = "input_x_gradient"

    def __init__(self, reduction: Reduction | None = None):
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        attr = InputXGradient(model).attribute(_grad_input(inputs), target=targets)
        return reduce_channels(attr, self.reduction)


@EXPLAINERS.register(
    "integrated_gradients",
    description="Integrated Gradients (Sundararajan et al. 2017, Captum): path integral of "
    "gradients from a baseline (black|white|mean|blur|uniform, default black), n_steps=16 "
    "Gauss-Legendre steps, channels summed so a map sums to f(x) - f(baseline).",
)
class IntegratedGradientsExplainer(_GradientExplainer):
    """``(x - b) * integral_0^1 grad f(b + a (x - b)) da``, by Captum's quadrature."""

    cost_knobs: ClassVar[tuple[str, ...]] = ("n_steps", "internal_batch_size")
    option_constraints: ClassVar[dict] = {
        "n_steps": COUNT,
        "baseline": OneOf(BASELINES),
        "method": OneOf(IG_METHODS),
        "internal_batch_size": COUNT,
        "reduction": REDUCTION,
    }

    name = "integrated_gradients"

    def __init__(
        self,
        n_steps: int = 16,
        baseline: Baseline = "black",
        method: IGMethod = "gausslegendre",
        internal_batch_size: int = 64,
        reduction: Reduction | None = None,
    ):
        set_options(
            self,
            n_steps=n_steps,
            baseline=baseline,
            method=method,
            internal_batch_size=internal_batch_size,
        )
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        gens = sample_generators(inputs, generator) if self.baseline == "uniform" else None
        baseline = make_fill(inputs, self.baseline, generators=gens, blur=BASELINE_BLUR)
        attr = IntegratedGradients(model).attribute(
            _grad_input(inputs),
            baselines=baseline,
            target=targets,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
        )
        return reduce_channels(attr, self.reduction)


@EXPLAINERS.register(
    "gradient_shap",
    description="GradientSHAP (Lundberg & Lee 2017; Captum's algorithm, seeded per sample): "
    "expected gradient x (input - baseline) over n_samples=8 random points between the input (plus "
    "N(0, stdevs) noise) and baselines drawn from a list (default black and uniform noise); "
    "channels summed.",
)
class GradientShapExplainer(_GradientExplainer):
    """Captum's GradientShap, drawing from per-sample generators.

    For each of ``n_samples`` draws: ``x' = x + N(0, stdevs^2)``, a baseline
    ``b`` chosen uniformly from ``baselines``, ``a ~ U(0, 1)``; the attribution
    is the mean of ``grad f(b + a (x' - b)) * (x' - b)``.
    """

    cost_knobs: ClassVar[tuple[str, ...]] = ("n_samples", "batch_size")
    option_constraints: ClassVar[dict] = {
        "n_samples": COUNT,
        "stdevs": NON_NEGATIVE,
        "baselines": [OneOf(BASELINES), ListOf(OneOf(BASELINES))],
        "batch_size": COUNT,
        "reduction": REDUCTION,
    }

    name = "gradient_shap"

    def __init__(
        self,
        n_samples: int = 8,
        stdevs: float = 0.0,
        baselines: Baseline | list[Baseline] | tuple[Baseline, ...] = ("black", "uniform"),
        batch_size: int = 64,
        reduction: Reduction | None = None,
    ):
        set_options(
            self, n_samples=n_samples, stdevs=stdevs, baselines=baselines, batch_size=batch_size
        )
        if isinstance(self.baselines, str):
            self.baselines = (self.baselines,)
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        n, s = len(inputs), self.n_samples
        shape = inputs.shape[1:]
        dev, dt = inputs.device, inputs.dtype
        gens = sample_generators(inputs, generator)
        # candidate baselines per sample (N, B, C, H, W); "uniform" rows are filled per draw below
        cand = torch.stack(
            [
                make_fill(inputs, b, blur=BASELINE_BLUR)
                if b != "uniform"
                else torch.zeros_like(inputs)
                for b in self.baselines
            ],
            1,
        )
        uni = self.baselines.index("uniform") if "uniform" in self.baselines else -1
        pts, diffs = [], []
        for i, g in enumerate(gens):
            choice = torch.randint(len(self.baselines), (s,), generator=g)
            alpha = torch.rand(s, generator=g).to(dev, dt).view(-1, 1, 1, 1)
            x = inputs[i].expand(s, *shape)
            if self.stdevs > 0:
                x = x + (torch.randn((s, *shape), generator=g) * self.stdevs).to(dev, dt)
            base = cand[i, choice.to(dev)]
            if uni >= 0:
                noise = torch.rand((s, *shape), generator=g).to(dev, dt)
                base = torch.where((choice == uni).to(dev).view(-1, 1, 1, 1), noise, base)
            diff = x - base
            pts.append(base + alpha * diff)
            diffs.append(diff)
        points, diff = torch.cat(pts), torch.cat(diffs)
        grads = input_gradients(model, points, targets.repeat_interleave(s), self.batch_size)
        attr = (grads * diff).view(n, s, *shape).mean(1)
        return reduce_channels(attr, self.reduction)


class _SeededNoiseTunnel(NoiseTunnel):
    """Captum's NoiseTunnel whose Gaussian noise comes from per-sample generators.

    Each sample's ``nt_samples`` noise draws are made at once from its own
    generator and handed out in order, so the noise does not depend on how
    Captum partitions the samples (``nt_samples_batch_size``).
    """

    def __init__(self, method, generators: list[torch.Generator], nt_samples: int):
        super().__init__(method)
        self._gens, self._nt = generators, nt_samples
        self._noise: torch.Tensor | None = None
        self._used = 0

    def _add_noise_to_input(
        self, input: torch.Tensor, stdev: float, nt_samples_partition: int
    ) -> torch.Tensor:
        if len(input) != len(self._gens):  # pragma: no cover - guards a Captum internals change
            raise RuntimeError("NoiseTunnel passed an unexpected batch; seeding would be wrong")
        if self._noise is None:
            self._noise = torch.stack(
                [torch.randn((self._nt, *input.shape[1:]), generator=g) for g in self._gens]
            )
        part = self._noise[:, self._used : self._used + nt_samples_partition]
        self._used += nt_samples_partition
        noisy = input.repeat_interleave(nt_samples_partition, dim=0)
        return (noisy + (part.flatten(0, 1) * stdev).to(input.device, input.dtype)).detach()


@EXPLAINERS.register(
    "smoothgrad",
    description="SmoothGrad (Smilkov et al. 2017, Captum NoiseTunnel over Saliency): mean "
    "|gradient| over nt_samples=8 copies with N(0, stdevs=0.15) pixel noise, channels reduced by "
    "max_abs.",
)
class SmoothGradExplainer(_GradientExplainer):
    """NoiseTunnel(Saliency) with seeded noise; ``stdevs`` is in pixel units ([0, 1] images)."""

    cost_knobs: ClassVar[tuple[str, ...]] = ("nt_samples", "batch_size")
    option_constraints: ClassVar[dict] = {
        "nt_samples": COUNT,
        "stdevs": NON_NEGATIVE,
        "nt_type": OneOf(NT_TYPES),
        "batch_size": COUNT,
        "reduction": REDUCTION,
    }

    name = "smoothgrad"
    default_reduction = "max_abs"

    def __init__(
        self,
        nt_samples: int = 8,
        stdevs: float = 0.15,
        nt_type: NTType = "smoothgrad",
        absolute: bool = True,
        batch_size: int = 64,
        reduction: Reduction | None = None,
    ):
        set_options(self, nt_samples=nt_samples, stdevs=stdevs, nt_type=nt_type)
        self.absolute = bool(absolute)
        set_options(self, batch_size=batch_size)
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        nt = _SeededNoiseTunnel(
            Saliency(model), sample_generators(inputs, generator), self.nt_samples
        )
        attr = nt.attribute(
            _grad_input(inputs),
            nt_type=self.nt_type,
            nt_samples=self.nt_samples,
            nt_samples_batch_size=max(1, self.batch_size // len(inputs)),
            stdevs=self.stdevs,
            target=targets,
            abs=self.absolute,
        )
        return reduce_channels(attr, self.reduction)
