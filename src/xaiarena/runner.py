"""The experiment runner: config -> data -> model -> attributions -> metrics -> stats -> report.

Each stage reads only what the stage before produced, and every expensive
artefact is cached under ``RUN_DIR/cache`` keyed by a content hash of what it
depends on, written atomically. An interrupted run resumes where it stopped; a
changed metric does not retrain a model or recompute attributions.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import stages, stats
from .cache import Cache, stable_hash
from .config import ExperimentConfig, load_config
from .errors import RunError
from .executors import make_executor
from .graph import (
    Env,
    StageRecorder,
    TaskSpec,
    Unit,
    context_for,
    forget_contexts,
    own_stages,
    plan_tasks,
    plan_units,
    unit_threads,
    view_members,
)
from .modalities import check_modalities
from .registry import EXPLAINERS, METRICS
from .utils import (
    atomic_write_many,
    atomic_write_text,
    check_inside,
    csv_bytes,
    dumps_json,
    hardware,
    make_dir,
    parquet_bytes,
    progress,
    resolve_device,
    seed_everything,
    versions,
    write_error,
    writes_inside,
)
from .views import source_of

log = logging.getLogger(__name__)

PER_SAMPLE_COLUMNS = stages.PER_SAMPLE_COLUMNS
CURVE_COLUMNS = stages.CURVE_COLUMNS


def _say(msg: str) -> None:
    progress.write(msg)


LOCK_FILE = ".xaiarena.lock"
#: first line of the config.yaml a run writes: marks the file as xaiarena's (see check_config_file)
CONFIG_HEADER = "# xaiarena: the resolved configuration of this run (rewritten by every run here)"


def config_yaml(cfg: ExperimentConfig) -> str:
    """The ``config.yaml`` of a run directory: the header line, then the resolved configuration."""
    return f"{CONFIG_HEADER}\n{cfg.to_yaml()}"


def check_config_file(run_dir: Path, source: str | Path | None) -> None:
    """Refuse a run directory whose ``config.yaml`` is the user's own file, which the run would
    replace by the resolved configuration: the config file given (``xaiarena run config.yaml --out
    .``), or any ``config.yaml`` that xaiarena did not write (no header line, no ``run.json`` beside
    it). Checked before any work."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            ours = f.readline().rstrip("\n") == CONFIG_HEADER
    except OSError:
        return  # unreadable: the write will say why
    if ours:
        return
    same = False
    if source is not None:
        try:
            same = os.path.samefile(source, path)
        except OSError:
            same = False
    if same or not (run_dir / "run.json").exists():
        what = ("is the config file you gave" if same else
                "was not written by xaiarena (no run.json beside it)")
        raise RunError(f"'{path}' {what}; a run writes its resolved configuration to "
                       "RUN_DIR/config.yaml and would replace it (comments and all). Give --out "
                       "another folder (default: runs/<name>), or move the file")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path):
    """Hold ``RUN_DIR/.xaiarena.lock`` for the duration: one run per directory.

    A second run exits with a :class:`RunError` naming the holder (pid, host, start time,
    command). A lock left by a killed run (same host, process gone) is taken over, with a
    log line; a lock from another host is never taken over (delete it if that run is gone).
    """
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}
    check_inside(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if not holder and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # the holder is writing its record
                continue
            if not holder or (host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)):
                log.warning("taking over the lock of a run that is gone (%s)", holder or "empty lock file")
                path.unlink(missing_ok=True)
                continue
            raise RunError(f"'{run_dir}' is in use by another run (pid {pid} on {host}, started {holder.get('started')}: "
                           f"{holder.get('command', '?')}). Wait for it to finish or choose another --out; if that run "
                           f"is gone, delete '{path}'.") from None
        except OSError as exc:  # a read-only or foreign folder, a full disk
            raise write_error(exc, path) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise write_error(exc, path) from None
        break
    else:
        raise RunError(f"cannot take the lock '{path}' of the run directory")
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


class Runner:
    """Runs one :class:`ExperimentConfig` into a run directory: plans the units and the stage graph
    (:mod:`xaiarena.graph`), executes it (:mod:`xaiarena.executors`: ``local`` or ``ray``), then
    writes results, statistics, run.json and the report in this process."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path | None = None, show_progress: bool = True,
                 executor: str | None = None, address: str | None = None,
                 source: str | Path | None = None):
        self.cfg = cfg
        self.source = source  # the config file cfg was read from: never overwritten
        self.run_dir = Path(out or cfg.output or Path("runs") / cfg.name)
        self.device = resolve_device(cfg.device)
        if cfg.amp and self.device.type != "cuda":
            log.info("amp: true is ignored on %s (mixed precision is used on CUDA only)", self.device)
        self.show_progress = show_progress
        self.executor = make_executor(cfg, executor, address, show_progress)
        self.log = StageRecorder(_say)
        self.units_info: dict[str, Any] = {}
        self.metrics_meta: dict[str, Any] = {}
        self.with_grid = bool(cfg.grid)
        self.with_replicates = len(cfg.replicate_seeds()) > 1

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        cfg = self.cfg
        check_modalities(cfg)  # a text dataset with an image-only explainer etc. fails before any work
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"the run directory '{self.run_dir}' is a file; give --out a folder")
        check_config_file(self.run_dir, self.source)
        make_dir(self.run_dir)
        with writes_inside(self.run_dir):  # every file below: inside the run dir (links followed)
            return self._run()

    def _run(self) -> Path:
        cfg = self.cfg
        env = Env(str(self.run_dir.resolve()), self.show_progress, torch.get_num_threads())
        units = plan_units(cfg)
        tasks = plan_tasks(units)
        with run_lock(self.run_dir):
            seed_everything(cfg.seed)
            started = time.perf_counter()
            scored: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
            perturbed: dict[str, pd.DataFrame] = {}  # evaluation.meta: scores of perturbed problems

            def on_result(task: TaskSpec, res) -> None:
                self.log.stages.update(own_stages(task, res))
                self._record(task, res)
                if res.per_sample is not None:
                    cols = task.unit.columns(self.with_grid, self.with_replicates)
                    if task.kind == "meta":
                        perturbed[task.name] = res.per_sample.assign(**cols)
                    else:
                        scored[task.name] = (res.per_sample.assign(**cols),
                                             res.curves.assign(**cols))

            try:
                self.executor.run(tasks, env, on_result)
            finally:
                forget_contexts(env.run_dir)
            for spec in cfg.metrics:
                self._metric_meta(spec)
            # results in graph order, whatever order the executor finished the tasks in
            frames = [scored[t.name][0] for t in tasks if t.name in scored]
            curves = [scored[t.name][1] for t in tasks if t.name in scored]
            self.log.stages = {**{t.name: self.log.stages[t.name] for t in tasks if t.name in self.log.stages},
                               **self.log.stages}
            ps_cols, cv_cols = self._result_columns()
            per_sample_df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ps_cols)
            curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cv_cols)
            with self.log.stage("stats"):
                files = self._results(self.run_dir / "results", per_sample_df[ps_cols],
                                      curves_df[cv_cols])
                files.update(self._meta_results(self.run_dir / "results", per_sample_df[ps_cols],
                                                [perturbed[t.name] for t in tasks if t.name in perturbed]))
            # the config is written with the results it describes, as one write (a failed run, a
            # full disk half-way, leaves all of them as they were)
            run_json = self._run_json(time.perf_counter() - started, units)
            files[self.run_dir / "config.yaml"] = config_yaml(cfg).encode("utf-8")
            files[self.run_dir / "run.json"] = run_json.encode("utf-8")
            atomic_write_many(files)
            with self.log.stage("report") as info:
                info["written"] = self._build_report()
            self._write_run_json(time.perf_counter() - started, units)
        return self.run_dir

    def _result_columns(self) -> tuple[list[str], list[str]]:
        extra = (["grid"] if self.with_grid else []) + (["replicate", "seed"] if self.with_replicates else [])
        return ([*PER_SAMPLE_COLUMNS[:1], *extra, *PER_SAMPLE_COLUMNS[1:]],
                [*CURVE_COLUMNS[:1], *extra, *CURVE_COLUMNS[1:]])

    def _record(self, task: TaskSpec, res) -> None:
        """What a finished task adds to run.json."""
        unit = self.units_info.setdefault(task.unit.id, {})
        if task.kind == "train":
            ctx_views = view_members(task.unit.experiment())
            unit.update({**res.info, "dataset": task.unit.dataset, "grid": task.unit.grid,
                         "replicate": task.unit.replicate, "seed": task.unit.seed,
                         "views": {v: ("the model being explained" if v == stages.F_B else
                                       f"the model learned by {labels[0]}") for v, labels in ctx_views.items()}})
            unit.setdefault("explainers", {})
        elif task.kind == "fit" and res.info:
            unit.setdefault("learned", {})[task.component] = res.info
        elif task.kind == "explain":
            st = res.stages.get(task.name, {})
            spec = next(sp for sp in self.cfg.explainers if sp.key == task.component)
            entry = unit.setdefault("explainers", {}).setdefault(task.component, {
                "explains": task.home, "family": EXPLAINERS.get(spec.name).family, "name": spec.name,
                "params": spec.params, **({"postprocess": list(spec.postprocess)} if spec.postprocess else {}),
                **({"reexplain_postprocess": list(spec.reexplain_postprocess)}
                   if getattr(spec, "reexplain_postprocess", None) is not None else {}),
                "views": {}})
            entry["views"][task.view] = {"seconds": st.get("seconds"), "cache_hit": st.get("cache_hit", False),
                                         **res.info}
            if task.view == entry["explains"]:
                entry.update(seconds=st.get("seconds"), cache_hit=st.get("cache_hit", False))

    def _metric_meta(self, spec) -> None:
        self.metrics_meta.update(stages.metric_meta(spec, METRICS.create(spec.name, **spec.params)))

    # ------------------------------------------------------------------ helpers
    def _results(self, results: Path, per_sample: pd.DataFrame,
                 curves: pd.DataFrame) -> dict[Path, bytes]:
        """The result files' contents (written by the caller, with config.yaml and run.json)."""
        files = {results / "per_sample.parquet": parquet_bytes(per_sample),
                 results / "curves.parquet": parquet_bytes(curves)}
        hib = {k: v["higher_is_better"] for k, v in self.metrics_meta.items()}
        models = {u["dataset"]: u.get("model", "") for u in self.units_info.values()}
        tables = stats.result_tables(per_sample, hib, models=models, seed=self.cfg.seed,
                                     replicates=self.with_replicates)
        summary = tables["summary"]
        if self.with_grid:  # the model may vary across grid points
            model_of = {(u["dataset"], u["grid"]): u.get("model", "") for u in self.units_info.values()}
            summary["model"] = [model_of.get((d, g), m) for d, g, m in
                                zip(summary["dataset"], summary["grid"], summary["model"], strict=True)]
        for name, frame in tables.items():
            files[results / f"{name}.csv"] = csv_bytes(frame)
        return files

    def _meta_results(self, results: Path, per_sample: pd.DataFrame,
                      perturbed: list[pd.DataFrame]) -> dict[Path, bytes]:
        """``evaluation.meta``: ``meta.csv``, ``meta_agreement.csv`` and the perturbed problems'
        scores ``meta_per_sample.parquet`` (:mod:`xaiarena.meta`), as files to write with the
        other results; without it, those of an earlier run are removed."""
        names = ("meta.csv", "meta_agreement.csv", "meta_per_sample.parquet")
        files = {name: results / name for name in names}
        if not self.cfg.evaluation.meta:
            for path in files.values():
                path.unlink(missing_ok=True)
            return {}
        from .meta import PERTURBED_COLUMNS, meta_table

        extra = (["grid"] if self.with_grid else []) + \
            (["replicate", "seed"] if self.with_replicates else [])
        cols = [PERTURBED_COLUMNS[0], *extra, *PERTURBED_COLUMNS[1:]]
        frame = (pd.concat(perturbed, ignore_index=True)[cols] if perturbed
                 else pd.DataFrame(columns=cols))
        table, pairs = meta_table(per_sample, self.metrics_meta, frame)
        return {files["meta_per_sample.parquet"]: parquet_bytes(frame),
                files["meta_agreement.csv"]: csv_bytes(pairs), files["meta.csv"]: csv_bytes(table)}

    def _build_report(self) -> bool:
        try:
            from .report import build_report
        except ImportError:  # pragma: no cover - report package not installed
            return False
        build_report(self.run_dir)
        return True

    def _write_run_json(self, seconds: float, units: list[Unit]) -> None:
        atomic_write_text(self.run_dir / "run.json", self._run_json(seconds, units))

    def _run_json(self, seconds: float, units: list[Unit]) -> str:
        cfg = self.cfg
        # one entry per (dataset, grid point) for the report (its first replicate); every unit under "units"
        datasets = {}
        for u in units:
            key = u.dataset + (f"@{u.grid}" if u.grid else "")
            if key not in datasets and u.id in self.units_info:
                datasets[key] = self.units_info[u.id]
        data = {
            "name": cfg.name,
            "seed": cfg.seed,
            "device": str(self.device),
            "executor": self.executor.name,
            "hardware": hardware(self.device),
            "versions": versions(),
            "config_hash": stable_hash(cfg.to_dict()),
            "total_seconds": round(seconds, 3),
            "stages": self.log.stages,
            "datasets": datasets,
            "units": self.units_info if (self.with_grid or self.with_replicates) else {},
            "replicate_seeds": cfg.replicate_seeds(),
            "grid": cfg.grid or {},
            "metrics_meta": self.metrics_meta,
        }
        return dumps_json(data)


def auto_batch_size(model: torch.nn.Module, inputs: Any, device: torch.device, *, fraction: float = 0.5,
                    overhead: int = 16, lo: int = 8, hi: int = 1024, default: int = 64) -> int:
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


# ---------------------------------------------------------------------- public API


class RunResult:
    """A finished run: tables as DataFrames, attributions, and the report path."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "run.json").exists():
            raise FileNotFoundError(f"'{self.run_dir}' is not a finished xaiarena run (no run.json)")
        self.info = json.loads((self.run_dir / "run.json").read_text())

    @property
    def summary(self) -> pd.DataFrame:
        return pd.read_csv(self.run_dir / "results" / "summary.csv")

    @property
    def per_sample(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / "results" / "per_sample.parquet")

    @property
    def tests(self) -> pd.DataFrame:
        return pd.read_csv(self.run_dir / "results" / "tests.csv")

    @property
    def config(self) -> ExperimentConfig:
        return load_config(self.run_dir / "config.yaml")

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    def attributions(self, explainer: str, dataset: str | None = None,
                     explained_model: str | None = None) -> torch.Tensor:
        """The maps of ``explainer`` for the evaluation samples (in sample order): ``(N, H, W)`` images,
        ``(N, L)`` texts. ``explained_model`` picks the view (``f_b``, ``f_s``); by default the model the
        explainer itself explains; ``diet@f_s`` (DiET's maps scored on f_b) gives DiET's maps of f_s.
        Reads the file whose key run.json records (never guesses by date)."""
        if source_of(explainer):  # the rows of a learned explainer's maps on f_b hold its own maps
            explainer, explained_model = source_of(explainer), None
        datasets = list(self.info["datasets"])
        dataset = dataset or datasets[0]
        if dataset not in datasets:
            raise KeyError(f"unknown dataset '{dataset}'; this run has {', '.join(datasets)}")
        known = self.info["datasets"][dataset]["explainers"]
        if explainer not in known:
            raise KeyError(f"unknown explainer '{explainer}'; this run has {', '.join(known)}")
        entry = known[explainer]
        view = explained_model or entry.get("explains", "f_b")
        views = entry.get("views") or {}
        if view not in views:
            raise KeyError(f"explainer '{explainer}' has no maps of '{view}'; it explains {', '.join(views) or 'none'}")
        path = self.run_dir / views[view]["file"]
        maps = Cache(self.run_dir / "cache", self.run_dir).load_torch(path)
        if maps is None:
            raise FileNotFoundError(f"the attributions of '{explainer}' ({view}) recorded in run.json are missing or "
                                    f"corrupt: {path}; run the config again to recompute them")
        return maps

    def samples(self, dataset: str | None = None) -> RunSamples:
        """The run's evaluation samples with its model ``f_b``, reloaded from the run's cache (the dataset
        is rebuilt, the trained model read from its checkpoint): what :func:`xaiarena.evaluate` and
        :func:`xaiarena.explain` take to score or compute maps of the same samples as the run
        (``evaluate(s.model, s.inputs, s.targets, maps, metrics, masks=s.masks, labels=s.labels,
        sample_ids=s.sample_ids, seed=s.seed, dataset=s.dataset)``). With a grid or replicates: the
        first grid point's first replicate."""
        return evaluation_samples(self.config, self.run_dir, dataset)

    def __repr__(self) -> str:
        return f"RunResult('{self.run_dir}')"


@dataclass
class RunSamples:
    """A run's evaluation samples and the model its ``f_b`` maps explain (:meth:`RunResult.samples`)."""

    dataset: str
    model: torch.nn.Module
    inputs: Any  # (N, C, H, W) float pixels, or a TextBatch
    targets: torch.Tensor  # the classes the maps explain (evaluation.target)
    labels: torch.Tensor
    masks: torch.Tensor | None
    sample_ids: torch.Tensor
    seed: int
    batch_size: int


def evaluation_samples(cfg: ExperimentConfig, run_dir: str | Path, dataset: str | None = None) -> RunSamples:
    """The evaluation samples of ``cfg``'s dataset entry ``dataset`` (default: the first) and its model
    ``f_b``, as a run in ``run_dir`` has them: data, train (or the cached checkpoint) and select run
    through the same stages and cache (:meth:`RunResult.samples`; ``xaiarena score``). With a grid or
    replicates: the first grid point's first replicate."""
    datasets = [d.key for d in cfg.data]
    dataset = dataset or datasets[0]
    if dataset not in datasets:
        raise KeyError(f"unknown dataset '{dataset}'; this run has {', '.join(datasets)}")
    unit = next(u for u in plan_units(cfg) if u.dataset == dataset)
    env = Env(str(Path(run_dir).resolve()), show_progress=False)
    try:
        ctx = context_for(unit, env)
        rec = StageRecorder()
        # a model not cached yet trains as in a run, writing inside the run directory only
        with unit_threads(unit, env), writes_inside(run_dir):
            prep, view = ctx.prep(rec), ctx.view(stages.F_B, rec)
        return RunSamples(dataset=dataset, model=prep.model, inputs=prep.inputs, targets=view.targets,
                          labels=prep.labels, masks=prep.masks, sample_ids=prep.sample_ids, seed=unit.seed,
                          batch_size=ctx.s.batch_size)
    finally:
        forget_contexts(env.run_dir)


def run(config: str | Path | dict | ExperimentConfig | None = None, *, out: str | Path | None = None,
        overrides: list[str] | dict[str, Any] | None = None, show_progress: bool = True,
        executor: str | None = None, address: str | None = None, **kw_overrides: Any) -> RunResult:
    """Run an experiment (the built-in benchmark when ``config`` is None) and return its results.

    Keyword overrides use double underscores for nesting: ``run(evaluation__n_samples=32)``.
    """
    ov: dict[str, Any] = {}
    if isinstance(overrides, dict):
        ov.update(overrides)
    elif overrides:
        from .config import parse_value

        for item in overrides:
            k, _, v = item.partition("=")
            ov[k.strip()] = parse_value(v)
    ov.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    cfg = load_config(config, ov or None)
    source = config if isinstance(config, (str, Path)) else None
    run_dir = Runner(cfg, out=out, show_progress=show_progress, executor=executor, address=address,
                     source=source).run()
    return RunResult(run_dir)


def load(run_dir: str | Path) -> RunResult:
    """Reopen a finished run directory."""
    return RunResult(run_dir)
