"""Read a run directory's saved results (nothing is recomputed from models or data).

Required: ``run.json`` and either ``results/summary.csv`` or
``results/per_sample.parquet``. Everything else is optional and its absence is
noted in the report: ``config.yaml``, ``results/tests.csv`` (recomputed from
``per_sample.parquet`` by :func:`xaiarena.stats.paired_tests` when missing),
``results/curves.parquet`` and ``results/examples/<dataset>.npz`` (images) or
``results/examples/<dataset>.json`` (texts: words and every explainer's word scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..errors import XaiArenaError
from ..views import F_B, F_S, on_f_b_label

CURVE_COLUMNS = ["dataset", "explainer", "metric", "x", "mean", "ci_low", "ci_high"]
_NAME_COLUMNS = (
    "dataset",
    "grid",
    "explained_model",
    "model",
    "explainer",
    "metric",
    "explainer_a",
    "explainer_b",
    "test",
)


class ReportError(XaiArenaError):
    """A run directory cannot be turned into a report (message says what is missing)."""


def _view_explainers(info: dict[str, Any], view: str, scored: set[str]) -> dict[str, Any]:
    """A dataset's run.json explainers as seen in ``view``: each explainer with maps of ``view``
    under its own name, and in f_b a learned explainer's maps scored on f_b under their f_b
    label."""
    explainers = {}
    for k, v in (info.get("explainers") or {}).items():
        if not isinstance(v, dict):
            continue
        views = v.get("views") or {v.get("explains", F_B): {}}
        if view in views:
            explainers[k] = {**v, **(views.get(view) or {}), "explains": view}
        elif view == F_B and on_f_b_label(k) in scored:  # a learned explainer's maps on f_b
            own = v.get("explains", F_S)
            explainers[on_f_b_label(k)] = {
                **v,
                **(views.get(own) or {}),
                "explains": view,
                "maps_of": own,
            }
    return explainers


@dataclass
class RunData:
    """Everything the report shows, as loaded from one run directory."""

    run_dir: Path
    run: dict[str, Any]
    config_text: str | None
    summary: pd.DataFrame
    tests: pd.DataFrame
    per_sample: pd.DataFrame | None
    curves: pd.DataFrame
    examples: dict[str, dict[str, np.ndarray]]
    metrics_meta: dict[str, dict[str, Any]]
    datasets: list[str]
    notes: list[str] = field(default_factory=list)
    text_examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    replicate_ranks: pd.DataFrame | None = None  # ranks within every replicate (replicated runs)
    replicate_seeds: list[int] = field(default_factory=list)  # a replicated run's seeds (else [])

    def dataset_info(self, dataset: str) -> dict[str, Any]:
        return dict((self.run.get("datasets") or {}).get(dataset) or {})

    def explainers(self, dataset: str) -> list[str]:
        """Explainers of a dataset: run.json order, then any others found in the summary."""
        names = list(self.dataset_info(dataset).get("explainers") or {})
        seen = set(names)
        for e in self.summary.loc[self.summary["dataset"] == dataset, "explainer"]:
            if e not in seen:
                names.append(e)
                seen.add(e)
        return names

    def views(self, dataset: str) -> list[str | None]:
        """The explained models with results for ``dataset`` (``f_b`` first), or ``[None]`` for runs
        written before results had an ``explained_model`` column."""
        if "explained_model" not in self.summary.columns:
            return [None]
        found = list(
            pd.unique(self.summary.loc[self.summary["dataset"] == dataset, "explained_model"])
        )
        return sorted(found, key=lambda v: (v != "f_b", found.index(v))) or [None]

    def view(self, dataset: str, view: str | None) -> RunData:
        """The results of ``dataset`` restricted to maps of one explained model: tables filtered,
        examples and run.json explainers re-keyed so that each explainer's maps of ``view`` appear
        under its own name."""
        if view is None:
            return self

        def keep(df: pd.DataFrame | None) -> pd.DataFrame | None:
            if df is None or "explained_model" not in df.columns:
                return df
            return df[(df["dataset"] != dataset) | (df["explained_model"] == view)]

        info = self.dataset_info(dataset)
        sel = self.summary[self.summary["dataset"] == dataset]
        scored = (
            set(sel.loc[sel["explained_model"] == view, "explainer"])
            if "explained_model" in sel.columns
            else set()
        )
        explainers = _view_explainers(info, view, scored)
        run = {
            **self.run,
            "datasets": {
                **(self.run.get("datasets") or {}),
                dataset: {**info, "explainers": explainers},
            },
        }
        home = {
            k: (v.get("explains") if isinstance(v, dict) else F_B)
            for k, v in (info.get("explainers") or {}).items()
        }

        def rekey(names: list[str]) -> dict[str, str]:
            """``{stored name: name in this view}``: own-view maps and ``<name>@<view>`` maps; in
            f_b, a learned explainer's own maps as ``<name>@f_s`` where they were scored on f_b."""
            out = {}
            for n in names:
                base, _, v = n.partition("@")
                if (v == view) or (not v and home.get(base, F_B) == view):
                    out[n] = base
                elif not v and view == F_B and on_f_b_label(base) in scored:
                    out[n] = on_f_b_label(base)
            return out

        examples = dict(self.examples)
        if dataset in examples:
            ex = examples[dataset]
            keys = rekey([k[len("attr__") :] for k in ex if k.startswith("attr__")])
            examples[dataset] = {
                **{k: a for k, a in ex.items() if not k.startswith("attr__")},
                **{f"attr__{new}": ex[f"attr__{old}"] for old, new in keys.items()},
            }
        text_examples = dict(self.text_examples)
        if dataset in text_examples:
            doc = text_examples[dataset]
            keys = rekey(list(doc.get("explainers") or []))
            samples = [
                {
                    **smp,
                    "scores": {
                        new: smp["scores"][old]
                        for old, new in keys.items()
                        if old in smp.get("scores", {})
                    },
                }
                for smp in doc.get("samples", [])
            ]
            text_examples[dataset] = {**doc, "explainers": list(keys.values()), "samples": samples}
        return replace(
            self,
            run=run,
            summary=keep(self.summary),
            tests=keep(self.tests),
            per_sample=keep(self.per_sample),
            curves=keep(self.curves),
            examples=examples,
            text_examples=text_examples,
            replicate_ranks=keep(self.replicate_ranks),
        )

    def metrics(self, dataset: str) -> list[str]:
        present = set(self.summary.loc[self.summary["dataset"] == dataset, "metric"])
        return [m for m in self.metrics_meta if m in present]


def _read_csv(path: Path, numeric: list[str]) -> pd.DataFrame:
    """CSV with name columns kept as text (an explainer called 'NA' stays 'NA')."""
    df = pd.read_csv(
        path,
        dtype={c: str for c in _NAME_COLUMNS},
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN", "NA"] for c in numeric},
    )
    for c in numeric:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _as_bool(series: pd.Series) -> pd.Series:
    if series.dtype == bool:
        return series
    return series.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def _merge_grid(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """``dataset`` -> ``<dataset>@<grid point>`` in a grid run's tables (the report's sections)."""
    if df is None or "grid" not in df.columns or not len(df):
        return df
    df = df.copy()
    g = df["grid"].fillna("").astype(str)
    df["dataset"] = [
        d if not p else f"{d}@{p}" for d, p in zip(df["dataset"].astype(str), g, strict=True)
    ]
    return df


def replicate_note(run: dict[str, Any], summary: pd.DataFrame, seeds: list[int]) -> str:
    """What the numbers of a replicated run rest on: the samples, the replicates, what an interval
    and a test count, and which samples ``only_correct`` kept."""
    units = [u for u in (run.get("units") or {}).values() if isinstance(u, dict)]
    n_eval = sorted({int(u["n_eval"]) for u in units if isinstance(u.get("n_eval"), (int, float))})
    counted = ""
    if "n_samples" in summary.columns and len(summary):
        ns = sorted(set(summary["n_samples"].dropna().astype(int)))
        if ns and ns != n_eval:
            counted = f" ({'/'.join(map(str, ns))} samples in each mean)"
    samples = "the same evaluation samples"
    if n_eval:
        samples = f"the same {'/'.join(map(str, n_eval))} evaluation samples"
    correct = ""
    if any(u.get("samples_correct_under_seeds") for u in units):
        correct = (
            " (evaluation.only_correct: the samples that every replicate's model classifies "
            "correctly, taken in the seeded order of the test split)"
        )
    r = len(seeds)
    return (
        f"{r} replicates: the model was retrained with seeds {seeds}, and every replicate "
        f"explained and scored {samples}{correct}{counted}. Each mean is over samples × "
        "replicates, and its 95% interval counts both sources of variance: which samples were "
        "evaluated and which seed trained the model (two-way crossed random effects, variance "
        "components by ANOVA with Satterthwaite degrees of freedom, never narrower than the "
        "t-interval over the replicate means nor the one over the per-sample means). "
        "Significance comes from the same model of the paired differences between explainers. "
        f"With {r} replicates, wherever retraining moves the scores the interval and the test "
        f"rest on about {r - 1} degrees of freedom, so only a large difference that holds in "
        "every retrained model is called significant. Per-image sections show the first "
        "replicate."
    )


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json``; a ReportError where it is missing or not JSON."""
    run_path = run_dir / "run.json"
    if not run_path.exists():
        raise ReportError(f"'{run_dir}' is not a run directory (no run.json)")
    try:
        return json.loads(run_path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"'{run_path}' is not valid JSON: {exc}") from None


def _load_summary(
    run_dir: Path,
    run: dict[str, Any],
    per_sample: pd.DataFrame | None,
    meta: dict[str, dict[str, Any]],
    notes: list[str],
) -> pd.DataFrame:
    """``results/summary.csv``, or the summaries computed from the per-sample scores (noted)."""
    summary_path = run_dir / "results" / "summary.csv"
    if summary_path.exists():
        summary = _read_csv(
            summary_path, ["mean", "ci_low", "ci_high", "n", *stats.COUNT_COLUMNS, "df"]
        )
        missing = [c for c in stats.SUMMARY_COLUMNS if c not in summary.columns]
        if missing:
            raise ReportError(f"'{summary_path}' lacks column(s) {missing}")
        summary["higher_is_better"] = _as_bool(summary["higher_is_better"])
    elif per_sample is not None:
        hib = {m: v.get("higher_is_better", True) for m, v in meta.items()}
        models = {str(d): str(v.get("model", "")) for d, v in (run.get("datasets") or {}).items()}
        models.update({d: models.get(d, "") for d in per_sample["dataset"].unique()})
        try:
            if "replicate" in per_sample.columns:
                summary = stats.summarize_replicates(per_sample, hib, models=models)
            else:
                summary = stats.summarize(per_sample, hib, int(run.get("seed", 0)), models=models)
        except ValueError as exc:
            raise ReportError(f"cannot summarise results/per_sample.parquet: {exc}") from None
        notes.append(
            "results/summary.csv was missing; summaries were computed from "
            "results/per_sample.parquet when building this report."
        )
    else:
        raise ReportError(
            f"'{run_dir}' has neither results/summary.csv nor results/per_sample.parquet"
        )
    summary["model"] = summary["model"].fillna("").astype(str)
    return summary


def _load_tests(res: Path, per_sample: pd.DataFrame | None, notes: list[str]) -> pd.DataFrame:
    """``results/tests.csv``, or the paired tests computed from the per-sample scores, or none
    (both noted)."""
    tests_path = res / "tests.csv"
    if tests_path.exists():
        tests = _read_csv(tests_path, ["statistic", "p_value", "p_holm", "effect_size", "min_p"])
        missing = [c for c in stats.TESTS_COLUMNS if c not in tests.columns]
        if missing:
            raise ReportError(f"'{tests_path}' lacks column(s) {missing}")
        return tests
    if per_sample is not None:
        notes.append(
            "results/tests.csv was missing; paired tests were computed from "
            "results/per_sample.parquet when building this report."
        )
        return stats.paired_tests(per_sample)
    notes.append(
        "No paired tests are available (results/tests.csv and "
        "results/per_sample.parquet are missing): no difference is marked significant."
    )
    return pd.DataFrame(columns=stats.TESTS_COLUMNS)


def _replicate_tests(res: Path, per_sample: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The tests over replicates x samples: ``results/tests_replicates.csv``, or computed from the
    per-sample scores (noted)."""
    rep_tests = res / "tests_replicates.csv"
    if rep_tests.exists():
        numeric = [
            "statistic",
            "p_value",
            "p_holm",
            "effect_size",
            "df",
            "min_p",
            "n",
            *stats.COUNT_COLUMNS,
        ]
        return _merge_grid(_read_csv(rep_tests, numeric))
    tests = stats.replicate_tests(per_sample)
    notes.append(
        "results/tests_replicates.csv was missing; the tests over replicates were "
        "computed from results/per_sample.parquet when building this report."
    )
    return tests


def _load_curves(res: Path) -> pd.DataFrame:
    """``results/curves.parquet`` (empty where missing), grid points merged, first replicate."""
    curves_path = res / "curves.parquet"
    curves = (
        pd.read_parquet(curves_path)
        if curves_path.exists()
        else pd.DataFrame(columns=CURVE_COLUMNS)
    )
    curves = _merge_grid(curves)
    if "replicate" in curves.columns and len(curves):
        curves = curves[curves["replicate"] == curves["replicate"].min()]
    for c in ("dataset", "explainer", "metric"):
        curves[c] = curves[c].astype(str)
    return curves


def _load_examples(res: Path, datasets: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """The saved image examples per dataset (``results/examples/<dataset>.npz``)."""
    examples: dict[str, dict[str, np.ndarray]] = {}
    for d in datasets:
        path = res / "examples" / f"{d}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as npz:
                examples[d] = {k: npz[k] for k in npz.files}
    return examples


def load_run(run_dir: str | Path) -> RunData:
    """A run directory's results as :class:`RunData`; tables a run did not write are computed from
    ``results/per_sample.parquet`` where they can be (each noted in ``notes``)."""
    run_dir = Path(run_dir)
    run = _read_run_json(run_dir)
    res = run_dir / "results"
    notes: list[str] = []

    per_sample = None
    ps_path = res / "per_sample.parquet"
    if ps_path.exists():
        per_sample = pd.read_parquet(ps_path)
        for c in ("dataset", "explainer", "metric"):
            per_sample[c] = per_sample[c].astype(str)

    meta: dict[str, dict[str, Any]] = {
        str(k): dict(v) for k, v in (run.get("metrics_meta") or {}).items()
    }
    summary = _load_summary(run_dir, run, per_sample, meta, notes)
    tests = _load_tests(res, per_sample, notes)

    # a grid run: every (dataset, grid point) is reported as its own dataset, "<dataset>@<point>"
    summary, tests, per_sample = (_merge_grid(df) for df in (summary, tests, per_sample))
    # replicates: the table ranks explainers by the tests over replicates x samples; the per-image
    # sections show the first replicate, whose examples were saved
    replicate_seeds: list[int] = []
    if per_sample is not None and "replicate" in per_sample.columns:
        tests = _replicate_tests(res, per_sample, notes)
        per_sample = per_sample[per_sample["replicate"] == per_sample["replicate"].min()]
        replicate_seeds = [int(v) for v in (run.get("replicate_seeds") or [])]
        notes.append(replicate_note(run, summary, replicate_seeds))

    # metrics known only from the summary still get a direction and a category
    for metric, grp in summary.groupby("metric", sort=False):
        entry = meta.setdefault(str(metric), {})
        entry.setdefault("higher_is_better", bool(grp["higher_is_better"].iloc[0]))
        entry.setdefault("category", "other")
        entry.setdefault("description", "")
        entry.setdefault("value_range", [None, None])  # unbounded

    datasets = [str(d) for d in (run.get("datasets") or {})]
    for d in pd.unique(summary["dataset"]):
        if d not in datasets:
            datasets.append(str(d))

    from .text import load_text_examples

    text_examples = {
        d: doc
        for d in datasets
        if (doc := load_text_examples(res / "examples" / f"{d}.json")) is not None
    }

    replicate_ranks = None
    rr_path = res / "ranks_per_replicate.csv"
    if rr_path.exists():
        replicate_ranks = _merge_grid(_read_csv(rr_path, ["rank", "replicate", "seed"]))

    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.exists() else None
    return RunData(
        run_dir=run_dir,
        run=run,
        config_text=config_text,
        summary=summary,
        tests=tests,
        per_sample=per_sample,
        curves=_load_curves(res),
        examples=_load_examples(res, datasets),
        metrics_meta=meta,
        datasets=datasets,
        notes=notes,
        text_examples=text_examples,
        replicate_ranks=replicate_ranks,
        replicate_seeds=replicate_seeds,
    )
