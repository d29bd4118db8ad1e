"""A finished run: its tables, maps and report (:class:`RunResult`, :func:`load`), and its
evaluation samples with the model its maps explain (:class:`RunSamples`,
:func:`evaluation_samples`), reloaded through the engine's own stages and cache: what
:func:`xaiarena.evaluate` and :func:`xaiarena.explain` take to reproduce a run's numbers
(``xaiarena score``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import ExperimentConfig, load_config
from .engine.batching import EvalSamples
from .engine.cache import Cache
from .engine.context import Env, StageRecorder, context_for, forget_contexts, unit_threads
from .engine.plan import plan_units
from .engine.tasks import view
from .files import writes_inside
from .views import F_B, source_of


class RunResult:
    """A finished run: tables as DataFrames, attributions, and the report path."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "run.json").exists():
            raise FileNotFoundError(
                f"'{self.run_dir}' is not a finished xaiarena run (no run.json)"
            )
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

    def attributions(
        self, explainer: str, dataset: str | None = None, explained_model: str | None = None
    ) -> torch.Tensor:
        """The maps of ``explainer`` for the evaluation samples (in sample order): ``(N, H, W)``
        images, ``(N, L)`` texts, float32 (``evaluation.map_dtype`` float16 / bfloat16: the stored
        values, rounded to that precision). ``explained_model`` picks the view (``f_b``, ``f_s``);
        by default the model the explainer itself explains; ``diet@f_s`` (DiET's maps scored on
        f_b) gives DiET's maps of f_s. Reads the files (one per shard) whose key run.json records
        (never guesses by date)."""
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
            explains = ", ".join(views) or "none"
            raise KeyError(
                f"explainer '{explainer}' has no maps of '{view}'; it explains {explains}"
            )
        # one file per shard (evaluation.shard_size); runs made before shards: one "file"
        names = views[view].get("files") or [views[view]["file"]]
        cache = Cache(self.run_dir / "cache", self.run_dir)
        parts = []
        for name in names:
            path = self.run_dir / name
            maps = cache.load_torch(path)
            if maps is None:
                raise FileNotFoundError(
                    f"the attributions of '{explainer}' ({view}) recorded in run.json are "
                    f"missing or corrupt: {path}; run the config again to recompute them"
                )
            parts.append(maps.float())
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def samples(self, dataset: str | None = None) -> RunSamples:
        """The run's evaluation samples with its model ``f_b``, reloaded from the run's cache (the
        dataset is rebuilt, the trained model read from its checkpoint): what
        :func:`xaiarena.evaluate` and
        :func:`xaiarena.explain` take to score or compute maps of the same samples as the run
        (``evaluate(s.model, s.inputs, s.targets, maps, metrics, masks=s.masks, labels=s.labels,
        sample_ids=s.sample_ids, seed=s.seed, dataset=s.dataset)``). With a grid or replicates: the
        first grid point's first replicate."""
        return evaluation_samples(self.config, self.run_dir, dataset)

    def __repr__(self) -> str:
        return f"RunResult('{self.run_dir}')"


@dataclass(kw_only=True)
class RunSamples(EvalSamples):
    """A run's evaluation samples (``dataset``, ``inputs``, ``labels``, ``masks``,
    ``sample_ids``) and the model its ``f_b`` maps explain (:meth:`RunResult.samples`)."""

    model: torch.nn.Module
    targets: torch.Tensor  # the classes the maps explain (evaluation.target)
    seed: int
    batch_size: int


def evaluation_samples(
    cfg: ExperimentConfig, run_dir: str | Path, dataset: str | None = None
) -> RunSamples:
    """The evaluation samples of ``cfg``'s dataset entry ``dataset`` (default: the first) and its
    model ``f_b``, as a run in ``run_dir`` has them: data, train (or the cached checkpoint) and
    select run through the same stages and cache (:meth:`RunResult.samples`; ``xaiarena
    score``). With a grid or replicates: the first grid point's first replicate."""
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
            prep, fb = ctx.prep(rec), view(ctx, F_B, rec)
        return RunSamples(
            dataset=dataset,
            model=prep.model,
            inputs=prep.inputs,
            targets=fb.targets,
            labels=prep.labels,
            masks=prep.masks,
            sample_ids=prep.sample_ids,
            seed=unit.seed,
            batch_size=ctx.s.batch_size,
        )
    finally:
        forget_contexts(env.run_dir)


def load(run_dir: str | Path) -> RunResult:
    """Reopen a finished run directory."""
    return RunResult(run_dir)


__all__ = ["RunResult", "RunSamples", "evaluation_samples", "load"]
