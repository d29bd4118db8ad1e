"""Modified-backpropagation explainers: DeepLIFT, DeepLiftSHAP, Guided Backprop, Guided Grad-CAM.

Each one runs the model once with forward hooks that change how the gradient passes certain
modules, then reads the gradient at the input (docs/explainers.md, *Propagation methods*).
The hooks use the identity ``out = y.detach() + t - t.detach()``: the forward value stays
``y`` exactly while the backward pass follows ``t``, so no backward hooks are registered and
nothing depends on state kept between the forward and the backward pass (a module may run
several times per forward pass). Every hook is removed in a ``finally`` block.

* ``deeplift`` — DeepLIFT with the Rescale rule (Shrikumar et al. 2017) in Captum's
  formulation (Ancona et al. 2018): the model runs on inputs and references stacked in one
  batch; an elementwise activation's derivative becomes ``(y - y') / (x - x')`` (its gradient
  where ``|x - x'| < eps``), max pooling follows Captum's max-pool rule; the map is
  ``(x - x') * modified gradient``, which sums to ``f(x) - f(x')`` (checked per call).
* ``deeplift_shap`` — the mean of DeepLIFT maps over a reference distribution (Lundberg &
  Lee 2017, Captum's ``DeepLiftShap``).
* ``guided_backprop`` — Springenberg et al. 2015: at every ``nn.ReLU`` (and ``nn.ReLU6``)
  module only positive gradients pass back.
* ``guided_gradcam`` — Selvaraju et al. 2017: Guided Backprop times the upsampled Grad-CAM.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.fill import BASELINE_BLUR, make_fill
from ..ops.seeding import sample_generators
from ..ops.validation import COUNT, NON_NEGATIVE, ListOf, Null, OneOf, set_options
from ..registry import EXPLAINERS
from .base import BASELINES, REDUCTIONS, Baseline, Explainer, Reduction, reduce_channels
from .cam import LAYER, GradCAM
from .model_calls import target_scores, upsample

#: the ``reduction`` option of the propagation explainers (None: the explainer's default)
REDUCTION = [OneOf(REDUCTIONS), Null("the explainer's default")]

#: elementwise activation modules (DeepLIFT's Rescale rule, LRP's pass rule)
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
)
#: max pooling modules (winner-take-all; DeepLIFT's max-pool rule)
MAX_POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
#: average pooling modules (linear)
AVG_POOLS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: layers whose output is an affine map of their input (LRP's rules apply to them)
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: modules that move, copy, drop (in eval mode) or zero-pad values: their gradient is exact
STRUCTURAL: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)

Hook = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]


def swap(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``y``'s values with ``t``'s gradient: ``y.detach() + t - t.detach()``."""
    return y.detach() + (t - t.detach())


@contextmanager
def forward_hooks(
    hooks: Sequence[tuple[nn.Module, Hook]],
    pre_hooks: Sequence[tuple[nn.Module, Callable]] = (),
    out_of_place: Iterable[nn.Module] = (),
) -> Iterator[None]:
    """Register forward (pre-)hooks for the block; hooked modules (and ``out_of_place``) run out of
    place.

    A hook that reads a module's input cannot see it after an in-place activation overwrote
    it, so such modules get ``inplace = False`` for the block (restored afterwards).
    """
    with ExitStack() as stack:
        for module in {id(m): m for m in [*(m for m, _ in hooks), *out_of_place]}.values():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
                stack.callback(setattr, module, "inplace", True)
        for module, hook in pre_hooks:
            stack.callback(module.register_forward_pre_hook(hook).remove)
        for module, hook in hooks:
            stack.callback(module.register_forward_hook(hook).remove)
        yield


def leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if not next(iter(module.children()), None):
            yield name, module


# --------------------------------------------------------------------------- Guided Backprop


class _PositiveGradient(torch.autograd.Function):
    """Identity whose backward pass keeps only the positive part of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


#: the rectifiers whose backward pass Guided Backprop changes
RECTIFIERS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


def guided_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, explainer: str
) -> torch.Tensor:
    """Guided Backprop's input gradient ``(N, C, H, W)``: ``relu(g) 1[x > 0]`` at rectifiers."""

    def hook(module, args, out):
        return _PositiveGradient.apply(out)

    rectifiers = [m for m in model.modules() if isinstance(m, RECTIFIERS)]
    with torch.enable_grad(), forward_hooks([(m, hook) for m in rectifiers]):
        x = inputs.detach().clone().requires_grad_(True)
        score = target_scores(model(x), targets)
        if not rectifiers:
            raise ValueError(
                f"{explainer}: {type(model).__name__} has no nn.ReLU or nn.ReLU6 module; Guided "
                "Backprop changes the backward pass of those modules only (functional relu calls "
                "are not seen), so its map would be the plain gradient (use saliency)"
            )
        (grad,) = torch.autograd.grad(score.sum(), x)
    return grad


class _PropagationExplainer(Explainer):
    family: ClassVar[str] = "propagation"
    default_reduction: ClassVar[str] = "sum"
    option_constraints: ClassVar[dict] = {"reduction": REDUCTION}

    def _init_reduction(self, reduction: str | None) -> None:
        set_options(self, reduction=reduction)
        if self.reduction is None:
            self.reduction = self.default_reduction


@EXPLAINERS.register(
    "guided_backprop",
    description="Guided Backprop (Springenberg et al. 2015; equals Captum's GuidedBackprop): the "
    "input gradient with only positive gradients passed back through each nn.ReLU (and nn.ReLU6) "
    "module; signed, channels summed (option reduction); 1 backward pass.",
)
class GuidedBackpropExplainer(_PropagationExplainer):
    """``d logit / dx`` where every rectifier module passes back ``relu(g) * 1[x > 0]``."""

    name = "guided_backprop"

    def __init__(self, reduction: Reduction | None = None):
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        return reduce_channels(guided_gradients(model, inputs, targets, self.name), self.reduction)


@EXPLAINERS.register(
    "guided_gradcam",
    description="Guided Grad-CAM (Selvaraju et al. 2017; equals Captum's GuidedGradCam with "
    "bilinear upsampling): Guided Backprop times the Grad-CAM map upsampled to the input, per "
    "channel, then channels summed (option reduction); the model's declared CAM layer by default "
    "(option layer).",
)
class GuidedGradCAM(Explainer):
    """``guided_backprop(x) * upsample(gradcam(x))`` per input channel, then ``reduction``."""

    name = "guided_gradcam"
    family: ClassVar[str] = "cam"
    needs_layer: ClassVar[bool] = True
    option_constraints: ClassVar[dict] = {"layer": LAYER, "reduction": OneOf(REDUCTIONS)}

    def __init__(self, layer: str | None = None, reduction: Reduction = "sum"):
        set_options(self, layer=layer)
        self._cam = GradCAM(layer)
        self._cam.name = self.name  # errors about the layer name this explainer
        set_options(self, reduction=reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        cam = upsample(self._cam.layer_maps(model, inputs, targets), inputs.shape[-2:])
        guided = guided_gradients(model, inputs, targets, self.name)
        return reduce_channels(guided * cam[:, None].to(guided.dtype), self.reduction)


# --------------------------------------------------------------------------- DeepLIFT

#: ``|f(x) - f(x') - sum(map)|`` above this fraction of ``|f(x)| + |f(x')|`` gets a warning
COMPLETENESS_TOLERANCE = 1e-3


def _pool_indices(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The flat positions (per channel plane) of each window's maximum."""
    dims = x.ndim - 2
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[dims - 1]
        return fn(x, module.output_size, return_indices=True)[1]
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    return fn(
        x,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )[1]


def _gather(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``z`` read at pooling indices ``idx``: shape of ``idx``."""
    return z.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)


def _rescale_hook(eps: float) -> Hook:
    """DeepLIFT's Rescale rule on a module run on ``[inputs; references]``."""

    def hook(module, args, out):
        x, n = args[0], len(args[0]) // 2
        dx = (x[:n] - x[n:]).detach()
        small = dx.abs() < eps
        m = torch.where(small, 0.0, (out[:n] - out[n:]).detach() / torch.where(small, 1.0, dx))
        rescaled = swap(out[:n], x[:n] * m)
        return torch.cat([torch.where(small, out[:n], rescaled), out[n:].detach()])

    return hook


def _max_pool_hook(eps: float) -> Hook:
    """Captum's DeepLIFT max-pool rule on a module run on ``[inputs; references]``.

    With ``o``, ``o'`` the pooled input and reference and ``m = max(o, o')``, a window's output
    difference splits into ``m - o'`` (credited to the input's maximum) and ``o - m`` (credited
    to the reference's maximum); each position's multiplier is its credit over ``x - x'``
    (the plain gradient where ``|x - x'| < eps``).
    """

    def hook(module, args, out):
        if isinstance(out, tuple):
            raise ValueError(
                f"DeepLIFT: {type(module).__name__}(return_indices=True) is not supported"
            )
        x, n = args[0], len(args[0]) // 2
        xi, xr = x[:n], x[n:]
        idx_i, idx_r = _pool_indices(module, xi.detach()), _pool_indices(module, xr.detach())
        dx = (xi - xr).detach()
        small = dx.abs() < eps
        oi, orf = out[:n].detach(), out[n:].detach()
        top = torch.maximum(oi, orf)
        z = xi * torch.where(small, 0.0, 1.0 / torch.where(small, 1.0, dx))
        t = (
            (top - orf) * _gather(z, idx_i)
            + (oi - top) * _gather(z, idx_r)
            + _gather(xi * small, idx_i)
        )
        return torch.cat([swap(out[:n], t), out[n:].detach()])

    return hook


def deeplift(
    model: nn.Module,
    inputs: torch.Tensor,
    references: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepLIFT (Rescale) attributions ``(N, C, H, W)`` of ``inputs`` against ``references``,
    with the target scores ``f(x)`` and ``f(x')`` (``(N,)`` each)."""
    n = len(inputs)
    hooks = [(m, _rescale_hook(eps)) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    hooks += [(m, _max_pool_hook(eps)) for m in model.modules() if isinstance(m, MAX_POOLS)]
    with torch.enable_grad(), forward_hooks(hooks):
        x = inputs.detach().clone().requires_grad_(True)
        refs = references.detach().to(x.dtype)
        out = model(torch.cat([x, refs]))
        if out.ndim != 2 or len(out) != 2 * n:
            raise RuntimeError(
                f"DeepLIFT: the model returned {tuple(out.shape)} for {2 * n} stacked inputs and "
                "references; it must return (N, classes) and treat samples independently"
            )
        f, f_ref = target_scores(out[:n], targets), target_scores(out[n:], targets)
        (grad,) = torch.autograd.grad(f.sum(), x)
    return (x.detach() - refs) * grad, f.detach(), f_ref.detach()


def _warn_incomplete(
    explainer: str, model: nn.Module, attr: torch.Tensor, f: torch.Tensor, f_ref: torch.Tensor
) -> None:
    """Warn when maps miss summation-to-delta (modules or operations without a DeepLIFT rule)."""
    diff = f - f_ref
    error = attr.flatten(1).sum(1) - diff
    scale = f.abs() + f_ref.abs()
    bad = error.abs() > COMPLETENESS_TOLERANCE * scale.clamp_min(1e-6)
    if not bool(bad.any()):
        return
    known = ACTIVATIONS + MAX_POOLS + AVG_POOLS + BATCH_NORMS + LINEAR_LAYERS + STRUCTURAL
    other = sorted({type(m).__name__ for _, m in leaf_modules(model) if not isinstance(m, known)})
    why = (
        f"modules DeepLIFT has no rule for: {', '.join(other)}"
        if other
        else "nonlinear operations outside modules (e.g. F.relu or x.amax() in forward())"
    )
    i = int((error.abs() / scale.clamp_min(1e-6)).argmax())
    warnings.warn(
        f"{explainer}: maps do not sum to f(x) - f(reference) on {int(bad.sum())} of {len(bad)} "
        f"samples (worst: {float(error[i] + diff[i]):.4g} vs {float(diff[i]):.4g}); the model has "
        f"{why}, which get plain gradients, so the maps are not DeepLIFT there",
        RuntimeWarning,
        stacklevel=4,
    )


@EXPLAINERS.register(
    "deeplift",
    description="DeepLIFT (Shrikumar et al. 2017), Rescale rule in Captum's formulation: (x - "
    "baseline) times gradients whose activation derivatives are replaced by (y - y')/(x - x') and "
    "max pooling by Captum's rule; baseline black|white|mean|blur|uniform (default black); sums to "
    "f(x) - f(baseline) (checked), channels summed; 1 forward+backward pass on inputs and "
    "baselines stacked.",
)
class DeepLiftExplainer(_PropagationExplainer):
    """DeepLIFT-Rescale against one reference per sample (the ``baseline`` option)."""

    name = "deeplift"
    option_constraints: ClassVar[dict] = {
        "baseline": OneOf(BASELINES),
        "eps": NON_NEGATIVE,
        "reduction": REDUCTION,
    }

    def __init__(
        self, baseline: Baseline = "black", eps: float = 1e-10, reduction: Reduction | None = None
    ):
        set_options(self, baseline=baseline, eps=eps)
        self._init_reduction(reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        gens = sample_generators(inputs, generator) if self.baseline == "uniform" else None
        ref = make_fill(inputs, self.baseline, generators=gens, blur=BASELINE_BLUR)
        attr, f, f_ref = deeplift(model, inputs, ref, targets, self.eps)
        _warn_incomplete(self.name, model, attr, f, f_ref)
        return reduce_channels(attr, self.reduction)


@EXPLAINERS.register(
    "deeplift_shap",
    description="DeepLiftSHAP (Lundberg & Lee 2017; Captum's DeepLiftShap): the mean DeepLIFT map "
    "over a reference distribution: each baseline listed (default black and uniform) with equal "
    "weight, 'uniform' estimated from n_samples=4 seeded noise images; channels summed; batch_size "
    "(image, reference) pairs per pass.",
)
class DeepLiftShapExplainer(_PropagationExplainer):
    """``sum_b w_b DeepLIFT(x, b)``: every listed baseline weighs ``1 / len(baselines)``.

    Deterministic baselines (black, white, mean, blur) are one reference each; ``uniform``
    is ``n_samples`` noise images drawn from the sample's own generator, sharing its weight.
    """

    name = "deeplift_shap"
    cost_knobs: ClassVar[tuple[str, ...]] = ("n_samples", "batch_size")
    option_constraints: ClassVar[dict] = {
        "baselines": [OneOf(BASELINES), ListOf(OneOf(BASELINES))],
        "n_samples": COUNT,
        "eps": NON_NEGATIVE,
        "batch_size": COUNT,
        "reduction": REDUCTION,
    }

    def __init__(
        self,
        baselines: Baseline | list[Baseline] | tuple[Baseline, ...] = ("black", "uniform"),
        n_samples: int = 4,
        eps: float = 1e-10,
        batch_size: int = 64,
        reduction: Reduction | None = None,
    ):
        set_options(self, baselines=baselines, n_samples=n_samples, eps=eps, batch_size=batch_size)
        names = (self.baselines,) if isinstance(self.baselines, str) else self.baselines
        self.baselines = tuple(dict.fromkeys(names))
        self._init_reduction(reduction)

    def references(
        self, inputs: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """References ``(N, R, C, H, W)`` and their weights ``(R,)`` (summing to 1)."""
        refs, weights = [], []
        share = 1.0 / len(self.baselines)
        gens = sample_generators(inputs, generator) if "uniform" in self.baselines else None
        for name in self.baselines:
            if name == "uniform":
                noise = torch.stack(
                    [torch.rand((self.n_samples, *inputs.shape[1:]), generator=g) for g in gens]
                )
                refs.append(noise.to(inputs.device, inputs.dtype))
                weights += [share / self.n_samples] * self.n_samples
            else:
                refs.append(make_fill(inputs, name, blur=BASELINE_BLUR)[:, None])
                weights.append(share)
        return torch.cat(refs, 1), torch.tensor(weights, dtype=inputs.dtype, device=inputs.device)

    def attribute(self, model, inputs, targets, *, generator=None):
        refs, w = self.references(inputs, generator)
        n, r = refs.shape[:2]
        x = inputs[:, None].expand_as(refs).flatten(0, 1)
        t = targets.repeat_interleave(r)
        flat = refs.flatten(0, 1)
        parts = [
            deeplift(
                model,
                x[a : a + self.batch_size],
                flat[a : a + self.batch_size],
                t[a : a + self.batch_size],
                self.eps,
            )
            for a in range(0, len(x), self.batch_size)
        ]
        attr, f, f_ref = (torch.cat(p) for p in zip(*parts, strict=True))
        _warn_incomplete(self.name, model, attr, f, f_ref)
        attr = (attr.view(n, r, *inputs.shape[1:]) * w.view(1, r, 1, 1, 1)).sum(1)
        return reduce_channels(attr, self.reduction)
