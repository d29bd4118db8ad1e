"""Table models for the report: formatted cells, significance marks, ranks.

Significance marks in the results table compare every explainer with the one
that has the best mean on that metric (Holm-adjusted p-value of the pair, the
test named in the report): ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001
(only marks below the report's alpha are shown). The best explainer is bold;
explainers not significantly different from it are shaded with it. Superscript
letters are the compact letter display of :func:`xaiarena.stats.rank`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import stats

#: category display order (xaiarena.metrics.base.CATEGORIES), unknown ones after
CATEGORY_ORDER = ("faithfulness", "robustness", "complexity", "localisation", "agreement", "sanity")


def arrow(hib: bool) -> str:
    return "↑" if hib else "↓"


def direction_words(hib: bool) -> str:
    return "higher is better" if hib else "lower is better"


def order_metrics(metrics: list[str], meta: dict[str, dict[str, Any]]) -> list[str]:
    def key(item: tuple[int, str]) -> tuple[int, int]:
        i, m = item
        cat = str(meta.get(m, {}).get("category", "other"))
        return (CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER), i)

    return [m for _, m in sorted(enumerate(metrics), key=key)]


def decimals_for(values: Any) -> int | None:
    """Decimals that show ~3 significant digits of the largest value; None = scientific."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if not v.size or v.max() == 0:
        return 3
    scale = v.max()
    if scale < 1e-3 or scale >= 1e5:
        return None
    return int(max(0, min(6, 2 - math.floor(math.log10(scale)))))


def fmt(x: Any, decimals: int | None = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    s = f"{x:.2e}" if decimals is None else f"{x:.{decimals}f}"
    return s.replace("-", "−")


def fmt_signed(x: Any, decimals: int = 2) -> str:
    """A change with its sign: ``+1.10``, ``−0.74``, ``0`` (no sign when it rounds to zero)."""
    text = fmt(x, decimals)
    if text == "–":
        return text
    if text.lstrip("−") == fmt(0, decimals):
        return "0"
    return text if text.startswith("−") else "+" + text


def fmt_p(p: Any) -> str:
    try:
        p = float(p)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(p):
        return "–"
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def stars(p: float, alpha: float) -> str:
    if not np.isfinite(p) or p >= alpha:
        return ""
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*"


def fmt_seconds(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "–"
    if math.isnan(s):
        return "–"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def p_eq(name: str, p: Any) -> str:
    """``"name = 0.012"``, or ``"name < 0.0001"`` for the smallest values (never ``"= < ..."``)."""
    text = fmt_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def fmt_percent(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{100 * x:.1f}%"


def count_words(row: Any) -> str:
    """What a summary row's mean rests on: ``n = 24``, or ``24 samples x 3 replicates`` across
    replicates."""
    reps = row.get("n_replicates") if hasattr(row, "get") else None
    try:
        reps = int(reps)
    except (TypeError, ValueError):
        reps = 1
    n = int(row["n_samples"]) if reps > 1 and "n_samples" in row else int(row["n"])
    return f"{n} samples × {reps} replicates" if reps > 1 else f"n = {n}"


@dataclass
class Cell:
    text: str
    ci: str = ""
    marks: str = ""
    group: str = ""
    css: str = ""
    title: str = ""


@dataclass
class ResultsTable:
    categories: list[tuple[str, int]]
    metrics: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    ranks: pd.DataFrame
    versus_best: pd.DataFrame
    top_groups: dict[str, set[str]] = field(default_factory=dict)


def _column_heads(
    metrics: list[str], meta: dict[str, dict[str, Any]], ranked: list[str]
) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """``(categories, heads)``: ``(category, number of metrics)`` for each run of metrics of one
    category, and per metric its name, arrow, direction words and description."""
    cats: list[tuple[str, int]] = []
    for m in metrics:
        c = str(meta.get(m, {}).get("category", "other"))
        if cats and cats[-1][0] == c:
            cats[-1] = (c, cats[-1][1] + 1)
        else:
            cats.append((c, 1))
    heads = []
    for m in metrics:
        entry = meta.get(m, {})
        hib = bool(entry.get("higher_is_better", True))
        descriptive = m not in ranked
        heads.append(
            {
                "name": m,
                "arrow": arrow(hib),
                "direction": direction_words(hib)
                + ("; descriptive, not ranked" if descriptive else ""),
                "description": str(entry.get("description", "") or ""),
            }
        )
    return cats, heads


def _cell(
    s: pd.Series,
    d: int | None,
    key: tuple[str, str],
    rk: pd.DataFrame,
    vb: pd.DataFrame,
    alpha: float,
) -> Cell:
    """The table cell of a measured (explainer, metric) ``key``: its summary row ``s`` shown with
    ``d`` decimals, its rank group (``rk``) and how it compares to the best (``vb``)."""
    cell = Cell(text=fmt(s["mean"], d), title=count_words(s))
    if np.isfinite(s["ci_low"]) and np.isfinite(s["ci_high"]):
        cell.ci = f"[{fmt(s['ci_low'], d)}, {fmt(s['ci_high'], d)}]"
    if key in rk.index and not pd.isna(rk.loc[key, "rank"]):
        cell.group = str(rk.loc[key, "group"])
        cell.title += f"; rank {int(rk.loc[key, 'rank'])}"
    if key in vb.index:
        v = vb.loc[key]
        if v["is_best"] and np.isfinite(s["mean"]):
            cell.css = "best"
            cell.title += "; best mean"
        elif v["significant"]:
            cell.marks = stars(float(v["p_holm"]), alpha)
            cell.title += f"; worse than {v['best']}, {p_eq('p_holm', v['p_holm'])}"
        elif np.isfinite(s["mean"]):
            cell.css = "tie"
            cell.title += f"; not significantly different from {v['best']}"
            if np.isfinite(v["p_holm"]):
                cell.title += f" ({p_eq('p_holm', v['p_holm'])})"
    return cell


def results_table(
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    dataset: str,
    explainers: list[str],
    metrics: list[str],
    meta: dict[str, dict[str, Any]],
    alpha: float,
    test: str,
) -> ResultsTable:
    summ = summary[
        (summary["dataset"] == dataset)
        & summary["explainer"].isin(explainers)
        & summary["metric"].isin(metrics)
    ]
    tst = (
        tests[(tests["dataset"] == dataset) & tests["metric"].isin(metrics)]
        if len(tests)
        else tests
    )
    # descriptive outputs (ranked: false, e.g. fg_mean, which a flat map maximises) rank nobody
    ranked = [m for m in metrics if meta.get(m, {}).get("ranked", True) is not False]
    summ_r = summ[summ["metric"].isin(ranked)]
    tst_r = tst[tst["metric"].isin(ranked)] if len(tst) else tst
    ranks = stats.rank(summ_r, tst_r, alpha, test=test)
    vs_best = stats.compare_to_best(summ_r, tst_r, alpha, test=test)
    metrics = order_metrics(metrics, meta)
    cats, heads = _column_heads(metrics, meta, ranked)
    by_key = summ.set_index(["explainer", "metric"])
    rk = ranks.set_index(["explainer", "metric"])
    vb = vs_best.set_index(["explainer", "metric"])
    decimals = {
        m: decimals_for(summ.loc[summ["metric"] == m, ["mean", "ci_low", "ci_high"]].to_numpy())
        for m in metrics
    }
    top: dict[str, set[str]] = {}
    for m in metrics:
        sel = vb.xs(m, level="metric") if m in vb.index.get_level_values("metric") else None
        if sel is not None:
            top[m] = {e for e, r in sel.iterrows() if r["is_best"] or not r["significant"]}
    rows = []
    for e in explainers:
        cells = []
        for m in metrics:
            if (e, m) not in by_key.index:
                cells.append(Cell(text="–", title="not measured"))
                continue
            cells.append(_cell(by_key.loc[(e, m)], decimals[m], (e, m), rk, vb, alpha))
        er = ranks[ranks["explainer"] == e]["rank"].dropna()
        rows.append(
            {
                "explainer": e,
                "cells": cells,
                "mean_rank": fmt(er.astype(float).mean(), 2) if len(er) else "–",
                "n_top": int((er == 1).sum()) if len(er) else 0,
                "n_ranked": int(len(er)),
            }
        )
    return ResultsTable(
        categories=cats, metrics=heads, rows=rows, ranks=ranks, versus_best=vs_best, top_groups=top
    )


def combined_table(ranks: pd.DataFrame, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean rank across datasets per metric and over all metrics (rows best first)."""
    comb = stats.combined_ranking(ranks)
    metrics = order_metrics([m for m in pd.unique(comb["metric"]) if m != stats.ALL_METRICS], meta)
    overall = comb[comb["metric"] == stats.ALL_METRICS]
    lookup = comb.set_index(["explainer", "metric"])
    rows = []
    for r in overall.itertuples(index=False):
        cells = []
        for m in metrics:
            if (r.explainer, m) in lookup.index:
                v = lookup.loc[(r.explainer, m)]
                cells.append({"text": fmt(v["mean_rank"], 2), "n": int(v["n_datasets"])})
            else:
                cells.append({"text": "–", "n": 0})
        rows.append(
            {
                "explainer": r.explainer,
                "cells": cells,
                "overall": fmt(r.mean_rank, 2),
                "n": int(r.n_datasets),
            }
        )
    heads = [
        {"name": m, "arrow": arrow(bool(meta.get(m, {}).get("higher_is_better", True)))}
        for m in metrics
    ]
    return {"metrics": heads, "rows": rows, "frame": comb}
