"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019), zennit's rules.

The target logit ``f_t(x)`` is the relevance at the output; each layer passes its output
relevance ``R_k`` to its inputs by a rule, down to the pixels (docs/explainers.md, *LRP*).
With ``z_k`` a layer's (rule-modified) pre-activations and ``stab(z) = z + s * sign(z)``
(sign(0) = 1):

* ``epsilon`` (LRP-eps): ``R_j = x_j sum_k w_jk R_k / stab(z_k)``, ``z = Wx + b``, ``s = epsilon``;
* ``gamma`` (LRP-gamma, zennit's generalised form): positive outputs use ``W + gamma W+`` on
  positive inputs and ``W + gamma W-`` on negative ones (biases ``b + gamma b+``), negative
  outputs the mirror image;
* ``zplus`` (z+, alpha=1 beta=0): ``R_j = sum_k (x+_j w+_jk + x-_j w-_jk) R_k / stab(z+_k)``;
* ``alpha_beta``: ``alpha`` times the positive contributions' share minus ``beta`` times the
  negative ones' (``alpha - beta = 1``);
* first layer only: ``flat`` (relevance spread evenly over the receptive field), ``wsquare``
  (in proportion to ``w^2``) and ``zbox`` (z^B, Montavon et al. 2017, with the pixel bounds
  [0, 1] mapped through the model's normalisation).

The rules are zennit 0.5.1's (``zennit.rules``) and the composites its ``EpsilonGammaBox``,
``EpsilonPlus``, ``EpsilonPlusFlat``, ``EpsilonAlpha2Beta1`` and ``EpsilonAlpha2Beta1Flat``
(tested against zennit and Captum's LRP). Other modules: elementwise activations pass
relevance unchanged (zennit's ``Pass``); average pooling splits it in proportion to the
inputs (zennit's ``Norm``); max pooling gives it to the maximum; BatchNorm is merged into the
linear layer whose output it normalises (canonisation, zennit's ``MergeBatchNorm``) or passes
relevance when there is none. Operations outside modules follow the z-rule: a residual
addition ``a + b`` splits relevance in proportion to ``a`` and ``b`` (zennit's ``Norm`` on a
``Sum`` module, what its ResNet canonizer inserts). Other leaf modules are refused with their
names.

**How.** Layers above the first one run as ``y.detach() + t - t.detach()`` where ``t``'s
gradient, times the layer's input, is the rule's relevance (relevance = input x modified
gradient), so functional ReLU, max, addition, reshaping and concatenation need no hooks. The
first layer's rule is applied to its output relevance directly (``flat`` and ``zbox`` are not
of that form), and the result is mapped to pixels: an :class:`ImageClassifier`'s per-pixel
normalisation keeps a pixel's relevance, resizing and grey-to-RGB expansion (pretrained
models) send it back by the transposed resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..models.vision import ImageClassifier
from ..ops.validation import NON_NEGATIVE, POSITIVE, Null, OneOf, option_error, set_options
from ..registry import EXPLAINERS
from .base import Reduction, reduce_channels
from .model_calls import target_scores
from .propagation import (
    ACTIVATIONS,
    AVG_POOLS,
    BATCH_NORMS,
    LINEAR_LAYERS,
    MAX_POOLS,
    REDUCTION,
    STRUCTURAL,
    _PropagationExplainer,
    forward_hooks,
    swap,
)

Rule = Literal["epsilon", "gamma", "zplus", "alpha_beta", "flat", "wsquare", "zbox"]
RULES: tuple[str, ...] = Rule.__args__
#: rules whose relevance is not proportional to the layer's input: the first layer only
FIRST_LAYER_RULES: tuple[str, ...] = ("flat", "wsquare", "zbox")
LAYER_RULES: tuple[str, ...] = tuple(r for r in RULES if r not in FIRST_LAYER_RULES)
#: leaf modules LRP handles (anything else that runs is refused)
SUPPORTED: tuple[type[nn.Module], ...] = (
    LINEAR_LAYERS + BATCH_NORMS + ACTIVATIONS + MAX_POOLS + AVG_POOLS + STRUCTURAL
)
#: how many unsupported modules an error lists
N_LISTED = 8


@dataclass(frozen=True)
class Composite:
    """Rules per layer type; ``first`` applies to the first linear layer that runs (only if it
    is a convolution when ``first_conv_only``)."""

    conv: str
    dense: str
    first: str | None = None
    first_conv_only: bool = False
    zennit: str = ""


COMPOSITES: dict[str, Composite] = {
    "epsilon": Composite("epsilon", "epsilon", zennit="LRP-epsilon everywhere"),
    "epsilon_plus": Composite("zplus", "epsilon", zennit="EpsilonPlus"),
    "epsilon_plus_flat": Composite("zplus", "epsilon", first="flat", zennit="EpsilonPlusFlat"),
    "epsilon_gamma_box": Composite(
        "gamma", "epsilon", first="zbox", first_conv_only=True, zennit="EpsilonGammaBox"
    ),
    "epsilon_alpha_beta": Composite("alpha_beta", "epsilon", zennit="EpsilonAlpha2Beta1"),
    "epsilon_alpha_beta_flat": Composite(
        "alpha_beta", "epsilon", first="flat", zennit="EpsilonAlpha2Beta1Flat"
    ),
}


def stabilize(z: torch.Tensor, s: float) -> torch.Tensor:
    """``z + s * sign(z)`` with sign(0) = 1 (zennit's ``stabilize``)."""
    return z + s * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _add_bias(z: torch.Tensor, b: torch.Tensor | None, dense: bool) -> torch.Tensor:
    if b is None:
        return z
    return z + (b if dense else b.view(1, -1, *([1] * (z.ndim - 2))))


def merge_batch_norm(linear: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(linear(x))`` as one affine layer (zennit's ``MergeBatchNorm``)."""
    w = linear.weight.detach()
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else torch.zeros_like(scale)
    bias = (b - bn.running_mean.detach()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.detach()
    return w * scale.view(-1, *([1] * (w.ndim - 1))), bias


@dataclass
class _Plan:
    """What one forward pass showed: which BatchNorms merge into which linear layers."""

    merged: dict[int, nn.Module]  # id(batch norm) -> the linear layer it follows
    sources: set[int]  # ids of linear layers whose every output a merged batch norm takes


@dataclass
class _First:
    module: nn.Module
    x: torch.Tensor  # its input, detached
    x_graph: torch.Tensor  # its input as the forward pass saw it (for the map to the pixels)
    weight: torch.Tensor
    bias: torch.Tensor | None
    rule: str
    leaf: torch.Tensor


class _Propagation:
    """One LRP pass: the hooks and their state."""

    def __init__(self, lrp: LRP, plan: _Plan):
        self.lrp, self.plan = lrp, plan
        self.busy = 0
        self.pending: dict[int, tuple[torch.Tensor, nn.Module, torch.Tensor]] = {}
        self.first: _First | None = None

    # -- the modified forward of a linear layer
    def linear(self, module: nn.Module, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``module``'s own forward with ``weight`` and no bias (hooks skip these calls)."""
        params = {"weight": weight}
        if getattr(module, "bias", None) is not None:
            params["bias"] = torch.zeros_like(module.bias)
        self.busy += 1
        try:
            return torch.func.functional_call(module, params, (inp,))
        finally:
            self.busy -= 1

    def parts(
        self,
        rule: str,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[tuple]:
        """``[(coefficient, denominator sign, group, input, weight, bias)]`` of a rule."""
        p = self.lrp
        if rule == "epsilon":
            return [(1.0, 1.0, 0, x, w, b)]
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        if rule in ("flat", "wsquare"):
            ones = torch.ones_like(x)
            if rule == "flat":
                return [(1.0, 1.0, 0, ones, torch.ones_like(w), None)]
            return [(1.0, 1.0, 0, ones, w * w, None if b is None else b * b)]
        if rule == "zbox":
            low, high = (t.to(device=x.device, dtype=x.dtype).expand_as(x) for t in bounds)
            return [
                (1.0, 1.0, 0, x, w, b),
                (-1.0, -1.0, 0, low, wp, bp),
                (-1.0, -1.0, 0, high, wn, bn),
            ]
        pos, neg = x.clamp(min=0), x.clamp(max=0)
        if rule == "zplus":
            return [(1.0, 1.0, 0, pos, wp, bp), (1.0, 1.0, 0, neg, wn, None)]
        if rule == "alpha_beta":
            a, c = p.alpha, -p.beta
            return [
                (a, 1.0, 0, pos, wp, bp),
                (a, 1.0, 0, neg, wn, None),
                (c, 1.0, 1, pos, wn, bn),
                (c, 1.0, 1, neg, wp, None),
            ]
        if rule == "gamma":
            g = p.gamma
            wgp, wgn = w + g * wp, w + g * wn
            bgp = None if b is None else b + g * bp
            bgn = None if b is None else b + g * bn
            return [
                (1.0, 1.0, 0, pos, wgp, bgp),
                (1.0, 1.0, 0, neg, wgn, None),
                (1.0, 1.0, 1, pos, wgn, bgn),
                (1.0, 1.0, 1, neg, wgp, None),
            ]
        raise AssertionError(rule)  # pragma: no cover - checked in LRP.__init__

    def scales(
        self, rule: str, parts: list[tuple], outs: list[torch.Tensor], y: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Per group: ``mask / stab(denominator)`` (the gamma rule's groups are y > 0 and y < 0)."""
        dens: dict[int, torch.Tensor] = {}
        for (_, sign, group, *_), out in zip(parts, outs, strict=True):
            dens[group] = dens.get(group, 0) + sign * out.detach()
        s = self.lrp.epsilon if rule == "epsilon" else self.lrp.stabilizer
        scale = {g: 1.0 / stabilize(d, s) for g, d in dens.items()}
        if rule == "gamma":
            scale = {g: v * ((y > 0) if g == 0 else (y < 0)).to(v.dtype) for g, v in scale.items()}
        return scale

    def modified(self, module, inp, w, b, dense):
        return _add_bias(self.linear(module, inp, w), b, dense)

    @staticmethod
    def needed(parts: list[tuple]) -> list[tuple]:
        """The parts that matter: a part whose input is all zero adds nothing, unless it has a
        bias (which is in its denominator)."""
        return [p for p in parts if p[5] is not None or bool(p[3].detach().any())]

    def gradient_term(self, rule, module, x, w, b, y, dense) -> torch.Tensor:
        """``t`` such that ``x * d(t)/dx`` (times the output's gradient) is the rule's relevance."""
        parts = self.needed(self.parts(rule, x, w, b))
        outs = [self.modified(module, inp, wt, bt, dense) for _, _, _, inp, wt, bt in parts]
        scale = self.scales(rule, parts, outs, y.detach())
        t = 0
        for (coef, _, group, *_), out in zip(parts, outs, strict=True):
            t = t + coef * out * (y.detach() * scale[group])
        return t if isinstance(t, torch.Tensor) else y * 0

    def relevance(self, first: _First, r_out: torch.Tensor, bounds) -> torch.Tensor:
        """The first layer's rule applied to its output relevance: relevance at its input."""
        dense = isinstance(first.module, nn.Linear)
        x = first.x.detach()
        parts = self.needed(self.parts(first.rule, x, first.weight, first.bias, bounds))
        leaves = [inp.detach().requires_grad_(True) for _, _, _, inp, _, _ in parts]
        outs = [
            self.modified(first.module, leaf, wt, bt, dense)
            for leaf, (_, _, _, _, wt, bt) in zip(leaves, parts, strict=True)
        ]
        scale = self.scales(first.rule, parts, outs, first.leaf.detach())
        grads = torch.autograd.grad(outs, leaves, [r_out * scale[g] for _, _, g, *_ in parts])
        rel = torch.zeros_like(x)
        for (coef, *_), leaf, g in zip(parts, leaves, grads, strict=True):
            rel = rel + coef * leaf.detach() * g
        return rel

    # -- hooks
    def apply(
        self,
        module: nn.Module,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        y: torch.Tensor,
    ) -> torch.Tensor:
        dense = isinstance(module, nn.Linear)
        if self.first is None:
            leaf = y.detach().requires_grad_(True)
            self.first = _First(
                module, x.detach().clone(), x, w, b, self.lrp.rule_for("first", dense), leaf
            )
            return leaf.clone()  # a non-leaf copy: an in-place activation after it is allowed
        rule = self.lrp.rule_for("dense" if dense else "conv", dense)
        if rule == "epsilon":  # y's own graph has the layer's (merged) weights
            return swap(y, y * (y / stabilize(y, self.lrp.epsilon)).detach())
        return swap(y, self.gradient_term(rule, module, x, w, b, y, dense))

    def linear_hook(self, module, args, out):
        if self.busy:
            return None
        if id(module) in self.plan.sources:
            self.pending[id(out)] = (out, module, args[0])
            return None
        b = None if module.bias is None else module.bias.detach()
        return self.apply(module, args[0], module.weight.detach(), b, out)

    def batch_norm_hook(self, module, args, out):
        src = self.pending.pop(id(args[0]), None)
        if src is None or src[0] is not args[0]:
            return self.pass_hook(module, args, out)
        _, linear, x = src
        w, b = merge_batch_norm(linear, module)
        return self.apply(linear, x, w, b, out)

    @staticmethod
    def pass_hook(module, args, out):
        """Relevance passes unchanged (zennit's ``Pass``): ``R_x = R_y``."""
        x = args[0]
        ratio = torch.where(x != 0, out / torch.where(x != 0, x, 1.0), 0.0).detach()
        return swap(out, x * ratio)

    def norm_hook(self, module, args, out):
        """Average pooling: relevance in proportion to the inputs (zennit's ``Norm``)."""
        return swap(out, out * (out / stabilize(out, self.lrp.stabilizer)).detach())


def _plan(model: nn.Module, x: torch.Tensor, explainer: str, canonize: bool) -> _Plan:
    """Run the model once (no gradients) recording which modules run, in order, on what."""
    calls: list[tuple[nn.Module, Any, Any]] = []

    def record(module, args, out):
        calls.append((module, args[0] if args else None, out))

    modules = dict(model.named_modules())
    acts = [m for m in modules.values() if isinstance(m, ACTIVATIONS)]
    with torch.no_grad(), forward_hooks([(m, record) for m in modules.values()], out_of_place=acts):
        model(x)
    inside = {
        id(sub)
        for m in modules.values()
        if isinstance(m, LINEAR_LAYERS)
        for sub in m.modules()
        if sub is not m
    }
    ran = {id(m) for m, _, _ in calls}
    bad = [
        f"{n} ({type(m).__name__})"
        for n, m in modules.items()
        if n
        and id(m) in ran
        and id(m) not in inside
        and not next(iter(m.children()), None)
        and not isinstance(m, SUPPORTED)
    ]
    if bad:
        more = f" and {len(bad) - N_LISTED} more" if len(bad) > N_LISTED else ""
        raise ValueError(
            f"{explainer}: LRP has no rule for {', '.join(bad[:N_LISTED])}{more}. Supported "
            "modules: Linear, Conv1d/2d/3d (rules), BatchNorm (merged into the layer before it, "
            "else passed), elementwise activations (passed), max/average pooling, Flatten, "
            "Dropout, Identity, zero/constant padding; operations outside modules: ReLU, max, "
            "addition, reshaping (see docs/explainers.md)"
        )
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    linear_calls: dict[int, int] = {}
    feeds: dict[int, int] = {}
    bn_calls: dict[int, list[nn.Module | None]] = {}
    for m, inp, out in calls:
        if id(m) in inside:
            continue
        if isinstance(m, LINEAR_LAYERS):
            produced[id(out)] = (m, out)
            linear_calls[id(m)] = linear_calls.get(id(m), 0) + 1
        elif isinstance(m, BATCH_NORMS):
            if m.running_mean is None or m.running_var is None:
                raise ValueError(
                    f"{explainer}: {type(m).__name__} without running statistics "
                    "(track_running_stats=False) normalises with batch statistics; LRP needs a "
                    "fixed affine map per sample"
                )
            src = produced.get(id(inp))
            lin = src[0] if src is not None and src[1] is inp else None
            bn_calls.setdefault(id(m), []).append(lin)
            if lin is not None:
                feeds[id(lin)] = feeds.get(id(lin), 0) + 1
    if not linear_calls:
        raise ValueError(
            f"{explainer}: {type(model).__name__} has no Linear or Conv1d/2d/3d layer that runs; "
            "LRP's rules apply to those"
        )
    merged: dict[int, nn.Module] = {}
    if canonize:
        for bn_id, sources in bn_calls.items():
            lin = sources[0]
            if (
                lin is not None
                and all(s is lin for s in sources)
                and feeds[id(lin)] == linear_calls[id(lin)]
            ):
                merged[bn_id] = lin
    return _Plan(merged, {id(m) for m in merged.values()})


def _fmt(x: float) -> str:
    return f"{x:g}"


@EXPLAINERS.register(
    "lrp",
    description="Layer-wise Relevance Propagation (Bach et al. 2015) with zennit's rules and "
    "composites (default epsilon_gamma_box: z^B first conv with pixel bounds, gamma=0.25 convs, "
    "epsilon dense; also epsilon, epsilon_plus, epsilon_plus_flat, epsilon_alpha_beta[_flat]; "
    "per-type overrides), BatchNorm merged into the preceding layer, residual additions split "
    "proportionally; channels summed.",
)
class LRP(_PropagationExplainer):
    """LRP from the target logit down to the pixels (see the module docstring)."""

    name = "lrp"
    option_constraints: ClassVar[dict] = {
        "composite": OneOf(COMPOSITES),
        "epsilon": NON_NEGATIVE,
        "gamma": NON_NEGATIVE,
        "alpha": NON_NEGATIVE,
        "beta": NON_NEGATIVE,
        "stabilizer": POSITIVE,
        "first_rule": [OneOf(RULES), Null("the composite's rule")],
        "conv_rule": [OneOf(LAYER_RULES), Null("the composite's rule")],
        "dense_rule": [OneOf(LAYER_RULES), Null("the composite's rule")],
        "reduction": REDUCTION,
    }

    def __init__(
        self,
        composite: str = "epsilon_gamma_box",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        alpha: float = 2.0,
        beta: float = 1.0,
        stabilizer: float = 1e-6,
        first_rule: Rule | None = None,
        conv_rule: Rule | None = None,
        dense_rule: Rule | None = None,
        canonize: bool = True,
        reduction: Reduction | None = None,
    ):
        set_options(self, composite=composite, epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta)
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise option_error(
                self.name,
                "beta",
                beta,
                f"alpha - 1, here {_fmt(self.alpha - 1.0)} (alpha {alpha!r})",
                detail="alpha - beta must be 1: relevance is "
                "conserved; e.g. alpha=2, beta=1 or alpha=1, beta=0",
            )
        set_options(self, stabilizer=stabilizer, first_rule=first_rule)
        for option, value in (("conv_rule", conv_rule), ("dense_rule", dense_rule)):
            if value in FIRST_LAYER_RULES:
                raise option_error(
                    self.name,
                    option,
                    value,
                    f"one of {', '.join(LAYER_RULES)}",
                    detail=f"{value} is a first-layer rule: give it as first_rule",
                )
        set_options(self, conv_rule=conv_rule, dense_rule=dense_rule)
        self.canonize = bool(canonize)
        self._init_reduction(reduction)

    def rule_for(self, where: str, dense: bool) -> str:
        """The rule of the first layer (``where="first"``), a convolution or a dense layer."""
        comp = COMPOSITES[self.composite]
        conv = self.conv_rule or comp.conv
        dense_rule = self.dense_rule or comp.dense
        if where == "first":
            if self.first_rule is not None:
                return self.first_rule
            if comp.first is not None and not (comp.first_conv_only and dense):
                return comp.first
            return dense_rule if dense else conv
        return dense_rule if where == "dense" else conv

    def relevance(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Pixel relevance ``(N, C, H, W)``, before the channel reduction."""
        plan = _plan(model, inputs[:1].detach(), self.name, self.canonize)
        prop = _Propagation(self, plan)
        modules = list(model.modules())
        hooks = [(m, prop.linear_hook) for m in modules if isinstance(m, LINEAR_LAYERS)]
        hooks += [(m, prop.batch_norm_hook) for m in modules if isinstance(m, BATCH_NORMS)]
        hooks += [
            (m, prop.pass_hook)
            for m in modules
            if isinstance(m, ACTIVATIONS) and type(m) is not nn.ReLU
        ]
        hooks += [(m, prop.norm_hook) for m in modules if isinstance(m, AVG_POOLS)]
        net_input: list[torch.Tensor] = []
        pre_hooks = []
        if isinstance(model, ImageClassifier):
            pre_hooks.append((model.net, lambda module, args: net_input.append(args[0])))
        acts = [m for m in modules if isinstance(m, ACTIVATIONS)]
        with torch.enable_grad(), forward_hooks(hooks, pre_hooks, out_of_place=acts):
            x = inputs.detach().clone().requires_grad_(True)
            score = target_scores(model(x), targets)
            first = prop.first
            assert first is not None  # _plan found a linear layer
            g_out, g_x = torch.autograd.grad(score.sum(), [first.leaf, x], allow_unused=True)
            if g_x is not None and bool(g_x.any()):
                raise ValueError(
                    f"{self.name}: the output depends on the input other than through the first "
                    f"layer ({type(first.module).__name__}); LRP needs every path from the pixels "
                    "to pass it"
                )
            if g_out is None:
                g_out = torch.zeros_like(first.leaf)
            z = net_input[0] if net_input else x
            bounds = self._bounds(model, first, z, x)
            r_first = prop.relevance(first, first.leaf.detach() * g_out, bounds)
            return self._to_pixels(model, first, r_first, z, x, bool(net_input))

    def _bounds(self, model, first: _First, z, x) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The zbox rule's input bounds: the pixels' [0, 1] in the first layer's input space."""
        if first.rule != "zbox":
            return None
        if first.x_graph is z:
            if z is not x:  # an ImageClassifier's network input: (x - mean) / std
                return (0 - model.mean) / model.std, (1 - model.mean) / model.std
            return torch.zeros(()), torch.ones(())
        raise ValueError(
            f"{self.name}: the zbox rule needs the first layer to take the (normalised) pixels "
            "directly, so that their bounds are known; this model changes them before its first "
            "layer (use first_rule: flat or epsilon)"
        )

    def _to_pixels(
        self, model, first: _First, rel: torch.Tensor, z, x, wrapped: bool
    ) -> torch.Tensor:
        """Relevance at the first layer's input, carried to the pixels.

        Operations between the (network) input and the first layer pass relevance by their
        gradient, as in zennit. An ImageClassifier's normalisation ``(u - mean) / std`` keeps
        each value's relevance (the gradient's ``1 / std`` is undone), and what comes before it
        (a pretrained model's resizing and grey-to-RGB expansion) is linear: relevance goes back
        by the transposed map, which preserves its sum.
        """
        if first.x_graph is not z:
            try:
                (rel,) = torch.autograd.grad(first.x_graph, z, rel)
            except RuntimeError as exc:
                raise ValueError(
                    f"{self.name}: the first layer's input does not come from the model's input "
                    f"({exc})"
                ) from None
        if not wrapped:
            return rel.detach()
        (out,) = torch.autograd.grad(z, x, rel * model.std.to(rel.dtype))
        return out.detach()

    def attribute(self, model, inputs, targets, *, generator=None):
        return reduce_channels(self.relevance(model, inputs, targets), self.reduction)


__all__ = ["COMPOSITES", "LRP", "RULES", "Composite", "merge_batch_norm", "stabilize"]
