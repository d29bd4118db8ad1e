"""The one batching path of explainers and of metrics, and what it reads.

* :class:`Compute`: how to compute (device, seed, batch size, mixed precision, progress bars);
  a run's :class:`~xaiarena.engine.stages.Settings` are a :class:`Compute` with the unit's
  config, cache and data seeds, and the functional API (:mod:`xaiarena.api`) builds a plain one.
* :class:`EvalSamples`: the evaluation samples of one dataset (inputs, labels, masks, sample
  ids); :class:`View`: a model whose decisions maps explain, with its targets;
  :class:`Attribution`: one explainer's maps on one view, with its re-explaining callable.
* :func:`explain_in_batches` and :func:`score_in_batches`: the uncached computations under a
  run's explain and score stages (:mod:`xaiarena.engine.stages`), also called by the API and by
  the meta-evaluation's perturbed problems; :func:`explain_images` is their checked front door
  for an explainer object and plain image tensors.
* :func:`metric_meta` (run.json ``metrics_meta``; the statistics read ``higher_is_better``),
  :func:`output_name`, and :func:`auto_batch_size` (``evaluation.batch_size: auto``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import ComponentSpec, MetricSpec
from ..progress import progress
from ..registry import METRICS
from ..stats import CURVE_COLUMNS, PER_SAMPLE_COLUMNS
from .cache import Key, stable_seed


@dataclass
class Compute:
    """How the batching functions compute: ``batch_size`` inputs per call on ``device``, random
    streams seeded from ``seed``, bfloat16 autocast on CUDA with ``amp``."""

    device: torch.device
    seed: int = 0
    batch_size: int = 64
    amp: bool = False
    show_progress: bool = False

    def autocast(self):
        """bfloat16 autocast on CUDA when ``amp: true``; a no-op context otherwise (CPU
        unchanged)."""
        return (
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=True)
            if self.amp
            else nullcontext()
        )


@dataclass(kw_only=True)
class EvalSamples:
    """The evaluation samples of one dataset: ``dataset`` names them in the results' ``dataset``
    column (and the run's cache folders); ``sample_ids`` key the metrics' per-sample random
    streams and the results' ``sample_id`` column."""

    dataset: str
    inputs: Any  # (N, C, H, W) float pixels in [0, 1], or a TextBatch
    labels: torch.Tensor
    masks: torch.Tensor | None
    sample_ids: torch.Tensor


@dataclass
class View:
    """A model whose decisions maps explain: ``f_b``, or a learned explainer's ``f_s``."""

    name: str
    model: torch.nn.Module
    key: Key | None  # None outside a run (the API)
    targets: torch.Tensor
    preds: torch.Tensor


@dataclass
class Attribution:
    """One explainer's maps on one view, with the callable that re-explains (robustness, mprt)."""

    label: str
    view: str
    maps: torch.Tensor
    key: Key | None  # None outside a run (the API)
    explain_fn: Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- explain


def explain_in_batches(
    c: Compute, explainer, model, inputs, targets, label: str, seed_name: str | None = None
) -> torch.Tensor:
    """The one batching path of explainers: ``c.batch_size`` inputs per call, CPU float maps.

    The random stream is seeded by ``c.seed`` and ``seed_name`` (the explainer's registered name,
    not its label; the label when not given): two entries of one explainer draw the same
    perturbations (common random numbers), so e.g. LIME's top-10 selection is exactly a selection
    of the full LIME map. :func:`prepare_explainer`, then :func:`explain_range` over the set."""
    prepare_explainer(c, explainer, model, inputs)
    return explain_range(c, explainer, model, inputs, targets, label, seed_name)


def prepare_explainer(c: Compute, explainer, model, inputs) -> None:
    """Hand the whole set to ``Explainer.prepare_set`` first: an explainer that optimises over a
    set (DiET's "authors" test-time procedure) does it here, once, so its maps do not depend on
    the batch size or the shards either."""
    from ..explainers.base import Explainer

    prepare_set = getattr(explainer, "prepare_set", None)  # absent on duck-typed plugins
    if prepare_set is not None:
        own = getattr(type(explainer), "prepare_set", None) is not Explainer.prepare_set
        if own and hasattr(inputs, "full"):  # inputs read shard by shard: the set, as a tensor
            inputs = inputs.full()
        with c.autocast():
            prepare_set(model, inputs)


def explain_range(
    c: Compute,
    explainer,
    model,
    inputs,
    targets,
    label: str,
    seed_name: str | None = None,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """The maps of ``inputs[start:stop]`` in batches of ``c.batch_size`` (the batches start at
    ``start``), CPU float; after :func:`prepare_explainer` on the whole set."""
    bs = c.batch_size
    stop = len(inputs) if stop is None else stop
    seed = stable_seed(c.seed, "explain", seed_name or label)
    out = []
    for i in progress(
        range(start, stop, bs),
        desc=f"explain {label}",
        disable=not c.show_progress or stop - start <= bs,
    ):
        j = min(i + bs, stop)
        xb = inputs[i:j].to(c.device)
        tb = targets[i:j].to(c.device)
        # every batch starts from the same generator state; explainers seed each sample from that
        # state and the sample's own content, so maps do not depend on the batch size or mates
        gen = torch.Generator().manual_seed(seed)
        with c.autocast():
            a = explainer.explain(model, xb, tb, generator=gen)
        finite = torch.isfinite(a).reshape(len(a), -1).all(1)
        if not bool(finite.all()):  # caught here, naming the explainer, not later by a metric
            from ..explainers.base import contract_error

            n_bad = int((~finite).sum())
            raise contract_error(
                explainer,
                "maps must be finite numbers; it returned NaN or "
                f"infinite values for {n_bad} of {len(a)} inputs (the '{label}' "
                f"maps, inputs {i}..{i + len(a) - 1})",
            )
        out.append(a.float().cpu())
    return torch.cat(out) if out else torch.empty(0, *inputs.shape[2:])


def explain_images(
    explainer,
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device | str,
    progress: bool = True,
) -> torch.Tensor:
    """:func:`explain_in_batches` for an explainer object and float pixel images ``(N, C, H, W)``
    (any device), with its inputs checked: CPU float32 ``(N, H, W)`` maps, computed on ``device``.

    The model must already be on ``device`` (it is not moved). One seed is drawn from
    ``generator`` (torch's global RNG when None) and every batch starts from a generator seeded
    with it and the explainer's name; since explainers seed each sample from its own content,
    the maps do not depend on ``batch_size``."""
    from ..ops.seeding import base_seed

    def bad(msg: str) -> ValueError:
        return ValueError(f"explain_images: {msg}")

    if images.ndim != 4:
        raise bad(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise bad(f"images must be float pixel-space tensors in [0, 1], got {images.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad(f"batch_size={batch_size!r} must be an integer >= 1")
    targets = torch.as_tensor(targets).long().reshape(-1)
    if len(targets) != len(images):
        raise bad(f"{len(targets)} targets for {len(images)} images")
    device = torch.device(device)
    param = next(iter(model.parameters()), None)
    if param is not None and param.device.type != device.type:
        raise bad(
            f"the model is on {param.device} but device={device}; move it first (model.to(device))"
        )
    if len(images) == 0:
        return torch.empty((0, *images.shape[2:]), dtype=torch.float32)
    c = Compute(
        device=device, seed=base_seed(generator), batch_size=batch_size, show_progress=progress
    )
    return explain_in_batches(c, explainer, model, images.float(), targets, explainer.name)


# --------------------------------------------------------------------------- score


def output_name(spec: ComponentSpec, metric_name: str, output: str) -> str:
    """The name an output is reported under. A ``label`` applies to every output of the metric: it
    replaces the metric's name where the output starts with it (``aopc_morf`` ->
    ``<label>_morf``) and prefixes the others (``keep20_drop`` -> ``<label>:keep20_drop``), so
    that two instances of one metric with different options never share an output name."""
    if not spec.label:
        return output
    if output.startswith(metric_name):
        return spec.label + output[len(metric_name) :]
    return f"{spec.label}:{output}"


def metric_meta(spec: MetricSpec, metric) -> dict[str, dict[str, Any]]:
    """``{output name: metadata}`` of one metric of a config (run.json ``metrics_meta``; the
    statistics read ``higher_is_better`` from it)."""
    out = {}
    for o in metric.outputs():
        out[output_name(spec, metric.name, o.name)] = {
            "metric": spec.name,
            "label": spec.key,
            "category": metric.category,
            "higher_is_better": o.higher_is_better,
            "ranked": o.ranked,
            **({"unranked_reason": o.unranked_reason} if not o.ranked else {}),
            "value_range": [float(v) for v in o.value_range],
            "description": METRICS.entry(spec.name).description,
        }
    return out


#: a metric's raw outputs over some samples: ``(scores, curves, curve_x)``, scores and curves
#: ``{output: {explainer: [tensors of consecutive batches]}}``
RawScores = tuple[
    dict[str, dict[str, list[torch.Tensor]]],
    dict[str, dict[str, list[torch.Tensor]]],
    dict[str, torch.Tensor],
]


def score_in_batches(
    c: Compute,
    samples: EvalSamples,
    view: View,
    spec: MetricSpec,
    metric,
    attrs: dict[str, Attribution],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one batching path of metrics: one metric's per-sample scores
    (:data:`PER_SAMPLE_COLUMNS`) and mean curves (:data:`CURVE_COLUMNS`) for the maps ``attrs``
    of ``view``'s model (uncached): :func:`score_range` over the set, then :func:`score_frames`."""
    raw = score_range(c, samples, view, spec, metric, attrs)
    return score_frames(samples, view, spec, metric, raw)


def whole_set(metric) -> bool:
    """Whether ``metric`` scores the whole evaluation set in one call: it normalises over the set
    (``needs_whole_set``), so its scores do not depend on the batch size or the shards."""
    return bool(getattr(metric, "needs_whole_set", False))


def score_range(
    c: Compute,
    samples: EvalSamples,
    view: View,
    spec: MetricSpec,
    metric,
    attrs: dict[str, Attribution],
    start: int = 0,
    stop: int | None = None,
) -> RawScores:
    """One metric's raw outputs for samples ``start:stop`` in batches of ``c.batch_size``
    (starting at ``start``; the whole range in one call for a :func:`whole_set` metric). Every
    batch's :class:`~xaiarena.metrics.EvalBatch` has the whole set as its ``pool``."""
    from ..metrics import EvalBatch, SamplePool

    stop = len(samples.inputs) if stop is None else stop
    bs = max(stop - start, 1) if whole_set(metric) else c.batch_size
    # focus draws its mosaics' images from the pool
    pool = SamplePool(samples.inputs, samples.labels, samples.sample_ids)
    scores: dict[str, dict[str, list[torch.Tensor]]] = {}
    curves: dict[str, dict[str, list[torch.Tensor]]] = {}
    curve_x: dict[str, torch.Tensor] = {}
    for i in progress(
        range(start, stop, bs),
        desc=f"metric {spec.key}",
        disable=not c.show_progress or stop - start <= bs,
    ):
        sl = slice(i, min(i + bs, stop))
        batch = EvalBatch(
            model=view.model,
            inputs=samples.inputs[sl].to(c.device),
            targets=view.targets[sl].to(c.device),
            labels=samples.labels[sl].to(c.device),
            masks=None if samples.masks is None else samples.masks[sl].to(c.device),
            sample_ids=samples.sample_ids[sl],
            pool=pool,
        )
        # the same generator state for every batch and every explained model (common random
        # numbers): metrics draw each sample's randomness from that state and the sample id, so
        # scores do not depend on the batch size, the batch mates or the order of the metrics
        gen = torch.Generator(device=c.device).manual_seed(stable_seed(c.seed, "metric", spec.key))
        with c.autocast():
            out = metric.evaluate(
                batch,
                {k: a.maps[sl].to(c.device) for k, a in attrs.items()},
                generator=gen,
                explainers={k: a.explain_fn for k, a in attrs.items()},
            )
        for oname, per_expl in out.scores.items():
            for k, v in per_expl.items():
                scores.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
        for oname, per_expl in out.curves.items():
            for k, v in per_expl.items():
                curves.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
        curve_x.update({k: v.detach().float().cpu() for k, v in out.curve_x.items()})
    return scores, curves, curve_x


def merge_raw(parts: list[RawScores]) -> RawScores:
    """The raw outputs of consecutive sample ranges as those of their union (the batches of each
    output and explainer in order; the first range's order of outputs and explainers)."""
    scores: dict[str, dict[str, list[torch.Tensor]]] = {}
    curves: dict[str, dict[str, list[torch.Tensor]]] = {}
    curve_x: dict[str, torch.Tensor] = {}
    for s, cv, x in parts:
        for into, part in ((scores, s), (curves, cv)):
            for oname, per_expl in part.items():
                for k, v in per_expl.items():
                    into.setdefault(oname, {}).setdefault(k, []).extend(v)
        curve_x.update(x)
    return scores, curves, curve_x


def score_frames(
    samples: EvalSamples, view: View, spec: MetricSpec, metric, raw: RawScores
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-sample and mean-curve frames of a metric's raw outputs over the whole set."""
    scores, curves, curve_x = raw
    return (
        per_sample_frame(samples.dataset, view, spec, metric, scores, samples.sample_ids),
        curve_frame(samples.dataset, view, spec, metric, curves, curve_x),
    )


def per_sample_frame(
    dataset: str,
    view: View,
    spec: MetricSpec,
    metric,
    scores: dict[str, dict[str, list[torch.Tensor]]],
    sample_ids: torch.Tensor,
) -> pd.DataFrame:
    """:data:`PER_SAMPLE_COLUMNS` of the samples ``sample_ids``: one block of rows per output and
    explainer (in the order of ``scores``), the samples in order within each."""
    ids = sample_ids.numpy()
    rows = []
    for oname, per_expl in scores.items():
        full = output_name(spec, metric.name, oname)
        for k, parts in per_expl.items():
            vals = torch.cat(parts).numpy()
            rows.append(
                pd.DataFrame(
                    {
                        "dataset": dataset,
                        "explained_model": view.name,
                        "explainer": k,
                        "metric": full,
                        "sample_id": ids[: len(vals)],
                        "value": vals,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)


def curve_frame(
    dataset: str,
    view: View,
    spec: MetricSpec,
    metric,
    curves: dict[str, dict[str, list[torch.Tensor]]],
    curve_x: dict[str, torch.Tensor],
) -> pd.DataFrame:
    """Mean curves with a normal 95% interval over the samples (:data:`CURVE_COLUMNS`)."""
    rows = []
    for oname, per_expl in curves.items():
        full = output_name(spec, metric.name, oname)
        for k, parts in per_expl.items():
            c = torch.cat(parts).numpy()  # (N, S)
            mean = np.nanmean(c, 0)
            se = (
                np.nanstd(c, 0, ddof=1) / np.sqrt(max(len(c), 1))
                if len(c) > 1
                else np.zeros_like(mean)
            )
            x = curve_x.get(oname, torch.linspace(0, 1, c.shape[1])).numpy()
            rows.append(
                pd.DataFrame(
                    {
                        "dataset": dataset,
                        "explained_model": view.name,
                        "explainer": k,
                        "metric": full,
                        "x": x,
                        "mean": mean,
                        "ci_low": mean - 1.96 * se,
                        "ci_high": mean + 1.96 * se,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CURVE_COLUMNS)


# --------------------------------------------------------------------------- batch size


def auto_batch_size(
    model: torch.nn.Module,
    inputs: Any,
    device: torch.device,
    *,
    fraction: float = 0.5,
    overhead: int = 16,
    lo: int = 8,
    hi: int = 1024,
    default: int = 64,
) -> int:
    """Evaluation batch size from free GPU memory (``evaluation.batch_size: auto``).

    On CUDA: one forward and backward pass on 2 evaluation inputs measures the peak memory
    per sample; the batch is the largest power of two with ``overhead`` x that per sample
    within ``fraction`` of the free memory (``overhead`` covers explainers' internal
    batches and metrics' perturbed copies), clamped to [``lo``, ``hi``]. On CPU, or for
    inputs that are not one image tensor, ``default`` (64, the fixed default).
    """
    if device.type != "cuda" or not isinstance(inputs, torch.Tensor) or len(inputs) == 0:
        return default
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = inputs[:2].to(device).requires_grad_(True)
    with torch.enable_grad():
        model(x).float().logsumexp(1).sum().backward()
    torch.cuda.synchronize(device)
    per_sample = max((torch.cuda.max_memory_allocated(device) - base) / len(x), 1.0)
    del x
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free * fraction / (per_sample * overhead))
    size = 2 ** max(0, int(np.floor(np.log2(max(fit, 1)))))
    return int(min(hi, max(lo, size)))


__all__ = [
    "CURVE_COLUMNS",
    "PER_SAMPLE_COLUMNS",
    "Attribution",
    "Compute",
    "EvalSamples",
    "RawScores",
    "View",
    "auto_batch_size",
    "curve_frame",
    "explain_images",
    "explain_in_batches",
    "explain_range",
    "merge_raw",
    "metric_meta",
    "output_name",
    "per_sample_frame",
    "prepare_explainer",
    "score_frames",
    "score_in_batches",
    "score_range",
    "whole_set",
]
