"""The stages of a run, as functions of small typed inputs with cached results.

::

    data ──> train (or load) ──> select ──┬──> fit (learned explainers: f_s) ──┐
                                          │                                    v
                                          └─────> views: f_b [, f_s] ──> explain (explainer x view)
                                                                          └──> score (metric x view)

Explain and score work shard by shard (:func:`shard_size`, :mod:`xaiarena.engine.shards`).

* :func:`prepare` runs data, train and select for one dataset entry and returns a
  :class:`PreparedUnit` (the task, the trained model ``f_b`` and the evaluation samples); its
  first two steps, :func:`data_stage` and :func:`train_stage`, are also where ``xaiarena
  dissect`` gets its data and model (the same keys, checkpoints and checks).
* :func:`fit_learned` fits a learned explainer (DiET) and returns the
  :class:`~xaiarena.engine.batching.View` of the model its maps explain (``f_s``).
* :func:`explain` computes (or loads) one explainer's maps on one view's model.
* :func:`score` computes (or loads) one metric's per-sample scores and curves for the
  maps of one view.

Under :func:`explain` and :func:`score` are the uncached batching paths of
:mod:`xaiarena.engine.batching`. Every cache key comes from :mod:`xaiarena.engine.cache`; every
file is written through a :class:`~xaiarena.engine.cache.Cache` (checksummed, atomic). What
differs between images and texts lives in :mod:`xaiarena.modalities`. The tasks of the stage
graph (:mod:`xaiarena.engine.kinds`) call these functions.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from .. import postprocess
from ..config import ComponentSpec, DataConfig, ExperimentConfig, MetricSpec
from ..errors import ConfigError
from ..fingerprint import fingerprint_module
from ..modalities import modality_for
from ..progress import progress
from ..registry import DATASETS, MODELS
from . import cache as ck
from .batching import (
    Attribution,
    Compute,
    EvalSamples,
    RawScores,
    View,
    curve_frame,
    explain_range,
    merge_raw,
    per_sample_frame,
    prepare_explainer,
    score_range,
    whole_set,
)
from .shards import (
    ShardedMaps,
    ShardedSamples,
    ShardProgress,
    shard_bounds,
    shard_name,
    stored,
)

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Settings(Compute):
    """What every stage of one unit shares: the :class:`~xaiarena.engine.batching.Compute` settings
    (``seed`` is the config's), the unit's config and the run's cache."""

    cfg: ExperimentConfig
    cache: ck.Cache
    seed: int = field(init=False)  # always ``cfg.seed``
    show_progress: bool = True
    #: the seed of the data and of the choice of evaluation samples; replicates share it (the
    #: config's ``seed``) and differ only in ``cfg.seed``, which drives the model, training and all
    #: explainer and metric randomness
    data_seed: int | None = None
    #: the model seeds of every replicate of this unit (empty without replicates): with
    #: ``evaluation.only_correct`` the evaluation samples are those that every one of these models
    #: classifies correctly, so that every replicate explains and scores the same samples
    replicate_seeds: tuple[int, ...] = ()
    #: whether the unit's samples and view targets are written to the cache for the tasks of
    #: other processes (:func:`save_samples`, :func:`view_of`; a Ray run: ``Env.share_samples``);
    #: a local run never reads them back
    share_samples: bool = False

    def __post_init__(self) -> None:
        self.seed = self.cfg.seed

    @property
    def dseed(self) -> int:
        return self.cfg.seed if self.data_seed is None else self.data_seed


@dataclass(kw_only=True)
class UnitSamples(EvalSamples):
    """One unit's evaluation samples with its trained model ``f_b``: what :func:`explain` and
    :func:`score` read. A :class:`PreparedUnit` is one; :func:`load_samples` reads one from the
    run's cache without loading the data (its inputs and masks as
    :class:`~xaiarena.engine.shards.ShardedSamples`, read shard by shard)."""

    model: torch.nn.Module
    model_key: ck.Key
    ids_hash: str


@dataclass(kw_only=True)
class PreparedUnit(UnitSamples):
    """One unit's dataset entry after data, train and select: its evaluation samples, the task and
    the trained model ``f_b``."""

    task: Any
    mod: Any
    train: Any  # models.training.TrainResult
    index: torch.Tensor  # evaluation rows of the test split, sorted
    info: dict[str, Any] = field(default_factory=dict)  # the run.json entry of this dataset


# --------------------------------------------------------------------------- data, train, select


def prepare(
    s: Settings, dcfg: DataConfig, log_stage, stage_prefix: str | None = None
) -> PreparedUnit:
    """Data -> train (or load) -> select, for one dataset entry of the config."""
    cfg, name = s.cfg, dcfg.key
    prefix = stage_prefix or name
    task, dkey = data_stage(s, dcfg, log_stage, prefix)
    model, mkey, tr = train_stage(s, task, dkey, log_stage, prefix)
    progress.write(f"[xaiarena] {prefix}: {cfg.model.name} test accuracy {tr.test_accuracy:.3f}")

    mod = modality_for(task)
    index, others, clipped = _evaluation_index(
        s, name, task, mod, model, dkey, tr, log_stage, prefix
    )
    sample_ids = task.test.ids[index]
    inputs = mod.eval_inputs(task, index, model)
    prep = PreparedUnit(
        dataset=name,
        task=task,
        mod=mod,
        model=model,
        model_key=mkey,
        train=tr,
        index=index,
        sample_ids=sample_ids,
        ids_hash=ck.stable_hash(sample_ids.tolist()),
        inputs=inputs,
        masks=mod.eval_masks(task, index, inputs),
        labels=task.test.labels[index],
    )
    prep.info = _unit_info(s, prep, clipped, others)
    return prep


def _evaluation_index(
    s: Settings, name: str, task, mod, model, dkey: ck.Key, tr, log_stage, prefix: str
) -> tuple[Any, list[int], bool]:
    """The evaluation samples of a unit (positions in the test split), the other replicates'
    seeds whose models chose them too (``only_correct`` with replicates), and whether fewer
    samples than ``evaluation.n_samples`` were available (then warned)."""
    cfg = s.cfg
    # only_correct with replicates: the same samples in every replicate, those that every
    # replicate's model classifies correctly (a pretrained model is the same for every seed)
    others = (
        []
        if not cfg.evaluation.only_correct or getattr(model, "pretrained", False)
        else [seed for seed in s.replicate_seeds if seed != cfg.seed]
    )
    if others:
        with log_stage(f"{prefix}/select") as info:
            index = select_samples(
                s, task, mod, model, _replicate_models(s, cfg, task, dkey, others, info)
            )
    else:
        index = select_samples(s, task, mod, model)
    if not len(index) and cfg.evaluation.only_correct and len(task.test):
        from ..errors import RunError

        who = (
            f"every replicate's model (seeds {list(s.replicate_seeds)})"
            if others
            else f"the trained {cfg.model.name} (test accuracy {tr.test_accuracy:.3f})"
        )
        raise RunError(
            f"{name}: evaluation.only_correct: no test sample is classified correctly "
            f"by {who}; train longer (training.epochs) or set "
            "evaluation.only_correct: false"
        )
    clipped = len(index) < cfg.evaluation.n_samples
    if clipped:
        what = "test samples"
        if cfg.evaluation.only_correct:
            what = (
                "test samples every replicate's model classifies correctly"
                if others
                else "correctly classified test samples"
            )
        log.warning(
            "%s: evaluation.n_samples is %d but the dataset has only %d %s; explaining %d",
            name,
            cfg.evaluation.n_samples,
            len(index),
            what,
            len(index),
        )
    return index, others, clipped


def _unit_info(s: Settings, prep: PreparedUnit, clipped: bool, others: list[int]) -> dict:
    """The unit's entry in run.json's ``datasets``: model, data, training and sample facts."""
    cfg, task, model, tr, index = s.cfg, prep.task, prep.model, prep.train, prep.index
    mod, inputs, sample_ids = prep.mod, prep.inputs, prep.sample_ids
    info = {
        "model": cfg.model.name,
        "model_hash": prep.model_key.hash,
        "num_classes": task.num_classes,
        "input_shape": list(task.input_shape),
        "n_train": len(task.train),
        "n_test": len(task.test),
        "n_eval": len(index),
        "test_accuracy": tr.test_accuracy,
        "train_history": tr.history,
        "train_seconds": tr.seconds,
        "explainers": {},
        **mod.describe(task, inputs, model),
    }
    names = task.test_names(index)
    if names is not None:  # the report names samples by file where the dataset provides names
        info["sample_names"] = {
            str(int(i)): n for i, n in zip(sample_ids.tolist(), names, strict=True)
        }
    if clipped:
        info["n_samples_requested"] = cfg.evaluation.n_samples
    if others:
        info["samples_correct_under_seeds"] = list(s.replicate_seeds)
    if getattr(model, "pretrained", False):  # no training: say so, and which classes it predicts
        describe = getattr(model, "describe", None)
        info["pretrained"] = describe() if callable(describe) else True
        info["target"] = cfg.evaluation.target
    return info


def data_stage(s: Settings, dcfg: DataConfig, log_stage, prefix: str) -> tuple[Any, ck.Key]:
    """The data stage of one dataset entry (stage ``<prefix>/data``): the task, and its cache key
    (the entry's config, the data seed and a fingerprint of the user files it reads). ``xaiarena
    dissect`` starts here too, so that it shares the run's keys and checkpoints."""
    from ..data import load_task

    with log_stage(f"{prefix}/data"):
        task = load_task(dcfg.name, seed=s.dseed, data_dir=dcfg.data_dir, **dcfg.params)
    return task, _data_key(s, dcfg)


def _data_key(s: Settings, dcfg: DataConfig) -> ck.Key:
    """The data key of a dataset entry (computed without loading the data)."""
    # fingerprint_of: the user files a dataset/model reads (image folder, checkpoint); {} for
    # built-ins
    return ck.data_key(
        {**dcfg.hash_dict(), **DATASETS.entry(dcfg.name).fingerprint_of(dcfg.params)}, s.dseed
    )


def train_stage(
    s: Settings, task, dkey: ck.Key, log_stage, prefix: str
) -> tuple[torch.nn.Module, ck.Key, Any]:
    """The train stage (stage ``<prefix>/train``): ``s.cfg``'s model trained on ``task``, or loaded
    from the run's cache (checkpoint verified against its manifest), in eval mode and frozen:
    ``(model, model key, TrainResult)``."""
    with log_stage(f"{prefix}/train") as info:
        model, mkey, tr = _trained_model(s, s.cfg, task, dkey)
        info.update(cache_hit=tr.cache_hit, model_hash=mkey.hash, test_accuracy=tr.test_accuracy)
    return model, mkey, tr


def _trained_model(
    s: Settings, cfg: ExperimentConfig, task, dkey: ck.Key
) -> tuple[torch.nn.Module, ck.Key, Any]:
    """``cfg``'s model trained on ``task`` with ``cfg.seed`` (or loaded from the run's cache), in
    eval mode and frozen: ``(model, model key, TrainResult)``."""
    from ..models import build_model, train_model

    mkey = _model_key(s, cfg, dkey)
    ckpt_dir = s.cache.path("models", mkey.hash)
    model = build_model(cfg.model.name, task, seed=cfg.seed, **cfg.model.params)
    check_cam_layers(cfg, model, task)  # before training: a CAM without a layer fails now
    if ckpt_dir.exists():
        s.cache.verify_dir(ckpt_dir, ["model.pt", "train.json"])
    with s.autocast():
        tr = train_model(
            model,
            task,
            cfg.training,
            seed=cfg.seed,
            device=s.device,
            checkpoint_dir=ckpt_dir,
            show_progress=s.show_progress,
        )
    if not tr.cache_hit and (ckpt_dir / "model.pt").exists():
        for f in ("model.pt", "train.json"):
            s.cache.record(ckpt_dir / f, mkey)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, mkey, tr


def _pretrained(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s model is never trained (a pretrained model)."""
    return bool(MODELS.entry(cfg.model.name).meta.get("pretrained"))


def _user_model(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg``'s model is built by user code (``torch_module``, a plugin), which may read
    any of the task's ``meta``; xaiarena's own models read its name, classes, normalisation and
    input shape (a pretrained model's label maps only where correctness is decided, in the
    process that selects the samples)."""
    return cfg.model.name == "torch_module" or MODELS.entry(cfg.model.name).origin != "builtin"


def _model_key(s: Settings, cfg: ExperimentConfig, dkey: ck.Key) -> ck.Key:
    """The key of ``cfg``'s trained model (computed without loading the data)."""
    entry = MODELS.entry(cfg.model.name)
    return ck.model_key(
        dkey,
        {**cfg.model.hash_dict(), **entry.fingerprint_of(cfg.model.params)},
        None if _pretrained(cfg) else cfg.training.model_dump(),
        cfg.seed,
        s.amp,
    )


def _replicate_models(
    s: Settings, cfg: ExperimentConfig, task, dkey: ck.Key, seeds: list[int], info: dict
) -> Iterator[torch.nn.Module]:
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
    from ..explainers.cam import cam_layer_of
    from ..registry import EXPLAINERS

    for i, spec in enumerate(cfg.explainers):
        if not EXPLAINERS.entry(spec.name).meta.get("needs_layer") or task.modality != "image":
            continue
        split = task.test if len(task.test) else task.train
        x = split.float_images(slice(0, 1)) if len(split) else None
        try:
            cam_layer_of(model, spec.params.get("layer"), spec.name, x)
        except ValueError as exc:
            raise ConfigError([(f"explainers.{i}.layer", str(exc))]) from None


def select_samples(
    s: Settings, task, mod, model, others: Iterable[torch.nn.Module] = ()
) -> torch.Tensor:
    """Indices into the test split: held-out samples chosen by seed (optionally correct only).

    With ``evaluation.only_correct``, the samples ``model`` classifies correctly and, where
    ``others`` (models of the other replicates) are given, that each of them classifies correctly
    too: the first ``n_samples`` of one seeded order of the test split that pass, the same for
    every replicate."""
    from ..models.training import correct_predictions

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


# --------------------------------------------------------------------------- samples in the cache


def _selection(s: Settings) -> dict[str, Any]:
    """What chooses a unit's evaluation samples beyond its model key (and the batch size, which
    the record keeps: ``evaluation.batch_size: auto`` is decided by the selecting process)."""
    ev = s.cfg.evaluation
    return {
        "n_samples": ev.n_samples,
        "only_correct": ev.only_correct,
        "replicate_seeds": list(s.replicate_seeds),
        "batch_size": ev.batch_size,
    }


def _samples_files(s: Settings, dataset: str, skey: ck.Key, what: str, bounds) -> list:
    """The shard files of a unit's evaluation ``inputs`` or ``masks``."""
    stem = f"{what}-{skey.hash}"
    return [s.cache.path("samples", dataset, shard_name(stem, b, ".pt")) for b in bounds]


def save_samples(s: Settings, prep: PreparedUnit) -> None:
    """Write a unit's evaluation samples to the run's cache (``cache/samples/<dataset>/``; the
    process that selected them does, :meth:`~xaiarena.engine.context.UnitContext.prep`): the
    inputs and masks of each shard, then a record (sample ids, labels, the batch size, the
    task's description to rebuild the model from its checkpoint), so that :func:`load_samples`
    can read them shard by shard without the data. Not for units whose task has no
    :meth:`~xaiarena.data.Task.description` (texts; a user model on a task whose ``meta`` is not
    all plain JSON): they read the whole set."""
    if not s.share_samples:
        return
    desc = prep.task.description(whole_meta=_user_model(s.cfg))
    if desc is None or not isinstance(prep.inputs, torch.Tensor):
        return
    skey = ck.samples_key(prep.model_key, _selection(s))
    bounds = shard_bounds(len(prep.sample_ids), shard_size(s))
    part = ck.samples_key(prep.model_key, {**_selection(s), "ids": prep.ids_hash})
    for what, whole in (("inputs", prep.inputs), ("masks", prep.masks)):
        if whole is None:
            continue
        paths = _samples_files(s, prep.dataset, skey, what, bounds)
        for b, path in zip(bounds, paths, strict=True):
            if not s.cache.verify(path):
                s.cache.save_torch(path, whole[b[0] : b[1]].clone(), ck.shard_key(part, b))
    record = {
        "sample_ids": prep.sample_ids,
        "labels": prep.labels,
        "ids_hash": prep.ids_hash,
        "masks": prep.masks is not None,
        "batch_size": int(s.batch_size),
        "task": desc,
    }
    path = s.cache.path("samples", prep.dataset, f"unit-{skey.hash}.pt")
    old = s.cache.load_torch(path)
    same = old is not None and all(
        torch.equal(old[k], v) if isinstance(v, torch.Tensor) else old.get(k) == v
        for k, v in record.items()
    )
    if not same:
        s.cache.save_torch(path, record, skey)


def load_samples(s: Settings, dcfg: DataConfig) -> UnitSamples | None:
    """A unit's evaluation samples and ``f_b`` as :func:`save_samples` wrote them, without
    loading the data: the model rebuilt from the task's description and loaded from its
    checkpoint, the inputs and masks read shard by shard where they are used. Sets
    ``s.batch_size`` to the selecting process'. None where they are not in the cache (not
    selected yet, a text unit, a missing checkpoint): the caller prepares the unit."""
    from ..data import Task

    dkey = _data_key(s, dcfg)
    mkey = _model_key(s, s.cfg, dkey)
    skey = ck.samples_key(mkey, _selection(s))
    record = s.cache.load_torch(s.cache.path("samples", dcfg.key, f"unit-{skey.hash}.pt"))
    if record is None:
        return None
    if not _pretrained(s.cfg) and not (s.cache.path("models", mkey.hash) / "model.pt").exists():
        return None
    s.batch_size = record["batch_size"]
    bounds = shard_bounds(len(record["sample_ids"]), shard_size(s))
    files = {w: _samples_files(s, dcfg.key, skey, w, bounds) for w in ("inputs", "masks")}
    needed = files["inputs"] + (files["masks"] if record["masks"] else [])
    if not all(p.exists() for p in needed):
        return None
    model, _, _ = _trained_model(s, s.cfg, Task.without_samples(record["task"]), dkey)

    def sharded(what: str) -> ShardedSamples:
        return ShardedSamples(s.cache, files[what], bounds, f"the {what} of {dcfg.key}")

    return UnitSamples(
        dataset=dcfg.key,
        inputs=sharded("inputs"),
        labels=record["labels"],
        masks=sharded("masks") if record["masks"] else None,
        sample_ids=record["sample_ids"],
        model=model,
        model_key=mkey,
        ids_hash=record["ids_hash"],
    )


# --------------------------------------------------------------------------- views


def _view_file(s: Settings, samples: UnitSamples, name: str, key: ck.Key):
    vkey = ck.view_key(key, samples.ids_hash, s.cfg.evaluation.target)
    return s.cache.path("views", samples.dataset, f"{name}-{vkey.hash}.pt"), vkey


def cached_view(
    s: Settings, samples: UnitSamples, name: str, model: torch.nn.Module, key: ck.Key
) -> View | None:
    """The view :func:`view_of` computed, with its targets and predictions read from the run's
    cache (no pass over the samples); None where it was not computed yet."""
    path, _ = _view_file(s, samples, name, key)
    saved = s.cache.load_torch(path)
    if saved is None:
        return None
    return View(name, model, key, saved["targets"], saved["preds"])


def view_of(
    s: Settings, prep: PreparedUnit, name: str, model: torch.nn.Module, key: ck.Key
) -> View:
    """The targets each view explains: the labels, or that view's model's own predictions (kept
    in the run's cache for :func:`cached_view` where ``s.share_samples``)."""
    from ..models.training import check_finite_outputs

    check_finite_outputs(
        model,
        prep.inputs,
        s.device,
        batch_size=s.batch_size,
        what=f"the evaluation samples of {prep.dataset} (explained as {name})",
    )
    logits = prep.mod.logits(model, prep.task.test, prep.index, s.device)
    preds = logits.argmax(1)
    targets = fixed_targets(s.cfg.evaluation.target, prep, model, len(preds))
    if targets is None:
        targets = prep.labels if s.cfg.evaluation.target == "label" else preds
    if s.share_samples:  # for the explain and score tasks of other processes
        path, vkey = _view_file(s, prep, name, key)
        s.cache.save_torch(path, {"targets": targets, "preds": preds}, vkey)
    return View(name, model, key, targets, preds)


def correct_predictions(prep: PreparedUnit, view: View) -> torch.Tensor:
    """Which of the evaluation samples ``view``'s model classifies correctly (the model's own rule
    where it has one, e.g. multi-label; else prediction == label)."""
    from ..models.training import correct_predictions as model_rule

    ok = model_rule(view.model, view.preds, prep.labels, prep.task)
    return (view.preds == prep.labels) if ok is None else ok


def fixed_targets(target: Any, prep: PreparedUnit, model, n: int) -> torch.Tensor | None:
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
            from ..registry import suggest

            hint = suggest(str(target), names)
            raise ConfigError(
                [
                    (
                        "evaluation.target",
                        f"bad value {target!r}: not a class of the model"
                        f"{f' (did you mean {hint!r}?)' if hint else ''}; give label, "
                        "prediction, a class "
                        f"index 0..{len(names) - 1} or a class name such as {names[0]!r}",
                    )
                ]
            )
        idx = lowered.index(str(target).lower())
    if not 0 <= idx < len(names):
        raise ConfigError(
            [
                (
                    "evaluation.target",
                    f"bad value {target!r}: the model has {len(names)} classes "
                    f"(0..{len(names) - 1})",
                )
            ]
        )
    return torch.full((n,), idx, dtype=torch.long)


# --------------------------------------------------------------------------- learned explainers


def fit_learned(
    s: Settings, prep: PreparedUnit, spec: ComponentSpec, explainer, view_name: str
) -> View:
    """Fit a learned explainer (DiET) on the training split; the view of the model it explains."""
    fkey = ck.fit_key(prep.model_key, spec.hash_dict(), s.seed)
    fit_dir = s.cache.path("explainers", prep.dataset, fkey.hash)
    explainer.fit(
        prep.model,
        prep.task,
        device=s.device,
        generator=torch.Generator().manual_seed(s.seed),
        cache_dir=fit_dir,
    )
    model = explainer.explained_model(prep.model)
    # keyed by content: a fit that gives another model (new code or defaults) re-keys what
    # depends on it
    return view_of(s, prep, view_name, model, ck.learned_model_key(fkey, fingerprint_module(model)))


# --------------------------------------------------------------------------- explain


def shard_size(s: Settings) -> int:
    """The samples per shard: ``evaluation.shard_size`` rounded up to a multiple of the batch
    size, so that shards cut no batch: the batches, and so every number, are those of an
    unsharded run whatever the shard size."""
    bs = max(int(s.batch_size), 1)
    return -(-s.cfg.evaluation.shard_size // bs) * bs


def explain(
    s: Settings,
    prep: UnitSamples,
    view: View,
    spec: ComponentSpec,
    explainer,
    sinfo: dict,
    only: int | None = None,
) -> Attribution:
    """One explainer's maps of the evaluation samples on ``view``'s model, after the entry's
    ``postprocess`` steps (in order; a step ``..._over_set`` takes one scale over the whole
    evaluation set); re-explanations get the entry's ``reexplain_postprocess`` steps (per sample;
    by default the same as ``postprocess``).

    The maps are computed and cached shard by shard (``evaluation.shard_size``; one file per
    shard, stored as ``evaluation.map_dtype``): a shard already cached is not recomputed, so a
    killed run resumes with its unfinished shards. An entry with an ``_over_set`` step computes
    every missing shard's raw maps first, then normalises the set. The returned
    :class:`~xaiarena.engine.batching.Attribution` holds :class:`~.shards.ShardedMaps`: the
    maps are read from the cache shard by shard where they are used.

    ``only``: compute (or check) shard ``only`` alone (a shard task of the Ray executor; nothing
    beyond the last shard); the maps returned are still every shard's files."""
    ev = s.cfg.evaluation
    steps = list(getattr(spec, "postprocess", None) or [])
    rsteps = list(getattr(spec, "reexplain_steps", steps))
    ekey = ck.explain_key(
        view.key, spec.hash_dict(), prep.ids_hash, s.seed, ev.target, steps, ev.map_dtype
    )
    bounds = shard_bounds(len(prep.sample_ids), shard_size(s))
    stem = f"{spec.key}-{ekey.hash}"
    paths = [s.cache.path("attributions", prep.dataset, shard_name(stem, b, ".pt")) for b in bounds]
    over_set = any(postprocess.over_set(step) for step in steps)
    mine = range(len(bounds)) if only is None else [i for i in [only] if i < len(bounds)]
    todo = [i for i in mine if not s.cache.verify(paths[i])]
    if over_set and todo:  # one scale over the set: every missing shard, whatever ``only``
        todo = [i for i, p in enumerate(paths) if i in todo or not s.cache.verify(p)]
    sinfo.update(cache_hit=not todo, shards=len(mine), shards_cached=len(mine) - len(todo))
    if todo:
        prepare_explainer(s, explainer, view.model, prep.inputs)

        def raw(i: int) -> torch.Tensor:
            a, b = bounds[i]
            return explain_range(
                s, explainer, view.model, prep.inputs, view.targets, spec.key, spec.name, a, b
            )

        shards = progress(
            todo, desc=f"explain {spec.key} (shards)", disable=not s.show_progress or len(todo) < 2
        )
        say = progress.write if s.show_progress else None
        tick = ShardProgress(f"{prep.dataset}/explain/{spec.key}@{view.name}", len(mine), say)
        tick.done = len(mine) - len(todo)
        if over_set:  # one scale over the set: every shard's raw maps, then the steps
            whole = postprocess.apply(torch.cat([raw(i) for i in range(len(bounds))]), steps)
            for i in shards:
                a, b = bounds[i]
                _save_maps(s, paths[i], whole[a:b], ck.shard_key(ekey, bounds[i]))
        else:
            for i in shards:
                maps = postprocess.apply(raw(i), steps)
                _save_maps(s, paths[i], maps, ck.shard_key(ekey, bounds[i]))
                tick.tick()
    maps = ShardedMaps(s.cache, paths, bounds, f"'{spec.key}' on {view.name}")

    def explain_fn(inputs, targets, generator=None, model=view.model):
        """Re-explain (robustness metrics); ``model=`` explains another model (randomisation
        test)."""
        again = explainer.explain(model, inputs, targets, generator=generator)
        return postprocess.apply(again, rsteps)

    return Attribution(spec.key, view.name, maps, ekey, explain_fn)


def _save_maps(s: Settings, path, maps: torch.Tensor, key: ck.Key) -> None:
    # a copy of the slice: saving a view would store the whole tensor it views
    s.cache.save_torch(path, stored(maps, s.cfg.evaluation.map_dtype).clone(), key)


# --------------------------------------------------------------------------- score


def score(
    s: Settings,
    prep: UnitSamples,
    view: View,
    spec: MetricSpec,
    metric,
    attrs: dict[str, Attribution],
    sinfo: dict,
    only: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """One metric's per-sample scores and mean curves for the maps of one view, scored and
    cached shard by shard (the per-sample frame and the per-sample curves of each shard), then
    put together in the order of an unsharded run: per output and explainer, the samples in
    order. A metric that normalises over the set (``needs_whole_set``) scores the set as one
    shard.

    ``only``: score (or check) shard ``only`` alone and return None (a shard task of the Ray
    executor; the metric's task then puts the cached shards together)."""
    skey = ck.score_key(
        spec.hash_dict(), {k: a.key for k, a in attrs.items()}, prep.ids_hash, s.seed, view.key
    )
    n = len(prep.sample_ids)
    bounds = [(0, n)] if whole_set(metric) else shard_bounds(n, shard_size(s))
    if only is not None:
        bounds = bounds[only : only + 1]
    mdir = s.cache.path("metrics", prep.dataset)
    stem = f"{spec.key}-{skey.hash}"
    frames: list[pd.DataFrame] = []
    raws: list[RawScores] = []
    cached = 0
    say = progress.write if s.show_progress else None
    tick = ShardProgress(f"{prep.dataset}/metric/{spec.key}@{view.name}", len(bounds), say)
    for a, b in progress(
        bounds, desc=f"metric {spec.key} (shards)", disable=not s.show_progress or len(bounds) < 2
    ):
        ps_path = mdir / shard_name(stem, (a, b), ".parquet")
        cv_path = mdir / shard_name(stem, (a, b), ".curves.pt")
        ps, cv = s.cache.load_frame(ps_path), s.cache.load_torch(cv_path)
        if ps is not None and cv is not None:
            cached += 1
        else:
            scores, curves, curve_x = score_range(s, prep, view, spec, metric, attrs, a, b)
            ps = per_sample_frame(prep.dataset, view, spec, metric, scores, prep.sample_ids[a:b])
            cv = {
                "curves": {o: {k: torch.cat(v) for k, v in c.items()} for o, c in curves.items()},
                "curve_x": curve_x,
            }
            key = ck.shard_key(skey, (a, b))
            s.cache.save_torch(cv_path, cv, key)
            s.cache.save_frame(ps_path, ps, key)
        frames.append(ps)
        tick.tick()
        curves = {o: {k: [v] for k, v in c.items()} for o, c in cv["curves"].items()}
        raws.append(({}, curves, cv["curve_x"]))
    sinfo.update(cache_hit=cached == len(bounds), shards=len(bounds), shards_cached=cached)
    if only is not None:
        return None
    _, curves, curve_x = merge_raw(raws)
    return merge_shard_frames(frames), curve_frame(
        prep.dataset, view, spec, metric, curves, curve_x
    )


def merge_shard_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-sample frames of consecutive shards as the frame of the whole set: the blocks of
    rows of each (metric output, explainer) in the first shard's order, each block's samples in
    shard order."""
    if len(frames) == 1:
        return frames[0]
    blocks: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for frame in frames:
        for key, rows in frame.groupby(["metric", "explainer"], sort=False):
            blocks.setdefault(key, []).append(rows)
    if not blocks:
        return frames[0]
    return pd.concat([part for parts in blocks.values() for part in parts], ignore_index=True)
