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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import stages, stats
from .cache import Cache, inside, stable_hash
from .config import ComponentSpec, DataConfig, ExperimentConfig, load_config
from .errors import RunError
from .modalities import check_modalities
from .registry import EXPLAINERS, METRICS
from .utils import (
    atomic_to_csv,
    atomic_to_parquet,
    atomic_write_text,
    dumps_json,
    progress,
    resolve_device,
    seed_everything,
    versions,
)

log = logging.getLogger(__name__)

PER_SAMPLE_COLUMNS = stages.PER_SAMPLE_COLUMNS
CURVE_COLUMNS = stages.CURVE_COLUMNS


def _say(msg: str) -> None:
    progress.write(msg)


@dataclass
class StageLog:
    """Per-stage timings and cache hits, written into run.json."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @contextmanager
    def stage(self, key: str):
        info: dict[str, Any] = {"cache_hit": False}
        start = time.perf_counter()
        try:
            yield info
        finally:
            info["seconds"] = round(time.perf_counter() - start, 3)
            self.stages[key] = info
            hit = " (cached)" if info.get("cache_hit") else ""
            _say(f"[xaiarena] {key}: {info['seconds']:.1f}s{hit}")


LOCK_FILE = ".xaiarena.lock"


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
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
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
    """Runs one :class:`ExperimentConfig` into a run directory (the local executor: every stage of
    :mod:`xaiarena.stages` in order, in this process)."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path | None = None, show_progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(out or cfg.output or Path("runs") / cfg.name)
        self.device = resolve_device(cfg.device)
        amp = bool(cfg.amp) and self.device.type == "cuda"  # mixed precision only on CUDA
        if cfg.amp and not amp:
            log.info("amp: true is ignored on %s (mixed precision is used on CUDA only)", self.device)
        batch_size = cfg.evaluation.batch_size if isinstance(cfg.evaluation.batch_size, int) else 64
        self.settings = stages.Settings(cfg, Cache(self.run_dir / "cache", self.run_dir), self.device, amp,
                                        batch_size, show_progress)
        self.show_progress = show_progress
        self.log = StageLog()
        self.datasets_info: dict[str, Any] = {}
        self.metrics_meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ stages
    def run(self) -> Path:
        cfg = self.cfg
        check_modalities(cfg)  # a text dataset with an image-only explainer etc. fails before any work
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"the run directory '{self.run_dir}' is a file; give --out a folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir):
            seed_everything(cfg.seed)
            started = time.perf_counter()
            per_sample, curves = [], []
            for dcfg in cfg.data:
                ps, cv = self._run_dataset(dcfg)
                per_sample.append(ps)
                curves.append(cv)
            results = self.run_dir / "results"
            per_sample_df = (pd.concat(per_sample, ignore_index=True) if per_sample
                             else pd.DataFrame(columns=PER_SAMPLE_COLUMNS))
            curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
            with self.log.stage("stats"):
                self._write_results(results, per_sample_df, curves_df)
            # the config is written with the results it describes (a failed run leaves both as they were)
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            self._write_run_json(time.perf_counter() - started)
            with self.log.stage("report") as info:
                info["written"] = self._build_report()
            self._write_run_json(time.perf_counter() - started)
        return self.run_dir

    def _run_dataset(self, dcfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        s, cfg = self.settings, self.cfg
        prep = stages.prepare(s, dcfg, self.log.stage)
        name = prep.key
        if cfg.evaluation.batch_size == "auto":
            s.batch_size = auto_batch_size(prep.model, prep.inputs, self.device)
        prep.info["evaluation_batch_size"] = s.batch_size
        self.datasets_info[name] = prep.info

        # ---- views: f_b, then the model of each learned explainer (fitted first)
        built = {spec.key: EXPLAINERS.create(spec.name, **spec.params) for spec in cfg.explainers}
        learned = [spec for spec in cfg.explainers if built[spec.key].family == "learned"]
        plain = [spec for spec in cfg.explainers if spec not in learned]
        views = {stages.F_B: stages.view_of(s, prep, stages.F_B, prep.model, prep.model_key)}
        members: dict[str, list[ComponentSpec]] = {stages.F_B: plain}
        for spec in learned:
            vname = "f_s" if len(learned) == 1 else f"f_s:{spec.key}"
            with self.log.stage(f"{name}/fit/{spec.key}"):
                views[vname] = stages.fit_learned(s, prep, spec, built[spec.key], vname)
            report = built[spec.key].report()
            if report:
                prep.info.setdefault("learned", {})[spec.key] = report
            # the fair view: the other explainers explain f_s too, so maps of one model are compared
            members[vname] = [spec] + (plain if cfg.evaluation.also_explain_f_s else [])
        prep.info["views"] = {v: ("the model being explained" if v == stages.F_B else
                                  f"the model learned by {v.partition(':')[2] or learned[0].key}")
                              for v in views}

        # ---- attributions, per view
        attrs: dict[str, dict[str, stages.Attribution]] = {}
        for vname, specs in members.items():
            for spec in specs:
                stage = f"{name}/explain/{spec.key}" + ("" if vname == self._home_view(spec, learned) else f"@{vname}")
                with self.log.stage(stage) as sinfo:
                    attr = stages.explain(s, prep, views[vname], spec, built[spec.key], sinfo)
                attrs.setdefault(vname, {})[spec.key] = attr
                entry = prep.info["explainers"].setdefault(spec.key, {
                    "explains": self._home_view(spec, learned), "family": built[spec.key].family,
                    "name": spec.name, "params": spec.params, "views": {}})
                entry["views"][vname] = {"seconds": sinfo["seconds"], "cache_hit": sinfo["cache_hit"],
                                         "file": self._rel(s.cache.path("attributions", name,
                                                                        f"{spec.key}-{attr.key.hash}.pt")),
                                         "key": attr.key.hash}
                if vname == entry["explains"]:
                    entry.update(seconds=sinfo["seconds"], cache_hit=sinfo["cache_hit"])
        self._write_examples(prep, views, attrs, learned)

        # ---- metrics, per view
        per_sample, curves = [], []
        for spec in cfg.metrics:
            metric = METRICS.create(spec.name, **spec.params)
            for vname, vattrs in attrs.items():
                keys = [k for k in (spec.explainers or list(vattrs)) if k in vattrs]
                if not metric.applies_to(keys):
                    log.info("%s: metric '%s' has nothing to score among the maps of %s (%s)", name, spec.key,
                             vname, ", ".join(keys) or "none")
                    continue
                stage = f"{name}/metric/{spec.key}" + ("" if vname == stages.F_B else f"@{vname}")
                with self.log.stage(stage) as sinfo:
                    ps, cv = stages.score(s, prep, views[vname], spec, metric, {k: vattrs[k] for k in keys}, sinfo)
                per_sample.append(ps)
                curves.append(cv)
            for out in metric.outputs():
                oname = stages.output_name(spec, metric.name, out.name)
                self.metrics_meta[oname] = {
                    "metric": spec.name, "label": spec.key, "category": metric.category,
                    "higher_is_better": out.higher_is_better, "ranked": out.ranked,
                    "value_range": [float(v) for v in out.value_range],
                    "description": METRICS.entry(spec.name).description,
                }
        ps = pd.concat(per_sample, ignore_index=True) if per_sample else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)
        cv = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
        return ps, cv

    @staticmethod
    def _home_view(spec: ComponentSpec, learned: list[ComponentSpec]) -> str:
        """The view an explainer belongs to: its own f_s for a learned explainer, else f_b."""
        if spec not in learned:
            return stages.F_B
        return "f_s" if len(learned) == 1 else f"f_s:{spec.key}"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.run_dir).as_posix()

    def _write_examples(self, prep, views, attrs, learned) -> None:
        """A few samples with every explainer's map: its own view's maps under the explainer's name,
        and its maps of another view as ``<explainer>@<view>``."""
        maps = {}
        for vname, vattrs in attrs.items():
            for k, a in vattrs.items():
                home = self._home_view(next(sp for sp in self.cfg.explainers if sp.key == k), learned)
                maps[k if vname == home else f"{k}@{vname}"] = a.maps
        fb = views[stages.F_B]
        path = inside(self.run_dir, self.run_dir / "results" / "examples" / prep.key)
        prep.mod.write_examples(path, prep.task, prep.index, fb.preds, _correct(prep, fb), maps, prep.inputs,
                                prep.model)

    # ------------------------------------------------------------------ helpers
    def _write_results(self, results: Path, per_sample: pd.DataFrame, curves: pd.DataFrame) -> None:
        atomic_to_parquet(per_sample[PER_SAMPLE_COLUMNS], results / "per_sample.parquet")
        atomic_to_parquet(curves[CURVE_COLUMNS] if len(curves) else pd.DataFrame(columns=CURVE_COLUMNS),
                          results / "curves.parquet")
        hib = {k: v["higher_is_better"] for k, v in self.metrics_meta.items()}
        models = {d: v["model"] for d, v in self.datasets_info.items()}
        summary = stats.summarize(per_sample, hib, models=models, seed=self.cfg.seed)
        tests = stats.paired_tests(per_sample)
        fg_bg = stats.fg_bg_tests(per_sample)  # object vs background within each explainer (fg_bg_attribution)
        if len(fg_bg):
            atomic_to_csv(fg_bg, results / "fg_bg_tests.csv")
        atomic_to_csv(summary, results / "summary.csv")
        atomic_to_csv(tests, results / "tests.csv")

    def _build_report(self) -> bool:
        try:
            from .report import build_report
        except ImportError:  # pragma: no cover - report package not installed
            return False
        build_report(self.run_dir)
        return True

    def _write_run_json(self, seconds: float) -> None:
        cfg = self.cfg
        data = {
            "name": cfg.name,
            "seed": cfg.seed,
            "device": str(self.device),
            "versions": versions(),
            "config_hash": stable_hash(cfg.to_dict()),
            "total_seconds": round(seconds, 3),
            "stages": self.log.stages,
            "datasets": self.datasets_info,
            "metrics_meta": self.metrics_meta,
        }
        atomic_write_text(self.run_dir / "run.json", dumps_json(data))


def _correct(prep: stages.Prepared, view: stages.View) -> torch.Tensor:
    from .models.training import correct_predictions

    ok = correct_predictions(prep.model, view.preds, prep.labels, prep.task)
    return (view.preds == prep.labels) if ok is None else ok


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
        explainer itself explains. Reads the file whose key run.json records (never guesses by date)."""
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

    def __repr__(self) -> str:
        return f"RunResult('{self.run_dir}')"


def run(config: str | Path | dict | ExperimentConfig | None = None, *, out: str | Path | None = None,
        overrides: list[str] | dict[str, Any] | None = None, show_progress: bool = True, **kw_overrides: Any) -> RunResult:
    """Run an experiment (the built-in benchmark when ``config`` is None) and return its results.

    Keyword overrides use double underscores for nesting: ``run(evaluation__n_samples=32)``.
    """
    ov: dict[str, Any] = {}
    if isinstance(overrides, dict):
        ov.update(overrides)
    elif overrides:
        from .config import _parse_scalar

        for item in overrides:
            k, _, v = item.partition("=")
            ov[k.strip()] = _parse_scalar(v)
    ov.update({k.replace("__", "."): v for k, v in kw_overrides.items()})
    cfg = load_config(config, ov or None)
    run_dir = Runner(cfg, out=out, show_progress=show_progress).run()
    return RunResult(run_dir)


def load(run_dir: str | Path) -> RunResult:
    """Reopen a finished run directory."""
    return RunResult(run_dir)
