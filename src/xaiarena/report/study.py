"""The study section of a report: the question, the protocol (source vs ours), the source's
reported numbers beside ours, and the source's own analyses, each labelled as such.

Everything comes from the saved config (``study``, ``protocol``, ``reference``) and the run's
results; nothing is recomputed from models. Agreement rules (stated in the report):

* a reported value **agrees** with ours when it lies inside our 95% confidence interval (a
  reported range, when it overlaps our interval);
* within one (dataset, metric), the source's **ordering** of explainers agrees with ours when
  Kendall's tau between the reported values and our means (oriented by the metric's
  direction) is 1; tau itself is shown;
* a reported object-vs-background statistic (``fg_bg:t``, ``fg_bg:effect_size``,
  ``fg_bg:p_value``) agrees when ours has the same sign and the same side of p = 0.05.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as sps

from .. import stats
from ..views import F_B, F_S, on_f_b_label, source_of
from .loading import RunData
from .tables import fmt, fmt_p, p_eq

BANDS = ((0.7, "high"), (0.4, "moderate"), (-math.inf, "low"))
FG_BG_STATS = {"t": "statistic", "effect_size": "effect_size", "p_value": "p_value"}


def _config(data: RunData) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(data.config_text or "") or {}
    except yaml.YAMLError:
        return {}
    return raw if isinstance(raw, dict) else {}


def band(value: float) -> str:
    """The source's agreement bands: >= 0.7 high, >= 0.4 moderate, else low."""
    if not np.isfinite(value):
        return "–"
    return next(name for lo, name in BANDS if value >= lo)


def pooled_cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """The source's effect size across datasets: (mean a - mean b) / sqrt((var a + var b) / 2) with
    population variances (NumPy's default ddof=0), 0 when both are constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    sd = math.sqrt((a.var() + b.var()) / 2)
    return float((a.mean() - b.mean()) / sd) if sd > 0 else 0.0


def _summary_row(
    summary: pd.DataFrame, dataset: str, view: str, explainer: str, metric: str
) -> pd.Series | None:
    sel = summary[
        (summary["dataset"] == dataset)
        & (summary["explainer"] == explainer)
        & (summary["metric"] == metric)
    ]
    if "explained_model" in sel.columns:
        sel = sel[sel["explained_model"] == view]
    return sel.iloc[0] if len(sel) else None


def reference_rows(
    data: RunData, refs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each reported value beside ours, and one sentence per (dataset, metric) ordering."""
    rows, groups = [], {}
    fg = _fg_bg(data)
    for ref in refs:
        dataset = ref.get("dataset") or (data.datasets[0] if len(data.datasets) == 1 else None)
        view = ref.get("explained_model") or "f_b"
        metric, explainer = str(ref["metric"]), str(ref["explainer"])
        rng = ref.get("range")
        value = float(ref["value"]) if ref.get("value") is not None else float(np.mean(rng))
        shown = fmt(value, 4) if rng is None else f"{fmt(rng[0], 2)} to {fmt(rng[1], 2)}"
        row = {
            "metric": metric,
            "explainer": explainer,
            "dataset": dataset or "–",
            "reported": shown,
            "source": str(ref.get("source", "")),
            "note": str(ref.get("note", "")),
            "ours": "–",
            "ci": "",
            "agrees": "–",
        }
        if metric.startswith("fg_bg:"):
            stat = FG_BG_STATS.get(metric.split(":", 1)[1])
            sel = (
                fg[(fg["explainer"] == explainer) & (fg["test"] == "t")]
                if fg is not None and stat
                else None
            )
            if dataset is not None and sel is not None:
                sel = sel[sel["dataset"] == dataset]
            if sel is not None and len(sel):
                r = sel.iloc[0]
                ours = float(r[stat])
                row["ours"] = fmt_p(ours) if stat == "p_value" else fmt(ours, 3)
                if stat == "p_value":
                    row["agrees"] = "yes" if (ours < 0.05) == (value < 0.05) else "no"
                else:
                    row["agrees"] = (
                        "yes" if np.sign(ours) == np.sign(value) and (r["p_value"] < 0.05) else "no"
                    )
                row["ci"] = f"n = {int(r['n'])}, {p_eq('p', r['p_value'])}"
            rows.append(row)
            continue
        s = _summary_row(data.summary, dataset, view, explainer, metric) if dataset else None
        if s is not None:
            row["ours"] = fmt(s["mean"], 4)
            if np.isfinite(s["ci_low"]) and np.isfinite(s["ci_high"]):
                row["ci"] = f"[{fmt(s['ci_low'], 4)}, {fmt(s['ci_high'], 4)}]"
                if rng is None:
                    row["agrees"] = "yes" if s["ci_low"] <= value <= s["ci_high"] else "no"
                else:  # a reported range: our CI overlaps it
                    row["agrees"] = (
                        "yes" if s["ci_low"] <= rng[1] and s["ci_high"] >= rng[0] else "no"
                    )
            groups.setdefault((dataset, view, metric), []).append(
                (explainer, value, float(s["mean"]), bool(s["higher_is_better"]))
            )
        rows.append(row)
    return rows, _orderings(groups)


def _orderings(
    groups: dict[tuple[Any, str, str], list[tuple[str, float, float, bool]]],
) -> list[str]:
    """One sentence per (dataset, view, metric) with two or more explainers: the source's ordering
    of the explainers and ours, with Kendall's tau."""
    orderings = []
    for (dataset, _view, metric), items in groups.items():
        items = list(
            {e: (e, *rest) for e, *rest in items}.values()
        )  # one per explainer (the last given)
        if len(items) < 2:  # an ordering needs two explainers
            continue
        names = [e for e, *_ in items]
        reported = [v for _, v, _, _ in items]
        ours = [m for _, _, m, _ in items]
        tau = sps.kendalltau(reported, ours).statistic
        hib = items[0][3]
        order_src = [n for _, n in sorted(zip(reported, names, strict=True), reverse=hib)]
        order_ours = [n for _, n in sorted(zip(ours, names, strict=True), reverse=hib)]
        same = order_src == order_ours
        orderings.append(
            f"{metric} on {dataset}: source order {' > '.join(order_src)}; ours "
            f"{' > '.join(order_ours)} (Kendall's tau {fmt(tau, 2)}): "
            f"{'the same ordering' if same else 'a different ordering'}."
        )
    return orderings


def _fg_bg(data: RunData) -> pd.DataFrame | None:
    path = data.run_dir / "results" / "fg_bg_tests.csv"
    return pd.read_csv(path) if path.exists() else None


def _label_on(summary: pd.DataFrame, dataset: str, view: str, explainer: str) -> str | None:
    """How ``explainer``'s maps are named among the rows scored on ``view``: its own label, or on
    f_b a learned explainer's ``<label>@f_s`` (its maps of f_s scored on f_b); None if neither."""
    sel = summary[summary["dataset"] == dataset]
    if "explained_model" in sel.columns:
        sel = sel[sel["explained_model"] == view]
    names = set(sel["explainer"])
    for name in (explainer, on_f_b_label(explainer) if view == F_B else None):
        if name is not None and name in names:
            return name
    return None


def _pair_test(
    t: pd.DataFrame, dataset: str, view: str | None, metric: str, la: str, lb: str
) -> str:
    """The paired t-test of ``la`` against ``lb`` on one dataset and metric (from ``tests``, in
    either order) as ``p_holm = ..., d_z = ...`` with d_z signed for ``la - lb``; "" if none."""
    sel = (
        t[
            (t["dataset"] == dataset)
            & (t["metric"] == metric)
            & (t["test"] == "t")
            & (
                ((t["explainer_a"] == la) & (t["explainer_b"] == lb))
                | ((t["explainer_a"] == lb) & (t["explainer_b"] == la))
            )
        ]
        if len(t)
        else t
    )
    if view is not None and "explained_model" in sel.columns:
        sel = sel[sel["explained_model"] == view]
    if not len(sel):
        return ""
    r = sel.iloc[0]
    dz = float(r["effect_size"]) * (1 if r["explainer_a"] == la else -1)
    return f"{p_eq('p_holm', r['p_holm'])}, d_z = {fmt(dz, 2)}"


def _across_datasets(av: list[float], bv: list[float]) -> str:
    """The source's across-dataset analysis of the per-dataset means ``av`` and ``bv``: a paired
    t-test (3+ datasets) and Cohen's d with the pooled SD (2+ datasets)."""
    across = "fewer than 3 datasets: the source skips its paired t-test"
    if len(av) >= 3:
        t, p = stats.paired_t(np.array(av) - np.array(bv))
        across = f"t = {fmt(t, 3)}, {p_eq('p', p)}"
    across += (
        f"; Cohen's d (pooled SD, the source's) = {fmt(pooled_cohens_d(av, bv), 3)}"
        if len(av) >= 2
        else ""
    )
    return across


def improvement(data: RunData, study: dict[str, Any]) -> dict[str, Any] | None:
    """The source's per-dataset table (a - b on one metric, "a better", wins k/n) and its
    across-dataset paired t-test and pooled Cohen's d, once per explained model: both maps are
    always scored on the same model (on f_b a learned explainer's maps count as ``<label>@f_s``).
    The source's own pairing (DiET on f_s against Grad-CAM on f_b: two different scoring models)
    is never computed."""
    pair, metric = study.get("compare"), study.get("metric")
    if not pair or len(pair) != 2 or not metric:
        return None
    a, b = pair
    summ = data.summary
    views = list(pd.unique(summ["explained_model"])) if "explained_model" in summ else [None]
    views = sorted(views, key=lambda v: (v != F_B, str(v)))  # the model being explained first
    out = []
    for view in views:
        rows, av, bv, labels = [], [], [], set()
        for d in data.datasets:
            la = _label_on(summ, d, view, a) if view is not None else a
            lb = _label_on(summ, d, view, b) if view is not None else b
            ra = _summary_row(summ, d, view, la, metric) if la else None
            rb = _summary_row(summ, d, view, lb, metric) if lb else None
            if ra is None or rb is None:
                continue
            labels.add((la, lb))
            hib = bool(ra["higher_is_better"])
            diff = float(ra["mean"] - rb["mean"])
            better = diff > 0 if hib else diff < 0
            test = _pair_test(data.tests, d, view, metric, la, lb)
            rows.append(
                {
                    "dataset": d,
                    "a": fmt(ra["mean"], 4),
                    "b": fmt(rb["mean"], 4),
                    "diff": f"{diff:+.4f}",
                    "better": "yes" if better else "no",
                    "test": test or "–",
                }
            )
            av.append(float(ra["mean"]))
            bv.append(float(rb["mean"]))
        if not rows:
            continue
        across = _across_datasets(av, bv)
        wins = sum(r["better"] == "yes" for r in rows)
        la, lb = sorted(labels)[0]
        if view is None:
            label = f"{a} vs {b}"
        elif source_of(la):
            label = (
                f"{a}'s maps (computed on {F_S}) vs {lb}, both scored on {view} (the model "
                "being explained)"
            )
        else:
            what = "the model being explained" if view == F_B else "DiET's distilled model"
            label = f"{la} vs {lb}, both explaining {view} ({what})"
        short = f"{la} vs {lb}" + (f", scored on {view}" if view is not None else "")
        out.append(
            {
                "label": label,
                "short": short,
                "view": view,
                "a_label": la,
                "b_label": lb,
                "rows": rows,
                "wins": f"{wins}/{len(rows)}",
                "across": across,
                "diffs": [(r["dataset"], float(r["diff"])) for r in rows],
            }
        )
    return {"a": a, "b": b, "metric": metric, "views": out} if out else None


def agreement_bands(data: RunData) -> list[dict[str, Any]]:
    """Every agreement output's mean per dataset with the source's band."""
    meta = data.metrics_meta
    agree = [m for m, e in meta.items() if e.get("category") == "agreement"]
    summ = data.summary[data.summary["metric"].isin(agree)]
    rows = []
    for r in summ.itertuples(index=False):
        rows.append(
            {
                "dataset": r.dataset,
                "view": getattr(r, "explained_model", "f_b"),
                "metric": r.metric,
                "pair": r.explainer,
                "mean": fmt(r.mean, 3),
                "band": band(float(r.mean)),
            }
        )
    return rows


def section(data: RunData, figs, alpha: float) -> dict[str, Any] | None:
    """The study section's context for the template (None when the config declares no study)."""
    raw = _config(data)
    study, protocol, refs = raw.get("study"), raw.get("protocol") or [], raw.get("reference") or []
    if not study and not protocol and not refs:
        return None
    study = study or {}
    analyses = set(study.get("analyses") or [])
    out: dict[str, Any] = {
        "title": study.get("title", ""),
        "question": study.get("question", ""),
        "id": study.get("id", ""),
        "protocol": protocol,
        "reference": [],
        "orderings": [],
        "improvement": None,
        "bands": [],
        "accuracy": None,
        "figures": [],
    }
    if refs:
        out["reference"], out["orderings"] = reference_rows(data, refs)
    if "improvement" in analyses:
        imp = improvement(data, study)
        out["improvement"] = imp
        if imp:
            from .plots import improvement_chart

            fig = figs.add(
                "study_improvement.png",
                improvement_chart(imp),
                "Improvement per dataset",
                f"{imp['a']} minus {imp['b']} on {imp['metric']} per dataset (positive: {imp['a']} "
                "better given the metric's direction), one panel per scoring model.",
            )
            if fig:
                out["figures"].append(fig)
    if data.examples:
        from .plots import dataset_preview

        fig = figs.add(
            "study_preview.png",
            dataset_preview(data.examples),
            "The datasets",
            "Evaluation images of each dataset with their labels (the report's examples).",
        )
        if fig:
            out["figures"].insert(0, fig)
    if "agreement_bands" in analyses:
        out["bands"] = agreement_bands(data)
        from .plots import accuracy_chart

        accs = {d: (data.dataset_info(d).get("test_accuracy")) for d in data.datasets}
        fig = figs.add(
            "study_accuracy.png",
            accuracy_chart(accs),
            "Test accuracy of the explained models",
            "f_b's accuracy on each dataset's test split.",
        )
        if fig:
            out["figures"].append(fig)
    return out
