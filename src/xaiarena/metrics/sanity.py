"""Sanity checks: do the maps depend on the model's parameters?"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ..registry import METRICS
from .base import EvalBatch, ExplainFn, Metric, MetricOutput
from .core import (
    NONFINITE_OUTPUT,
    SIMILARITIES,
    SampleRNG,
    check_choice,
    eval_mode,
    finite_rows,
    full_threads,
    nan_where,
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
    return [(n, m) for n, m in model.named_modules()
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


@METRICS.register("mprt", description="Model parameter randomisation test (Adebayo et al. 2018): similarity of maps before/after randomising top layers")
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
    category = "sanity"
    higher_is_better = False
    value_range = (-1.0, 1.0)
    requires = ("model", "explainer")

    def __init__(self, n_layers: int | None = None, similarity: str = "spearman", abs: bool = True):
        if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
            raise ValueError(f"n_layers={n_layers!r} is not valid; give an integer >= 1 or null for all layers")
        self.n_layers = n_layers
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        self.abs = bool(abs)

    @serial_bookkeeping
    def evaluate(self, batch: EvalBatch, attributions, *, generator, explainers: dict[str, ExplainFn] | None = None
                 ) -> MetricOutput:
        maps = prepare(batch, attributions)
        missing = [k for k in maps if not explainers or k not in explainers]
        if missing:
            raise ValueError(f"metric '{self.name}' re-explains a randomised model and needs explainers[name] for "
                             f"{', '.join(missing)}; each must accept model=...")
        for k in maps:
            if not _accepts_model(explainers[k]):
                raise ValueError(f"explainers['{k}'] must accept model=... to explain the randomised copy "
                                 "(call signature: explain(inputs, targets, generator=..., model=...))")
        model = copy.deepcopy(batch.model)
        layers = randomisable_layers(model)[::-1]
        if not layers:
            raise ValueError("mprt: the model has no layer with reset_parameters to randomise")
        if self.n_layers is not None:
            if self.n_layers > len(layers):
                raise ValueError(f"n_layers={self.n_layers} but the model has only {len(layers)} randomisable layers")
            layers = layers[: self.n_layers]
        x = batch.inputs.float()
        targets = batch.targets.to(x.device).long().view(-1)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        seed = rng.base_seed
        with eval_mode(batch.model) as m:  # a model without a finite output has nothing to randomise against
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
                    ap = explainers[name](x, targets, generator=rng.explainer_generator(name), model=model)
                ap = torch.as_tensor(ap).detach().to(x.device).float()
                nonfinite = ~torch.isfinite(ap).flatten(1).all(1)
                bad_maps[name] = nonfinite  # of the last layer randomised so far
                ap = torch.where(nonfinite.view(-1, 1, 1), torch.zeros_like(ap), ap)
                sim = similarity(self.similarity, prep(a).flatten(1), prep(ap).flatten(1), ties[name], ties[name])
                curves[name].append(nan_where(sim, nonfinite, self.name, f"after randomising {i + 1} layer(s) the "
                                              "re-explained map is not finite (NaN or inf)", name))
        out = MetricOutput(curve_x={self.name: torch.arange(1, len(layers) + 1, dtype=torch.float32)})
        out.curves[self.name] = {k: torch.stack(v, 1) for k, v in curves.items()}
        scores = {}
        for k, v in curves.items():
            last = nan_where(v[-1], ~finite, self.name, NONFINITE_OUTPUT, k)
            scores[k] = nan_where(last, torch.isnan(last) & ~bad_maps[k] & finite, self.name,
                                  "a map is constant, Pearson similarity undefined", k)
        out.scores[self.name] = scores
        return out
