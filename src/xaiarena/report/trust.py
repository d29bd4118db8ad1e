"""The report section "Which metrics can you trust here?" (``results/meta.csv``; docs/meta.md).

One table per dataset (and grid point) and explained model: per ranked metric output its
reliability (Krippendorff's alpha of the per-sample explainer rankings, Kendall's W), agreement
with the other metrics of its category, MetaQuantus resilience, reactivity and meta-consistency MC,
with a reading that names the metrics whose per-sample rankings are no more alike than chance.
With replicates, the numbers are means over the replicates. Reads only saved files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .loading import _merge_grid, _read_csv
from .tables import fmt, order_metrics

#: a metric whose per-sample rankings are no more alike than chance at this level
#: (Friedman's test of Kendall's W)
NOISE_P = 0.05
_NUMERIC = [
    "reliability",
    "kendall_w",
    "friedman_p",
    "agreement",
    "resilience",
    "reactivity",
    "mc",
    "mc_model",
    "mc_input",
    "n_explainers",
    "n_samples",
    "n_meta_samples",
    "replicate",
    "seed",
]
_SHOWN = [
    "reliability",
    "kendall_w",
    "agreement",
    "resilience",
    "reactivity",
    "mc",
    "mc_model",
    "mc_input",
]
_PAIR_NUMERIC = ["spearman", "kendall_tau", "n_explainers", "replicate", "seed"]


def _names(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else ""


def _reading(frame: pd.DataFrame, pairs: pd.DataFrame | None, n_samples: int) -> list[str]:
    lines = []
    noise = list(frame.loc[frame["noise"], "metric"])
    if noise:
        lines.append(
            f"{_names(noise)}: the {n_samples} samples' rankings of the explainers are no more "
            f"alike than chance (Friedman's test of Kendall's W, p ≥ {NOISE_P:g}); do not rank "
            f"explainers on {'it' if len(noise) == 1 else 'them'} here."
        )
    alpha = frame[np.isfinite(frame["reliability"].to_numpy(np.float64)) & ~frame["noise"]]
    if len(alpha) >= 2:
        hi, lo = alpha.loc[alpha["reliability"].idxmax()], alpha.loc[alpha["reliability"].idxmin()]
        lines.append(
            f"Single samples agree most on the order of the explainers under {hi['metric']} "
            f"(α {fmt(hi['reliability'], 2)}) and least under {lo['metric']} "
            f"(α {fmt(lo['reliability'], 2)})."
        )
    for cat, grp in frame.groupby("category", sort=False):
        scored = grp[np.isfinite(grp["mc"].to_numpy(np.float64))]
        if len(scored) >= 2:
            best = scored.loc[scored["mc"].idxmax()]
            lines.append(
                f"Most meta-consistent {cat} metric: {best['metric']} (MC {fmt(best['mc'], 2)}: "
                f"resilience {fmt(best['resilience'], 2)}, reactivity "
                f"{fmt(best['reactivity'], 2)})."
            )
    if pairs is not None and len(pairs):
        opposed = pairs[(pairs["spearman"] < 0) & (pairs["metric_a"] < pairs["metric_b"])]
        for _, r in opposed.sort_values("spearman").head(3).iterrows():
            lines.append(
                f"{r['metric_a']} and {r['metric_b']} ({r['category']}) order the explainers in "
                f"opposite directions (Spearman {fmt(r['spearman'], 2)})."
            )
    return lines


def section(run_dir: str | Path, metrics_meta: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The section's context, or None when the run has no ``results/meta.csv``."""
    res = Path(run_dir) / "results"
    path = res / "meta.csv"
    if not path.exists():
        return None
    meta = _merge_grid(
        _read_csv(
            path,
            _NUMERIC
            + [c for c in pd.read_csv(path, nrows=0).columns if c.startswith(("iac_", "iec_"))],
        )
    )
    pairs_path = res / "meta_agreement.csv"
    pairs = _merge_grid(_read_csv(pairs_path, _PAIR_NUMERIC)) if pairs_path.exists() else None
    keys = [c for c in ("dataset", "explained_model") if c in meta.columns]
    n_rep = int(meta["replicate"].nunique()) if "replicate" in meta.columns else 1
    tables = []
    for k, grp in meta.groupby(keys, sort=False):
        k = k if isinstance(k, tuple) else (k,)
        context = dict(zip(keys, k, strict=True))
        agg = grp.groupby("metric", sort=False).agg(
            category=("category", "first"),
            **{c: (c, "mean") for c in _NUMERIC[:9] + ["n_samples", "n_meta_samples"]},
        )
        agg = agg.reset_index()
        agg = (
            agg.set_index("metric")
            .loc[order_metrics(list(agg["metric"]), metrics_meta)]
            .reset_index()
        )
        agg["noise"] = (
            agg["friedman_p"].to_numpy(np.float64) >= NOISE_P
        )  # NaN (undefined): not flagged
        sel = None
        if pairs is not None and len(pairs):
            sel = pairs
            for c, v in context.items():
                if c in sel.columns:
                    sel = sel[sel[c] == v]
            if "replicate" in sel.columns:
                sel = sel.groupby(["category", "metric_a", "metric_b"], sort=False, as_index=False)[
                    "spearman"
                ].mean()
        n_samples = int(agg["n_samples"].max()) if len(agg) else 0
        rows = [
            {
                "metric": r["metric"],
                "category": r["category"],
                "noise": bool(r["noise"]),
                **{c: fmt(r[c], 2) for c in _SHOWN},
            }
            for _, r in agg.iterrows()
        ]
        view = context.get("explained_model")
        tables.append(
            {
                "title": str(context["dataset"]) + (f" — maps of {view}" if view else ""),
                "rows": rows,
                "reading": _reading(agg, sel, n_samples),
                "n_samples": n_samples,
                "n_meta_samples": int(agg["n_meta_samples"].max()) if len(agg) else 0,
            }
        )
    return {"tables": tables, "n_replicates": n_rep, "noise_p": f"{NOISE_P:g}"}


__all__ = ["NOISE_P", "section"]
