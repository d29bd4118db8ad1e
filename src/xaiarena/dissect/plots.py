"""The two figures of a dissection (the seed study's): per layer, the 20 concepts that label
the most neurons (bar chart), and the similarity of the neurons carrying each of those
concepts (scatter). Neurons whose activation is constant over the probe images are left
out of both (their label is arbitrary); the titles say how many.

PNG bytes from matplotlib's Agg canvas with the report's style (no pyplot, no metadata), so
the same results give the same bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from ..report.plots import _PALETTE, _STYLE, _png, _safe

TOP_N = 20


def _layers(neurons: pd.DataFrame) -> list[str]:
    return list(pd.unique(neurons["layer"]))


def _live(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["constant"].astype(bool)] if "constant" in df else df


def top_concepts(df: pd.DataFrame, n: int = TOP_N) -> pd.Series:
    """Neurons per concept, the ``n`` most frequent (ties: alphabetical), for one layer."""
    counts = _live(df)["concept"].astype(str).value_counts()
    counts = (
        counts.rename_axis("c")
        .reset_index(name="n")
        .sort_values(["n", "c"], ascending=[False, True])
    )
    return counts.set_index("c")["n"].head(n)


def _title(layer: str, df: pd.DataFrame) -> str:
    n_const = len(df) - len(_live(df))
    extra = f"; {n_const} constant left out" if n_const else ""
    return _safe(f"{layer} ({len(df)} neurons{extra})")


def concept_bars(neurons: pd.DataFrame, n: int = TOP_N) -> bytes | None:
    """One horizontal bar chart per layer: the ``n`` concepts that label the most neurons."""
    layers = _layers(neurons)
    if not layers:
        return None
    ncols = min(3, len(layers))
    nrows = -(-len(layers) // ncols)
    with rc_context(_STYLE):
        fig = Figure(figsize=(3.9 * ncols, (0.2 * n + 1.0) * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
            df = neurons[neurons["layer"] == layer]
            counts = top_concepts(df, n)
            y = np.arange(len(counts))[::-1]
            ax.barh(y, counts.to_numpy(), color=_PALETTE[i % len(_PALETTE)], height=0.7)
            ax.set_yticks(y, [_safe(c) for c in counts.index])
            ax.grid(axis="y", visible=False)
            ax.set_xlabel("neurons labelled")
            ax.set_title(_title(layer, df), loc="left")
        for ax in axes.flat[len(layers) :]:
            ax.set_visible(False)
        return _png(fig)


def similarity_scatter(neurons: pd.DataFrame, n: int = TOP_N, seed: int = 0) -> bytes | None:
    """One panel per layer: the similarity of every neuron labelled with one of the layer's ``n``
    most frequent concepts, one column per concept (horizontal jitter drawn from ``seed``)."""
    layers = _layers(neurons)
    if not layers:
        return None
    rng = np.random.default_rng(seed)
    ncols = min(2, len(layers))
    nrows = -(-len(layers) // ncols)
    with rc_context(_STYLE):
        fig = Figure(figsize=(max(4.0, 0.24 * n + 1.2) * ncols, 3.2 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
            df = _live(neurons[neurons["layer"] == layer])
            names = list(top_concepts(df, n).index)
            for x, c in enumerate(names):
                sim = df.loc[df["concept"].astype(str) == c, "similarity"].to_numpy(float)
                jitter = rng.uniform(-0.18, 0.18, size=len(sim))
                ax.scatter(
                    x + jitter,
                    sim,
                    s=12,
                    alpha=0.75,
                    color=_PALETTE[i % len(_PALETTE)],
                    linewidths=0,
                )
            ax.set_xticks(np.arange(len(names)), [_safe(c) for c in names], rotation=60, ha="right")
            ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
            ax.set_ylabel("similarity")
            ax.set_title(_title(layer, neurons[neurons["layer"] == layer]), loc="left")
        for ax in axes.flat[len(layers) :]:
            ax.set_visible(False)
        return _png(fig)
