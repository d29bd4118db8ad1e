"""The experiment runner: config -> data -> model -> attributions -> metrics -> stats -> report.

Each stage reads only what the stage before produced, and every expensive
artefact is cached under ``RUN_DIR/cache`` keyed by a content hash of what it
depends on, written atomically. An interrupted run resumes where it stopped; a
changed metric does not retrain a model or recompute attributions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import ComponentSpec, DataConfig, ExperimentConfig, load_config, stable_hash
from .modalities import check_modalities, modality_for
from .registry import EXPLAINERS, METRICS, MODELS
from .utils import (
    atomic_save_torch,
    atomic_to_csv,
    atomic_to_parquet,
    atomic_write_bytes,
    atomic_write_text,
    dumps_json,
    load_torch,
    progress,
    resolve_device,
    seed_everything,
    versions,
)

log = logging.getLogger(__name__)

PER_SAMPLE_COLUMNS = ["dataset", "explainer", "metric", "sample_id", "value"]
CURVE_COLUMNS = ["dataset", "explainer", "metric", "x", "mean", "ci_low", "ci_high"]
N_EXAMPLES = 8


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


def _select_eval(task, model, cfg: ExperimentConfig, device: torch.device) -> torch.Tensor:
    """Indices into the test split: held-out samples chosen by seed (optionally correct only)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.randperm(len(task.test), generator=gen)
    if cfg.evaluation.only_correct:
        from .models.training import correct_predictions

        preds = modality_for(task).predict(model, task.test, order, device)
        ok = correct_predictions(model, preds, task.test.labels[order], task)
        if ok is None:
            raise ValueError(
                f"evaluation.only_correct: correct predictions are not defined for model '{cfg.model.name}' on "
                f"dataset '{task.name}' (its labels do not map to the model's classes); set "
                "evaluation.only_correct: false"
            )
        order = order[ok]
    return order[: cfg.evaluation.n_samples].sort().values


def _targets(task, model, idx: torch.Tensor, cfg: ExperimentConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    labels = task.test.labels[idx]
    preds = modality_for(task).predict(model, task.test, idx, device)
    return (labels if cfg.evaluation.target == "label" else preds), preds


def _metric_output_name(spec: ComponentSpec, metric_name: str, output: str) -> str:
    if spec.label and output.startswith(metric_name):
        return spec.label + output[len(metric_name):]
    return output


class Runner:
    """Runs one :class:`ExperimentConfig` into a run directory."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path | None = None, show_progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(out or cfg.output or Path("runs") / cfg.name)
        self.cache = self.run_dir / "cache"
        self.device = resolve_device(cfg.device)
        self.amp = bool(cfg.amp) and self.device.type == "cuda"  # mixed precision only on CUDA
        if cfg.amp and not self.amp:
            log.info("amp: true is ignored on %s (mixed precision is used on CUDA only)", self.device)
        self.batch_size = cfg.evaluation.batch_size if isinstance(cfg.evaluation.batch_size, int) else 64
        self.show_progress = show_progress
        self.log = StageLog()
        self.datasets_info: dict[str, Any] = {}
        self.metrics_meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ stages
    def run(self) -> Path:
        cfg = self.cfg
        check_modalities(cfg)  # a text dataset with an image-only explainer etc. fails before any work
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        seed_everything(cfg.seed)
        started = time.perf_counter()
        per_sample, curves = [], []
        for dcfg in cfg.data:
            ps, cv = self._run_dataset(dcfg)
            per_sample.append(ps)
            curves.append(cv)
        results = self.run_dir / "results"
        per_sample_df = pd.concat(per_sample, ignore_index=True) if per_sample else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)
        curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
        with self.log.stage("stats"):
            self._write_results(results, per_sample_df, curves_df)
        self._write_run_json(time.perf_counter() - started)
        with self.log.stage("report") as info:
            info["written"] = self._build_report()
        self._write_run_json(time.perf_counter() - started)
        return self.run_dir

    def _run_dataset(self, dcfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        from .data import load_task
        from .models import build_model, train_model

        cfg, name = self.cfg, dcfg.key
        with self.log.stage(f"{name}/data"):
            task = load_task(dcfg.name, seed=cfg.seed, data_dir=dcfg.data_dir, **dcfg.params)
        data_hash = stable_hash({"data": dcfg.hash_dict(), "seed": cfg.seed})
        pretrained = bool(MODELS.entry(cfg.model.name).meta.get("pretrained"))  # never trained
        model_hash = stable_hash({"data": data_hash, "model": cfg.model.hash_dict(),
                                  "training": None if pretrained else cfg.training.model_dump(), "seed": cfg.seed,
                                  **({"amp": True} if self.amp else {})})
        with self.log.stage(f"{name}/train") as info:
            if cfg.training.num_threads:
                torch.set_num_threads(cfg.training.num_threads)
            model = build_model(cfg.model.name, task, seed=cfg.seed, **cfg.model.params)
            with self._autocast():
                tr = train_model(model, task, cfg.training, seed=cfg.seed, device=self.device,
                                 checkpoint_dir=self.cache / "models" / model_hash, show_progress=self.show_progress)
            info.update(cache_hit=tr.cache_hit, model_hash=model_hash, test_accuracy=tr.test_accuracy)
        _say(f"[xaiarena] {name}: {cfg.model.name} test accuracy {tr.test_accuracy:.3f}")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        idx = _select_eval(task, model, cfg, self.device)
        targets, preds = _targets(task, model, idx, cfg, self.device)
        sample_ids = task.test.ids[idx]
        mod = modality_for(task)  # image tensors, or a TextBatch of tokenised texts (see modalities.py)
        inputs = mod.eval_inputs(task, idx, model)
        masks = mod.eval_masks(task, idx, inputs)
        ids_hash = stable_hash(sample_ids.tolist())
        info = {
            "model": cfg.model.name, "model_hash": model_hash, "num_classes": task.num_classes,
            "input_shape": list(task.input_shape), "n_train": len(task.train), "n_test": len(task.test),
            "n_eval": len(idx), "test_accuracy": tr.test_accuracy, "train_history": tr.history,
            "train_seconds": tr.seconds, "explainers": {}, **mod.describe(task, inputs, model),
        }
        if getattr(model, "pretrained", False):  # no training: say so, and which classes it predicts
            describe = getattr(model, "describe", None)
            info["pretrained"] = describe() if callable(describe) else True
            info["target"] = cfg.evaluation.target
        if cfg.evaluation.batch_size == "auto":
            self.batch_size = auto_batch_size(model, inputs, self.device)
        info["evaluation_batch_size"] = self.batch_size
        self.datasets_info[name] = info

        # ---- attributions
        attributions: dict[str, torch.Tensor] = {}
        explained: dict[str, torch.nn.Module] = {}
        explain_fns: dict[str, Callable] = {}
        attr_hashes: dict[str, str] = {}
        for spec in cfg.explainers:
            explainer = EXPLAINERS.create(spec.name, **spec.params)
            ehash = stable_hash({"model": model_hash, "explainer": spec.hash_dict(), "ids": ids_hash,
                                 "seed": cfg.seed, "target": cfg.evaluation.target})
            path = self.cache / "attributions" / name / f"{spec.key}-{ehash}.pt"
            with self.log.stage(f"{name}/explain/{spec.key}") as sinfo:
                if getattr(explainer, "family", "") == "learned":
                    fit_dir = self.cache / "explainers" / name / stable_hash({"model": model_hash, "explainer": spec.hash_dict(), "seed": cfg.seed})
                    explainer.fit(model, task, device=self.device,
                                  generator=torch.Generator().manual_seed(cfg.seed), cache_dir=fit_dir)
                    report = getattr(explainer, "report", None)
                    report = report() if callable(report) else report
                    if report:
                        info.setdefault("diet" if spec.name in ("diet", "text_diet") else spec.key, report)
                fmodel = explainer.explained_model(model)
                if path.exists():
                    attr = load_torch(path)
                    sinfo["cache_hit"] = True
                else:
                    attr = self._explain(explainer, fmodel, inputs, targets, spec.key)
                    atomic_save_torch(attr, path)
            attributions[spec.key] = attr
            explained[spec.key] = fmodel
            attr_hashes[spec.key] = ehash
            explain_fns[spec.key] = self._explain_fn(explainer, fmodel)
            info["explainers"][spec.key] = {
                "seconds": self.log.stages[f"{name}/explain/{spec.key}"]["seconds"],
                "cache_hit": self.log.stages[f"{name}/explain/{spec.key}"]["cache_hit"],
                "explains": getattr(explainer, "explains", "f_b"), "family": getattr(explainer, "family", ""),
                "name": spec.name, "params": spec.params,
            }
        if mod.name == "image":
            self._write_examples(name, task, idx, preds, attributions, model)
        else:
            mod.write_examples(self, name, task, idx, preds, attributions, inputs)

        # ---- metrics
        labels = task.test.labels[idx]
        per_sample, curves = [], []
        for mi, spec in enumerate(cfg.metrics):
            metric = METRICS.create(spec.name, **spec.params)
            keys = spec.explainers or list(attributions)  # the explainers this metric scores
            mhash = stable_hash({"metric": spec.hash_dict(), "attr": {k: attr_hashes[k] for k in keys},
                                 "ids": ids_hash, "seed": cfg.seed, "model": model_hash})
            mdir = self.cache / "metrics" / name
            ps_path, cv_path = mdir / f"{spec.key}-{mhash}.parquet", mdir / f"{spec.key}-{mhash}.curves.parquet"
            with self.log.stage(f"{name}/metric/{spec.key}") as sinfo:
                if ps_path.exists() and cv_path.exists():
                    ps, cv = pd.read_parquet(ps_path), pd.read_parquet(cv_path)
                    sinfo["cache_hit"] = True
                else:
                    ps, cv = self._evaluate_metric(
                        metric, spec, mi, name, inputs, targets, labels, masks, sample_ids,
                        {k: attributions[k] for k in keys}, {k: explained[k] for k in keys},
                        {k: explain_fns[k] for k in keys},
                    )
                    atomic_to_parquet(cv, cv_path)
                    atomic_to_parquet(ps, ps_path)
            for out in metric.outputs():
                oname = _metric_output_name(spec, metric.name, out.name)
                self.metrics_meta[oname] = {
                    "metric": spec.name, "category": metric.category, "higher_is_better": out.higher_is_better,
                    "value_range": [float(v) for v in out.value_range],
                    "description": METRICS.entry(spec.name).description,
                }
            per_sample.append(ps)
            curves.append(cv)
        ps = pd.concat(per_sample, ignore_index=True) if per_sample else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)
        cv = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
        return ps, cv

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        """bfloat16 autocast on CUDA when ``amp: true``; a no-op context otherwise (CPU unchanged)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp) if self.amp else nullcontext()

    def _explain(self, explainer, model, inputs, targets, key: str) -> torch.Tensor:
        bs = self.batch_size
        gen = torch.Generator().manual_seed(self.cfg.seed)
        out = []
        for i in progress(range(0, len(inputs), bs), desc=f"explain {key}", disable=not self.show_progress):
            xb = inputs[i:i + bs].to(self.device)
            tb = targets[i:i + bs].to(self.device)
            with self._autocast():
                a = explainer.explain(model, xb, tb, generator=gen)
            out.append((a.float() if self.amp else a).cpu())
        return torch.cat(out) if out else torch.empty(0, *inputs.shape[2:])

    def _explain_fn(self, explainer, model) -> Callable:
        def fn(inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None,
               model: torch.nn.Module = model) -> torch.Tensor:
            """Re-explain (robustness metrics); ``model=`` explains another model (randomisation test)."""
            return explainer.explain(model, inputs, targets, generator=generator)

        return fn

    def _evaluate_metric(self, metric, spec, mi, dataset, inputs, targets, labels, masks, sample_ids,
                         attributions, explained, explain_fns) -> tuple[pd.DataFrame, pd.DataFrame]:
        from .metrics import EvalBatch

        # explainers grouped by the model their maps explain (f_b, or DiET's f_s); a metric that does
        # not call the model (agreement, complexity, localisation) sees all of them at once
        groups: dict[int, list[str]] = {}
        model_free = "model" not in getattr(metric, "requires", ("model",))
        for key, m in explained.items():
            groups.setdefault(0 if model_free else id(m), []).append(key)
        bs = self.batch_size
        scores: dict[str, dict[str, list[torch.Tensor]]] = {}
        curves: dict[str, dict[str, list[torch.Tensor]]] = {}
        curve_x: dict[str, torch.Tensor] = {}
        for keys in groups.values():
            model = explained[keys[0]]
            for bi, i in enumerate(progress(range(0, len(inputs), bs), desc=f"metric {spec.key}",
                                            disable=not self.show_progress)):
                sl = slice(i, i + bs)
                batch = EvalBatch(
                    model=model, inputs=inputs[sl].to(self.device), targets=targets[sl].to(self.device),
                    labels=labels[sl].to(self.device), masks=None if masks is None else masks[sl].to(self.device),
                    sample_ids=sample_ids[sl],
                )
                # same seed per (metric, batch) for every group: common random numbers
                gen = torch.Generator(device=self.device).manual_seed(stable_seed(self.cfg.seed, mi, bi))
                with self._autocast():
                    out = metric.evaluate(
                        batch, {k: attributions[k][sl].to(self.device) for k in keys}, generator=gen,
                        explainers={k: explain_fns[k] for k in keys},
                    )
                for oname, per_expl in out.scores.items():
                    for k, v in per_expl.items():
                        scores.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
                for oname, per_expl in out.curves.items():
                    for k, v in per_expl.items():
                        curves.setdefault(oname, {}).setdefault(k, []).append(v.detach().float().cpu())
                curve_x.update({k: v.detach().float().cpu() for k, v in out.curve_x.items()})
        rows = []
        ids = sample_ids.numpy()
        for oname, per_expl in scores.items():
            full = _metric_output_name(spec, metric.name, oname)
            for k, parts in per_expl.items():
                vals = torch.cat(parts).numpy()
                rows.append(pd.DataFrame({"dataset": dataset, "explainer": k, "metric": full,
                                          "sample_id": ids[: len(vals)], "value": vals}))
        ps = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=PER_SAMPLE_COLUMNS)
        crow = []
        for oname, per_expl in curves.items():
            full = _metric_output_name(spec, metric.name, oname)
            for k, parts in per_expl.items():
                c = torch.cat(parts).numpy()  # (N, S)
                mean = np.nanmean(c, 0)
                se = np.nanstd(c, 0, ddof=1) / np.sqrt(max(len(c), 1)) if len(c) > 1 else np.zeros_like(mean)
                x = curve_x.get(oname, torch.linspace(0, 1, c.shape[1])).numpy()
                crow.append(pd.DataFrame({"dataset": dataset, "explainer": k, "metric": full, "x": x,
                                          "mean": mean, "ci_low": mean - 1.96 * se, "ci_high": mean + 1.96 * se}))
        cv = pd.concat(crow, ignore_index=True) if crow else pd.DataFrame(columns=CURVE_COLUMNS)
        return ps, cv

    def _write_examples(self, name, task, idx, preds, attributions, model=None) -> None:
        """A few correct and incorrect predictions with every explainer's map, for the report."""
        from .models.training import correct_predictions

        labels = task.test.labels[idx]
        ok = correct_predictions(model, preds, labels, task) if model is not None else None
        ok = (preds == labels) if ok is None else ok
        correct = torch.nonzero(ok).flatten()
        wrong = torch.nonzero(~ok).flatten()
        n_wrong = min(len(wrong), N_EXAMPLES // 4 if len(correct) else N_EXAMPLES)
        pick = torch.cat([correct[: N_EXAMPLES - n_wrong], wrong[:n_wrong]])
        arrays: dict[str, np.ndarray] = {
            "images": task.test.images[idx][pick].numpy(),
            "labels": labels[pick].numpy(),
            "preds": preds[pick].numpy(),
            "sample_ids": task.test.ids[idx][pick].numpy(),
            "class_names": np.array(task.class_names),
        }
        if task.test.masks is not None:
            arrays["masks"] = task.test.masks[idx][pick].numpy()
        arrays["correct"] = ok[pick].numpy()
        model_classes = getattr(model, "class_names", None)
        if model_classes is not None and list(model_classes) != list(task.class_names):
            arrays["pred_class_names"] = np.array(model_classes)  # predictions are in the model's classes
        for k, a in attributions.items():
            arrays[f"attr__{k}"] = a[pick].numpy().astype(np.float32)
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(self.run_dir / "results" / "examples" / f"{name}.npz", buf.getvalue())

    def _write_results(self, results: Path, per_sample: pd.DataFrame, curves: pd.DataFrame) -> None:
        from . import stats

        atomic_to_parquet(per_sample[PER_SAMPLE_COLUMNS], results / "per_sample.parquet")
        atomic_to_parquet(curves[CURVE_COLUMNS] if len(curves) else pd.DataFrame(columns=CURVE_COLUMNS),
                          results / "curves.parquet")
        hib = {k: v["higher_is_better"] for k, v in self.metrics_meta.items()}
        models = {d: v["model"] for d, v in self.datasets_info.items()}
        summary = stats.summarize(per_sample, hib, models=models, seed=self.cfg.seed)
        tests = stats.paired_tests(per_sample)
        from .report.fgbg import fg_bg_tests

        fg_bg = fg_bg_tests(per_sample)  # object vs background within each explainer (fg_bg_attribution)
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


def stable_seed(*parts: int) -> int:
    return int(stable_hash(list(parts), n=8), 16)


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

    def attributions(self, explainer: str, dataset: str | None = None) -> torch.Tensor:
        """The ``(N, H, W)`` maps of ``explainer`` for the evaluation samples (in sample order)."""
        datasets = list(self.info["datasets"])
        dataset = dataset or datasets[0]
        if dataset not in datasets:
            raise KeyError(f"unknown dataset '{dataset}'; this run has {', '.join(datasets)}")
        known = list(self.info["datasets"][dataset]["explainers"])
        if explainer not in known:
            raise KeyError(f"unknown explainer '{explainer}'; this run has {', '.join(known)}")
        files = sorted((self.run_dir / "cache" / "attributions" / dataset).glob(f"{explainer}-*.pt"),
                       key=lambda p: p.stat().st_mtime)
        if not files:
            raise FileNotFoundError(f"no cached attributions for '{explainer}' in {self.run_dir}")
        return load_torch(files[-1])

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
