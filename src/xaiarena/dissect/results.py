"""A dissection's saved tables, read back: ``results/neurons.csv`` and
``results/dissect_layers.csv`` (the report, :class:`~xaiarena.dissect.runner.DissectResult` and
scripts read them through here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_neurons(path: str | Path) -> pd.DataFrame:
    """``results/neurons.csv`` with concepts kept as text (words such as "null", "nan" or "true"
    are concepts of the 20k-word set, not missing values or booleans)."""
    path = Path(path)
    header = pd.read_csv(path, nrows=0).columns
    text = {
        c: str
        for c in header
        if c in ("dataset", "layer", "concept", "own_class")
        or (c.startswith("top") and not c.endswith("_similarity"))
    }
    df = pd.read_csv(
        path,
        dtype=text,
        keep_default_na=False,
        na_values={c: [""] for c in header if c not in text},
    )
    if "matches_own_class" in df:
        df["matches_own_class"] = df["matches_own_class"].map(
            {True: True, False: False, "True": True, "False": False}
        )
    return df


def read_layers(path: str | Path) -> pd.DataFrame:
    """``results/dissect_layers.csv``, the most frequent label kept as text (empty when no neuron
    varies)."""
    path = Path(path)
    header = pd.read_csv(path, nrows=0).columns
    text = {c: str for c in ("dataset", "layer", "top_concept") if c in header}
    return pd.read_csv(
        path,
        dtype=text,
        keep_default_na=False,
        na_values={c: [""] for c in header if c not in text},
    )
