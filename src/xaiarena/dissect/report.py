"""``build_dissect_report(run_dir)``: ``dissect.html`` and ``figures/dissect_*.png`` from a
dissection's saved results (``results/neurons.csv``, ``results/dissect_layers.csv``,
``run.json``), nothing recomputed.

The same conventions as the experiment report (:mod:`xaiarena.report.html`): one
self-contained page (inline CSS, figures as base64 PNG, no scripts or network references),
every string from the run escaped by jinja2's autoescaping, the same bytes for the same
run directory.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .. import __version__
from ..files import atomic_write_bytes, atomic_write_text, writes_inside
from ..report.html import printable
from ..report.tables import fmt_percent, fmt_seconds
from . import plots
from .results import read_layers, read_neurons

MAX_ROWS = 2000  # neuron rows shown per layer in the HTML (all of them are in neurons.csv)


def _slug(text: str) -> str:
    return (re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x")[:40]


def _fmt(v: Any, digits: int = 4) -> str:
    """A similarity for the tables: 4 decimals, or 4 significant digits when very large or small."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"


def _component(spec: Any) -> str:
    if not isinstance(spec, dict):
        return str(spec)
    params = spec.get("params") or {}
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{spec.get('name', '')}({inner})" if inner else str(spec.get("name", ""))


def _figure(run_dir: Path, name: str, png: bytes | None, title: str, caption: str) -> dict | None:
    if png is None:
        return None
    atomic_write_bytes(run_dir / "figures" / name, png)
    return {
        "title": title,
        "caption": caption,
        "file": f"figures/{name}",
        "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
    }


def build_dissect_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    with writes_inside(run_dir):  # figures/ as a symlink out of the run directory: refused
        return _build(run_dir)


def _layer_rows(layers: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per dissected layer of a dataset: neuron counts, top concept, similarities and how
    many output neurons match their own class."""
    layer_rows = []
    for _, r in layers.iterrows():
        own = "–"
        if (
            bool(r["output_layer"])
            and pd.notna(r.get("own_class_defined"))
            and r["own_class_defined"] > 0
        ):
            own = (
                f"{int(r['own_class_matches'])} / {int(r['own_class_defined'])} "
                f"({fmt_percent(r['own_class_rate'])})"
            )
        layer_rows.append(
            {
                "layer": r["layer"],
                "neurons": int(r["neurons"]),
                "constant": int(r["constant_neurons"]),
                "distinct": int(r["distinct_concepts"]),
                "top": f"{r['top_concept']} ({int(r['top_concept_neurons'])})"
                if r["top_concept"]
                else "–",
                "mean": _fmt(r["mean_similarity"]),
                "median": _fmt(r["median_similarity"]),
                "own": own,
            }
        )
    return layer_rows


def _neuron_tables(df: pd.DataFrame, tops: list[str]) -> list[dict[str, Any]]:
    """One table per layer: its first ``MAX_ROWS`` neurons with their concept, similarity, the
    other top concepts and the own-class match."""
    tables = []
    for layer, ldf in df.groupby("layer", sort=False):
        rows = []
        for _, r in ldf.head(MAX_ROWS).iterrows():
            rows.append(
                {
                    "neuron": int(r["neuron"]),
                    "concept": r["concept"],
                    "similarity": _fmt(float(r["similarity"])),
                    "others": ", ".join(str(r[c]) for c in tops[1:]),
                    "own": r.get("own_class", "") if "own_class" in ldf else "",
                    "match": r.get("matches_own_class") if "matches_own_class" in ldf else None,
                    "constant": bool(r.get("constant", False)),
                }
            )
        tables.append(
            {
                "layer": layer,
                "rows": rows,
                "truncated": len(ldf) > MAX_ROWS,
                "n": len(ldf),
                "has_own": "own_class" in ldf and ldf["own_class"].astype(str).ne("").any(),
            }
        )
    return tables


def _setup_rows(dinfo: dict[str, Any]) -> list[tuple[str, str]]:
    """The set-up table of a dataset's section: model, accuracies, probe images, concepts, scorer,
    similarity, pooling."""
    acc = dinfo.get("test_accuracy")
    probe_acc = dinfo.get("probe_accuracy")
    setup = [
        (
            "Model",
            f"{dinfo.get('model', '')}"
            f"{' (pretrained, not trained)' if dinfo.get('pretrained') else ''}",
        ),
        (
            "Test accuracy",
            fmt_percent(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else "–",
        ),
        (
            "Probe images",
            f"{dinfo.get('n_images', '')} from the {dinfo.get('split', '')} split"
            + (
                f" (model accuracy on them {fmt_percent(probe_acc)})"
                if isinstance(probe_acc, (int, float)) and math.isfinite(probe_acc)
                else ""
            ),
        ),
        (
            "Concept set",
            f"{_component(dinfo.get('concepts'))}: {dinfo.get('n_concepts', '')} concepts",
        ),
        ("Concept scorer (P)", _component(dinfo.get("scorer"))),
        ("Similarity", _component(dinfo.get("similarity"))),
        ("Conv pooling", str(dinfo.get("pool", ""))),
    ]
    return setup


def _build(run_dir: Path) -> Path:
    neurons = read_neurons(run_dir / "results" / "neurons.csv")
    layers = read_layers(run_dir / "results" / "dissect_layers.csv")
    run = json.loads((run_dir / "run.json").read_text())
    info = run.get("dissect") or {}
    seed = int(info.get("seed", run.get("seed", 0)) or 0)
    sections = []
    for k, (dataset, df) in enumerate(neurons.groupby("dataset", sort=False), start=1):
        dinfo = (info.get("datasets") or {}).get(dataset, {})
        slug = f"dissect_d{k}_{_slug(dataset)}"
        figs = [
            _figure(
                run_dir,
                f"{slug}_concepts.png",
                plots.concept_bars(df),
                "Most frequent concepts per layer",
                f"The {plots.TOP_N} concepts that label the most neurons of each layer (top-1 "
                "concept per neuron; neurons with constant activation left out).",
            ),
            _figure(
                run_dir,
                f"{slug}_similarity.png",
                plots.similarity_scatter(df, seed=seed),
                "Similarity of the neurons per concept",
                "Each dot is a neuron labelled with one of the layer's most frequent concepts; the "
                "y axis is its similarity to that concept "
                f"({_component(dinfo.get('similarity'))}). Similarities are on the scale of the "
                "similarity function and comparable within a layer only.",
            ),
        ]
        layer_rows = _layer_rows(layers[layers["dataset"] == dataset])
        tops = sorted(c for c in df.columns if re.fullmatch(r"top\d+", c))
        tops.sort(key=lambda c: int(c[3:]))
        tables = _neuron_tables(df, tops)
        setup = _setup_rows(dinfo)
        sections.append(
            {
                "name": dataset,
                "anchor": f"d{k}",
                "setup": setup,
                "layers": layer_rows,
                "figures": [f for f in figs if f],
                "tables": tables,
                "top_cols": len(tops),
            }
        )
    stages = [
        {
            "name": str(n),
            "seconds": fmt_seconds(float(v.get("seconds", 0))),
            "cache": "cached" if v.get("cache_hit") else "",
        }
        for n, v in (info.get("stages") or {}).items()
    ]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("xaiarena.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    html = env.get_template("dissect.html.j2").render(
        title=str(run.get("name", run_dir.name)),
        seed=seed,
        device=str(info.get("device", run.get("device", ""))),
        config_hash=str(info.get("config_hash", "")),
        total=fmt_seconds(float(info.get("total_seconds", 0) or 0)),
        sections=sections,
        stages=stages,
        config=config,
        xaiarena_version=__version__,
    )
    path = run_dir / "dissect.html"
    atomic_write_text(path, printable(html))
    return path
