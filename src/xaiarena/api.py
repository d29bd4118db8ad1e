"""The functional API: score attribution maps you already have, or compute maps, without a config.

::

    ev = xaiarena.evaluate(model, inputs, targets, attributions={"mine": maps, "saliency": sal},
                           metrics=["sparseness", {"name": "deletion", "steps": 10}])
    ev.per_sample, ev.summary, ev.tests

    maps = xaiarena.explain(model, inputs, targets, explainers=["saliency", "gradcam"])

Both run the runner's own code on the user's tensors: metrics and explainers are named and
configured exactly as in a config's ``metrics:`` / ``explainers:`` lists and checked by the same
validator (:func:`xaiarena.config.validate_components`); maps are computed by
:func:`xaiarena.engine.batching.explain_in_batches` and scored by
:func:`xaiarena.engine.batching.score_in_batches` (the same per-batch generators, seeded by
``(seed, label)``, and per-sample random streams keyed by ``sample_ids``); the tables come from
:func:`xaiarena.stats.result_tables`. So for the same model, samples, sample ids, maps, metric
labels and seed, ``evaluate`` gives a run's per-sample scores, whatever the batch size.

Inputs: images as float pixel tensors ``(N, C, H, W)`` in [0, 1] for a model that takes them
(a plain ``nn.Module``), maps ``(N, H, W)``, masks ``(N, H, W)``; or texts, for xaiarena's text
models only (``tiny_bert``, ``minilm``, ``transformer``: they tokenise with ``model.encode``), as a
list of strings or a :class:`~xaiarena.data.text.TextBatch`, maps and rationale masks ``(N, L)``
over words (``L = model.encode(texts).max_words``). NumPy arrays are accepted wherever tensors are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import postprocess, stats
from .config import check_safe_name, validate_components
from .engine import batching
from .engine.plan import scored_labels
from .environment import resolve_device
from .errors import ConfigError, InputError, RunError
from .files import atomic_write_many, csv_bytes, writes_inside
from .modalities import modality_problems
from .ops.modes import frozen
from .ops.prediction import predict_in_batches
from .ops.validation import COUNT, Interval, OptionError, validate_options
from .registry import EXPLAINERS, METRICS
from .strict_json import dumps_json
from .views import F_B

#: ``dataset`` column of the results (``evaluate(..., dataset=...)`` names it otherwise)
DEFAULT_DATASET = "data"


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the tables a run writes under ``results/``, for the given
    maps.

    ``per_sample``: ``dataset, explained_model, explainer, metric, sample_id, value`` (a run's
    ``per_sample.parquet``); ``summary``: mean and bootstrap CI per (explainer, metric)
    (``summary.csv``); ``tests``: paired tests between the maps per metric, Holm-adjusted
    (``tests.csv``); ``curves``: mean curves of curve metrics (``curves.parquet``);
    ``metrics_meta``: direction, range, ranked per metric output (run.json ``metrics_meta``);
    ``tables``: every statistics table by file stem (``summary``, ``tests`` and, with
    ``fg_bg_attribution``, ``fg_bg_tests``).
    """

    per_sample: pd.DataFrame
    summary: pd.DataFrame
    tests: pd.DataFrame
    curves: pd.DataFrame
    metrics_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write ``per_sample.csv``, ``curves.csv``, every table (``summary.csv``, ``tests.csv``,
        ...) and ``metrics_meta.json`` into ``folder``; returns it."""
        folder = Path(folder)
        tables = {
            "per_sample": self.per_sample,
            "curves": self.curves,
            **(self.tables or {"summary": self.summary, "tests": self.tests}),
        }
        files = {folder / f"{name}.csv": csv_bytes(frame) for name, frame in tables.items()}
        meta = dumps_json(self.metrics_meta, indent=1)
        files[folder / "metrics_meta.json"] = meta.encode("utf-8")
        # one write inside the folder: a full disk half-way leaves the old files; links out: refused
        with writes_inside(folder):
            atomic_write_many(files)
        return folder

    def __repr__(self) -> str:
        return (
            f"Evaluation({len(self.per_sample)} scores: {self.per_sample['explainer'].nunique()} "
            f"map(s) x {self.per_sample['metric'].nunique()} metric output(s))"
        )


# --------------------------------------------------------------------------- input checks


def _tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` (a tensor or NumPy array) as a CPU tensor; InputError otherwise."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise InputError(
                f"{what}: a NumPy array of Python objects cannot be used; give numbers"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    raise InputError(
        f"{what}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
    )


def _class_vector(value: Any, what: str, n: int) -> torch.Tensor:
    """Class indices ``(N,)`` (int64) from a tensor, array or list."""
    t = _tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value, what)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise InputError(
            f"{what}: expected class indices of shape (N,) = ({n},), got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InputError(f"{what}: expected integer class indices, got dtype {t.dtype}")
    if len(t) != n:
        raise InputError(f"{what}: {len(t)} entries for {n} inputs; give one class index per input")
    return t.long()


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    param = next(iter(model.parameters()), None)
    if device is None:
        return param.device if param is not None else torch.device("cpu")
    try:
        device = resolve_device(str(device))
    except RunError as exc:  # "tpu", a CUDA device this machine lacks
        raise InputError(f"{exc} (or leave device out: the model's device)") from None
    if param is not None and param.device.type != device.type:
        raise InputError(
            f"device={device} but the model is on {param.device}; move it first (model.to(device)) "
            "or leave device out"
        )
    return device


def _inputs(model: nn.Module, inputs: Any) -> tuple[str, Any, tuple[int, ...]]:
    """``(modality, inputs, map shape)``: float image pixels ``(N, C, H, W)`` (CPU) with maps
    ``(N, H, W)``, or a TextBatch with maps ``(N, L)``."""
    from .data.text import TextBatch

    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        if not callable(getattr(model, "encode", None)):
            raise InputError(
                f"inputs are texts, but the model ({type(model).__name__}) cannot tokenise them: "
                "texts need one of xaiarena's text models (tiny_bert, minilm, or transformer for "
                "your Hugging Face classifier), which have encode(); image models take float "
                "tensors (N, C, H, W)"
            )
        inputs = model.encode(list(inputs))
    if isinstance(inputs, TextBatch):
        if len(inputs) == 0:
            raise InputError("inputs: no texts given")
        return "text", inputs.to("cpu"), (len(inputs), inputs.max_words)
    x = _tensor(inputs, "inputs")
    if x.ndim != 4:
        hint = " (one image? add the batch dimension: x[None])" if x.ndim == 3 else ""
        raise InputError(
            f"inputs: expected images of shape (N, C, H, W), got shape {tuple(x.shape)}{hint}; "
            "texts are a list of strings (with an xaiarena text model)"
        )
    if not x.is_floating_point():
        raise InputError(
            f"inputs: expected float pixels in [0, 1] of shape (N, C, H, W), got dtype {x.dtype} "
            "(uint8 images: x.float() / 255)"
        )
    if len(x) == 0:
        raise InputError("inputs: no images given (N = 0)")
    if not bool(torch.isfinite(x).all()):
        raise InputError("inputs: hold NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -PIXEL_TOLERANCE or hi > 1 + PIXEL_TOLERANCE:
        scale255 = lo >= -PIXEL_TOLERANCE and hi > 1.5
        hint = (
            "pixels on a 0..255 scale? divide by 255"
            if scale255
            else "normalised inputs? put the normalisation into the model (e.g. "
            "nn.Sequential(normalize, model)) and pass pixels"
        )
        raise InputError(
            f"inputs: expected float pixels in [0, 1], found values in [{lo:.4g}, "
            f"{hi:.4g}] ({hint}); the metrics' baselines and perturbations "
            "(0 = black) are defined in pixel space"
        )
    return "image", x.float(), (x.shape[0], *x.shape[2:])


#: how far image inputs may lie outside [0, 1] (float rounding of resized or converted pixels)
PIXEL_TOLERANCE = 1e-3


def _maps(value: Any, what: str, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    m = _tensor(value, what)
    if tuple(m.shape) != shape:
        unit = (
            "(N, H, W) at input resolution"
            if kind == "image"
            else "(N, L) over words (L = inputs.max_words)"
        )
        hint = ""
        if kind == "image" and m.ndim == 4 and tuple(m.shape[:1]) + tuple(m.shape[2:]) == shape:
            hint = "; reduce the channels first, e.g. maps.sum(1)"
        elif m.ndim >= 1 and m.shape[0] != shape[0]:
            hint = f"; {m.shape[0]} maps for {shape[0]} inputs"
        raise InputError(f"{what}: expected shape {shape} = {unit}, got {tuple(m.shape)}{hint}")
    if m.dtype == torch.bool or m.is_complex():
        raise InputError(f"{what}: expected real-valued maps, got dtype {m.dtype}")
    m = m.float()
    if not bool(torch.isfinite(m).all()):
        raise InputError(f"{what}: holds NaN or infinite values")
    return m


def _masks(value: Any, shape: tuple[int, ...], kind: str) -> torch.Tensor | None:
    if value is None:
        return None
    m = _tensor(value, "masks")
    if m.ndim == 4 and m.shape[1] == 1 and kind == "image":
        m = m[:, 0]
    if tuple(m.shape) != shape:
        unit = (
            "(N, H, W), nonzero = object" if kind == "image" else "(N, L), nonzero = rationale word"
        )
        raise InputError(f"masks: expected shape {shape} = {unit}, got {tuple(m.shape)}")
    return m != 0


def _sample_ids(value: Any, n: int) -> torch.Tensor:
    if value is None:
        return torch.arange(n)
    ids = _class_vector(value, "sample_ids", n)
    if len(torch.unique(ids)) != n:
        raise InputError(
            "sample_ids: must be distinct (they key each sample's random numbers and the results)"
        )
    return ids


@torch.no_grad()
def _logits(model: nn.Module, inputs: Any, device: torch.device, batch_size: int) -> torch.Tensor:
    """The model's outputs ``(N, classes)``; a TrainingError (as in a run) where they are not
    finite."""

    def logit_rows(y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.ndim != 2:
            raise InputError(
                f"model: expected outputs of shape (N, classes) (logits), got "
                f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
            )
        return y.float().cpu()

    logits = predict_in_batches(
        model, inputs, batch_size, prepare=lambda xb: xb.to(device), keep=logit_rows
    )
    if not bool(torch.isfinite(logits).all()):
        from .models.training import check_finite_outputs

        check_finite_outputs(model, inputs, device, batch_size=batch_size, what="the given inputs")
    return logits


def _check_targets(targets: torch.Tensor, n_classes: int, what: str) -> None:
    bad = (targets < 0) | (targets >= n_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InputError(
            f"{what}: entry {i} is {int(targets[i])}, but the model has {n_classes} classes "
            f"(0..{n_classes - 1})"
        )


#: the options of :func:`explain` and :func:`evaluate` (their tensors are checked above)
API_OPTIONS = {"batch_size": COUNT, "seed": Interval(int)}


def _checked_options(function: str, **values: Any) -> dict[str, Any]:
    """``values`` checked against :data:`API_OPTIONS` (the one option check of every component),
    a bad one raised as an :class:`~xaiarena.errors.InputError` naming ``function``."""
    try:
        return validate_options(function, API_OPTIONS, values)
    except OptionError as exc:
        raise InputError(exc.message) from None


def _check_modality(kind: str, group: str, specs: Sequence[Any], registry) -> None:
    problems = modality_problems(
        kind,
        [(f"{group}.{i}", registry, s) for i, s in enumerate(specs)],
        f"the inputs are {kind}s",
    )
    if problems:
        raise ConfigError(problems)


def _explainer_specs(explainers: Any, kind: str) -> list[Any]:
    specs = validate_components("explainers", explainers)
    _check_modality(kind, "explainers", specs, EXPLAINERS)
    for i, spec in enumerate(specs):
        if EXPLAINERS.get(spec.name).family == "learned":
            raise ConfigError(
                [
                    (
                        f"explainers.{i}.name",
                        f"explainer '{spec.name}' learns from training data "
                        "(fit on a dataset's training split): run it through a config "
                        "(xaiarena.run); the functional API takes explainers that need only the "
                        "model and the inputs",
                    )
                ]
            )
    return specs


# --------------------------------------------------------------------------- explain


def explain(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    explainers: Any,
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Attribution maps of ``inputs`` for ``targets`` by each explainer: ``{label: (N, H, W) maps}``
    (CPU float32; ``(N, L)`` for texts).

    ``explainers``: names or mappings exactly as in a config's ``explainers:`` list
    (``["saliency", {"name": "integrated_gradients", "n_steps": 32, "label": "ig32"}]``); a bad name
    or option raises :class:`~xaiarena.errors.ConfigError` naming it and the valid ones. Maps are
    those a run with the same ``seed`` and explainer labels computes for the same samples, whatever
    ``batch_size``. Learned explainers (DiET) need training data and a config. ``device``: where to
    compute (default: the model's device).
    """
    device = _model_device(model, device)
    kind, x, _ = _inputs(model, inputs)
    n = len(x)
    t = _class_vector(targets, "targets", n)
    opts = _checked_options("xaiarena.explain", batch_size=batch_size, seed=seed)
    specs = _explainer_specs(explainers, kind)
    comp = batching.Compute(
        device=device, seed=opts["seed"], batch_size=opts["batch_size"], show_progress=show_progress
    )
    out: dict[str, torch.Tensor] = {}
    with frozen(model):
        _check_targets(t, _logits(model, x[:1], device, 1).shape[1], "targets")
        for spec in specs:
            explainer = EXPLAINERS.create(spec.name, **spec.params)
            maps = batching.explain_in_batches(
                comp, explainer, model, x, t, spec.key, seed_name=spec.name
            )
            out[spec.key] = postprocess.apply(maps, list(getattr(spec, "postprocess", None) or []))
    return out


# --------------------------------------------------------------------------- evaluate


ReExplain = str | Mapping[str, Any] | Callable[..., torch.Tensor]


def _explain_fns(
    explainers: Mapping[str, ReExplain] | None, labels: list[str], kind: str, model: nn.Module
) -> dict[str, Callable[..., torch.Tensor]]:
    """The re-explaining callables of robustness and randomisation metrics, in the runner's form
    ``fn(inputs, targets, generator=None, model=model)``."""
    fns: dict[str, Callable[..., torch.Tensor]] = {}
    if explainers is None:
        return fns
    if not isinstance(explainers, Mapping):
        raise InputError(
            "explainers: expected a mapping {attribution label: explainer name, config mapping, or "
            f"callable(model, inputs, targets, generator=None)}}, got {type(explainers).__name__}"
        )
    unknown = [k for k in explainers if k not in labels]
    if unknown:
        raise InputError(
            f"explainers: {unknown[0]!r} is not a key of attributions; valid: {', '.join(labels)}"
        )
    named = {k: v for k, v in explainers.items() if not callable(v)}
    if named:
        specs = _explainer_specs(list(named.values()), kind)
        for k, spec in zip(named, specs, strict=True):
            explainer = EXPLAINERS.create(spec.name, **spec.params)

            def fn(inputs, targets, generator=None, model=model, _e=explainer):
                return _e.explain(model, inputs, targets, generator=generator)

            fns[k] = fn
    for k, v in explainers.items():
        if callable(v):

            def fn(inputs, targets, generator=None, model=model, _f=v):
                return _f(model, inputs, targets, generator=generator)

            fns[k] = fn
    return fns


def _no_reexplain(label: str) -> Callable[..., torch.Tensor]:
    def fn(*args, **kwargs):
        raise InputError(
            f"the maps '{label}' cannot be re-explained: pass explainers={{{label!r}: ...}}"
        )

    return fn


def _attribution_maps(
    attributions: Any, shape: tuple[int, ...], kind: str
) -> dict[str, torch.Tensor]:
    """``evaluate``'s ``attributions`` checked: a non-empty mapping of safe labels to maps of
    ``shape``."""
    if not isinstance(attributions, Mapping) or not attributions:
        got = (
            type(attributions).__name__ if not isinstance(attributions, Mapping) else "an empty one"
        )
        raise InputError(
            "attributions: expected a non-empty mapping {label: maps of shape "
            f"{shape}}}, got {got}"
        )
    maps: dict[str, torch.Tensor] = {}
    for label, value in attributions.items():
        try:
            check_safe_name(label, "attribution label")
        except ValueError as exc:
            raise InputError(f"attributions: {exc}") from None
        maps[label] = _maps(value, f"attributions[{label!r}]", shape, kind)
    return maps


def _metrics_to_score(
    specs: list[Any],
    names: list[str],
    fns: dict[str, Any],
    gt: torch.Tensor | None,
    shape: tuple[int, ...],
) -> list[tuple[Any, Any, list[str]]]:
    """``(spec, metric, labels it scores)`` per metric of ``evaluate`` with something to score (a
    warning for the others); an InputError where a metric lacks masks or re-explainers."""
    built = []
    for i, spec in enumerate(specs):
        metric = METRICS.create(spec.name, **spec.params)
        keys = scored_labels(spec, metric, names)
        if not keys:
            warnings.warn(
                f"metric '{spec.key}' (metrics.{i}) has nothing to score for the maps "
                f"{', '.join(names)} (an agreement metric needs two maps, or its reference among "
                "them)",
                stacklevel=3,
            )
            continue
        if "masks" in metric.requires and gt is None:
            raise InputError(
                f"metric '{spec.key}' (metrics.{i}) needs ground-truth masks: pass masks= of shape "
                f"{shape}"
            )
        missing = [k for k in keys if k not in fns] if "explainer" in metric.requires else []
        if missing:
            raise InputError(
                f"metric '{spec.key}' (metrics.{i}) re-explains the inputs: pass explainers="
                f"{{{missing[0]!r}: <explainer name, config mapping, or callable(model, inputs, "
                f"targets, generator=None)>}} for {', '.join(missing)} (or restrict the metric "
                f"with explainers: [...])"
            )
        built.append((spec, metric, keys))
    return built


def _evaluation(
    frames: list[pd.DataFrame],
    curves: list[pd.DataFrame],
    meta: dict[str, dict[str, Any]],
    dataset: str,
    model_name: str,
    seed: int,
) -> Evaluation:
    """The :class:`Evaluation` of the scored batches: per-sample scores, curves and the statistics
    tables a run computes from them."""
    per_sample = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=stats.PER_SAMPLE_COLUMNS)
    )[stats.PER_SAMPLE_COLUMNS]
    curves_df = (
        pd.concat(curves, ignore_index=True)
        if curves
        else pd.DataFrame(columns=stats.CURVE_COLUMNS)
    )[stats.CURVE_COLUMNS]
    hib = {k: v["higher_is_better"] for k, v in meta.items()}
    tables = stats.result_tables(per_sample, hib, models={dataset: model_name}, seed=seed)
    return Evaluation(per_sample, tables["summary"], tables["tests"], curves_df, meta, tables)


def evaluate(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    attributions: Mapping[str, Any],
    metrics: Any,
    *,
    masks: Any = None,
    labels: Any = None,
    seed: int = 0,
    batch_size: int = 64,
    show_progress: bool = False,
    sample_ids: Any = None,
    explainers: Mapping[str, ReExplain] | None = None,
    device: str | torch.device | None = None,
    dataset: str = DEFAULT_DATASET,
) -> Evaluation:
    """Score attribution maps you already have with xaiarena's metrics and statistics.

    ``model``: the classifier (``nn.Module`` taking ``inputs``, returning logits ``(N, classes)``);
    ``inputs``: float images ``(N, C, H, W)`` in [0, 1] (or texts for an xaiarena text model, see
    the module docstring); ``targets``: the class each map explains ``(N,)``; ``attributions``:
    ``{label: maps}`` with maps ``(N, H, W)`` at input resolution, higher = more important;
    ``metrics``: names or mappings exactly as in a config's ``metrics:`` list. Optional: ``masks``
    ``(N, H, W)`` ground truth (localisation metrics), ``labels`` ``(N,)`` true classes (default:
    ``targets``), ``sample_ids`` ``(N,)`` distinct ids that key each sample's random numbers and
    name the result rows (default ``0..N-1``), ``explainers``
    ``{label: explainer name, config mapping or callable(model, inputs, targets, generator=None)}``
    that re-explain a label's maps (needed by robustness and randomisation metrics). NumPy arrays
    are accepted wherever tensors are.

    Returns an :class:`Evaluation`. Same code, seeds and statistics as ``xaiarena run``: for the
    same model, samples, sample ids, maps, metric labels and ``seed``, the per-sample scores are a
    run's, whatever ``batch_size``. A bad metric name or option raises
    :class:`~xaiarena.errors.ConfigError`; inputs of the wrong type or shape raise
    :class:`~xaiarena.errors.InputError` (a ``ValueError``).
    """
    device = _model_device(model, device)
    kind, x, shape = _inputs(model, inputs)
    n = len(x)
    t = _class_vector(targets, "targets", n)
    y = t if labels is None else _class_vector(labels, "labels", n)
    opts = _checked_options("xaiarena.evaluate", batch_size=batch_size, seed=seed)
    bs, seed = opts["batch_size"], opts["seed"]
    try:
        check_safe_name(dataset, "dataset")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    maps = _attribution_maps(attributions, shape, kind)
    names = list(maps)
    gt = _masks(masks, shape, kind)
    ids = _sample_ids(sample_ids, n)

    specs = validate_components("metrics", metrics, explainer_labels=names)
    _check_modality(kind, "metrics", specs, METRICS)
    fns = _explain_fns(explainers, names, kind, model)
    built = _metrics_to_score(specs, names, fns, gt, shape)

    comp = batching.Compute(device=device, seed=seed, batch_size=bs, show_progress=show_progress)
    samples = batching.EvalSamples(dataset=dataset, inputs=x, labels=y, masks=gt, sample_ids=ids)
    frames, curves, meta = [], [], {}
    with frozen(model):
        logits = _logits(model, x, device, bs)
        _check_targets(t, logits.shape[1], "targets")
        if labels is not None:
            _check_targets(y, logits.shape[1], "labels")
        view = batching.View(F_B, model, None, t, logits.argmax(1))
        attrs = {
            k: batching.Attribution(k, F_B, m, None, fns.get(k) or _no_reexplain(k))
            for k, m in maps.items()
        }
        for spec, metric, keys in built:
            ps, cv = batching.score_in_batches(
                comp, samples, view, spec, metric, {k: attrs[k] for k in keys}
            )
            frames.append(ps)
            curves.append(cv)
            meta.update(batching.metric_meta(spec, metric))
    return _evaluation(frames, curves, meta, dataset, type(model).__name__, seed)


#: how the files ``load_maps`` reads begin: NumPy's .npy format; torch.save's zip archive or its
#: legacy pickle stream (read with weights_only=True, which refuses objects)
_MAPS_MAGIC = {".npy": (b"\x93NUMPY",), ".pt": (b"PK\x03\x04", b"\x80")}


def _check_maps_format(p: Path) -> None:
    """``InputError`` when ``p`` does not begin like a ``.npy`` / ``torch.save`` file: saying what
    it looks like (text, empty) rather than what the loader would guess ("pickled data")."""
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputError(f"cannot read maps file '{p}': {exc.strerror or exc}") from None
    if any(head.startswith(m) for m in _MAPS_MAGIC[p.suffix]):
        return
    link = f" (a symbolic link to '{p.resolve()}')" if p.is_symlink() else ""
    text = head.decode("utf-8", "ignore")
    if not head:
        what = "is empty"
    elif len(text) >= len(head) - 3 and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        what = f"holds text ({first!r} ...)" if first else "holds white space"
    else:
        what = f"begins with the bytes {head[:8]!r}"
    fmt = "a NumPy .npy file (np.save)" if p.suffix == ".npy" else "a torch.save file of a tensor"
    raise InputError(f"maps file '{p}'{link} {what}; expected {fmt} of shape (N, H, W)")


def load_maps(folder: str | Path) -> dict[str, torch.Tensor]:
    """``{label: maps}`` from a folder of ``<label>.npy`` / ``<label>.pt`` files (a tensor or array
    each; ``.pt`` read with ``torch.load(weights_only=True)``), sorted by label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"maps folder '{folder}' does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".pt") and p.is_file())
    if not files:
        raise InputError(f"maps folder '{folder}' holds no <label>.npy or <label>.pt files")
    out: dict[str, torch.Tensor] = {}
    for p in files:
        if p.stem in out:
            raise InputError(f"maps folder '{folder}': both {p.stem}.npy and {p.stem}.pt; keep one")
        _check_maps_format(p)
        try:
            value = (
                np.load(p, allow_pickle=False)
                if p.suffix == ".npy"
                else torch.load(p, weights_only=True, map_location="cpu")
            )
        except Exception as exc:  # noqa: BLE001 - any unreadable file: name it
            raise InputError(
                f"cannot read maps file '{p}': {' '.join(str(exc).split())[:300]}"
            ) from None
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise InputError(
                f"maps file '{p}' holds a {type(value).__name__}; expected one array or tensor (N, "
                "...)"
            )
        out[p.stem] = _tensor(value, f"maps file '{p}'")
    return out


__all__ = ["Evaluation", "evaluate", "explain", "load_maps"]
