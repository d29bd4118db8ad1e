"""``build_report(run_dir)``: report.html and figures/*.png from a run's saved results.

The HTML is self-contained: CSS inline, figures embedded as base64 PNG, no
scripts and no network references. Every string that comes from the run
(dataset, explainer and metric names, descriptions, config) goes through
jinja2's autoescaping. The same run directory always gives the same bytes.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from .. import __version__, stats
from ..errors import XaiArenaError
from ..files import atomic_write_many, check_inside, writes_inside
from ..ops.pairs import is_pair
from ..views import F_B, home_advantage, on_f_b_label, rank_shift, source_of
from . import fgbg, narrative, plots
from .loading import ReportError, RunData, load_run
from .tables import (
    arrow,
    combined_table,
    decimals_for,
    fmt,
    fmt_percent,
    fmt_seconds,
    fmt_signed,
    order_metrics,
    results_table,
)
from .text import text_rows

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
DEFAULT_TEST = "t"

#: DiET's model-faithfulness numbers (keys of ``explainers.diet.core.faithfulness_report``)
_DIET_LABELS = {
    "test_agreement_fs_fb": (
        "Agreement of f_s with f_b",
        "share of test inputs on which DiET's distilled "
        "model f_s predicts the same class as the model being explained, f_b",
    ),
    "test_accuracy_fs": ("f_s test accuracy", "DiET's distilled model on the test split"),
    "test_accuracy_fb": ("f_b test accuracy", "the model being explained, on the test split"),
    "train_masked_accuracy_fs": (
        "f_s accuracy on masked training inputs",
        "f_s on training inputs with DiET's learned masks applied",
    ),
    "train_masked_agreement_fs_fb": (
        "Agreement on masked training inputs",
        "f_s on masked inputs vs f_b on the full inputs",
    ),
    "train_mask_l0_fraction": (
        "Mask size (L0)",
        "mean fraction of the input DiET's training masks keep",
    ),
    "train_mask_l1_fraction": ("Mask weight (L1)", "mean mask value over the input"),
    "test_stopped_at_limit_fraction": (
        "Test-time masks at the safety limit",
        "share of evaluation masks whose optimisation hit the safety limit "
        "(test_max_steps) before its stopping rule",
    ),
    "test_final_loss_change": (
        "Test-time loss change at the stop",
        "median over the evaluation masks of the "
        "last relative change of the loss the stopping rule saw (window against window; "
        "authors: epoch against two epochs earlier)",
    ),
    "test_final_mask_change": (
        "Test-time mask change at the stop",
        "median over the evaluation masks of the "
        "last relative change of the mask the stopping rule saw",
    ),
    "test_converged_fraction": (
        "Test-time masks converged",
        "run directories before issue 23: share of "
        "evaluation masks that met the old per-step rule before the step horizon",
    ),
}
_PERCENT_KEYS = set(_DIET_LABELS)
_DIET_COUNTS = {
    "n_train": ("Training inputs", "inputs DiET learned masks for"),
    "n_test": ("Test inputs", "inputs of the agreement and accuracy numbers"),
    "fit_seconds": ("Fit time (s)", "training f_s and the masks"),
    "test_steps_mean": (
        "Test-time steps (mean)",
        "SGD steps per evaluation mask (authors: epochs)",
    ),
    "test_seed_agreement": (
        "Seed agreement of the maps",
        "median per-sample Spearman correlation "
        "between the maps of two seeds (the seed check, a subset of the "
        "evaluation samples)",
    ),
}
_DIET_FORMATS = {
    "fit_seconds": "{:.1f}",
    "test_steps_mean": "{:.0f}",
    "test_seed_agreement": "{:.2f}",
}
_EXPLAINS = {"f_b": "the model being explained", "f_s": "DiET's distilled model"}
_FIGURE_PATTERNS = (
    re.compile(r"^d\d+_.*\.png$"),
    re.compile(r"^combined_.*\.png$"),
    re.compile(r"^study_.*\.png$"),
)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("xaiarena.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")
    return s[:40] or "dataset"


class _Figures:
    """Collects figures: a data URI for the HTML now, the PNG files under figures/ once the whole
    report has been built (a report that fails leaves the old figures as they were)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pending: dict[str, bytes] = {}

    def add(self, name: str, png: bytes | None, title: str, caption: str = "") -> dict | None:
        if png is None:
            return None
        self.pending[name] = png
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return {"title": title, "caption": caption, "src": uri, "file": f"figures/{name}"}

    def files(self) -> dict[Path, bytes]:
        """The new figures' files (written by the caller together with report.html)."""
        return {self.folder / name: png for name, png in self.pending.items()}

    def remove_stale(self) -> None:
        """Delete the report figures of an earlier build that this one did not make (other files
        in the folder are kept); after the new report is written."""
        if check_inside(self.folder).is_dir():
            for p in self.folder.iterdir():
                if (
                    p.is_file()
                    and p.name not in self.pending
                    and any(r.match(p.name) for r in _FIGURE_PATTERNS)
                ):
                    p.unlink()


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    return float(x)


def _setup_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append((label, str(value)))

    add("Model", info.get("model"))
    add("Classes", info.get("num_classes"))
    shape = info.get("input_shape")
    if isinstance(shape, (list, tuple)):
        add("Input shape", " × ".join(str(s) for s in shape))
    for key, label in (
        ("n_train", "Training samples"),
        ("n_test", "Test samples"),
        ("n_eval", "Explained samples"),
    ):
        v = _num(info.get(key))
        add(label, f"{int(v):,}" if v is not None else None)
    acc = _num(info.get("test_accuracy"))
    add("Test accuracy (f_b)", fmt_percent(acc) if acc is not None else None)
    secs = _num(info.get("train_seconds"))
    add("Training time", fmt_seconds(secs) if secs is not None else None)
    for key, label in (
        ("max_length", "Max tokens"),
        ("mean_words", "Words per text (mean)"),
        ("truncated", "Explained texts truncated"),
    ):
        add(label, info.get(key))  # text runs only
    return rows


def diet_rows(diet: Any) -> list[dict[str, str]]:
    if not isinstance(diet, dict):
        return []
    rows = []
    # known numbers only, in a fixed order; bookkeeping (seed, phases, cache flags) stays in
    # run.json
    for k, (label, desc) in {**_DIET_LABELS, **_DIET_COUNTS}.items():
        v = _num(diet.get(k))
        if v is None or v != v:  # absent or NaN
            continue
        value = fmt_percent(v) if k in _PERCENT_KEYS else _DIET_FORMATS.get(k, "{:.0f}").format(v)
        rows.append({"key": k, "label": label, "description": desc, "value": value})
    return rows


def _explainer_rows(data: RunData, dataset: str, explainers: list[str], colors: dict[str, str]):
    info = data.dataset_info(dataset).get("explainers") or {}
    rows = []
    for e in explainers:
        v = info.get(e) or {}
        secs = _num(v.get("seconds"))
        explains = str(v.get("explains", "") or "")
        maps_of = str(v.get("maps_of", "") or "")
        rows.append(
            {
                "name": e,
                "color": colors.get(e, "#333333"),
                "family": str(v.get("family", "") or "–"),
                "explains": (f"{explains} (maps of {maps_of})" if maps_of else explains) or "–",
                "explains_title": (
                    f"{_EXPLAINS.get(explains, explains)}, scored with the maps computed "
                    f"on {maps_of}"
                )
                if maps_of
                else _EXPLAINS.get(explains, ""),
                "fs": explains == "f_s" or bool(maps_of),
                "seconds": fmt_seconds(secs) if secs is not None else "–",
                "cache_hit": bool(v.get("cache_hit", False)),
                "postprocess": ", ".join(str(x) for x in (v.get("postprocess") or [])),
            }
        )
    return rows


def _stage_rows(run: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, v in (run.get("stages") or {}).items():
        v = v if isinstance(v, dict) else {"seconds": v}
        secs = _num(v.get("seconds"))
        rows.append(
            {
                "name": str(name),
                "seconds": fmt_seconds(secs) if secs is not None else "–",
                "cache": "cached" if v.get("cache_hit") else "",
            }
        )
    return rows


def _settings(run: dict[str, Any], alpha: float | None, test: str | None) -> tuple[float, str]:
    cfg = run.get("stats") if isinstance(run.get("stats"), dict) else {}
    alpha = float(alpha if alpha is not None else cfg.get("alpha", DEFAULT_ALPHA))
    test = str(test if test is not None else cfg.get("test", DEFAULT_TEST))
    if test not in ("t", "wilcoxon", "both"):
        raise ValueError(f"unknown test '{test}'; valid: t, wilcoxon, both")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha, test


def _ci_sentence(data: RunData) -> str:
    """What the report's intervals are intervals of (their unit: samples, or samples and
    replicates)."""
    if data.replicate_seeds:
        return (
            f"Confidence intervals: 95% intervals of the mean over evaluation samples × "
            f"{len(data.replicate_seeds)} retrained models that count the variance of both "
            "(crossed random effects; see the note above)."
        )
    return "Confidence intervals: 95% bootstrap intervals of the mean over evaluation samples."


def _test_notes(data: RunData, alpha: float, test: str) -> list[str]:
    """Where a test the report would use cannot reach alpha (a Wilcoxon signed-rank test on 3
    replicates cannot give p < 0.25): say so, and say what decides instead."""
    tests = data.tests
    want = ("t", "wilcoxon") if test == "both" else (test,)
    if not len(tests) or "min_p" not in tests.columns:
        return []
    sel = tests[tests["test"].isin(want) & (tests["test"] != "t")]
    weak = sel[~sel["min_p"].map(lambda v: stats.informative(v, alpha))]
    if not len(weak):
        return []
    units = "replicates" if data.replicate_seeds else "samples"
    # min_p = 2 / 2**n for n non-zero differences
    counts = sorted({int(round(1 - np.log2(v))) for v in weak["min_p"] if 0 < v < 1})
    how_many = f" with {'/'.join(map(str, counts))} {units}" if counts else ""
    what = (
        f"The Wilcoxon signed-rank test over {units} cannot give a p-value below "
        f"{float(weak['min_p'].min()):.3g}{how_many}, not below alpha = {alpha:g}: it is not "
        "informative, so its p-values are not shown"
    )
    if test == "both":
        return [
            what + " and significance rests on the paired t-test alone where it cannot reach alpha."
        ]
    return [
        what + " and no difference can be called significant by it; choose test t, or (with "
        "replicates) run at least 6 replicates (smallest possible p 0.031)."
    ]


def _view_note(view: str | None, n_views: int, info: dict[str, Any], explainers: list[str]) -> str:
    if view is None or n_views <= 1:
        return ""
    cross = [e for e in explainers if source_of(e)]
    if view == F_B:
        if cross:
            return (
                f"Maps scored on f_b, the trained model being explained. {', '.join(cross)}: "
                "DiET's maps (its test-time masks, optimised against its distilled model f_s) "
                "scored here with f_b, like every other map in this section: how well DiET "
                "explains the model you care about."
            )
        return (
            "Maps of f_b, the trained model being explained. DiET is not in this view: its maps "
            "explain its distilled model f_s (next section)."
        )
    return (
        f"Maps of {view}, DiET's distilled copy of the trained model: every explainer here "
        "explains the same model. f_s was trained on inputs erased by DiET's own masks, so it "
        "may favour DiET's maps; 'Home advantage' below measures how each explainer's standing "
        "moves between f_b and f_s."
    )


def _stability_rows(
    data: RunData, dataset: str, explainers: list[str], metrics: list[str]
) -> list[dict]:
    """Per (metric, explainer): its rank in every replicate and how often it was in the top
    group."""
    rr = data.replicate_ranks
    if rr is None or not len(rr):
        return []
    rr = rr[rr["dataset"] == dataset]
    rows = []
    for m in metrics:
        sel = rr[rr["metric"] == m]
        if not len(sel):
            continue
        for e in explainers:
            r = sel[sel["explainer"] == e].sort_values("replicate")
            if not len(r):
                continue
            ranks = [("–" if pd.isna(v) else str(int(v))) for v in r["rank"]]
            top = int((r["rank"] == 1).sum())
            rows.append(
                {"metric": m, "explainer": e, "ranks": ", ".join(ranks), "top": f"{top}/{len(r)}"}
            )
    return rows


def _score_figures(
    data: RunData,
    dataset: str,
    prefix: str,
    figs: _Figures,
    summ: pd.DataFrame,
    metrics: list[str],
    explainers: list[str],
    colors: dict[str, str],
    table: Any,
) -> dict[str, Any]:
    """A dataset section's figures of the scores: bar charts, radar chart, perturbation curves."""
    meta = data.metrics_meta
    figures: dict[str, Any] = {}
    figures["bars"] = figs.add(
        f"{prefix}_bars.png",
        plots.bar_charts(summ, metrics, explainers, meta, colors, table.top_groups),
        (
            "Means over samples × replicates with 95% intervals counting both"
            if data.replicate_seeds
            else "Means with 95% bootstrap confidence intervals"
        ),
        "One panel per metric (↑ higher is better, ↓ lower is better). Solid bars: the best "
        "explainer and those not significantly different from it; faded bars: significantly worse.",
    )
    figures["radar"] = figs.add(
        f"{prefix}_radar.png",
        plots.radar_chart(summ, metrics, explainers, meta, colors),
        "Relative standing per metric category",
        "Each metric is rescaled across explainers after orienting it so that higher is better "
        "(1 = best explainer on that metric, 0 = worst; metrics where all explainers tie are left "
        "out), then averaged within its category. Relative, not absolute, quality.",
    )
    curves = data.curves[data.curves["dataset"] == dataset]
    figures["curves"] = figs.add(
        f"{prefix}_curves.png",
        plots.curve_plots(curves, explainers, meta, colors),
        "Perturbation curves",
        "Mean score per step with its 95% band, as saved by the run.",
    )
    return figures


def _example_figures(
    data: RunData,
    dataset: str,
    info: dict[str, Any],
    prefix: str,
    figs: _Figures,
    explainers: list[str],
    explains: dict[str, str],
) -> tuple[list[dict[str, Any]], Any, Any]:
    """``(example rows, heatmap figure, LIME superpixel figure)`` of a dataset's saved image
    examples (figures None where there are none)."""
    example_rows: list[dict[str, Any]] = []
    heatmaps = lime_figure = None
    if dataset in data.examples:
        png, example_rows = plots.heatmap_grid(data.examples[dataset], explainers, explains)
        has_masks = "masks" in data.examples[dataset]
        heatmaps = figs.add(
            f"{prefix}_heatmaps.png",
            png,
            "Attribution maps",
            "Rows: correct (✓) then incorrect (✗) predictions. Each map is scaled by its own "
            "maximum absolute value (red positive, blue negative)."
            + (" Contours: ground-truth masks." if has_masks else ""),
        )
        lime = [
            e
            for e in explainers
            if ((info.get("explainers") or {}).get(e) or {}).get("name") == "lime"
        ]
        lime_figure = (
            figs.add(
                f"{prefix}_lime_superpixels.png",
                plots.lime_superpixels(data.examples[dataset], lime),
                "LIME's top-10 positive superpixels",
                "Each saved example with the boundaries (yellow) of the 10 superpixels with the "
                "largest positive LIME coefficients (fewer where fewer are positive), as "
                "lime_image's get_image_and_mask(positive_only=True, num_features=10); the rest of "
                "the image is dimmed. One column per LIME entry. Rows are named by file where the "
                "dataset names its samples.",
            )
            if lime
            else None
        )
    return example_rows, heatmaps, lime_figure


def _section_tables(
    data: RunData,
    dataset: str,
    info: dict[str, Any],
    explainers: list[str],
    metrics: list[str],
    alpha: float,
    test: str,
) -> tuple[list[str], list[str], Any, Any]:
    """``(agreement metrics, single explainers, results table, agreement table or None)``:
    agreement metrics score pairs of explainers ("a~b"), so they get their own table rather than
    rows of empty cells."""
    meta = data.metrics_meta
    agreement = [m for m in metrics if meta.get(m, {}).get("category") == "agreement"]
    pairs = [e for e in explainers if is_pair(e) and e not in (info.get("explainers") or {})]
    single = [e for e in explainers if e not in pairs]
    table = results_table(
        data.summary,
        data.tests,
        dataset,
        single,
        [m for m in metrics if m not in agreement],
        meta,
        alpha,
        test,
    )
    agreement_table = (
        results_table(data.summary, data.tests, dataset, pairs, agreement, meta, alpha, test)
        if pairs and agreement
        else None
    )
    return agreement, single, table, agreement_table


def _dataset_section(
    data: RunData,
    k: int,
    dataset: str,
    figs: _Figures,
    alpha: float,
    test: str,
    colors: dict[str, str],
    view: str | None = None,
    n_views: int = 1,
) -> dict[str, Any]:
    info = data.dataset_info(dataset)
    explainers = data.explainers(dataset)
    metrics = order_metrics(data.metrics(dataset), data.metrics_meta)
    meta = data.metrics_meta
    agreement, single, table, agreement_table = _section_tables(
        data, dataset, info, explainers, metrics, alpha, test
    )
    summ = data.summary[data.summary["dataset"] == dataset]
    prefix = f"d{k}_{_slug(dataset)}"
    explains = {
        e: str(v.get("explains"))
        for e, v in (info.get("explainers") or {}).items()
        if isinstance(v, dict) and v.get("explains")
    }
    if set(explains.values()) <= {"f_b"}:  # name the model in heatmap titles only when mixed
        explains = {}

    figures = _score_figures(data, dataset, prefix, figs, summ, metrics, explainers, colors, table)
    example_rows, figures["heatmaps"], figures["lime"] = _example_figures(
        data, dataset, info, prefix, figs, explainers, explains
    )
    text_examples = (
        text_rows(data.text_examples[dataset], explainers) if dataset in data.text_examples else []
    )
    figures["history"] = figs.add(
        f"{prefix}_training.png",
        plots.training_history(info.get("train_history") or []),
        "Training history of f_b",
        "Per-epoch values saved by the run (run.json train_history).",
    )
    fg_bg = fgbg.section(
        data.per_sample, dataset, data.examples.get(dataset), explainers, figs.add, prefix, alpha
    )
    per_image = fgbg.agreement_per_image(
        data.per_sample, dataset, meta, names=info.get("sample_names")
    )
    headline = narrative.dataset_headline(table.ranks, metrics)
    reading = narrative.dataset_reading(
        dataset, info, data.summary, table.versus_best, metrics, meta, alpha, test
    )
    n_sample_rows = data.per_sample is not None and (data.per_sample["dataset"] == dataset).any()
    return {
        "name": dataset if view is None or n_views <= 1 else f"{dataset} — maps of {view}",
        "view": view,
        "view_note": _view_note(view, n_views, info, single),
        "anchor": f"dataset-{k}",
        "model": info.get("model") or (summ["model"].iloc[0] if len(summ) else ""),
        "setup": _setup_rows(info),
        "explainers": _explainer_rows(data, dataset, single, colors),
        "diet": diet_rows(narrative.learned_report(info)) if view != "f_b" or n_views <= 1 else [],
        "table": table,
        "agreement_table": agreement_table,
        "figures": figures,
        "examples": example_rows,
        "text_examples": text_examples,
        "reading": reading,
        "headline": headline,
        "has_per_sample": bool(n_sample_rows),
        "fgbg": fg_bg,
        "per_image": per_image,
        "stability": _stability_rows(
            data, dataset, single, [m for m in metrics if m not in agreement]
        ),
        "home": None,  # filled in by _build for a learned explainer's view
    }


def home_section(data: RunData, dataset: str, alpha: float, test: str) -> dict[str, Any] | None:
    """The "Home advantage" block of a dataset with a learned explainer: how each explainer's
    standing (position by mean, and the report's rank) moves between f_b and f_s
    (:func:`xaiarena.views.rank_shift`), the learned explainer's maps counting as ``<label>@f_s``
    on f_b."""
    summ = data.summary[data.summary["dataset"] == dataset]
    tests = data.tests[data.tests["dataset"] == dataset] if len(data.tests) else data.tests
    shift = rank_shift(summ, tests, data.metrics_meta, alpha, test=test)
    if not len(shift):
        return None
    adv = home_advantage(shift)
    view = str(shift["view"].iloc[0])
    learned = str(shift["learned"].iloc[0])
    shift, adv = shift[shift["view"] == view], adv[adv["learned"] == learned]
    mine = shift[shift["explainer"] == learned]
    meta = data.metrics_meta
    metric_rows = [
        {
            "metric": r.metric,
            "arrow": arrow(bool((meta.get(r.metric) or {}).get("higher_is_better", True))),
            "mean_f_b": fmt(r.mean_f_b, decimals_for([r.mean_f_b, r.mean_f_s])),
            "mean_f_s": fmt(r.mean_f_s, decimals_for([r.mean_f_b, r.mean_f_s])),
            "position_f_b": f"{int(r.position_f_b)}",
            "position_f_s": f"{int(r.position_f_s)}",
            "rank_f_b": fmt(r.rank_f_b, 0),
            "rank_f_s": fmt(r.rank_f_s, 0),
            "gain": fmt_signed(r.position_gain, 0),
        }
        for r in mine.itertuples(index=False)
    ]
    own = f"{learned} (f_b: {on_f_b_label(learned)})"
    rows = [
        {
            "explainer": own if r.explainer == learned else r.explainer,
            "own": r.explainer == learned,
            "n": r.n_metrics,
            "position_f_b": fmt(r.mean_position_f_b, 2),
            "position_f_s": fmt(r.mean_position_f_s, 2),
            "gain": fmt_signed(r.mean_position_gain),
            "rank_f_b": fmt(r.mean_rank_f_b, 2),
            "rank_f_s": fmt(r.mean_rank_f_s, 2),
            "rank_gain": fmt_signed(r.mean_rank_gain),
            "moves": f"{r.up} / {r.same} / {r.down}",
        }
        for r in adv.itertuples(index=False)
    ]
    return {
        "view": view,
        "learned": learned,
        "n_explainers": int(shift["n_explainers"].iloc[0]),
        "rows": rows,
        "metric_rows": metric_rows,
        "reading": narrative.home_reading(adv, learned, int(shift["n_explainers"].iloc[0])),
    }


def build_report(
    run_dir: str | Path, *, alpha: float | None = None, test: str | None = None
) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/figures/*.png``; return the HTML path.

    Reads only saved results (see :mod:`xaiarena.report.loading`). ``alpha`` and
    ``test`` ("t", "wilcoxon" or "both") decide which differences are called
    significant; by default they come from ``run.json["stats"]`` if present,
    else 0.05 and the paired t-test.
    """
    try:
        with writes_inside(run_dir):  # figures/ or report.html as a symlink out of the run: refused
            return _build(run_dir, alpha, test)
    except XaiArenaError:  # ReportError; WriteError (a full disk, ...: not the results' fault)
        raise
    except Exception as exc:  # a hand-edited or damaged results file: say which, never a traceback
        log.debug("report failed", exc_info=True)
        raise ReportError(
            f"the saved results of '{run_dir}' cannot be read as a report ({type(exc).__name__}: "
            f"{exc}); nothing was changed. Re-run the config to rewrite them."
        ) from exc


def _sections(
    data: RunData, figs: _Figures, alpha: float, test: str, colors: dict[str, str]
) -> list[dict[str, Any]]:
    """One section per dataset and explained model (view); a learned explainer's view gets the
    home section of its dataset."""
    sections = []
    for d in data.datasets:
        views = data.views(d)
        mine = []
        for v in views:
            k = len(sections) + len(mine) + 1
            mine.append(
                _dataset_section(
                    data.view(d, v), k, d, figs, alpha, test, colors, view=v, n_views=len(views)
                )
            )
        home = home_section(data, d, alpha, test) if len(views) > 1 else None
        for s in mine:
            if home is not None and s["view"] == home["view"]:
                s["home"] = home
        sections += mine
    return sections


def _metric_rows(metrics_meta: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's metric glossary: name, category, direction, value range, description."""
    metric_rows = []
    for m in order_metrics(list(metrics_meta), metrics_meta):
        e = metrics_meta[m]
        vr = e.get("value_range") or []
        rng = ""
        if isinstance(vr, (list, tuple)) and len(vr) == 2:
            # strict JSON writes an unbounded end as null
            lo = -math.inf if vr[0] is None else _num(vr[0])
            hi = math.inf if vr[1] is None else _num(vr[1])
            if lo is not None and hi is not None and (math.isfinite(lo) or math.isfinite(hi)):
                rng = (
                    f"[{fmt(lo, None if abs(lo) >= 1e5 else 2)}, "
                    f"{fmt(hi, None if abs(hi) >= 1e5 else 2)}]"
                )
        metric_rows.append(
            {
                "name": m,
                "category": str(e.get("category", "other")),
                "direction": "↑ higher is better"
                if e.get("higher_is_better", True)
                else "↓ lower is better",
                "range": rng,
                "description": str(e.get("description", "") or ""),
            }
        )
    return metric_rows


def _build(run_dir: str | Path, alpha: float | None, test: str | None) -> Path:
    data = load_run(run_dir)
    run = data.run
    alpha, test = _settings(run, alpha, test)
    figs = _Figures(data.run_dir / "figures")

    all_explainers: list[str] = []
    for d in data.datasets:
        all_explainers += [e for e in data.explainers(d) if e not in all_explainers]
    colors = plots.explainer_colors(all_explainers)

    sections = _sections(data, figs, alpha, test, colors)
    # across datasets: ranks of maps of the trained models (f_b) only; f_s views differ per dataset
    main_sections = [s for s in sections if s["view"] in (None, "f_b")]
    ranks = (
        pd.concat([s["table"].ranks for s in main_sections], ignore_index=True)
        if main_sections
        else pd.DataFrame(columns=stats.RANK_COLUMNS)
    )
    combined = combined_table(ranks, data.metrics_meta) if len(ranks) else None
    combined_text = (
        narrative.combined_reading(combined["frame"], len(data.datasets)) if combined else []
    )

    metric_rows = _metric_rows(data.metrics_meta)

    versions = run.get("versions") if isinstance(run.get("versions"), dict) else {}
    total = _num(run.get("total_seconds"))
    from . import study as study_mod
    from . import trust

    context = {
        "study": study_mod.section(data, figs, alpha),
        "trust": trust.section(data.run_dir, data.metrics_meta),  # evaluation.meta
        "hardware": [(str(k), str(v)) for k, v in (run.get("hardware") or {}).items()],
        "title": str(run.get("name") or data.run_dir.name),
        "run": {
            "seed": run.get("seed", "–"),
            "device": run.get("device", "–"),
            "config_hash": run.get("config_hash", "–"),
            "total": fmt_seconds(total) if total is not None else "",
        },
        "versions": [(str(k), str(v)) for k, v in versions.items()],
        "stages": _stage_rows(run),
        "sections": sections,
        "combined": combined,
        "combined_text": combined_text,
        "n_datasets": len(data.datasets),
        "metric_rows": metric_rows,
        "alpha": f"{alpha:g}",
        "method_sentence": narrative.methods_sentence(alpha, test, len(data.replicate_seeds)),
        "ci_sentence": _ci_sentence(data),
        "replicated": bool(data.replicate_seeds),
        "test_name": {
            "t": "paired t-test",
            "wilcoxon": "Wilcoxon signed-rank test",
            "both": "paired t-test and Wilcoxon signed-rank test",
        }[test],
        "notes": data.notes + _test_notes(data, alpha, test),
        "config_text": data.config_text,
        "xaiarena_version": __version__,
    }
    html = printable(_env().get_template("report.html.j2").render(**context))
    out = data.run_dir / "report.html"
    # the figures and the page as one write: a full disk half-way leaves the old report and figures
    atomic_write_many({**figs.files(), out: html.encode("utf-8")})
    figs.remove_stale()
    return out


#: characters HTML does not allow in text (C0 controls but tab, LF, CR; DEL): from data, e.g. a NUL
#: in a text dataset or a class name, they would make the page invalid (browsers drop or mangle)
_NOT_IN_HTML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(html: str) -> str:
    """``html`` with every control character HTML does not allow replaced by U+FFFD (shown as �)."""
    return _NOT_IN_HTML.sub("\ufffd", html)
