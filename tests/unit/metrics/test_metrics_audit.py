"""Audit of issue 12.6: on every RANKED output of every registered metric (image and text), a
constant map scores no better than a random map. An output a constant map wins on is
descriptive (``OutputSpec.ranked=False``, with its reason). docs/metrics.md lists the result per
output (``python tests/test_metrics_audit.py`` prints that table).

"No better" is direction-aware and paired: with ``d = constant - random`` per sample, a
higher-is-better output fails when ``mean(d) > 4 SE(d)`` (lower-is-better: ``< -4 SE``). The
data and seeds are fixed, so the test is deterministic; the descriptive outputs show it can fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.metrics import (
    TINY_OPTIONS,
    constant_fn,
    gen,
    gradient_fn,
    hashed_random_fn,
    tiny_image_batch,
    tiny_text_batch,
)
from xaiarena.registry import METRICS

N_IMAGE, N_TEXT = 96, 160
#: outputs a constant map is expected to win on: descriptive, and the proof that the audit has power
FLAT_WINNERS = {
    "fg_mean",
    "max_sensitivity",
    "avg_sensitivity",
    "relative_input_stability",
    "local_lipschitz_estimate",
}


def _compare(const: torch.Tensor, rand: torch.Tensor, higher_is_better: bool) -> dict:
    ok = ~(torch.isnan(const) | torch.isnan(rand))
    if not bool(ok.any()):
        return {
            "const": math.nan,
            "random": float(rand.nanmean()),
            "better": False,
            "note": "constant map: NaN",
        }
    d = (const[ok] - rand[ok]).double()
    se = float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
    gain = float(d.mean()) if higher_is_better else -float(d.mean())
    return {
        "const": float(const[ok].mean()),
        "random": float(rand[ok].mean()),
        "better": gain > 4 * se + 1e-6,
        "note": f"{ok.sum()} pairs, mean diff {float(d.mean()):+.4f} (4 SE {4 * se:.4f})",
    }


def audit(name: str) -> list[dict]:
    """Constant vs random map on every output of metric ``name``."""
    entry = METRICS.entry(name)
    options = dict(TINY_OPTIONS.get(name, {}))
    agreement = entry.meta["category"] == "agreement"
    if agreement:
        options["reference"] = "ref"
    metric = METRICS.create(name, **options)
    g = gen(21)
    if "text" in metric.modality:
        batch = tiny_text_batch(N_TEXT)
        shape = batch.inputs.shape
        maps = {"const": torch.ones(shape), "random": torch.rand(shape, generator=g)}
        if agreement:
            maps["ref"] = torch.rand(shape, generator=g)
        fns = None
    else:
        batch = tiny_image_batch(N_IMAGE)
        fns = {
            "const": constant_fn(1.0),
            "random": hashed_random_fn(),
            "ref": gradient_fn(batch.model),
        }
        maps = {k: f(batch.inputs, batch.targets, generator=gen(3)) for k, f in fns.items()}
        if not agreement:
            del maps["ref"]
    out = metric.evaluate(batch, maps, generator=gen(0), explainers=fns)
    rows = []
    for spec in metric.outputs():
        per = out.scores[spec.name]
        key = (lambda k: f"ref~{k}") if agreement else (lambda k: k)
        res = _compare(per[key("const")], per[key("random")], spec.higher_is_better)
        rows.append(
            {
                "metric": name,
                "output": spec.name,
                "ranked": spec.ranked,
                "higher_is_better": spec.higher_is_better,
                "reason": spec.unranked_reason,
                **res,
                "const_values": per[key("const")],
            }
        )
    return rows


@pytest.mark.parametrize("name", METRICS.names())
def test_a_constant_map_scores_no_better_than_a_random_map_on_ranked_outputs(name):
    for row in audit(name):
        if row["ranked"]:
            assert not row["better"], (
                f"{name}/{row['output']}: a constant map beats a random one ({row['note']})"
            )
        elif row["output"] in FLAT_WINNERS:
            # descriptive because a constant map wins: the audit detects it (it can fail)
            assert row["better"], (
                f"{name}/{row['output']} is descriptive, yet the constant map does not win"
            )
        if row["output"] == "fg_minus_bg":
            assert bool((row["const_values"] == 0).all())  # exactly 0 for a constant map
    unranked = (
        {r["output"] for r in audit(name) if not r["ranked"]}
        if name == "fg_bg_attribution"
        else set()
    )
    assert unranked in (set(), {"fg_mean", "bg_mean"})


def test_ranked_flags_reach_the_registry_metadata():
    meta = {o["name"]: o for o in METRICS.entry("fg_bg_attribution").meta["default_outputs"]}
    assert (
        not meta["fg_mean"]["ranked"]
        and not meta["bg_mean"]["ranked"]
        and meta["fg_minus_bg"]["ranked"]
    )
    assert "constant map" in meta["fg_mean"]["unranked_reason"]
    assert not METRICS.entry("max_sensitivity").meta["default_outputs"][0]["ranked"]


if __name__ == "__main__":  # the table of docs/metrics.md
    print("| metric | output | ranked? | constant vs random |")
    print("|---|---|---|---|")
    for n in METRICS.names():
        for r in audit(n):
            arrow = "↑" if r["higher_is_better"] else "↓"
            if math.isnan(r["const"]):
                verdict = "constant map: NaN (no score)"
            else:
                verdict = f"{r['const']:.3f} vs {r['random']:.3f} — " + (
                    "**constant wins**" if r["better"] else "not better"
                )
            print(
                f"| `{n}` | `{r['output']}` {arrow} | {'yes' if r['ranked'] else 'no'} "
                f"| {verdict} |"
            )
