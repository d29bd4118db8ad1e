"""Foreground vs background: does an explainer put more attribution on the object?

For every explainer scored by ``fg_bg_attribution`` (per-sample outputs ``fg_mean``,
the mean normalised attribution inside the ground-truth mask, and ``bg_mean``, outside
it), the per-image differences ``d = fg_mean - bg_mean`` are tested across images:

* paired t-test (``scipy.stats.ttest_rel``) and Wilcoxon signed-rank test, two-sided;
* effect size Cohen's d_z = mean(d) / sd(d);
* Holm adjustment over the explainers of one dataset, per test.

This is a within-explainer test (object vs background on the same images), unlike
``tests.csv``, which compares explainers with each other. The runner writes it to
``results/fg_bg_tests.csv``; the report shows it with overlays of the maps on the
images (mask outlined).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..stats import BG, FG, fg_bg_tests, informative  # noqa: F401  (the tests live in stats)

# --------------------------------------------------------------------------- overlays


def overlay_grid(example: dict[str, np.ndarray], explainers: list[str], n: int = 6) -> bytes | None:
    """Each explainer's map (scaled to its own maximum, positive part, ``jet``) blended over the
    image, with the ground-truth mask outlined; one row per example image."""
    from matplotlib import colormaps, rc_context
    from matplotlib.figure import Figure

    from .plots import _STYLE, _outline, _png, _rgb, _safe

    cols = [e for e in explainers if f"attr__{e}" in example]
    if "images" not in example or not cols:
        return None
    images = example["images"]
    masks = example.get("masks")
    rows = list(range(min(n, len(images))))
    if not rows:
        return None
    names = [str(c) for c in example.get("class_names", [])]
    pred_names = [str(c) for c in example.get("pred_class_names", names)]
    cmap = colormaps["jet"]
    tiles = []
    for i in rows:
        img = _rgb(images[i])
        outline = None
        if masks is not None and np.asarray(masks[i]).shape == img.shape[:2] and masks[i].any():
            outline = _outline(masks[i], 1, max(1, img.shape[0] // 112))
        row = [img.copy()]
        for e in cols:
            a = np.asarray(example[f"attr__{e}"][i], dtype=np.float64)
            a = np.where(np.isfinite(a), np.clip(a, 0, None), 0.0)
            a = a / a.max() if a.max() > 0 else a
            row.append(0.5 * img + 0.5 * cmap(a)[..., :3])
        if outline is not None:
            for t in row:
                t[outline] = (1.0, 1.0, 1.0)
        tiles.append(row)
    h, w = tiles[0][0].shape[:2]
    size = 1.6
    preds = example.get("preds")
    with rc_context({**_STYLE, "axes.grid": False}):
        fig = Figure(figsize=(size * (len(cols) + 1), size * len(rows) * h / w + 0.4))
        axes = fig.subplots(len(rows), len(cols) + 1, squeeze=False)
        for r, row in enumerate(tiles):
            for c, t in enumerate(row):
                ax = axes[r][c]
                ax.imshow(t, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(_safe("input" if c == 0 else cols[c - 1]), fontsize=8)
            if preds is not None:
                p = int(preds[rows[r]])
                label = pred_names[p] if 0 <= p < len(pred_names) else str(p)
                axes[r][0].set_ylabel(_safe(f"pred: {label}"), fontsize=7)
        fig.subplots_adjust(left=0.06, right=0.99, top=0.93, bottom=0.01, wspace=0.04, hspace=0.06)
        return _png(fig)


# --------------------------------------------------------------------------- report section


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def _fmt_p(p: Any) -> str:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(v):
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def section(
    per_sample: pd.DataFrame | None,
    dataset: str,
    example: dict[str, np.ndarray] | None,
    explainers: list[str],
    add_figure,
    prefix: str,
    alpha: float = 0.05,
) -> dict[str, Any] | None:
    """Rows (one per explainer: means, t, Wilcoxon, d_z) and the overlay figure, or None when the
    dataset has no fg/bg outputs. ``add_figure(name, png, title, caption)`` stores a figure."""
    if per_sample is None:
        return None
    tests = fg_bg_tests(per_sample[per_sample["dataset"] == dataset])
    if not len(tests):
        return None
    rows = []
    for (explainer, fg_metric), grp in tests.groupby(["explainer", "fg_metric"], sort=False):
        t = grp[grp["test"] == "t"].iloc[0]
        w = grp[grp["test"] == "wilcoxon"].iloc[0]
        # a Wilcoxon on so few images that its smallest possible p is not below alpha says
        # nothing: no p is printed and it does not vote (stats.informative)
        w_ok = informative(w["min_p"], alpha)
        sig = bool(
            np.isfinite(t["p_holm"]) and t["p_holm"] < alpha and (not w_ok or w["p_holm"] < alpha)
        )
        rows.append(
            {
                "explainer": explainer,
                "metric": fg_metric,
                "n": int(t["n"]),
                "fg": _fmt(t["fg_mean"]),
                "bg": _fmt(t["bg_mean"]),
                "diff": _fmt(t["mean_diff"]),
                "t": _fmt(t["statistic"], 2),
                "p_t": _fmt_p(t["p_holm"]),
                "w": _fmt(w["statistic"], 1),
                "p_w": _fmt_p(w["p_holm"]) if w_ok else "–",
                "w_note": ""
                if w_ok
                else (
                    f"Wilcoxon not informative with {int(t['n'])} images "
                    f"(smallest possible p = {_fmt(w['min_p'], 3)}, not below "
                    f"alpha = {alpha:g})"
                ),
                "dz": _fmt(t["effect_size"], 2),
                "significant": sig,
                "direction": "object" if float(t["mean_diff"]) > 0 else "background",
            }
        )
    fig = None
    if example is not None:
        fig = add_figure(
            f"{prefix}_overlays.png",
            overlay_grid(example, explainers),
            "Attribution overlays",
            "Each map's positive part, scaled to its own maximum (jet), blended over the image; "
            "white outline: the ground-truth object mask.",
        )
    return {"rows": rows, "overlays": fig}


# --------------------------------------------------------------------------- per-image agreement


def agreement_per_image(
    per_sample: pd.DataFrame | None,
    dataset: str,
    meta: dict[str, dict[str, Any]],
    max_images: int = 60,
    names: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Per-image table of every agreement output (columns: output x pair), for studies on a few
    images (at most ``max_images``; larger runs keep it in per_sample.parquet only). ``names``
    (run.json ``sample_names``: sample id -> file name) names each image where the dataset does."""
    if per_sample is None or not len(per_sample):
        return None
    agree = [m for m, e in meta.items() if e.get("category") == "agreement"]
    df = per_sample[(per_sample["dataset"] == dataset) & per_sample["metric"].isin(agree)]
    if not len(df) or df["sample_id"].nunique() > max_images:
        return None
    wide = df.pivot_table(
        index="sample_id", columns=["metric", "explainer"], values="value", aggfunc="first"
    )
    cols = [
        (m, e)
        for m in agree
        for e in dict.fromkeys(df.loc[df["metric"] == m, "explainer"])
        if (m, e) in wide
    ]
    names = names or {}
    rows = [
        {
            "sample_id": int(sid),
            "name": names.get(str(int(sid)), ""),
            "cells": [_fmt(wide.loc[sid, c]) for c in cols],
        }
        for sid in wide.index
    ]
    means = [_fmt(wide[c].mean()) for c in cols]
    return {
        "columns": [{"metric": m, "pair": e} for m, e in cols],
        "rows": rows,
        "means": means,
        "named": any(r["name"] for r in rows),
    }
