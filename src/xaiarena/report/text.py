"""Word highlighting for text runs: the same texts under every explainer, side by side.

Reads ``results/examples/<dataset>.json`` (written by the runner for text
datasets: words, true and predicted class, optional ground-truth rationale and
every explainer's word scores) and turns it into rows the HTML template renders
as coloured ``<span>`` elements. Colours are diverging (red: the word supports
the explained class, blue: it speaks against it), scaled per text and explainer
by the largest magnitude, like the image heatmaps. Words are never marked up
here: the template escapes them (jinja2 autoescaping), so a text containing
``<script>`` is shown, not run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: words shown per text in the report (long reviews are cut, with a note)
MAX_WORDS = 80

_POS = (214, 39, 40)  # red, as in the heatmaps' positive end
_NEG = (31, 119, 180)  # blue


def load_text_examples(path: Path) -> dict[str, Any] | None:
    """The examples document, or None if the file is missing or not a text examples file."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("modality") != "text"
        or not isinstance(doc.get("samples"), list)
    ):
        return None
    return doc


def word_style(score: float, scale: float) -> str:
    """Inline CSS for one word: background alpha proportional to ``|score| / scale`` (numbers
    only)."""
    if not (isinstance(score, (int, float)) and math.isfinite(score)) or scale <= 0:
        return "background-color: transparent"
    v = max(-1.0, min(1.0, score / scale))
    r, g, b = _POS if v >= 0 else _NEG
    return f"background-color: rgba({r}, {g}, {b}, {abs(v) * 0.85:.3f})"


def _scale(scores: list[float]) -> float:
    finite = [abs(s) for s in scores if isinstance(s, (int, float)) and math.isfinite(s)]
    return max(finite) if finite else 0.0


def text_rows(
    doc: dict[str, Any], explainers: list[str], max_words: int = MAX_WORDS
) -> list[dict[str, Any]]:
    """One entry per example text: label, prediction and, per explainer, the coloured words."""
    classes = [str(c) for c in doc.get("class_names") or []]

    def cname(k: Any) -> str:
        try:
            return classes[int(k)]
        except (ValueError, TypeError, IndexError):
            return str(k)

    out = []
    for s in doc.get("samples") or []:
        words = [str(w) for w in s.get("words") or []]
        shown = words[:max_words]
        scores = s.get("scores") or {}
        rationale = s.get("rationale")
        rows = []
        for e in explainers + [k for k in scores if k not in explainers]:
            vals = scores.get(e)
            if not isinstance(vals, list):
                continue
            vals = [float(v) if isinstance(v, (int, float)) else float("nan") for v in vals]
            scale = _scale(vals)
            rows.append(
                {
                    "explainer": e,
                    "words": [
                        {
                            "text": w,
                            "style": word_style(vals[i] if i < len(vals) else float("nan"), scale),
                            "title": f"{vals[i]:.4g}"
                            if i < len(vals) and math.isfinite(vals[i])
                            else "n/a",
                        }
                        for i, w in enumerate(shown)
                    ],
                }
            )
        truth = None
        if isinstance(rationale, list):
            truth = [
                {"text": w, "marked": bool(rationale[i]) if i < len(rationale) else False}
                for i, w in enumerate(shown)
            ]
        total = int(s.get("n_words_total", len(words)) or len(words))
        out.append(
            {
                "sample_id": s.get("sample_id", ""),
                "label": cname(s.get("label")),
                "pred": cname(s.get("pred")),
                "correct": s.get("label") == s.get("pred"),
                "rows": rows,
                "rationale": truth,
                "cut": max(0, total - len(shown)),
            }
        )
    return out
