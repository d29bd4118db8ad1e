"""The experiment runner: config -> data -> model -> attributions -> metrics -> stats -> report.

:class:`Runner` plans a config's units and stage graph (:mod:`xaiarena.engine`), executes it
with an executor (``local`` or ``ray``), then writes the results, statistics, run.json and the
report in this process; :func:`run` is its one-call form. Each stage reads only what the stage
before produced, and every expensive artefact is cached under ``RUN_DIR/cache`` keyed by a
content hash of what it depends on, written atomically. An interrupted run resumes where it
stopped; a changed metric does not retrain a model or recompute attributions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import stats
from .config import ExperimentConfig, load_config
from .engine.context import Env, forget_contexts
from .engine.executors import make_executor
from .engine.lock import check_config_file, config_yaml, run_lock
from .engine.plan import Unit, plan_units
from .engine.record import RunRecord
from .engine.tasks import plan_tasks, record_task
from .environment import resolve_device
from .errors import RunError
from .files import (
    atomic_write_many,
    atomic_write_text,
    csv_bytes,
    make_dir,
    parquet_bytes,
    writes_inside,
)
from .meta import meta_table
from .modalities import check_modalities
from .ops.seeding import seed_everything
from .progress import progress
from .results import RunResult

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    progress.write(msg)


class Runner:
    """Runs one :class:`ExperimentConfig` into a run directory: plans the units and the stage graph
    (:mod:`xaiarena.engine.plan`, :mod:`xaiarena.engine.tasks`), executes it
    (:mod:`xaiarena.engine.executors`: ``local`` or ``ray``), then writes results, statistics,
    run.json (:class:`~xaiarena.engine.record.RunRecord`) and the report in this process."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: str | Path | None = None,
        show_progress: bool = True,
        executor: str | None = None,
        address: str | None = None,
        source: str | Path | None = None,
    ):
        self.cfg = cfg
        self.source = source  # the config file cfg was read from: never overwritten
        self.run_dir = Path(out or cfg.output or Path("runs") / cfg.name)
        self.device = resolve_device(cfg.device)
        if cfg.amp and self.device.type != "cuda":
            log.info(
                "amp: true is ignored on %s (mixed precision is used on CUDA only)", self.device
            )
        self.show_progress = show_progress
        self.executor = make_executor(cfg, executor, address, show_progress)
        self.record = RunRecord(cfg, _say)

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        cfg = self.cfg
        check_modalities(
            cfg
        )  # a text dataset with an image-only explainer etc. fails before any work
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"the run directory '{self.run_dir}' is a file; give --out a folder")
        check_config_file(self.run_dir, self.source)
        make_dir(self.run_dir)
        with writes_inside(self.run_dir):  # every file below: inside the run dir (links followed)
            return self._run()

    def _run(self) -> Path:
        cfg, record = self.cfg, self.record
        env = Env(str(self.run_dir.resolve()), self.show_progress, torch.get_num_threads())
        units = plan_units(cfg)
        tasks = plan_tasks(units)
        with run_lock(self.run_dir):
            seed_everything(cfg.seed)
            started = time.perf_counter()
            try:
                self.executor.run(tasks, env, lambda task, res: record_task(record, task, res))
            finally:
                forget_contexts(env.run_dir)
            record.add_metrics_meta()
            # results in graph order, whatever order the executor finished the tasks in
            per_sample, curves, perturbed = record.result_frames([t.name for t in tasks])
            results = self.run_dir / "results"
            with record.log.stage("stats"):
                files = self._results(results, per_sample, curves)
                files.update(self._meta_results(results, per_sample, perturbed))
            # the config is written with the results it describes, as one write (a failed run, a
            # full disk half-way, leaves all of them as they were)
            files[self.run_dir / "config.yaml"] = config_yaml(cfg).encode("utf-8")
            files[self.run_dir / "run.json"] = self._run_json(
                time.perf_counter() - started, units
            ).encode("utf-8")
            atomic_write_many(files)
            with record.log.stage("report") as info:
                info["written"] = self._build_report()
            atomic_write_text(
                self.run_dir / "run.json", self._run_json(time.perf_counter() - started, units)
            )
        return self.run_dir

    def _run_json(self, seconds: float, units: list[Unit]) -> str:
        return self.record.run_json(seconds, units, self.device, self.executor.name)

    # ------------------------------------------------------------------ result files
    def _results(
        self, results: Path, per_sample: pd.DataFrame, curves: pd.DataFrame
    ) -> dict[Path, bytes]:
        """The result files' contents (written by the caller, with config.yaml and run.json)."""
        files = {
            results / "per_sample.parquet": parquet_bytes(per_sample),
            results / "curves.parquet": parquet_bytes(curves),
        }
        record = self.record
        hib = {k: v["higher_is_better"] for k, v in record.metrics_meta.items()}
        tables = stats.result_tables(
            per_sample,
            hib,
            models=record.models(),
            seed=self.cfg.seed,
            replicates=record.with_replicates,
        )
        summary = tables["summary"]
        if record.with_grid:  # the model may vary across grid points
            model_of = record.grid_models()
            summary["model"] = [
                model_of.get((d, g), m)
                for d, g, m in zip(
                    summary["dataset"], summary["grid"], summary["model"], strict=True
                )
            ]
        for name, frame in tables.items():
            files[results / f"{name}.csv"] = csv_bytes(frame)
        return files

    def _meta_results(
        self, results: Path, per_sample: pd.DataFrame, perturbed: pd.DataFrame
    ) -> dict[Path, bytes]:
        """``evaluation.meta``: ``meta.csv``, ``meta_agreement.csv`` and the perturbed problems'
        scores ``meta_per_sample.parquet`` (:mod:`xaiarena.meta`), as files to write with the
        other results; without it, those of an earlier run are removed."""
        names = ("meta.csv", "meta_agreement.csv", "meta_per_sample.parquet")
        files = {name: results / name for name in names}
        if not self.cfg.evaluation.meta:
            for path in files.values():
                path.unlink(missing_ok=True)
            return {}
        table, pairs = meta_table(per_sample, self.record.metrics_meta, perturbed)
        return {
            files["meta_per_sample.parquet"]: parquet_bytes(perturbed),
            files["meta_agreement.csv"]: csv_bytes(pairs),
            files["meta.csv"]: csv_bytes(table),
        }

    def _build_report(self) -> bool:
        try:
            from .report import build_report
        except ImportError:  # pragma: no cover - report package not installed
            return False
        build_report(self.run_dir)
        return True


def run(
    config: str | Path | dict | ExperimentConfig | None = None,
    *,
    out: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    show_progress: bool = True,
    executor: str | None = None,
    address: str | None = None,
    **kw_overrides: Any,
) -> RunResult:
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
    run_dir = Runner(
        cfg, out=out, show_progress=show_progress, executor=executor, address=address, source=source
    ).run()
    return RunResult(run_dir)


__all__ = ["Runner", "run"]
