"""Views: the models whose maps a run scores, and how ranks move between them.

A run with a learned explainer (DiET) has two kinds of view (``explained_model``):

* ``f_b``, the trained model the user cares about; its rows score maps *as explanations of
  f_b*: every metric calls f_b.
* ``f_s`` (``f_s:<label>`` with several learned explainers), the learned explainer's own model;
  its rows score maps as explanations of f_s.

A learned explainer's maps are computed on its f_s (DiET: test-time masks optimised against
f_s). Besides its own rows on f_s, they are scored on f_b as well, under the label
``<label>@f_s`` (:func:`on_f_b_label`): "DiET's maps, offered as explanations of f_b". Those
rows belong to the f_b view (``explained_model = f_b``): a metric treats them exactly as the
f_b maps of every other explainer (same model, same targets, same random draws), so
statistics compare them with f_b's explainers and never with anything on f_s. ``@`` is not
allowed in a config label, so such a label never collides with an explainer's own.

:func:`rank_shift` measures how much a learned explainer's own model favours it (its "home
advantage"): per metric, each explainer's rank among the same explainers on f_b and on f_s,
DiET's maps counting as ``<label>@f_s`` on f_b and ``<label>`` on f_s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .ops.pairs import is_pair

F_B = "f_b"
F_S = "f_s"
#: separates a learned explainer's label from the model its maps were computed on
SOURCE_SEPARATOR = "@"
#: the columns of :func:`rank_shift`
RANK_SHIFT_COLUMNS = [
    "dataset",
    "learned",
    "view",
    "metric",
    "explainer",
    "mean_f_b",
    "mean_f_s",
    "position_f_b",
    "position_f_s",
    "position_gain",
    "rank_f_b",
    "rank_f_s",
    "rank_gain",
    "n_explainers",
]


def on_f_b_label(label: str) -> str:
    """The explainer label of a learned explainer's maps scored on f_b: ``diet`` -> ``diet@f_s``."""
    return f"{label}{SOURCE_SEPARATOR}{F_S}"


def source_of(label: str) -> str | None:
    """The learned explainer whose f_s maps a result label holds (``diet@f_s`` -> ``diet``), else
    None."""
    base, sep, view = label.partition(SOURCE_SEPARATOR)
    return base if sep and view == F_S and base else None


def _positions(grp: pd.DataFrame, hib: bool) -> dict[str, float]:
    """1 + the number of explainers with a strictly better mean (ties share a position)."""
    means = grp.set_index("explainer")["mean"].astype(float)
    ok = means[np.isfinite(means)]
    signed = ok if hib else -ok
    return {e: float(1 + (signed > signed[e]).sum()) for e in ok.index}


def rank_shift(
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    alpha: float = 0.05,
    *,
    test: str = "t",
) -> pd.DataFrame:
    """How each explainer's standing moves between f_b and a learned explainer's f_s.

    For every (dataset[, grid], learned explainer, ranked metric): the explainers scored on both
    models (the learned explainer's maps as ``<label>@f_s`` on f_b, ``<label>`` on f_s) are ranked
    among themselves on each model, twice: by **position** (1 + the number with a better mean)
    and by the report's **rank** (1 + the number significantly better: Holm-adjusted paired
    test below ``alpha``, as :func:`xaiarena.stats.rank`; Holm over the view's whole family).
    ``position_gain = position_f_b - position_f_s`` and ``rank_gain = rank_f_b - rank_f_s``:
    positive means the explainer stands better on f_s. Positions are taken among the same
    explainers on both models, so the gains of one metric sum to zero; a learned explainer's
    gain is what its own model adds to its standing against the rest (its home advantage).

    ``summary``/``tests`` are a run's ``results/summary.csv`` and ``tests.csv`` (or the tests
    over replicates); outputs declared ``ranked: false`` in ``meta`` and agreement pairs
    (``a~b``) are left out. Returns :data:`RANK_SHIFT_COLUMNS` (plus ``grid`` in a grid run).

    Longer than 80 lines because the docstring defines the comparison in full; the body is one
    loop over the datasets and their explained models.
    """
    cols = (
        RANK_SHIFT_COLUMNS[:1]
        + (["grid"] if "grid" in summary.columns else [])
        + RANK_SHIFT_COLUMNS[1:]
    )
    if "explained_model" not in summary.columns or not len(summary):
        return pd.DataFrame(columns=cols)
    meta = meta or {}
    ranked = [
        m
        for m in pd.unique(summary["metric"])
        if (meta.get(m) or {}).get("ranked", True) is not False
    ]
    summ = summary[summary["metric"].isin(ranked) & ~summary["explainer"].map(is_pair).astype(bool)]
    ctx = [c for c in ("dataset", "grid") if c in summ.columns]
    rows = []
    for keys, grp in summ.groupby(ctx, sort=False):
        context = dict(zip(ctx, keys if isinstance(keys, tuple) else (keys,), strict=True))
        names = {v: set(g["explainer"]) for v, g in grp.groupby("explained_model", sort=False)}
        if F_B not in names:
            continue
        for v in [v for v in names if v != F_B]:
            learned = sorted(
                e for e in names[v] if e not in names[F_B]
            )  # only on f_s: its own maps
            rename = {on_f_b_label(k): k for k in learned}
            common = sorted({rename.get(e, e) for e in names[F_B]} & names[v])
            if len(common) < 2:
                continue
            by = {
                view: _standing(grp, tests, context, view, rename, common, alpha, test)
                for view in (F_B, v)
            }
            for m in ranked:
                if m not in by[F_B] or m not in by[v]:
                    continue
                (mb, pb, rb), (ms, ps, rs) = by[F_B][m], by[v][m]
                for e in common:
                    if e not in pb or e not in ps:
                        continue
                    rows.append(
                        {
                            **context,
                            "learned": ", ".join(learned),
                            "view": v,
                            "metric": m,
                            "explainer": e,
                            "mean_f_b": mb[e],
                            "mean_f_s": ms[e],
                            "position_f_b": pb[e],
                            "position_f_s": ps[e],
                            "position_gain": pb[e] - ps[e],
                            "rank_f_b": rb[e],
                            "rank_f_s": rs[e],
                            "rank_gain": rb[e] - rs[e],
                            "n_explainers": len(common),
                        }
                    )
    return pd.DataFrame(rows, columns=cols)


def _standing(
    grp: pd.DataFrame,
    tests: pd.DataFrame,
    context: dict[str, Any],
    view: str,
    rename: dict[str, str],
    common: list[str],
    alpha: float,
    test: str,
) -> dict[str, tuple[dict, dict, dict]]:
    """``{metric: (means, positions, ranks)}`` of the explainers ``common`` on ``view``."""
    s = grp[grp["explained_model"] == view].drop(columns=["explained_model"])
    s = s.assign(explainer=s["explainer"].replace(rename))
    s = s[s["explainer"].isin(common)]
    t = tests if tests is not None else pd.DataFrame(columns=stats.TESTS_COLUMNS)
    if len(t):
        keep = np.ones(len(t), dtype=bool)
        for c, val in {**context, "explained_model": view}.items():
            if c in t.columns:
                keep &= (t[c] == val).to_numpy()
        t = t[keep].drop(columns=["explained_model"], errors="ignore")
        t = t.assign(
            explainer_a=t["explainer_a"].replace(rename),
            explainer_b=t["explainer_b"].replace(rename),
        )
        t = t[t["explainer_a"].isin(common) & t["explainer_b"].isin(common)]
    ranks = stats.rank(s, t, alpha, test=test)
    out = {}
    for m, sm in s.groupby("metric", sort=False):
        hib = bool(sm["higher_is_better"].iloc[0])
        rk = ranks[ranks["metric"] == m].set_index("explainer")["rank"]
        out[m] = (
            {e: float(x) for e, x in zip(sm["explainer"], sm["mean"], strict=True)},
            _positions(sm, hib),
            {e: (np.nan if pd.isna(x) else float(x)) for e, x in rk.items()},
        )
    return out


def home_advantage(shift: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset[, grid], learned explainer, explainer): the mean gains of :func:`rank_shift`
    over the metrics, and on how many metrics the explainer moved up, stayed, moved down (by
    position). Rows: the learned explainer first, then the others by mean position gain."""
    ctx = [c for c in ("dataset", "grid") if c in shift.columns]
    cols = [
        *ctx,
        "learned",
        "explainer",
        "n_metrics",
        "mean_position_f_b",
        "mean_position_f_s",
        "mean_position_gain",
        "mean_rank_f_b",
        "mean_rank_f_s",
        "mean_rank_gain",
        "up",
        "same",
        "down",
    ]
    rows = []
    for keys, grp in shift.groupby([*ctx, "learned"], sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        part = []
        for e, g in grp.groupby("explainer", sort=False):
            gain = g["position_gain"]
            part.append(
                {
                    **dict(zip([*ctx, "learned"], keys, strict=True)),
                    "explainer": e,
                    "n_metrics": len(g),
                    "mean_position_f_b": float(g["position_f_b"].mean()),
                    "mean_position_f_s": float(g["position_f_s"].mean()),
                    "mean_position_gain": float(gain.mean()),
                    "mean_rank_f_b": float(g["rank_f_b"].mean()),
                    "mean_rank_f_s": float(g["rank_f_s"].mean()),
                    "mean_rank_gain": float(g["rank_gain"].mean()),
                    "up": int((gain > 0).sum()),
                    "same": int((gain == 0).sum()),
                    "down": int((gain < 0).sum()),
                }
            )
        learned = keys[-1]
        part.sort(
            key=lambda d: (d["explainer"] != learned, -d["mean_position_gain"], str(d["explainer"]))
        )
        rows += part
    return pd.DataFrame(rows, columns=cols)


__all__ = [
    "F_B",
    "F_S",
    "RANK_SHIFT_COLUMNS",
    "SOURCE_SEPARATOR",
    "home_advantage",
    "on_f_b_label",
    "rank_shift",
    "source_of",
]
