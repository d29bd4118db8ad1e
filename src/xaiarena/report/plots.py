"""Report figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state are not used).

Every function returns ``None`` when there is nothing to draw. PNGs carry no
timestamp or version metadata, so the same inputs give byte-identical files.

Conventions
    * One colour per explainer for the whole report (:func:`explainer_colors`).
    * Heatmaps: each map is divided by its own maximum absolute value and drawn
      on ``[-1, 1]`` with a diverging colormap (red = positive = more important,
      blue = negative), so maps of different explainers are comparable in shape,
      not in scale. Ground-truth masks are drawn as a contour.
    * Radar chart: each metric is min-max normalised across the explainers of
      the dataset after orienting it so that higher is better
      (``(score - worst) / (best - worst)``: 1 = best explainer, 0 = worst; a
      metric on which all explainers tie is left out); a category's value is the
      mean over its metrics. It shows relative standing, not absolute quality.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_PALETTE = [
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
]
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "svg.hashsalt": "xaiarena",
}
if "text.parse_math" in rcParams:  # names from data must never be read as mathtext
    _STYLE["text.parse_math"] = False
DPI = 110


def _canvas_figure(canvas, width: int, height: int) -> tuple[Figure, Any]:
    """A figure of exactly ``width`` x ``height`` pixels showing ``canvas`` (pixel coordinates, no
    axes)."""
    fig = Figure(figsize=(width / DPI, height / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    return fig, ax


def explainer_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _arrow(hib: bool) -> str:
    return "↑" if hib else "↓"


def _safe(text: Any) -> str:
    """Text for matplotlib: ``$`` would start mathtext on matplotlib < 3.6."""
    s = str(text)
    return s if "text.parse_math" in rcParams else s.replace("$", r"\$")


# --------------------------------------------------------------------------- bars


def bar_charts(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    explainers: Sequence[str],
    meta: dict[str, dict[str, Any]],
    colors: dict[str, str],
    best_of: dict[str, set[str]] | None = None,
) -> bytes | None:
    """Small multiples: one horizontal bar chart per metric, 95% CI as error bars.

    ``best_of[metric]`` names the explainers in the best group; their bars are
    drawn solid, the others lighter.
    """
    metrics = [m for m in metrics if (summary["metric"] == m).any()]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    row_h = 0.28 * len(explainers) + 0.9
    with rc_context(_STYLE):
        fig = Figure(figsize=(3.4 * ncols, row_h * nrows + 0.2), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            sub = summary[summary["metric"] == metric].set_index("explainer")
            names = [e for e in explainers if e in sub.index]
            y = np.arange(len(names))[::-1]
            mean = sub.loc[names, "mean"].to_numpy(float)
            lo = np.nan_to_num(mean - sub.loc[names, "ci_low"].to_numpy(float), nan=0.0)
            hi = np.nan_to_num(sub.loc[names, "ci_high"].to_numpy(float) - mean, nan=0.0)
            best = (best_of or {}).get(metric, set())
            alpha = [1.0 if (not best or n in best) else 0.45 for n in names]
            for yi, m, a, n in zip(y, mean, alpha, names, strict=True):
                ax.barh(yi, 0 if np.isnan(m) else m, color=colors[n], alpha=a, height=0.7)
            ax.errorbar(
                np.nan_to_num(mean),
                y,
                xerr=np.vstack([lo.clip(0), hi.clip(0)]),
                fmt="none",
                ecolor="#222222",
                elinewidth=1,
                capsize=2.5,
            )
            ax.set_yticks(y, [_safe(n) for n in names])
            ax.grid(axis="y", visible=False)
            ax.axvline(0, color="#555555", linewidth=0.8)
            hib = bool(meta.get(metric, {}).get("higher_is_better", True))
            ax.set_title(_safe(f"{metric} {_arrow(hib)}"), loc="left")
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        return _png(fig)


# --------------------------------------------------------------------------- curves


def curve_plots(
    curves: pd.DataFrame,
    explainers: Sequence[str],
    meta: dict[str, dict[str, Any]],
    colors: dict[str, str],
) -> bytes | None:
    """One panel per curve (deletion, insertion, ...): mean line and 95% band per explainer."""
    if curves is None or not len(curves):
        return None
    metrics = list(pd.unique(curves["metric"]))
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    with rc_context(_STYLE):
        fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows + 0.5), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            sub = curves[curves["metric"] == metric]
            names = [e for e in explainers if (sub["explainer"] == e).any()]
            names += [e for e in pd.unique(sub["explainer"]) if e not in names]
            for e in names:
                c = sub[sub["explainer"] == e].sort_values("x")
                color = colors.get(e, "#333333")
                x = c["x"].to_numpy(float)
                ax.fill_between(
                    x,
                    c["ci_low"].to_numpy(float),
                    c["ci_high"].to_numpy(float),
                    color=color,
                    alpha=0.18,
                    linewidth=0,
                )
                ax.plot(x, c["mean"].to_numpy(float), color=color, linewidth=1.6, label=_safe(e))
            entry = meta.get(metric, {})
            title = metric + (
                f" {_arrow(bool(entry['higher_is_better']))}" if "higher_is_better" in entry else ""
            )
            ax.set_title(_safe(title), loc="left")
            xs = sub["x"].to_numpy(float)
            default = (
                "fraction perturbed" if xs.size and xs.min() >= 0 and xs.max() <= 1 else "step"
            )
            ax.set_xlabel(_safe(entry.get("x_label") or default))
            ax.set_ylabel(_safe(entry.get("y_label") or "mean score"))
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)))
        return _png(fig)


# --------------------------------------------------------------------------- radar


def radar_scores(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    explainers: Sequence[str],
    meta: dict[str, dict[str, Any]],
) -> tuple[list[str], dict[str, list[float]]]:
    """Per-category normalised scores (see module doc): ``(axes, {explainer: values})``.

    Axes are categories when at least three have a score, else metrics.
    """
    norm: dict[str, dict[str, float]] = {}
    for metric in metrics:
        sub = summary[summary["metric"] == metric].set_index("explainer")["mean"]
        sub = sub[[e for e in explainers if e in sub.index]].astype(float)
        hib = bool(meta.get(metric, {}).get("higher_is_better", True))
        oriented = sub if hib else -sub
        lo, hi = (
            np.nanmin(oriented.to_numpy()) if oriented.notna().any() else np.nan,
            np.nanmax(oriented.to_numpy()) if oriented.notna().any() else np.nan,
        )
        if not np.isfinite(lo) or not np.isfinite(hi) or hi == lo:
            continue
        norm[metric] = {
            e: float((v - lo) / (hi - lo)) for e, v in oriented.items() if np.isfinite(v)
        }
    cats: dict[str, list[str]] = {}
    for m in norm:
        cats.setdefault(str(meta.get(m, {}).get("category", "other")), []).append(m)
    groups = cats if len(cats) >= 3 else {m: [m] for m in norm}
    axes_names = list(groups)
    values = {}
    for e in explainers:
        vals = []
        for ax in axes_names:
            xs = [norm[m][e] for m in groups[ax] if e in norm[m]]
            vals.append(float(np.mean(xs)) if xs else float("nan"))
        values[e] = vals
    return axes_names, values


def radar_chart(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    explainers: Sequence[str],
    meta: dict[str, dict[str, Any]],
    colors: dict[str, str],
) -> bytes | None:
    axes_names, values = radar_scores(summary, metrics, explainers, meta)
    if len(axes_names) < 3:
        return None
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False)
    closed = np.append(angles, angles[0])
    with rc_context(_STYLE):
        fig = Figure(figsize=(6.6, 3.5))  # manual layout: room for side labels and legend
        ax = fig.add_axes((0.16, 0.11, 0.4, 0.76), projection="polar")
        ax.set_theta_offset(np.pi / 2)
        ax.set_theta_direction(-1)
        for e, vals in values.items():
            v = np.nan_to_num(np.array(vals), nan=0.0)
            v = np.append(v, v[0])
            ax.plot(closed, v, color=colors.get(e, "#333333"), linewidth=1.6, label=_safe(e))
            ax.fill(closed, v, color=colors.get(e, "#333333"), alpha=0.07)
        ax.set_xticks(angles, [_safe(a) for a in axes_names])
        ax.tick_params(axis="x", pad=4)
        for label, angle in zip(ax.get_xticklabels(), angles, strict=True):
            x = np.sin(angle)  # clockwise from the top: screen x of the tick
            label.set_horizontalalignment("left" if x > 0.1 else "right" if x < -0.1 else "center")
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], color="#777777", fontsize=7)
        ax.set_rlabel_position(180 / len(axes_names))
        ax.spines["polar"].set_color("#bbbbbb")
        fig.legend(loc="center left", bbox_to_anchor=(0.71, 0.5))
        return _png(fig)


# --------------------------------------------------------------------------- heatmaps


def pick_examples(
    labels: np.ndarray,
    preds: np.ndarray,
    n_correct: int = 3,
    n_wrong: int = 3,
    correct: np.ndarray | None = None,
) -> list[int]:
    """Indices of the first ``n_correct`` correct and ``n_wrong`` incorrect predictions
    (``correct`` overrides ``labels == preds``, e.g. for a model with its own label space)."""
    hit = (labels == preds) if correct is None else np.asarray(correct, dtype=bool)
    ok = np.flatnonzero(hit)[:n_correct]
    bad = np.flatnonzero(~hit)[:n_wrong]
    return [int(i) for i in np.concatenate([ok, bad])]


def _rgb(img: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) image (uint8 or float in [0, 1]) -> (H, W, 3) float in [0, 1]."""
    img = np.asarray(img)
    scale = 255.0 if img.dtype == np.uint8 or img.max(initial=0) > 1.0 else 1.0
    img = img.astype(np.float64) / scale
    if img.ndim == 3:
        img = img[0] if img.shape[0] < 3 else np.moveaxis(img[:3], 0, -1)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.clip(img, 0.0, 1.0)


def _upsample(a: np.ndarray, f: int) -> np.ndarray:
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def _outline(mask: np.ndarray, f: int, width: int) -> np.ndarray:
    """Inner boundary (``width`` px) of the mask upsampled by ``f``."""
    m = _upsample(np.asarray(mask, dtype=bool), f)
    inner = m.copy()
    for _ in range(width):
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _wrap(name: str, width: int) -> str:
    """Break a long name into lines of at most ``width`` characters, preferring ``_ - .`` and
    spaces."""
    lines, rest = [], name
    while len(rest) > width:
        cut = max(rest.rfind(ch, 1, width + 1) for ch in "_-. ")
        cut = cut + 1 if cut > 0 else width
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:]
    return "\n".join([*lines, rest])


def _attribution_tile(a: np.ndarray, f: int, cmap: Any, outline: np.ndarray | None) -> np.ndarray:
    """One map as an RGB tile upsampled ``f`` times: scaled by its maximum absolute finite value
    (non-finite values as 0), coloured by ``cmap``, the mask outline drawn in dark grey."""
    finite = np.isfinite(a)
    scale = np.abs(a[finite]).max() if finite.any() else 0.0
    a = np.where(finite, a, 0.0) / scale if scale > 0 else np.zeros_like(a)
    tile = _upsample(cmap((a + 1) / 2)[..., :3], f)
    if outline is not None:
        tile[outline] = (0.07, 0.07, 0.07)
    return tile


def _row_labels(ax: Any, info: list[dict[str, Any]], x: float, ys: list[float]) -> None:
    """Each example row's true class and prediction, marked ✓ (green) or ✗ (red)."""
    for row, y in zip(info, ys, strict=True):
        mark = "✓" if row["correct"] else "✗"
        ax.text(
            x,
            y,
            _safe(f"{mark} true: {row['label']}\npred: {row['pred']}"),
            fontsize=7.5,
            ha="right",
            va="center",
            color="#1a7f37" if row["correct"] else "#c0392b",
        )


def _example_rows(
    example: dict[str, np.ndarray],
    rows: list[int],
    labels: np.ndarray,
    preds: np.ndarray,
    hit: np.ndarray,
) -> list[dict[str, Any]]:
    """``{"sample_id", "label", "pred", "correct"}`` per example row, classes by name where the
    example names them."""
    names = [str(c) for c in example.get("class_names", [])]
    # a model with its own classes (a pretrained ImageNet model) names its predictions itself
    pred_names = (
        [str(c) for c in example["pred_class_names"]] if "pred_class_names" in example else names
    )
    ids = example.get("sample_ids", np.arange(len(labels)))

    def cname(k: int, names: list[str] = names) -> str:
        return names[k] if 0 <= k < len(names) else str(k)

    info = []
    for i in rows:
        sid = ids[i]
        info.append(
            {
                "sample_id": sid.item() if hasattr(sid, "item") else sid,
                "label": cname(int(labels[i])),
                "pred": cname(int(preds[i]), pred_names),
                "correct": bool(hit[i]),
            }
        )
    return info


def heatmap_grid(
    example: dict[str, np.ndarray],
    explainers: Sequence[str],
    explains: dict[str, str] | None = None,
    n_correct: int = 3,
    n_wrong: int = 3,
) -> tuple[bytes | None, list[dict[str, Any]]]:
    """Input (with mask outline) and each explainer's map for a few samples.

    The grid is composed as one pixel mosaic (each tile an integer upsampling of
    the image, so pixels stay square and crisp) and drawn in a single axes.
    Returns the PNG and, per row, ``{"sample_id", "label", "pred", "correct"}``.
    """
    from matplotlib import colormaps

    if not all(k in example for k in ("images", "labels", "preds")):
        return None, []
    labels, preds = np.asarray(example["labels"]), np.asarray(example["preds"])
    hit = np.asarray(example["correct"], dtype=bool) if "correct" in example else labels == preds
    rows = pick_examples(labels, preds, n_correct, n_wrong, correct=hit)
    cols = [e for e in explainers if f"attr__{e}" in example]
    if not rows or not cols:
        return None, []
    images = example["images"]
    masks = example.get("masks")
    explains = explains or {}
    h, w = _rgb(images[rows[0]]).shape[:2]
    f = max(1, round(128 / max(h, w)))
    th, tw = h * f, w * f
    gap, left, top, right = 8, 150, 46 if explains else 32, 72
    ncol = len(cols) + 1
    width = left + ncol * tw + (ncol - 1) * gap + right
    height = top + len(rows) * th + (len(rows) - 1) * gap + 8
    canvas = np.ones((height, width, 3))
    cmap = colormaps["RdBu_r"]
    line = max(1, f // 3)
    for r, i in enumerate(rows):
        y = top + r * (th + gap)
        outline = (
            _outline(masks[i], f, line)
            if masks is not None and np.asarray(masks[i]).shape == (h, w) and masks[i].any()
            else None
        )
        tile = _upsample(_rgb(images[i]), f)
        if outline is not None:
            tile[outline] = (0.0, 0.88, 0.38)
        canvas[y : y + th, left : left + tw] = tile[:th, :tw]
        for c, e in enumerate(cols, start=1):
            a = np.asarray(example[f"attr__{e}"][i], dtype=np.float64)
            if a.shape != (h, w):
                continue
            x = left + c * (tw + gap)
            canvas[y : y + th, x : x + tw] = _attribution_tile(a, f, cmap, outline)
    info = _example_rows(example, rows, labels, preds, hit)
    # colour bar in the right margin
    cb_h = min(len(rows) * th, 240)
    cb_x = width - right + 18
    ramp = cmap(np.linspace(1, 0, cb_h))[:, :3]
    canvas[top : top + cb_h, cb_x : cb_x + 12] = ramp[:, None, :]

    with rc_context(_STYLE):
        fig, ax = _canvas_figure(canvas, width, height)
        text = {"fontsize": 7.5, "ha": "center", "va": "bottom", "fontweight": "bold"}
        ax.text(left + tw / 2, top - 6, "input", **text)
        max_chars = max(8, int(tw / 5.5))
        for c, e in enumerate(cols, start=1):
            label = _wrap(str(e), max_chars) + (f"\n({explains[e]})" if e in explains else "")
            ax.text(left + c * (tw + gap) + tw / 2, top - 6, _safe(label), **text)
        _row_labels(ax, info, left - 8, [top + r * (th + gap) + th / 2 for r in range(len(info))])
        for v, yy in ((1, top), (0, top + cb_h / 2), (-1, top + cb_h)):
            ax.text(cb_x + 16, yy, f"{v:+d}" if v else "0", fontsize=7, ha="left", va="center")
        return _png(fig), info


# --------------------------------------------------------------------------- LIME superpixels


def top_superpixels(a: np.ndarray, n_top: int = 10) -> np.ndarray:
    """Labels ``1..k`` (``k <= n_top``) of the ``n_top`` superpixels with the largest *positive*
    values of a superpixel-constant map (LIME's: every pixel holds its superpixel's coefficient), 0
    elsewhere.

    A superpixel is recognised by its value, so this works on the full LIME map and on a
    ``num_features`` selection of it alike (two superpixels with exactly equal coefficients would
    count as one). The map of ``lime_image``'s ``get_image_and_mask(positive_only=True,
    num_features=n_top)``."""
    a = np.asarray(a, dtype=np.float64)
    values = np.unique(a[np.isfinite(a) & (a > 0)])[::-1][:n_top]
    labels = np.zeros(a.shape, dtype=np.int64)
    for k, v in enumerate(values, start=1):
        labels[a == v] = k
    return labels


def lime_superpixels(
    example: dict[str, np.ndarray], explainers: Sequence[str], n_top: int = 10, max_rows: int = 12
) -> bytes | None:
    """Each example image with the boundaries of its ``n_top`` positive LIME superpixels (yellow;
    the rest of the image dimmed), one column per LIME explainer; rows are named by the sample's
    file where the dataset names samples."""
    from skimage.segmentation import find_boundaries

    cols = [e for e in explainers if f"attr__{e}" in example]
    if not cols or "images" not in example:
        return None
    images = example["images"]
    n = min(len(images), max_rows)
    if n == 0:
        return None
    names = [str(x) for x in example["sample_names"]] if "sample_names" in example else None
    ids = example.get("sample_ids", np.arange(len(images)))
    h, w = _rgb(images[0]).shape[:2]
    f = max(1, round(160 / max(h, w)))
    th, tw = h * f, w * f
    gap, left, top = 8, 130, 30
    width = left + len(cols) * tw + (len(cols) - 1) * gap + 8
    height = top + n * th + (n - 1) * gap + 8
    canvas = np.ones((height, width, 3))
    counts: list[list[int]] = []
    for r in range(n):
        y = top + r * (th + gap)
        row = []
        for c, e in enumerate(cols):
            a = np.asarray(example[f"attr__{e}"][r])
            tile = _upsample(_rgb(images[r]), f)
            if a.shape == (h, w):
                labels = top_superpixels(a, n_top)
                row.append(int(labels.max()))
                up = _upsample(labels, f)
                tile[up == 0] *= (
                    0.55  # the rest of the image dimmed, so the selection reads at a glance
                )
                # every selected superpixel's outline, 2 px (lime_image's mark_boundaries draws the
                # union's)
                tile[find_boundaries(up, mode="thick")] = (1.0, 0.9, 0.0)
            x = left + c * (tw + gap)
            canvas[y : y + th, x : x + tw] = tile
        counts.append(row)
    with rc_context(_STYLE):
        fig, ax = _canvas_figure(canvas, width, height)
        max_chars = max(8, int(tw / 5.5))
        for c, e in enumerate(cols):
            ax.text(
                left + c * (tw + gap) + tw / 2,
                top - 6,
                _safe(_wrap(str(e), max_chars)),
                fontsize=7.5,
                ha="center",
                va="bottom",
                fontweight="bold",
            )
        for r in range(n):
            sid = ids[r].item() if hasattr(ids[r], "item") else ids[r]
            label = names[r] if names is not None else f"sample {sid}"
            shown = ", ".join(str(k) for k in counts[r])
            ax.text(
                left - 8,
                top + r * (th + gap) + th / 2,
                _safe(f"{_wrap(label, 20)}\n{shown} superpixels"),
                fontsize=7,
                ha="right",
                va="center",
            )
        return _png(fig)


# --------------------------------------------------------------------------- training


def training_history(history: Sequence[Any]) -> bytes | None:
    """Loss and accuracy per epoch from ``train_history`` (a list of dicts or of numbers)."""
    if not history or len(history) < 2:  # one point is better read from the numbers
        return None
    if all(isinstance(h, (int, float)) for h in history):
        series = {"value": [float(h) for h in history]}
        epochs = list(range(1, len(history) + 1))
    elif all(isinstance(h, dict) for h in history):
        keys = []
        for h in history:
            keys += [
                k
                for k, v in h.items()
                if isinstance(v, (int, float))
                and k != "epoch"
                and not isinstance(v, bool)
                and k not in keys
            ]
        series = {k: [float(h.get(k, np.nan)) for h in history] for k in keys}
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    else:
        return None
    if not series:
        return None
    acc = {k: v for k, v in series.items() if "acc" in k.lower()}
    other = {k: v for k, v in series.items() if k not in acc}
    panels = [p for p in (other, acc) if p]
    with rc_context(_STYLE):
        fig = Figure(figsize=(3.3 * len(panels), 2.3), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels, strict=True):
            for k, (name, vals) in enumerate(panel.items()):
                ax.plot(
                    epochs,
                    vals,
                    marker="o",
                    markersize=3,
                    linewidth=1.4,
                    color=_PALETTE[k % len(_PALETTE)],
                    label=_safe(name),
                )
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
        return _png(fig)


# --------------------------------------------------------------------------- study figures


def improvement_chart(imp: dict[str, Any]) -> bytes | None:
    """Horizontal bars of ``a - b`` per dataset, one panel per pairing (green: a better)."""
    views = [v for v in imp.get("views", []) if v.get("diffs")]
    if not views:
        return None
    with rc_context(_STYLE):
        fig = Figure(figsize=(4.2 * len(views), 0.5 + 0.45 * max(len(v["diffs"]) for v in views)))
        for i, v in enumerate(views):
            ax = fig.add_subplot(1, len(views), i + 1)
            names = [_safe(d) for d, _ in v["diffs"]]
            vals = [x for _, x in v["diffs"]]
            better = [r["better"] == "yes" for r in v["rows"]]
            ax.barh(names, vals, color=["#2e7d32" if b else "#c62828" for b in better])
            ax.axvline(0, color="#333333", linewidth=0.8)
            ax.set_title(_safe(v.get("short", v["label"])), fontsize=8)
            ax.set_xlabel(_safe(f"{imp['a']} − {imp['b']} ({imp['metric']})"))
            ax.invert_yaxis()
        fig.tight_layout()
        return _png(fig)


def accuracy_chart(accuracies: dict[str, Any]) -> bytes | None:
    """Test accuracy per dataset (finite values only)."""
    items = [
        (d, float(a))
        for d, a in accuracies.items()
        if isinstance(a, (int, float)) and np.isfinite(a)
    ]
    if not items:
        return None
    with rc_context(_STYLE):
        fig = Figure(figsize=(max(3.0, 1.1 * len(items) + 1), 2.8))
        ax = fig.add_subplot(1, 1, 1)
        ax.bar([_safe(d) for d, _ in items], [a for _, a in items], color="#1f77b4")
        for j, (_, a) in enumerate(items):
            ax.text(j, a + 0.01, f"{100 * a:.1f}%", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("test accuracy")
        fig.tight_layout()
        return _png(fig)


def dataset_preview(examples: dict[str, dict[str, np.ndarray]], n: int = 8) -> bytes | None:
    """A row of evaluation images (with their labels) per dataset."""
    rows = [(d, ex) for d, ex in examples.items() if "images" in ex and len(ex["images"])]
    if not rows:
        return None
    with rc_context(_STYLE):
        fig = Figure(figsize=(1.2 * n, 1.35 * len(rows)))
        for i, (d, ex) in enumerate(rows):
            names = list(ex.get("class_names", []))
            for j in range(min(n, len(ex["images"]))):
                ax = fig.add_subplot(len(rows), n, i * n + j + 1)
                ax.imshow(_rgb(ex["images"][j]), interpolation="nearest")
                lab = int(ex["labels"][j])
                ax.set_title(_safe(names[lab] if lab < len(names) else lab), fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if j == 0:
                    ax.set_ylabel(_safe(d), fontsize=8)
        fig.tight_layout()
        return _png(fig)
