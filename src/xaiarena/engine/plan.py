"""The stage graph of a run: units, tasks and the per-process context that executes them.

A config expands into **units**: one per (grid point, replicate seed, dataset entry). Each
unit's work is a small graph of **tasks**::

    train ──> fit (learned explainer) ──> explain (explainer x view) ──> score (metric x view)
      └───────────────────────────────────> explain (explainer x f_b) ──┘

A task is described by a :class:`TaskSpec` (plain data: unit, kind, view, component) and
executed by :func:`run_task`, in this process (the local executor) or in a Ray worker
(:mod:`xaiarena.executors`). Everything a task needs is either in its spec or in the
run's cache (content-addressed, :mod:`xaiarena.cache`), so a task can run anywhere that
sees the cache folder, and running it twice gives the same result. Within one process,
a :class:`UnitContext` keeps what tasks of the same unit share (the dataset, the trained
model, fitted learned explainers, maps), so the local executor never loads anything twice.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import stages, views
from .cache import Cache, inside
from .config import ComponentSpec, ExperimentConfig, grid_points
from .modalities import N_PER_IMAGE_EXAMPLES
from .registry import EXPLAINERS, METRICS
from .utils import progress, resolve_device

F_B = stages.F_B


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One dataset entry of one grid point, trained with one replicate seed."""

    id: str  # unique within the run; prefixes its stage names ("hard_mnist", "hard_mnist@g#r1")
    dataset: str  # the data entry's key (label or name)
    data_index: int
    grid: str  # "" without a grid
    replicate: int
    seed: int  # the model's seed (training, explainers, metrics)
    config: dict[str, Any]  # the point's full config (seed = this replicate's seed), JSON-able
    data_seed: int = 0  # the data's and the evaluation samples' seed: the config's seed for every replicate
    replicate_seeds: tuple[int, ...] = ()  # all replicates' model seeds (only_correct uses them)

    def experiment(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.config)

    def columns(self, with_grid: bool, with_replicates: bool) -> dict[str, Any]:
        """The result columns that identify this unit beyond ``dataset``."""
        out: dict[str, Any] = {}
        if with_grid:
            out["grid"] = self.grid
        if with_replicates:
            out.update(replicate=self.replicate, seed=self.seed)
        return out


def plan_units(cfg: ExperimentConfig) -> list[Unit]:
    """Every (grid point, replicate, dataset entry) of ``cfg``, in that nesting order."""
    seeds = cfg.replicate_seeds()
    units = []
    for label, raw in grid_points(cfg):
        point = ExperimentConfig.model_validate(raw)
        for r, seed in enumerate(seeds):
            conf = point.model_copy(update={"seed": seed, "replicates": 1, "seeds": None}).to_dict()
            for i, d in enumerate(point.data):
                uid = d.key + (f"@{label}" if label else "") + (f"#r{r}" if len(seeds) > 1 else "")
                units.append(Unit(uid, d.key, i, label, r, seed, conf, cfg.seed,
                                  tuple(seeds) if len(seeds) > 1 else ()))
    return units


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """One node of the stage graph: ``kind`` in train, fit, explain, score, meta, examples."""

    kind: str
    unit: Unit
    view: str = ""
    component: str = ""  # explainer label (fit, explain) or metric label (score)
    deps: tuple[str, ...] = ()  # names of the tasks that must finish first
    explainers: tuple[str, ...] = ()  # score: the explainer labels whose maps it scores

    @property
    def name(self) -> str:
        """The stage name in run.json: ``<unit>/train``, ``<unit>/fit/<label>``, ``<unit>/explain/<label>``,
        ``<unit>/metric/<label>``, with ``@<view>`` when not the component's own view; ``<unit>/examples``."""
        base = f"{self.unit.id}/{'metric' if self.kind == 'score' else self.kind}"
        if self.kind in ("train", "examples"):
            return base
        name = f"{base}/{self.component}" if self.component else base  # meta: <unit>/meta[@<view>]
        return name if self.view in ("", self.home) else f"{name}@{self.view}"

    @property
    def home(self) -> str:
        """The view a component is reported under without a suffix (fit/explain: its own;
        score, meta: f_b)."""
        if self.kind in ("score", "meta"):
            return F_B
        return _home_views(self.unit.experiment()).get(self.component, F_B)


@dataclass(frozen=True)
class Env:
    """What every task of a run shares beyond its spec (all plain data)."""

    run_dir: str
    show_progress: bool = False
    threads: int = 0  # torch threads of the process that started the run (0: this process' own)


def thread_count(unit: Unit, env: Env) -> int:
    """The torch thread count a unit's work computes with, wherever it runs: ``training.num_threads``
    where the config sets it, else the thread count of the process that started the run. Float sums
    (training above all) depend on it, so every task, local or on Ray, uses it (:func:`unit_threads`)."""
    import torch

    return unit.experiment().training.num_threads or env.threads or torch.get_num_threads()


@contextmanager
def unit_threads(unit: Unit, env: Env) -> Iterator[None]:
    """Compute with :func:`thread_count` threads; the process' count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(unit, env))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _learned_labels(cfg: ExperimentConfig) -> list[str]:
    return [s.key for s in cfg.explainers if EXPLAINERS.get(s.name).family == "learned"]


def _home_views(cfg: ExperimentConfig) -> dict[str, str]:
    learned = _learned_labels(cfg)
    out = {s.key: F_B for s in cfg.explainers}
    for k in learned:
        out[k] = "f_s" if len(learned) == 1 else f"f_s:{k}"
    return out


def view_members(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """``{view: [explainer labels]}``: f_b holds the plain explainers; each learned explainer's f_s
    holds it and, with ``evaluation.also_explain_f_s`` (default), the plain explainers too."""
    home = _home_views(cfg)
    plain = [k for k, v in home.items() if v == F_B]
    members = {F_B: plain}
    for k, v in home.items():
        if v != F_B:
            members[v] = [k] + (plain if cfg.evaluation.also_explain_f_s else [])
    return members


def scored_maps(cfg: ExperimentConfig) -> dict[str, dict[str, tuple[str, str]]]:
    """``{view: {result label: (view the maps were computed on, explainer label)}}``: the maps
    each view's metrics score. A view scores its own members' maps and, in f_b with
    ``evaluation.score_learned_on_f_b`` (default), each learned explainer's maps of its f_s as
    ``<label>@f_s`` (:mod:`xaiarena.views`)."""
    home = _home_views(cfg)
    out = {v: {k: (v, k) for k in labels} for v, labels in view_members(cfg).items()}
    if cfg.evaluation.score_learned_on_f_b:
        out[F_B].update({views.on_f_b_label(k): (v, k) for k, v in home.items() if v != F_B})
    return out


def scored_labels(spec, metric, labels: list[str]) -> list[str]:
    """The maps (result labels, of one view) a metric scores: those its ``explainers:`` names
    (all by default; ``diet`` also selects ``diet@f_s``, DiET's maps scored on f_b); none where
    the metric does not apply to them (an agreement metric needs two maps)."""
    keys = [k for k in labels if spec.explainers is None or k in spec.explainers
            or views.source_of(k) in spec.explainers]
    return keys if metric.applies_to(keys) else []


def plan_tasks(units: list[Unit]) -> list[TaskSpec]:
    """The stage graph of every unit, each task after its dependencies."""
    tasks: list[TaskSpec] = []
    first = {(u.grid, u.data_index): u for u in units if u.replicate == 0}
    for u in units:
        cfg = u.experiment()
        home = _home_views(cfg)
        # only_correct with replicates: the first replicate's train task trains every replicate's
        # model to select the samples they all classify correctly; the others then load theirs
        after = first.get((u.grid, u.data_index)) if cfg.evaluation.only_correct else None
        wait = (TaskSpec("train", after).name,) if after is not None and u.replicate else ()
        train = TaskSpec("train", u, deps=wait)
        tasks.append(train)
        fits = {}
        for k, v in home.items():
            if v != F_B:
                fits[v] = TaskSpec("fit", u, v, k, (train.name,))
                tasks.append(fits[v])
        explains: dict[tuple[str, str], TaskSpec] = {}
        for v, labels in view_members(cfg).items():
            for k in labels:
                deps = (train.name,) + ((fits[v].name,) if v in fits else ())
                explains[(v, k)] = t = TaskSpec("explain", u, v, k, deps)
                tasks.append(t)
        maps = scored_maps(cfg)
        scored_views = set()
        for spec in cfg.metrics:
            metric = METRICS.create(spec.name, **spec.params)
            for v, sources in maps.items():
                keys = scored_labels(spec, metric, list(sources))
                if keys:
                    deps = tuple(explains[sources[k]].name for k in keys)
                    tasks.append(TaskSpec("score", u, v, spec.key, deps, tuple(keys)))
                    scored_views.add(v)
        if cfg.evaluation.meta:  # metric meta-evaluation: perturbation tests of each scored view
            tasks += [TaskSpec("meta", u, v, deps=tuple(t.name for (tv, _), t in explains.items() if tv == v))
                      for v in sorted(scored_views, key=list(maps).index)]
        if not u.replicate:  # example figures of the first replicate, where the unit's maps are in memory
            tasks.append(TaskSpec("examples", u, deps=tuple(t.name for t in explains.values())))
    return tasks


# --------------------------------------------------------------------------- per-process context


class StageRecorder:
    """Timings, cache hits and where each stage ran (host, pid), for run.json."""

    def __init__(self, say: Callable[[str], None] | None = None):
        self.stages: dict[str, dict[str, Any]] = {}
        self.say = say

    @contextmanager
    def stage(self, key: str) -> Iterator[dict[str, Any]]:
        info: dict[str, Any] = {"cache_hit": False}
        start = time.perf_counter()
        try:
            yield info
        finally:
            info["seconds"] = round(time.perf_counter() - start, 3)
            info["host"], info["pid"] = socket.gethostname(), os.getpid()
            self.stages[key] = info
            if self.say is not None:
                self.say(f"[xaiarena] {key}: {info['seconds']:.1f}s" + (" (cached)" if info.get("cache_hit") else ""))


class UnitContext:
    """What the tasks of one unit share within one process, materialised on first use."""

    def __init__(self, unit: Unit, env: Env):
        self.unit, self.env = unit, env
        self.cfg = unit.experiment()
        run_dir = Path(env.run_dir)
        device = resolve_device(self.cfg.device)
        amp = bool(self.cfg.amp) and device.type == "cuda"
        bs = self.cfg.evaluation.batch_size if isinstance(self.cfg.evaluation.batch_size, int) else 64
        self.s = stages.Settings(self.cfg, Cache(run_dir / "cache", run_dir), device, amp, bs, env.show_progress,
                                 data_seed=unit.data_seed, replicate_seeds=unit.replicate_seeds)
        self.dcfg = self.cfg.data[unit.data_index]
        self.specs: dict[str, ComponentSpec] = {s.key: s for s in self.cfg.explainers}
        self.home = _home_views(self.cfg)
        self.members = view_members(self.cfg)
        self.maps = scored_maps(self.cfg)
        self._prep: stages.Prepared | None = None
        self._built: dict[str, Any] = {}
        self._views: dict[str, stages.View] = {}
        self._attrs: dict[tuple[str, str], stages.Attribution] = {}

    def prep(self, rec: StageRecorder) -> stages.Prepared:
        if self._prep is None:
            self._prep = stages.prepare(self.s, self.dcfg, rec.stage, stage_prefix=self.unit.id)
            if self.cfg.evaluation.batch_size == "auto":
                from .runner import auto_batch_size

                self.s.batch_size = auto_batch_size(self._prep.model, self._prep.inputs, self.s.device)
            self._prep.info["evaluation_batch_size"] = self.s.batch_size
        return self._prep

    def explainer(self, label: str):
        if label not in self._built:
            spec = self.specs[label]
            self._built[label] = EXPLAINERS.create(spec.name, **spec.params)
        return self._built[label]

    def view(self, name: str, rec: StageRecorder) -> stages.View:
        if name not in self._views:
            prep = self.prep(rec)
            if name == F_B:
                self._views[name] = stages.view_of(self.s, prep, F_B, prep.model, prep.model_key)
            else:
                label = next(k for k, v in self.home.items() if v == name)
                with rec.stage(TaskSpec("fit", self.unit, name, label).name):
                    self._views[name] = stages.fit_learned(self.s, prep, self.specs[label], self.explainer(label),
                                                           name)
        return self._views[name]

    def attribution(self, view: str, label: str, rec: StageRecorder) -> stages.Attribution:
        key = (view, label)
        if key not in self._attrs:
            v = self.view(view, rec)
            with rec.stage(TaskSpec("explain", self.unit, view, label).name) as info:
                self._attrs[key] = stages.explain(self.s, self.prep(rec), v, self.specs[label],
                                                  self.explainer(label), info)
        return self._attrs[key]


_CONTEXTS: dict[tuple[str, str], UnitContext] = {}


def context_for(unit: Unit, env: Env) -> UnitContext:
    """The process' context of ``unit`` (one per run directory and unit; kept for the process' life,
    so a Ray worker that runs several tasks of one unit loads its data and model once)."""
    from .cache import stable_hash

    key = (env.run_dir, unit.id + stable_hash(unit.config))
    if key not in _CONTEXTS:
        if len(_CONTEXTS) > 8:  # a long-lived worker: forget the oldest units
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = UnitContext(unit, env)
    return _CONTEXTS[key]


def forget_contexts(run_dir: str) -> None:
    for k in [k for k in _CONTEXTS if k[0] == run_dir]:
        del _CONTEXTS[k]


# --------------------------------------------------------------------------- executing one task


@dataclass
class TaskResult:
    name: str
    kind: str
    unit: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # train: the unit's run.json entry; fit: its report
    per_sample: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None


def run_task(task: TaskSpec, env: Env, say: Callable[[str], None] | None = None) -> TaskResult:
    """Execute one task (anywhere the run's cache folder is visible); see the module docstring."""
    with unit_threads(task.unit, env):
        return _run_task(task, env, say)


def _run_task(task: TaskSpec, env: Env, say: Callable[[str], None] | None) -> TaskResult:
    ctx = context_for(task.unit, env)
    rec = StageRecorder(say)
    out = TaskResult(task.name, task.kind, task.unit.id)
    if task.kind == "train":
        out.info = dict(ctx.prep(rec).info)
    elif task.kind == "fit":
        ctx.view(task.view, rec)
        out.info = ctx.explainer(task.component).report()
    elif task.kind == "explain":
        attr = ctx.attribution(task.view, task.component, rec)
        out.info = {"key": attr.key.hash, "file": ctx.s.cache.path(
            "attributions", ctx.dcfg.key, f"{task.component}-{attr.key.hash}.pt").relative_to(env.run_dir).as_posix()}
    elif task.kind == "score":
        spec = next(m for m in ctx.cfg.metrics if m.key == task.component)
        metric = METRICS.create(spec.name, **spec.params)
        sources = ctx.maps[task.view]
        attrs = {k: ctx.attribution(*sources[k], rec) for k in task.explainers}
        view = ctx.view(task.view, rec)
        with rec.stage(task.name) as info:
            out.per_sample, out.curves = stages.score(ctx.s, ctx.prep(rec), view, spec, metric, attrs, info)
    elif task.kind == "meta":  # metric meta-evaluation (docs/meta.md): scores of perturbed problems
        from .meta_stage import perturbed_scores

        jobs = []
        for spec in ctx.cfg.metrics:
            metric = METRICS.create(spec.name, **spec.params)
            keys = scored_labels(spec, metric, ctx.members[task.view])
            if keys and metric.ranked_outputs():  # descriptive outputs never rank explainers
                jobs.append((spec, metric, keys))
        labels = list(dict.fromkeys(k for *_, keys in jobs for k in keys))
        attrs = {k: ctx.attribution(task.view, k, rec) for k in labels}
        view = ctx.view(task.view, rec)
        with rec.stage(task.name) as info:
            built = {k: (ctx.specs[k], ctx.explainer(k)) for k in labels}
            out.per_sample = perturbed_scores(ctx.s, ctx.prep(rec), view, attrs, built, jobs, info)
    elif task.kind == "examples":
        with rec.stage(task.name):
            write_examples(ctx, env, rec)
    else:  # pragma: no cover - plan_tasks makes only these
        raise ValueError(f"unknown task kind '{task.kind}'")
    out.stages = rec.stages
    return out


def write_examples(ctx: UnitContext, env: Env, rec: StageRecorder) -> None:
    """A few samples of the unit (``results/examples/<dataset>[@<grid>]``) with every explainer's maps:
    a map of the explainer's own view under its name, of another view as ``<explainer>@<view>``."""
    unit = ctx.unit
    prep, fb = ctx.prep(rec), ctx.view(stages.F_B, rec)
    maps = {}
    for vname, labels in ctx.members.items():
        for k in labels:
            maps[k if vname == ctx.home[k] else f"{k}@{vname}"] = ctx.attribution(vname, k, rec).maps
    name = unit.dataset + (f"@{unit.grid}" if unit.grid else "")
    run_dir = Path(env.run_dir)
    path = inside(run_dir, run_dir / "results" / "examples" / name)
    study = ctx.cfg.study
    more = {"n_examples": N_PER_IMAGE_EXAMPLES} if study is not None and "per_image" in study.analyses else {}
    prep.mod.write_examples(path, prep.task, prep.index, fb.preds, stages.correct_predictions(prep, fb), maps,
                            prep.inputs, prep.model, **more)


def own_stages(task: TaskSpec, result: TaskResult) -> dict[str, dict[str, Any]]:
    """The stages a task reports as its own: data and train for a train task, else the task's stage
    (a task that first reloads its unit's data and model from the cache does not report that again)."""
    if task.kind == "train":
        return result.stages
    return {k: v for k, v in result.stages.items() if k == task.name}


__all__ = ["Env", "TaskResult", "TaskSpec", "Unit", "UnitContext", "context_for", "plan_tasks", "plan_units",
           "own_stages", "progress", "run_task", "scored_labels", "scored_maps", "thread_count",
           "unit_threads", "view_members", "write_examples"]
