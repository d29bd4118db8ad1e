"""What a run's finished tasks add up to: run.json and the result frames, assembled in one place.

The runner creates one :class:`RunRecord`; every finished task adds to it through its kind's
record function (:func:`xaiarena.engine.tasks.record_task`): its stages' timings, its unit's
entry (data, model, explainers, learned explainers) and its per-sample scores. After the
graph, :meth:`RunRecord.result_frames` gives the result tables in graph order, whatever order
the executor finished the tasks in, and :meth:`RunRecord.run_json` writes run.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from ..config import ExperimentConfig
from ..environment import hardware, versions
from ..meta import PERTURBED_COLUMNS
from ..registry import METRICS
from ..stats import CURVE_COLUMNS, PER_SAMPLE_COLUMNS
from ..strict_json import dumps_json
from .batching import metric_meta
from .cache import stable_hash
from .context import StageRecorder
from .plan import Unit


class RunRecord:
    """run.json's content and the result frames of one run, as its tasks finish."""

    def __init__(self, cfg: ExperimentConfig, say: Callable[[str], None] | None = None):
        self.cfg = cfg
        #: every stage's timing: the tasks' own, then the driver's (stats, report)
        self.log = StageRecorder(say)
        #: run.json's entry of each unit, by unit id
        self.units: dict[str, dict[str, Any]] = {}
        #: run.json ``metrics_meta``: ``{output name: metadata}``
        self.metrics_meta: dict[str, dict[str, Any]] = {}
        self.with_grid = bool(cfg.grid)
        self.with_replicates = len(cfg.replicate_seeds()) > 1
        #: per score task: its per-sample scores and curves, with the unit's columns
        self.scored: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
        #: per meta task (``evaluation.meta``): the scores of its perturbed problems
        self.perturbed: dict[str, pd.DataFrame] = {}
        #: per task split into shard tasks: their stages, until the task itself finishes
        self.shard_stages: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ what tasks add
    def unit_entry(self, unit: Unit) -> dict[str, Any]:
        return self.units.setdefault(unit.id, {})

    def unit_columns(self, unit: Unit) -> dict[str, Any]:
        """The result columns that identify ``unit`` in this run (grid; replicate, seed)."""
        return unit.columns(self.with_grid, self.with_replicates)

    # ------------------------------------------------------------------ after the graph
    def add_metrics_meta(self) -> None:
        for spec in self.cfg.metrics:
            self.metrics_meta.update(metric_meta(spec, METRICS.create(spec.name, **spec.params)))

    def context_columns(self) -> list[str]:
        return (["grid"] if self.with_grid else []) + (
            ["replicate", "seed"] if self.with_replicates else []
        )

    def result_frames(self, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """``(per_sample, curves, perturbed)`` in the order of the task ``names`` (the graph's),
        with the context columns after ``dataset``; the stages are put in that order too."""
        extra = self.context_columns()
        ps_cols = [*PER_SAMPLE_COLUMNS[:1], *extra, *PER_SAMPLE_COLUMNS[1:]]
        cv_cols = [*CURVE_COLUMNS[:1], *extra, *CURVE_COLUMNS[1:]]
        pt_cols = [PERTURBED_COLUMNS[0], *extra, *PERTURBED_COLUMNS[1:]]
        frames = [self.scored[n][0] for n in names if n in self.scored]
        curves = [self.scored[n][1] for n in names if n in self.scored]
        perturbed = [self.perturbed[n] for n in names if n in self.perturbed]
        stages = self.log.stages
        self.log.stages = {**{n: stages[n] for n in names if n in stages}, **stages}
        return (
            (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ps_cols))[
                ps_cols
            ],
            (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cv_cols))[
                cv_cols
            ],
            (
                pd.concat(perturbed, ignore_index=True)[pt_cols]
                if perturbed
                else pd.DataFrame(columns=pt_cols)
            ),
        )

    def models(self) -> dict[str, str]:
        """``{dataset: model name}`` (the last unit's, as ``summary.csv``'s ``model`` column)."""
        return {u["dataset"]: u.get("model", "") for u in self.units.values()}

    def grid_models(self) -> dict[tuple[str, str], str]:
        """``{(dataset, grid point): model name}``: the model may vary across grid points."""
        return {(u["dataset"], u["grid"]): u.get("model", "") for u in self.units.values()}

    def run_json(
        self, seconds: float, units: list[Unit], device: torch.device, executor: str
    ) -> str:
        """The text of run.json."""
        cfg = self.cfg
        # one entry per (dataset, grid point) for the report (its first replicate); every unit under
        # "units"
        datasets = {}
        for u in units:
            key = u.dataset + (f"@{u.grid}" if u.grid else "")
            if key not in datasets and u.id in self.units:
                datasets[key] = self.units[u.id]
        data = {
            "name": cfg.name,
            "seed": cfg.seed,
            "device": str(device),
            "executor": executor,
            "hardware": hardware(device),
            "versions": versions(),
            "config_hash": stable_hash(cfg.to_dict()),
            "total_seconds": round(seconds, 3),
            "stages": self.log.stages,
            "datasets": datasets,
            "units": self.units if (self.with_grid or self.with_replicates) else {},
            "replicate_seeds": cfg.replicate_seeds(),
            "grid": cfg.grid or {},
            "metrics_meta": self.metrics_meta,
        }
        return dumps_json(data)


__all__ = ["RunRecord"]
