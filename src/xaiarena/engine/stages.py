"""The stages of a run, as functions of small typed inputs with cached results.

::

    data ──> train (or load) ──> select ──┬──> fit (learned explainers: f_s) ──┐
                                          │                                    v
                                          └──────────────> views: f_b [, f_s] ──> explain (explainer x view)
                                                                                    └──> score (metric x view)
                                                                                          └──> stats ──> report

* :func:`prepare` runs data, train and select for one dataset entry and returns a
  :class:`Prepared` (the task, the trained model ``f_b`` and the evaluation samples).
* :func:`fit_learned` fits a learned explainer (DiET) and returns the :class:`View` of
  the model its maps explain (``f_s``).
* :func:`explain` computes (or loads) one explainer's maps on one view's model.
* :func:`score` computes (or loads) one metric's per-sample scores and curves for the
  maps of one view.
* :func:`explain_in_batches` and :func:`score_in_batches` are the uncached computations
  under :func:`explain` and :func:`score`; the functional API (:mod:`xaiarena.api`) calls
  them with a :class:`Compute` and :class:`Samples` of the user's own tensors.

Every cache key comes from :mod:`xaiarena.cache`; every file is written through a
:class:`~xaiarena.cache.Cache` (checksummed, atomic). What differs between images and
texts lives in :mod:`xaiarena.modalities`. The runner (:mod:`xaiarena.runner`) calls
these functions in order (the local executor).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import cache as ck
from . import postprocess
from .config import ComponentSpec, DataConfig, ExperimentConfig, MetricSpec
from .errors import ConfigError
from .fingerprint import fingerprint_module
from .modalities import modality_for
from .registry import DATASETS, MODELS
from .utils import progress

log = logging.getLogger(__name__)

PER_SAMPLE_COLUMNS = ["dataset", "explained_model", "explainer", "metric", "sample_id", "value"]
CURVE_COLUMNS = ["dataset", "explained_model", "explainer", "metric", "x", "mean", "ci_low", "ci_high"]
F_B = "f_b"


@dataclass
class Settings:
    """What every stage of one run shares."""

    cfg: ExperimentConfig
    cache: ck.Cache
    device: torch.device
    amp: bool = False
    batch_size: int = 64
    show_progress: bool = True
    #: the seed of the data and of the choice of evaluation samples; replicates share it (the config's
    #: ``seed``) and differ only in ``cfg.seed``, which drives the model, training and all explainer and
    #: metric randomness
    data_seed: int | None = None
    #: the model seeds of every replicate of this unit (empty without replicates): with
    #: ``evaluation.only_correct`` the evaluation samples are those that every one of these models
    #: classifies correctly, so that every replicate explains and scores the same samples
    replicate_seeds: tuple[int, ...] = ()

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def dseed(self) -> int:
        return self.cfg.seed if self.data_seed is None else self.data_seed

    def autocast(self):
        """bfloat16 autocast on CUDA when ``amp: true``; a no-op context otherwise (CPU unchanged)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=True) if self.amp else nullcontext()


@dataclass
class Compute:
    """What the batching functions (:func:`explain_in_batches`, :func:`score_in_batches`) read of a
    run's :class:`Settings`, without a config or a cache: the functional API's settings."""

    device: torch.device
    seed: int = 0
    batch_size: int = 64
    amp: bool = False
    show_progress: bool = False

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=True) if self.amp else nullcontext()


@dataclass
class Samples:
    """The evaluation samples :func:`score_in_batches` reads (a :class:`Prepared` has the same fields):
    ``key`` names them in the results' ``dataset`` column; ``sample_ids`` key the metrics' per-sample
    random streams and the results' ``sample_id`` column."""

    key: str
    inputs: Any  # (N, C, H, W) float pixels in [0, 1], or a TextBatch
    labels: torch.Tensor
    masks: torch.Tensor | None
    sample_ids: torch.Tensor


@dataclass
class Prepared:
    """One dataset entry after data, train and select: ``f_b`` and the evaluation samples."""

    key: str
    task: Any
    mod: Any
    model: torch.nn.Module
    model_key: ck.Key
    train: Any  # models.training.TrainResult
    index: torch.Tensor  # evaluation rows of the test split, sorted
    sample_ids: torch.Tensor
    ids_hash: str
    inputs: Any  # (N, C, H, W) pixels, or a TextBatch
    masks: torch.Tensor | None
    labels: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # the run.json entry of this dataset


@dataclass
class View:
    """A model whose decisions maps explain: ``f_b``, or a learned explainer's ``f_s``."""

    name: str
    model: torch.nn.Module
    key: ck.Key
    targets: torch.Tensor
    preds: torch.Tensor


@dataclass
class Attribution:
    """One explainer's maps on one view, with the callable that re-explains (robustness, mprt)."""

    label: str
    view: str
    maps: torch.Tensor
    key: ck.Key
    explain_fn: Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- data, train, select


def prepare(s: Settings, dcfg: DataConfig, log_stage, stage_prefix: str | None = None) -> Prepared:
    """Data -> train (or load) -> select, for one dataset entry of the config."""
    from .data import load_task

    cfg, name = s.cfg, dcfg.key
    prefix = stage_prefix or name
    with log_stage(f"{prefix}/data"):
        task = load_task(dcfg.name, seed=s.dseed, data_dir=dcfg.data_dir, **dcfg.params)
    # fingerprint_of: the user files a dataset/model reads (image folder, checkpoint); {} for built-ins
    dkey = ck.data_key({**dcfg.hash_dict(), **DATASETS.entry(dcfg.name).fingerprint_of(dcfg.params)}, s.dseed)
    with log_stage(f"{prefix}/train") as info:
        model, mkey, tr = _trained_model(s, cfg, task, dkey)
        info.update(cache_hit=tr.cache_hit, model_hash=mkey.hash, test_accuracy=tr.test_accuracy)
    progress.write(f"[xaiarena] {prefix}: {cfg.model.name} test accuracy {tr.test_accuracy:.3f}")

    mod = modality_for(task)
    # only_correct with replicates: the same samples in every replicate, those that every
    # replicate's model classifies correctly (a pretrained model is the same for every seed)
    others = [] if not cfg.evaluation.only_correct or getattr(model, "pretrained", False) else \
        [seed for seed in s.replicate_seeds if seed != cfg.seed]
    if others:
        with log_stage(f"{prefix}/select") as info:
            index = select_samples(s, task, mod, model,
                                   _replicate_models(s, cfg, task, dkey, others, info))
    else:
        index = select_samples(s, task, mod, model)
    if not len(index) and cfg.evaluation.only_correct and len(task.test):
        from .errors import RunError

        who = (f"every replicate's model (seeds {list(s.replicate_seeds)})" if others else
               f"the trained {cfg.model.name} (test accuracy {tr.test_accuracy:.3f})")
        raise RunError(f"{name}: evaluation.only_correct: no test sample is classified correctly "
                       f"by {who}; train longer (training.epochs) or set "
                       "evaluation.only_correct: false")
    clipped = len(index) < cfg.evaluation.n_samples
    if clipped:
        what = "test samples"
        if cfg.evaluation.only_correct:
            what = ("test samples every replicate's model classifies correctly" if others
                    else "correctly classified test samples")
        log.warning("%s: evaluation.n_samples is %d but the dataset has only %d %s; explaining %d", name,
                    cfg.evaluation.n_samples, len(index), what, len(index))
    sample_ids = task.test.ids[index]
    inputs = mod.eval_inputs(task, index, model)
    prep = Prepared(
        key=name, task=task, mod=mod, model=model, model_key=mkey, train=tr, index=index,
        sample_ids=sample_ids, ids_hash=ck.stable_hash(sample_ids.tolist()), inputs=inputs,
        masks=mod.eval_masks(task, index, inputs), labels=task.test.labels[index],
    )
    prep.info = {
        "model": cfg.model.name, "model_hash": mkey.hash, "num_classes": task.num_classes,
        "input_shape": list(task.input_shape), "n_train": len(task.train), "n_test": len(task.test),
        "n_eval": len(index), "test_accuracy": tr.test_accuracy, "train_history": tr.history,
        "train_seconds": tr.seconds, "explainers": {}, **mod.describe(task, inputs, model),
    }
    names = task.test_names(index)
    if names is not None:  # the report names samples by file where the dataset provides names
        prep.info["sample_names"] = {str(int(i)): n for i, n in zip(sample_ids.tolist(), names, strict=True)}
    if clipped:
        prep.info["n_samples_requested"] = cfg.evaluation.n_samples
    if others:
        prep.info["samples_correct_under_seeds"] = list(s.replicate_seeds)
    if getattr(model, "pretrained", False):  # no training: say so, and which classes it predicts
        describe = getattr(model, "describe", None)
        prep.info["pretrained"] = describe() if callable(describe) else True
        prep.info["target"] = cfg.evaluation.target
    return prep


def _trained_model(s: Settings, cfg: ExperimentConfig, task,
                   dkey: ck.Key) -> tuple[torch.nn.Module, ck.Key, Any]:
    """``cfg``'s model trained on ``task`` with ``cfg.seed`` (or loaded from the run's cache), in
    eval mode and frozen: ``(model, model key, TrainResult)``."""
    from .models import build_model, train_model

    entry = MODELS.entry(cfg.model.name)
    pretrained = bool(entry.meta.get("pretrained"))  # never trained
    mkey = ck.model_key(dkey, {**cfg.model.hash_dict(), **entry.fingerprint_of(cfg.model.params)},
                        None if pretrained else cfg.training.model_dump(), cfg.seed, s.amp)
    ckpt_dir = s.cache.path("models", mkey.hash)
    model = build_model(cfg.model.name, task, seed=cfg.seed, **cfg.model.params)
    check_cam_layers(cfg, model, task)  # before training: a CAM without a layer fails now
    if ckpt_dir.exists():
        s.cache.verify_dir(ckpt_dir, ["model.pt", "train.json"])
    with s.autocast():
        tr = train_model(model, task, cfg.training, seed=cfg.seed, device=s.device,
                         checkpoint_dir=ckpt_dir, show_progress=s.show_progress)
    if not tr.cache_hit and (ckpt_dir / "model.pt").exists():
        for f in ("model.pt", "train.json"):
            s.cache.record(ckpt_dir / f, mkey)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, mkey, tr


def _replicate_models(s: Settings, cfg: ExperimentConfig, task, dkey: ck.Key, seeds: list[int],
                      info: dict) -> Iterator[torch.nn.Module]:
    """The models of the other replicates (trained here, or loaded from the run's cache where their
    own unit, or an earlier one, trained them), one at a time, for :func:`select_samples`."""
    hits = []
    for seed in seeds:
        model, _, tr = _trained_model(s, cfg.model_copy(update={"seed": seed}), task, dkey)
        hits.append(bool(tr.cache_hit))
        yield model
        del model
    info.update(cache_hit=all(hits), seeds=list(seeds))


def check_cam_layers(cfg: ExperimentConfig, model: torch.nn.Module, task) -> None:
    """Every CAM explainer of ``cfg`` finds its layer in ``model`` (its ``layer`` option, else the
    layer the model declares); a ``ConfigError`` naming the explainer and candidate layers
    otherwise."""
    from .explainers.cam import cam_layer_of
    from .registry import EXPLAINERS

    for i, spec in enumerate(cfg.explainers):
        if not EXPLAINERS.entry(spec.name).meta.get("needs_layer") or task.modality != "image":
            continue
        split = task.test if len(task.test) else task.train
        x = split.float_images(slice(0, 1)) if len(split) else None
        try:
            cam_layer_of(model, spec.params.get("layer"), spec.name, x)
        except ValueError as exc:
            raise ConfigError([(f"explainers.{i}.layer", str(exc))]) from None


def select_samples(s: Settings, task, mod, model,
                   others: Iterable[torch.nn.Module] = ()) -> torch.Tensor:
    """Indices into the test split: held-out samples chosen by seed (optionally correct only).

    With ``evaluation.only_correct``, the samples ``model`` classifies correctly and, where
    ``others`` (models of the other replicates) are given, that each of them classifies correctly
    too: the first ``n_samples`` of one seeded order of the test split that pass, the same for
    every replicate."""
    from .models.training import correct_predictions

    cfg = s.cfg
    gen = torch.Generator().manual_seed(s.dseed + 1)
    order = torch.randperm(len(task.test), generator=gen)
    if cfg.evaluation.only_correct:
        keep = torch.ones(len(order), dtype=torch.bool)
        for m in itertools.chain((model,), others):  # the others are loaded one at a time
            preds = mod.logits(m, task.test, order, s.device).argmax(1)
            ok = correct_predictions(m, preds, task.test.labels[order], task)
            if ok is None:
                raise ValueError(
                    f"evaluation.only_correct: correct predictions are not defined for model "
                    f"'{cfg.model.name}' on dataset '{task.name}' (its labels do not map to the "
                    "model's classes); set evaluation.only_correct: false"
                )
            keep &= ok.cpu().bool()
        order = order[keep]
    return order[: cfg.evaluation.n_samples].sort().values


def view_of(s: Settings, prep: Prepared, name: str, model: torch.nn.Module, key: ck.Key) -> View:
    """The targets each view explains: the labels, or that view's model's own predictions."""
    from .models.training import check_finite_outputs

    check_finite_outputs(model, prep.inputs, s.device, batch_size=s.batch_size,
                         what=f"the evaluation samples of {prep.key} (explained as {name})")
    logits = prep.mod.logits(model, prep.task.test, prep.index, s.device)
    preds = logits.argmax(1)
    targets = fixed_targets(s.cfg.evaluation.target, prep, model, len(preds))
    if targets is None:
        targets = prep.labels if s.cfg.evaluation.target == "label" else preds
    return View(name, model, key, targets, preds)


def correct_predictions(prep: Prepared, view: View) -> torch.Tensor:
    """Which of the evaluation samples ``view``'s model classifies correctly (the model's own rule
    where it has one, e.g. multi-label; else prediction == label)."""
    from .models.training import correct_predictions as model_rule

    ok = model_rule(view.model, view.preds, prep.labels, prep.task)
    return (view.preds == prep.labels) if ok is None else ok


def fixed_targets(target: Any, prep: Prepared, model, n: int) -> torch.Tensor | None:
    """``evaluation.target`` as one class for every sample (an index, or a class name of the model's
    outputs, else of the dataset's classes); None for ``label``/``prediction``."""
    if target in ("label", "prediction"):
        return None
    names = list(getattr(model, "class_names", None) or prep.task.class_names)
    if isinstance(target, int) and not isinstance(target, bool):
        idx = target
    else:
        lowered = [str(c).lower() for c in names]
        if str(target).lower() not in lowered:
            from .registry import suggest

            hint = suggest(str(target), names)
            raise ConfigError([("evaluation.target", f"bad value {target!r}: not a class of the model"
                                f"{f' (did you mean {hint!r}?)' if hint else ''}; give label, prediction, a class "
                                f"index 0..{len(names) - 1} or a class name such as {names[0]!r}")])
        idx = lowered.index(str(target).lower())
    if not 0 <= idx < len(names):
        raise ConfigError([("evaluation.target", f"bad value {target!r}: the model has {len(names)} classes "
                            f"(0..{len(names) - 1})")])
    return torch.full((n,), idx, dtype=torch.long)


# --------------------------------------------------------------------------- learned explainers


def fit_learned(s: Settings, prep: Prepared, spec: ComponentSpec, explainer, view_name: str) -> View:
    """Fit a learned explainer (DiET) on the training split; the view of the model it explains."""
    fkey = ck.fit_key(prep.model_key, spec.hash_dict(), s.seed)
    fit_dir = s.cache.path("explainers", prep.key, fkey.hash)
    explainer.fit(prep.model, prep.task, device=s.device, generator=torch.Generator().manual_seed(s.seed),
                  cache_dir=fit_dir)
    model = explainer.explained_model(prep.model)
    # keyed by content: a fit that gives another model (new code or defaults) re-keys what depends on it
    return view_of(s, prep, view_name, model, ck.learned_model_key(fkey, fingerprint_module(model)))


# --------------------------------------------------------------------------- explain


def explain(s: Settings, prep: Prepared, view: View, spec: ComponentSpec, explainer, sinfo: dict) -> Attribution:
    """One explainer's maps of the evaluation samples on ``view``'s model (cached), after the
    entry's ``postprocess`` steps (in order, on the maps of the whole evaluation set: a step
    ``..._over_set`` takes one scale over the set); re-explanations get the entry's
    ``reexplain_postprocess`` steps (per sample; by default the same as ``postprocess``)."""
    steps = list(getattr(spec, "postprocess", None) or [])
    rsteps = list(getattr(spec, "reexplain_steps", steps))
    ekey = ck.explain_key(view.key, spec.hash_dict(), prep.ids_hash, s.seed, s.cfg.evaluation.target, steps)
    path = s.cache.path("attributions", prep.key, f"{spec.key}-{ekey.hash}.pt")
    maps = s.cache.load_torch(path)
    if maps is not None:
        sinfo["cache_hit"] = True
    else:
        maps = explain_in_batches(s, explainer, view.model, prep.inputs, view.targets, spec.key, seed_name=spec.name)
        maps = postprocess.apply(maps, steps)
        s.cache.save_torch(path, maps, ekey)

    def explain_fn(inputs, targets, generator=None, model=view.model):
        """Re-explain (robustness metrics); ``model=`` explains another model (randomisation test)."""
        again = explainer.explain(model, inputs, targets, generator=generator)
        return postprocess.apply(again, rsteps)

    return Attribution(spec.key, view.name, maps, ekey, explain_fn)


def explain_in_batches(s: Settings | Compute, explainer, model, inputs, targets, label: str,
                       seed_name: str | None = None) -> torch.Tensor:
    """The one batching path of explainers: ``evaluation.batch_size`` inputs per call, CPU float maps.

    The random stream is seeded by the run seed and ``seed_name`` (the explainer's registered name,
    not its label; the label when not given): two entries of one explainer draw the same
    perturbations (common random numbers), so e.g. LIME's top-10 selection is exactly a selection
    of the full LIME map."""
    bs = s.batch_size
    seed = ck.stable_seed(s.seed, "explain", seed_name or label)
    prepare_set = getattr(explainer, "prepare_set", None)  # absent on duck-typed plugin explainers
    if prepare_set is not None:
        # the whole set first: an explainer that optimises over a set (DiET's "authors" test-time
        # procedure) does it here, once, so its maps do not depend on the batch size either
        with s.autocast():
            prepare_set(model, inputs)
    out = []
    for i in progress(range(0, len(inputs), bs), desc=f"explain {label}", disable=not s.show_progress):
        xb = inputs[i:i + bs].to(s.device)
        tb = targets[i:i + bs].to(s.device)
        # every batch starts from the same generator state; explainers seed each sample from that state
        # and the sample's own content, so maps do not depend on the batch size or the batch mates
        gen = torch.Generator().manual_seed(seed)
        with s.autocast():
            a = explainer.explain(model, xb, tb, generator=gen)
        finite = torch.isfinite(a).reshape(len(a), -1).all(1)
        if not bool(finite.all()):  # caught here, naming the explainer, not later by a metric
            from .explainers.base import contract_error

            n_bad = int((~finite).sum())
            raise contract_error(explainer, "maps must be finite numbers; it returned NaN or "
                                 f"infinite values for {n_bad} of {len(a)} inputs (the '{label}' "
                                 f"maps, inputs {i}..{i + len(a) - 1})")
        out.append(a.float().cpu())
    return torch.cat(out) if out else torch.empty(0, *inputs.shape[2:])


# --------------------------------------------------------------------------- score


def output_name(spec: ComponentSpec, metric_name: str, output: str) -> str:
    """The name an output is reported under. A ``label`` applies to every output of the metric: it
    replaces the metric's name where the output starts with it (``aopc_morf`` -> ``<label>_morf``) and
    prefixes the others (``keep20_drop`` -> ``<label>:keep20_drop``), so that two instances of one
    metric with different options never share an output name."""
    if not spec.label:
        return output
    if output.startswith(metric_name):
        return spec.label + output[len(metric_name):]
    return f"{spec.label}:{output}"


def metric_meta(spec: MetricSpec, metric) -> dict[str, dict[str, Any]]:
    """``{output name: metadata}`` of one metric of a config (run.json ``metrics_meta``; the statistics
    read ``higher_is_better`` from it)."""
    from .registry import METRICS

    out = {}
    for o in metric.outputs():
        out[output_name(spec, metric.name, o.name)] = {
            "metric": spec.name, "label": spec.key, "category": metric.category,
            "higher_is_better": o.higher_is_better, "ranked": o.ranked,
            **({"unranked_reason": o.unranked_reason} if not o.ranked else {}),
            "value_range": [float(v) for v in o.value_range],
            "description": METRICS.entry(spec.name).description,
        }
    return out


def score(s: Settings, prep: Prepared, view: View, spec: MetricSpec, metric,
          attrs: dict[str, Attribution], sinfo: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One metric's per-sample scores and curves for the maps of one view (cached)."""
    skey = ck.score_key(spec.hash_dict(), {k: a.key for k, a in attrs.items()}, prep.ids_hash, s.seed, view.key)
    mdir = s.cache.path("metrics", prep.key)
    ps_path, cv_path = mdir / f"{spec.key}-{skey.hash}.parquet", mdir / f"{spec.key}-{skey.hash}.curves.parquet"
    ps, cv = s.cache.load_frame(ps_path), s.cache.load_frame(cv_path)
    if ps is not None and cv is not None:
        sinfo["cache_hit"] = True
        return ps, cv
    ps, cv = score_in_batches(s, prep, view, spec, metric, attrs)
    s.cache.save_frame(cv_path, cv, skey)
    s.cache.save_frame(ps_path, ps, skey)
    return ps, cv


def score_in_batches(s: Settings | Compute, prep: Prepared | Samples, view: View, spec: MetricSpec, metric,
                     attrs: dict[str, Attribution]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The one batching path of metrics: one metric's per-sample scores (:data:`PER_SAMPLE_COLUMNS`) and
    mean curves (:data:`CURVE_COLUMNS`) for the maps ``attrs`` of ``view``'s model (uncached)."""
    from .metrics import EvalBatch, SamplePool

    n = len(prep.inputs)
    # a metric that normalises over the set sees the whole evaluation set in one call (it chunks its
    # own forward passes), so its scores do not depend on evaluation.batch_size either
    bs = max(n, 1) if getattr(metric, "needs_whole_set", False) else s.batch_size
    pool = SamplePool(prep.inputs, prep.labels, prep.sample_ids)  # focus draws its mosaics' images from it
    scores: dict[str, dict[str, list[torch.Tensor]]] = {}
    curves: dict[str, dict[str, list[torch.Tensor]]] = {}
    curve_x: dict[str, torch.Tensor] = {}
    for i in progress(range(0, n, bs), desc=f"metric {spec.key}", disable=not s.show_progress):
        sl = slice(i, i + bs)
        batch = EvalBatch(
            model=view.model, inputs=prep.inputs[sl].to(s.device), targets=view.targets[sl].to(s.device),
            labels=prep.labels[sl].to(s.device),
            masks=None if prep.masks is None else prep.masks[sl].to(s.device), sample_ids=prep.sample_ids[sl],
            pool=pool,
        )
        # the same generator state for every batch and every explained model (common random numbers):
        # metrics draw each sample's randomness from that state and the sample id, so scores do not depend
        # on the batch size, the batch mates or the order of the metrics
        gen = torch.Generator(device=s.device).manual_seed(ck.stable_seed(s.seed, "metric", spec.key))
        with s.autocast():
            out = metric.evaluate(batch, {k: a.maps[sl].to(s.device) for k, a in attrs.items()}, generator=gen,
                                  explainers={k: a.explain_fn for k, a in attrs.items()})
        for oname, per_expl in out.scores.items():
            for k, v in per_expl.items():
                scores.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
        for oname, per_expl in out.curves.items():
            for k, v in per_expl.items():
                curves.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
        curve_x.update({k: v.detach().float().cpu() for k, v in out.curve_x.items()})
    ids = prep.sample_ids.numpy()
    rows = []
    for oname, per_expl in scores.items():
        full = output_name(spec, metric.name, oname)
        for k, parts in per_expl.items():
            vals = torch.cat(parts).numpy()
            rows.append(pd.DataFrame({"dataset": prep.key, "explained_model": view.name, "explainer": k,
                                      "metric": full, "sample_id": ids[: len(vals)], "value": vals}))
    ps = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)
    crow = []
    for oname, per_expl in curves.items():
        full = output_name(spec, metric.name, oname)
        for k, parts in per_expl.items():
            c = torch.cat(parts).numpy()  # (N, S)
            mean = np.nanmean(c, 0)
            se = np.nanstd(c, 0, ddof=1) / np.sqrt(max(len(c), 1)) if len(c) > 1 else np.zeros_like(mean)
            x = curve_x.get(oname, torch.linspace(0, 1, c.shape[1])).numpy()
            crow.append(pd.DataFrame({"dataset": prep.key, "explained_model": view.name, "explainer": k,
                                      "metric": full, "x": x, "mean": mean, "ci_low": mean - 1.96 * se,
                                      "ci_high": mean + 1.96 * se}))
    cv = pd.concat(crow, ignore_index=True) if crow else pd.DataFrame(columns=CURVE_COLUMNS)
    return ps, cv
