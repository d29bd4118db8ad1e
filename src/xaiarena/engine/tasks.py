"""The stage graph of a run: the kinds of task, the tasks of each unit, and running one task.

Each unit's work is a small graph of **tasks** (:func:`plan_tasks`)::

    train ──> fit (learned explainer) ──> explain (explainer x view) ──> score (metric x view)
      └───────────────────────────────────> explain (explainer x f_b) ──┘
                                                   ├──> meta (view; evaluation.meta)
                                                   └──> examples (first replicate)

A task is described by a :class:`TaskSpec` (plain data: unit, kind, view, component) and
executed by :func:`run_task`, in this process (the local executor) or in a Ray worker
(:mod:`xaiarena.engine.executors`). Everything a task needs is either in its spec or in the
run's cache (content-addressed, :mod:`xaiarena.engine.cache`), so a task can run anywhere that
sees the cache folder, and running it twice gives the same result. Within one process, a
:class:`~xaiarena.engine.context.UnitContext` keeps what tasks of the same unit share.

:data:`KINDS` is the one table of task kinds: each kind's stage name in run.json, what it runs
(in the worker) and what its result adds to the run's record (in the driver,
:func:`record_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..modalities import N_PER_IMAGE_EXAMPLES
from ..registry import EXPLAINERS, METRICS
from ..views import F_B
from . import stages
from .batching import Attribution, View, whole_set
from .cache import inside
from .context import Env, StageRecorder, UnitContext, context_for, unit_threads
from .meta_stage import perturbed_scores
from .plan import Unit, home_views, scored_labels, scored_maps, view_members
from .record import RunRecord

# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskSpec:
    """One node of the stage graph; ``kind`` is a key of :data:`KINDS`."""

    kind: str
    unit: Unit
    view: str = ""
    component: str = ""  # explainer label (fit, explain) or metric label (score)
    deps: tuple[str, ...] = ()  # names of the tasks that must finish first
    explainers: tuple[str, ...] = ()  # score: the explainer labels whose maps it scores
    shard: int = -1  # explain_shard, score_shard: the shard (:func:`shard_tasks`)

    @property
    def name(self) -> str:
        """The stage name in run.json: ``<unit>/<stage>[/<component>]``, with ``@<view>`` when the
        view is not the task's :attr:`home` (``<unit>/train``, ``<unit>/fit/<label>``,
        ``<unit>/explain/<label>[@<view>]``, ``<unit>/metric/<label>[@<view>]``,
        ``<unit>/meta[@<view>]``, ``<unit>/examples``)."""
        base = f"{self.unit.id}/{KINDS[self.kind].stage}"
        name = f"{base}/{self.component}" if self.component else base
        name = name if self.view in ("", self.home) else f"{name}@{self.view}"
        return name if self.shard < 0 else f"{name}#shard{self.shard}"

    @property
    def whole(self) -> str:
        """The name of the task a shard task is part of (its own name for other tasks)."""
        return self.name.split("#shard", 1)[0]

    @property
    def home(self) -> str:
        """The view the task is reported under without a suffix: its explainer's own view (fit,
        explain), else f_b."""
        if not KINDS[self.kind].of_explainer:
            return F_B
        return home_views(self.unit.experiment()).get(self.component, F_B)


@dataclass
class TaskResult:
    """What a task sends back to the driver (small: timings, run.json entries, score frames)."""

    name: str
    kind: str
    unit: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(
        default_factory=dict
    )  # train: the unit's run.json entry; fit: its report
    per_sample: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None


def plan_tasks(units: list[Unit]) -> list[TaskSpec]:
    """The stage graph of every unit, each task after its dependencies."""
    tasks: list[TaskSpec] = []
    first = {(u.grid, u.data_index): u for u in units if u.replicate == 0}
    for u in units:
        cfg = u.experiment()
        home = home_views(cfg)
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
            tasks += [
                TaskSpec(
                    "meta", u, v, deps=tuple(t.name for (tv, _), t in explains.items() if tv == v)
                )
                for v in sorted(scored_views, key=list(maps).index)
            ]
        if (
            not u.replicate
        ):  # example figures of the first replicate, where the unit's maps are in memory
            tasks.append(TaskSpec("examples", u, deps=tuple(t.name for t in explains.values())))
    return tasks


# ------------------------------------------------------------------ views and maps of a unit


def view(ctx: UnitContext, name: str, rec: StageRecorder) -> View:
    """The view ``name`` of the context's unit: f_b, or a learned explainer's f_s, fitted (or
    loaded) under its fit task's stage name on first use."""
    if name not in ctx.views:
        if name == F_B:  # its targets from the cache where another process computed them
            units = ctx.samples(rec)
            ctx.views[name] = stages.cached_view(
                ctx.s, units, F_B, units.model, units.model_key
            ) or stages.view_of(ctx.s, ctx.prep(rec), F_B, units.model, units.model_key)
        else:  # a learned explainer's model: its fit reads the data
            prep = ctx.prep(rec)
            label = next(k for k, v in ctx.home.items() if v == name)
            with rec.stage(TaskSpec("fit", ctx.unit, name, label).name):
                ctx.views[name] = stages.fit_learned(
                    ctx.s, prep, ctx.specs[label], ctx.explainer(label), name
                )
    return ctx.views[name]


def attribution(
    ctx: UnitContext, view_name: str, label: str, rec: StageRecorder, shard: int = -1
) -> Attribution:
    """One explainer's maps on one view of the context's unit, computed (or loaded) under its
    explain task's stage name on first use; ``shard`` >= 0: only that shard is computed (or
    checked), under its shard task's name."""
    key = (view_name, label, shard)
    if key not in ctx.attributions:
        v = view(ctx, view_name, rec)
        kind = "explain" if shard < 0 else "explain_shard"
        name = TaskSpec(kind, ctx.unit, view_name, label, shard=shard).name
        with rec.stage(name) as info:
            ctx.attributions[key] = stages.explain(
                ctx.s,
                ctx.samples(rec),
                v,
                ctx.specs[label],
                ctx.explainer(label),
                info,
                only=None if shard < 0 else shard,
            )
    return ctx.attributions[key]


# --------------------------------------------------------------------------- what each kind runs


def _run_train(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    out.info = dict(ctx.prep(rec).info)
    view(ctx, F_B, rec)  # its targets in the cache before the explain tasks start


def _run_fit(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    view(ctx, task.view, rec)
    out.info = ctx.explainer(task.component).report()


def _run_explain(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    attr = attribution(ctx, task.view, task.component, rec)
    run_dir = ctx.env.run_dir
    files = [p.relative_to(run_dir).as_posix() for p in getattr(attr.maps, "paths", [])]
    out.info = {"key": attr.key.hash, "files": files}


def _run_explain_shard(
    task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult
) -> None:
    attribution(ctx, task.view, task.component, rec, task.shard)


def _run_score_shard(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    spec = next(m for m in ctx.cfg.metrics if m.key == task.component)
    metric = METRICS.create(spec.name, **spec.params)
    sources = ctx.maps[task.view]
    attrs = {k: attribution(ctx, *sources[k], rec, task.shard) for k in task.explainers}
    v = view(ctx, task.view, rec)
    with rec.stage(task.name) as info:
        stages.score(ctx.s, ctx.samples(rec), v, spec, metric, attrs, info, only=task.shard)


def _run_score(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    spec = next(m for m in ctx.cfg.metrics if m.key == task.component)
    metric = METRICS.create(spec.name, **spec.params)
    sources = ctx.maps[task.view]
    attrs = {k: attribution(ctx, *sources[k], rec) for k in task.explainers}
    v = view(ctx, task.view, rec)
    with rec.stage(task.name) as info:
        out.per_sample, out.curves = stages.score(
            ctx.s, ctx.samples(rec), v, spec, metric, attrs, info
        )


def _run_meta(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    """The metric meta-evaluation (docs/meta.md): scores of perturbed problems of one view."""
    jobs = []
    for spec in ctx.cfg.metrics:
        metric = METRICS.create(spec.name, **spec.params)
        keys = scored_labels(spec, metric, ctx.members[task.view])
        if keys and metric.ranked_outputs():  # descriptive outputs never rank explainers
            jobs.append((spec, metric, keys))
    labels = list(dict.fromkeys(k for *_, keys in jobs for k in keys))
    attrs = {k: attribution(ctx, task.view, k, rec) for k in labels}
    v = view(ctx, task.view, rec)
    with rec.stage(task.name) as info:
        built = {k: (ctx.specs[k], ctx.explainer(k)) for k in labels}
        out.per_sample = perturbed_scores(ctx.s, ctx.prep(rec), v, attrs, built, jobs, info)


def _run_examples(task: TaskSpec, ctx: UnitContext, rec: StageRecorder, out: TaskResult) -> None:
    """A few samples of the unit (``results/examples/<dataset>[@<grid>]``) with every explainer's
    maps: a map of the explainer's own view under its name, of another view as
    ``<explainer>@<view>``."""
    with rec.stage(task.name):
        unit = ctx.unit
        prep, fb = ctx.prep(rec), view(ctx, F_B, rec)
        maps = {}
        for vname, labels in ctx.members.items():
            for k in labels:
                maps[k if vname == ctx.home[k] else f"{k}@{vname}"] = attribution(
                    ctx, vname, k, rec
                ).maps
        name = unit.dataset + (f"@{unit.grid}" if unit.grid else "")
        run_dir = Path(ctx.env.run_dir)
        path = inside(run_dir, run_dir / "results" / "examples" / name)
        study = ctx.cfg.study
        more = (
            {"n_examples": N_PER_IMAGE_EXAMPLES}
            if study is not None and "per_image" in study.analyses
            else {}
        )
        prep.mod.write_examples(
            path,
            prep.task,
            prep.index,
            fb.preds,
            stages.correct_predictions(prep, fb),
            maps,
            prep.inputs,
            prep.model,
            **more,
        )


# --------------------------------------------------------------------------- what each kind records


def _record_train(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    unit = task.unit
    members = view_members(unit.experiment())
    entry = run.unit_entry(unit)
    entry.update(
        {
            **res.info,
            "dataset": unit.dataset,
            "grid": unit.grid,
            "replicate": unit.replicate,
            "seed": unit.seed,
            "views": {
                v: (
                    "the model being explained" if v == F_B else f"the model learned by {labels[0]}"
                )
                for v, labels in members.items()
            },
        }
    )
    entry.setdefault("explainers", {})


def _record_fit(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    entry = run.unit_entry(task.unit)
    if res.info:
        entry.setdefault("learned", {})[task.component] = res.info


def _record_explain(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    st = res.stages.get(task.name, {})
    spec = next(sp for sp in run.cfg.explainers if sp.key == task.component)
    entry = (
        run.unit_entry(task.unit)
        .setdefault("explainers", {})
        .setdefault(
            task.component,
            {
                "explains": task.home,
                "family": EXPLAINERS.get(spec.name).family,
                "name": spec.name,
                "params": spec.params,
                **({"postprocess": list(spec.postprocess)} if spec.postprocess else {}),
                **(
                    {"reexplain_postprocess": list(spec.reexplain_postprocess)}
                    if getattr(spec, "reexplain_postprocess", None) is not None
                    else {}
                ),
                "views": {},
            },
        )
    )
    entry["views"][task.view] = {
        "seconds": st.get("seconds"),
        "cache_hit": st.get("cache_hit", False),
        **res.info,
    }
    if task.view == entry["explains"]:
        entry.update(seconds=st.get("seconds"), cache_hit=st.get("cache_hit", False))


def _record_score(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    run.unit_entry(task.unit)
    cols = run.unit_columns(task.unit)
    run.scored[task.name] = (res.per_sample.assign(**cols), res.curves.assign(**cols))


def _record_meta(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    run.unit_entry(task.unit)
    run.perturbed[task.name] = res.per_sample.assign(**run.unit_columns(task.unit))


def _record_nothing(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    run.unit_entry(task.unit)


def _record_shard(run: RunRecord, task: TaskSpec, res: TaskResult) -> None:
    """A shard task: its stage, kept for the task it is part of (:func:`record_task`)."""
    run.unit_entry(task.unit)
    run.shard_stages.setdefault(task.whole, []).append(res.stages.get(task.name, {}))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Kind:
    """One kind of task: its stage name in run.json, what it runs and what it records."""

    #: the word of its stage names: ``<unit>/<stage>[/<component>][@<view>]``
    stage: str
    #: runs in the worker: ``run(task, ctx, rec, out)`` fills ``out``
    run: Callable[[TaskSpec, UnitContext, StageRecorder, TaskResult], None]
    #: runs in the driver: ``record(run, task, result)`` adds the result to the run's record
    record: Callable[[RunRecord, TaskSpec, TaskResult], None]
    #: its component is an explainer (reported under that explainer's own view)
    of_explainer: bool = False
    #: it reports every stage it ran (train: data, train, select); the others report their own
    #: stage only (not the reload of their unit's data and model from the cache)
    reports_all_stages: bool = False
    #: a shard task: its stage is added to that of the task it is part of, not to run.json
    of_shard: bool = False


KINDS: dict[str, Kind] = {
    "train": Kind("train", _run_train, _record_train, reports_all_stages=True),
    "fit": Kind("fit", _run_fit, _record_fit, of_explainer=True),
    "explain": Kind("explain", _run_explain, _record_explain, of_explainer=True),
    "score": Kind("metric", _run_score, _record_score),
    "meta": Kind("meta", _run_meta, _record_meta),
    "examples": Kind("examples", _run_examples, _record_nothing),
    "explain_shard": Kind(
        "explain", _run_explain_shard, _record_shard, of_explainer=True, of_shard=True
    ),
    "score_shard": Kind("metric", _run_score_shard, _record_shard, of_shard=True),
}


# --------------------------------------------------------------------------- running and recording


def run_task(task: TaskSpec, env: Env, say: Callable[[str], None] | None = None) -> TaskResult:
    """Execute one task (anywhere the run's cache folder is visible), with the unit's thread
    count."""
    with unit_threads(task.unit, env):
        return _run_task(task, env, say)


def _run_task(task: TaskSpec, env: Env, say: Callable[[str], None] | None) -> TaskResult:
    ctx = context_for(task.unit, env)
    rec = StageRecorder(say)
    out = TaskResult(task.name, task.kind, task.unit.id)
    KINDS[task.kind].run(task, ctx, rec, out)
    out.stages = rec.stages
    return out


def own_stages(task: TaskSpec, result: TaskResult) -> dict[str, dict[str, Any]]:
    """The stages a task reports as its own (see :attr:`Kind.reports_all_stages`)."""
    if KINDS[task.kind].of_shard:
        return {}
    if KINDS[task.kind].reports_all_stages:
        return result.stages
    return {k: v for k, v in result.stages.items() if k == task.name}


def record_task(run: RunRecord, task: TaskSpec, result: TaskResult) -> None:
    """Add a finished task to the run's record (in the driver): its own stages (with those of
    its shard tasks, :func:`shard_tasks`: their seconds added, their cache hits counted, where
    they ran), then what its kind records."""
    parts = run.shard_stages.pop(task.name, None)
    info = result.stages.get(task.name)
    if parts and info is not None:
        info["seconds"] = round(info["seconds"] + sum(p.get("seconds", 0.0) for p in parts), 3)
        info["shard_tasks"] = len(parts)
        info["shards_cached"] = sum(p.get("shards_cached", 0) for p in parts)
        info["cache_hit"] = all(p.get("cache_hit", False) for p in parts)
        info["shard_workers"] = sorted({f"{p.get('host')}:{p.get('pid')}" for p in parts})
    run.log.stages.update(own_stages(task, result))
    KINDS[task.kind].record(run, task, result)


# --------------------------------------------------------------------------- shard tasks


def planned_shards(unit: Unit) -> int:
    """How many shards a unit's evaluation set has at most (``evaluation.n_samples`` samples;
    fewer where ``only_correct`` or the test split leaves fewer), before its data is loaded."""
    ev = unit.experiment().evaluation
    size = ev.shard_size
    if isinstance(ev.batch_size, int):  # the shards' rounding to whole batches (stages)
        size = -(-size // ev.batch_size) * ev.batch_size
    return max(1, -(-ev.n_samples // size))


def _by_shard(task: TaskSpec) -> bool:
    """Whether a task's shards can be separate tasks: not for an explainer that sees the whole
    set (a ``prepare_set`` of its own, e.g. DiET, or a ``postprocess`` step over the set), nor
    for a metric that normalises over the set."""
    from ..explainers.base import Explainer
    from ..postprocess import over_set

    cfg = task.unit.experiment()
    if task.kind == "explain":
        spec = next(sp for sp in cfg.explainers if sp.key == task.component)
        cls = EXPLAINERS.get(spec.name)
        own = getattr(cls, "prepare_set", Explainer.prepare_set) is not Explainer.prepare_set
        return not own and not any(over_set(st) for st in (spec.postprocess or []))
    if task.kind == "score":
        spec = next(m for m in cfg.metrics if m.key == task.component)
        return not whole_set(METRICS.create(spec.name, **spec.params))
    return False


def shard_tasks(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """The graph with an explain or score task over several shards split into one shard task
    per shard (``explain_shard``, ``score_shard``; ``<task>#shard<k>``) and the task itself,
    which then finds every shard in the cache and puts them together. A score shard task
    waits for the same shard of the maps it scores. What the Ray executor runs: a unit's
    shards are spread over workers; the local executor runs the graph as planned."""
    out: list[TaskSpec] = []
    split: dict[str, list[str]] = {}  # explain task -> its shard tasks' names
    for t in tasks:
        n = planned_shards(t.unit)
        if n < 2 or not _by_shard(t):
            out.append(t)
            continue
        kind = f"{t.kind}_shard"
        parts = []
        for k in range(n):
            deps = tuple(split[d][k] if d in split else d for d in t.deps)
            parts.append(replace(t, kind=kind, shard=k, deps=deps))
        out += parts
        if t.kind == "explain":
            split[t.name] = [p.name for p in parts]
        out.append(replace(t, deps=(*t.deps, *(p.name for p in parts))))
    return out


__all__ = [
    "KINDS",
    "Kind",
    "TaskResult",
    "TaskSpec",
    "attribution",
    "own_stages",
    "plan_tasks",
    "record_task",
    "run_task",
    "shard_tasks",
    "view",
]
