"""Sanity checks: do the maps depend on the model's parameters (``mprt``) and on the class explained
(``random_logit``)?"""

from __future__ import annotations

import copy
import inspect
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.validation import COUNT, Null, OneOf, Satisfies, set_options
from ..registry import METRICS
from .base import EvalBatch, ExplainFn, Metric, MetricOutput
from .core import (
    BATCH_SIZE,
    NONFINITE_OUTPUT,
    NORMALISE,
    SIMILARITIES,
    SampleRNG,
    eval_mode,
    finite_rows,
    full_threads,
    nan_where,
    normalise_maps,
    normalise_rule,
    predict,
    prepare,
    serial_bookkeeping,
    similarity,
)


def _accepts_model(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    return any(p.name == "model" or p.kind == p.VAR_KEYWORD for p in params)


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with ``reset_parameters`` and parameters, in registration order (as Quantus)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))
    ]


@METRICS.register(
    "mprt",
    description="Model parameter randomisation test (Adebayo et al. 2018): similarity of maps "
    "before/after randomising top layers",
)
class ModelParameterRandomisation(Metric):
    """Similarity between each map and the map of a copy of the model whose top
    ``n_layers`` layers (those with ``reset_parameters``, from the output down,
    cumulatively; ``None`` = all) are re-initialised. The caller's model is never
    modified: a deep copy is randomised.

    Score: similarity (``spearman`` default, or ``pearson``) after the last
    randomised layer; lower is better (a map that survives randomisation does
    not explain the model). Curve: similarity after randomising 1, 2, ... layers.
    ``abs=True`` (Quantus' default) compares magnitudes.

    Re-explanation calls ``explainers[name](inputs, targets, generator=..., model=m)``:
    the callable must explain the given model ``m``.
    """

    name = "mprt"
    option_constraints: ClassVar[dict] = {
        "n_layers": [COUNT, Null("all layers")],
        "similarity": OneOf(SIMILARITIES),
    }
    category = "sanity"
    higher_is_better = False
    value_range = (-1.0, 1.0)
    requires = ("model", "explainer")

    def __init__(self, n_layers: int | None = None, similarity: str = "spearman", abs: bool = True):
        set_options(self, n_layers=n_layers, similarity=similarity)
        self.abs = bool(abs)

    def _check_explainers(
        self, maps: dict[str, torch.Tensor], explainers: dict[str, ExplainFn] | None
    ) -> None:
        """A ValueError unless every map has an explainer that accepts ``model=``."""
        missing = [k for k in maps if not explainers or k not in explainers]
        if missing:
            raise ValueError(
                f"metric '{self.name}' re-explains a randomised model and needs explainers[name] "
                f"for {', '.join(missing)}; each must accept model=..."
            )
        for k in maps:
            if not _accepts_model(explainers[k]):
                raise ValueError(
                    f"explainers['{k}'] must accept model=... to explain the randomised copy "
                    "(call signature: explain(inputs, targets, generator=..., model=...))"
                )

    def _layers(self, model: nn.Module) -> list:
        """The ``(name, layer)`` pairs of ``model`` to randomise, output side first (at most
        ``n_layers``)."""
        layers = randomisable_layers(model)[::-1]
        if not layers:
            raise ValueError("mprt: the model has no layer with reset_parameters to randomise")
        if self.n_layers is not None:
            if self.n_layers > len(layers):
                raise ValueError(
                    f"n_layers={self.n_layers} but the model has only {len(layers)} randomisable "
                    "layers"
                )
            layers = layers[: self.n_layers]
        return layers

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
        self._check_explainers(maps, explainers)
        model = copy.deepcopy(batch.model)
        layers = self._layers(model)
        x = batch.inputs.float()
        targets = batch.targets.to(x.device).long().view(-1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        seed = rng.base_seed
        with eval_mode(
            batch.model
        ) as m:  # a model without a finite output has nothing to randomise against
            finite = finite_rows(predict(m, x))
        prep = (lambda a: a.abs()) if self.abs else (lambda a: a)
        p = x.shape[-2] * x.shape[-1]
        # the same tie-breaking offsets for the map and its re-explanation: a map that does not
        # change under randomisation (a constant map included) gets similarity 1, as it should
        ties = {k: rng.rand((p,), "ties", k, device=x.device) for k in maps}
        curves: dict[str, list[torch.Tensor]] = {k: [] for k in maps}
        bad_maps = {k: torch.zeros(len(x), dtype=torch.bool, device=x.device) for k in maps}
        devices = [x.device] if x.device.type == "cuda" else []
        for i, (_, layer) in enumerate(layers):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed((seed + i + 1) % 2**63)
                layer.reset_parameters()
            for name, a in maps.items():
                with full_threads():
                    ap = explainers[name](
                        x, targets, generator=rng.explainer_generator(name), model=model
                    )
                ap = torch.as_tensor(ap).detach().to(x.device).float()
                nonfinite = ~torch.isfinite(ap).flatten(1).all(1)
                bad_maps[name] = nonfinite  # of the last layer randomised so far
                ap = torch.where(nonfinite.view(-1, 1, 1), torch.zeros_like(ap), ap)
                sim = similarity(
                    self.similarity, prep(a).flatten(1), prep(ap).flatten(1), ties[name], ties[name]
                )
                curves[name].append(
                    nan_where(
                        sim,
                        nonfinite,
                        self.name,
                        f"after randomising {i + 1} layer(s) the "
                        "re-explained map is not finite (NaN or inf)",
                        name,
                    )
                )
        out = MetricOutput(
            curve_x={self.name: torch.arange(1, len(layers) + 1, dtype=torch.float32)}
        )
        out.curves[self.name] = {k: torch.stack(v, 1) for k, v in curves.items()}
        scores = {}
        for k, v in curves.items():
            last = nan_where(v[-1], ~finite, self.name, NONFINITE_OUTPUT, k)
            scores[k] = nan_where(
                last,
                torch.isnan(last) & ~bad_maps[k] & finite,
                self.name,
                "a map is constant, Pearson similarity undefined",
                k,
            )
        out.scores[self.name] = scores
        return out


# --------------------------------------------------------------------------- random logit

#: structural similarity variants: 2-D windows on the map (the paper's), or Quantus 0.6's windows
#: over the row-major flattened map
SSIM_KINDS = ("ssim", "ssim_flat")


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, flat: bool = False) -> torch.Tensor:
    """Per-sample structural similarity of maps ``a``, ``b`` (N, H, W), float64 -> (N,).

    ``skimage.metrics.structural_similarity`` with its defaults (uniform ``win_size`` windows,
    sample covariance, K1 0.01, K2 0.03, the mean over windows that lie inside the map) and
    ``data_range`` the range of both maps together (Quantus' ``ssim``); ``flat`` compares the
    row-major flattened maps with 1-D windows (Quantus 0.6 passes flattened maps). NaN where both
    maps are one constant (no data range).
    """
    a, b = a.double(), b.double()
    n = a.shape[0]
    if flat:
        a, b = a.reshape(n, 1, 1, -1), b.reshape(n, 1, 1, -1)
        kernel, ndim = (1, win_size), 1
    else:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
        kernel, ndim = (win_size, win_size), 2
    if a.shape[-2] < kernel[0] or a.shape[-1] < kernel[1]:
        raise ValueError(
            f"ssim: win_size={win_size} is larger than the map ({tuple(a.shape[-2:])})"
        )
    both = torch.cat([a.flatten(1), b.flatten(1)], 1)
    rng = (both.amax(1) - both.amin(1)).view(n, 1, 1, 1)
    mean = lambda t: F.avg_pool2d(t, kernel, stride=1)  # noqa: E731 - windows fully inside the map
    ux, uy = mean(a), mean(b)
    cov_norm = win_size**ndim / (win_size**ndim - 1)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).masked_fill(rng.view(-1) == 0, float("nan"))


@METRICS.register(
    "random_logit",
    description="Random logit test (Sixt et al. 2020): similarity of the map with the "
    "map of a random other class",
)
class RandomLogit(Metric):
    """SSIM between each map and the map the same explainer gives for a random other class (one
    class per sample, uniform over the classes other than the explained one, drawn from the
    sample's stream and shared by every explainer). A map that does not change with the class
    does not explain the class: lower is better, [-1, 1].

    ``similarity: ssim`` (default) uses ``win_size`` x ``win_size`` windows on the map (the
    paper's SSIM of two images); ``ssim_flat`` is Quantus 0.6's (1-D windows over the flattened
    map). ``normalise`` (true: per-sample division by the largest magnitude, Quantus 0.6's default
    rule, which Quantus applies to the whole batch) and ``abs`` apply to both maps. Re-explanation
    calls ``explainers[name](inputs, other_classes, generator=...)``. Both maps constant: NaN.
    """

    name = "random_logit"
    option_constraints: ClassVar[dict] = {
        "similarity": OneOf(SSIM_KINDS),
        "win_size": Satisfies(
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 3 and v % 2 == 1,
            "an odd integer >= 3 (skimage's convention)",
            invalid=[2, 4, 1.5],
        ),
        "normalise": NORMALISE,
        "batch_size": BATCH_SIZE,
    }
    category = "sanity"
    higher_is_better = False
    value_range = (-1.0, 1.0)
    requires = ("model", "explainer")

    def __init__(
        self,
        similarity: str = "ssim",
        win_size: int = 7,
        abs: bool = False,
        normalise: bool | Literal["normalise_by_max", "normalise_by_negative"] = True,
        batch_size: int | None = None,
    ):
        set_options(self, similarity=similarity, win_size=win_size)
        self.abs = bool(abs)
        set_options(self, normalise=normalise, batch_size=batch_size)
        self.normalise = normalise_rule(self.normalise)

    def _post(self, a: torch.Tensor) -> torch.Tensor:
        a = normalise_maps(a.float(), self.normalise)
        return a.abs() if self.abs else a

    def other_classes(self, rng: SampleRNG, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
        """(N,) a uniformly random class other than ``targets[i]`` for every sample, from its
        stream."""
        u = rng.rand((1,), "class").view(-1)
        k = (
            (u * (n_classes - 1)).floor().long().clamp(max=n_classes - 2)
        )  # index among the other classes
        t = targets.cpu()
        return torch.where(k >= t, k + 1, k).to(targets.device)

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
                f"metric '{self.name}' re-explains the inputs for another class and needs "
                f"explainers[name] for {', '.join(missing)}"
            )
        x = batch.inputs.float()
        targets = batch.targets.to(x.device).long().view(-1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        with eval_mode(batch.model) as m:
            logits = predict(m, x, self.batch_size)
        finite = finite_rows(logits)
        n_classes = logits.shape[-1] if logits.ndim == 2 else 0
        if n_classes < 2 and len(x):
            raise ValueError(f"random_logit needs a model with at least 2 classes, got {n_classes}")
        others = self.other_classes(rng, targets, n_classes) if len(x) else targets
        scores = {}
        for name, a in maps.items():
            with full_threads():
                ap = explainers[name](x, others, generator=rng.explainer_generator(name))
            ap = torch.as_tensor(ap).detach().to(x.device).float()
            bad = ~torch.isfinite(ap).flatten(1).all(1)
            ap = self._post(torch.nan_to_num(ap))
            s = ssim(a, ap, self.win_size, flat=self.similarity == "ssim_flat").float()
            s = nan_where(s, ~finite, self.name, NONFINITE_OUTPUT, name)
            s = nan_where(
                s,
                finite & bad,
                self.name,
                "the map for the other class is not finite (NaN or inf)",
                name,
            )
            scores[name] = nan_where(
                s,
                finite & ~bad & torch.isnan(s),
                self.name,
                "both maps are one constant (SSIM undefined)",
                name,
            )
        return MetricOutput(scores={self.name: scores})
