"""A study's presets and its reference section (the source's numbers beside ours)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import xaiarena
from tests.support.paths import ROOT
from xaiarena.errors import ConfigError
from xaiarena.report.study import reference_rows
from xaiarena.report.tables import p_eq

PRESETS = {
    "data": "hard_mnist",
    "model": "lenet",
    "explainers": ["saliency"],
    "metrics": ["sparseness"],
    "presets": {"small": {"training.epochs": 1, "evaluation.n_samples": 4}},
}


def test_a_preset_applies_its_overrides_and_the_command_line_wins():
    cfg = xaiarena.load_config(PRESETS, overrides=["preset=small"])
    assert cfg.training.epochs == 1 and cfg.evaluation.n_samples == 4
    cfg = xaiarena.load_config(PRESETS, overrides=["preset=small", "evaluation.n_samples=6"])
    assert cfg.evaluation.n_samples == 6 and cfg.training.epochs == 1


def test_an_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'smal'.*did you mean 'small'.*valid: small"):
        xaiarena.load_config(PRESETS, overrides=["preset=smal"])


def _data(tmp_path, rows):
    summary = pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "explained_model",
            "explainer",
            "metric",
            "mean",
            "ci_low",
            "ci_high",
            "higher_is_better",
        ],
    )
    return SimpleNamespace(summary=summary, datasets=["d"], run_dir=tmp_path)


def test_reference_values_and_ranges_are_judged_by_our_ci_and_orderings_need_two_explainers(
    tmp_path,
):
    data = _data(
        tmp_path,
        [("d", "f_b", "a", "m", 0.5, 0.4, 0.6, True), ("d", "f_b", "b", "m", 0.2, 0.1, 0.3, True)],
    )
    refs = [
        {"metric": "m", "explainer": "a", "value": 0.45, "source": "s"},  # inside our CI
        {"metric": "m", "explainer": "a", "range": [0.7, 0.9], "source": "s"},  # no overlap
        {"metric": "m", "explainer": "b", "value": 0.35, "source": "s"},
    ]  # outside
    rows, orderings = reference_rows(data, refs)
    assert [r["agrees"] for r in rows] == ["yes", "no", "no"]
    # one ordering over the two distinct explainers (a listed twice counts once)
    assert len(orderings) == 1 and "source order a > b; ours a > b" in orderings[0]
    assert "the same ordering" in orderings[0]
    _, only_a = reference_rows(data, refs[:2])
    assert only_a == []  # one explainer, given twice: no ordering to compare


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.0312, "p = 0.031"), (0.004, "p = 0.0040"), (3e-7, "p < 0.0001"), (float("nan"), "p = –")],
)
def test_p_values_read_as_a_relation(p, text):
    """The smallest p-values read 'p < 0.0001', never 'p = < 0.0001'."""
    assert p_eq("p", p) == text


def _study_run(tmp_path):
    """A hand-made run directory of a DiET study: three datasets, DiET's maps scored on f_s ("diet")
    and on f_b ("diet@f_s"), Grad-CAM on both. On f_s DiET is far ahead; on f_b it is behind."""
    import json

    import numpy as np
    import yaml

    from xaiarena import stats

    rng = np.random.default_rng(1)
    means = {
        ("f_b", "gradcam"): 0.5,
        ("f_b", "diet@f_s"): 0.4,
        ("f_s", "gradcam"): 0.45,
        ("f_s", "diet"): 0.8,
    }
    parts = []
    for k, d in enumerate(["d1", "d2", "d3"]):
        for (view, e), m in means.items():
            parts.append(
                pd.DataFrame(
                    {
                        "dataset": d,
                        "explained_model": view,
                        "explainer": e,
                        "metric": "keep",
                        "sample_id": np.arange(30),
                        "value": m + 0.02 * k + rng.normal(0, 0.05, 30),
                    }
                )
            )
    ps = pd.concat(parts, ignore_index=True)
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    meta = {"keep": {"higher_is_better": True, "category": "faithfulness", "ranked": True}}
    stats.summarize(ps, meta, models={d: "lenet" for d in ["d1", "d2", "d3"]}).to_csv(
        run / "results" / "summary.csv", index=False
    )
    stats.paired_tests(ps).to_csv(run / "results" / "tests.csv", index=False)
    info = {
        "explainers": {
            "gradcam": {"explains": "f_b", "views": {"f_b": {}, "f_s": {}}},
            "diet": {"explains": "f_s", "views": {"f_s": {}}},
        }
    }
    (run / "run.json").write_text(
        json.dumps(
            {"name": "s", "datasets": {d: info for d in ["d1", "d2", "d3"]}, "metrics_meta": meta}
        )
    )
    study = {
        "study": {
            "id": "000",
            "title": "DiET vs Grad-CAM",
            "compare": ["diet", "gradcam"],
            "metric": "keep",
            "analyses": ["improvement"],
        }
    }
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "s", **study}))
    return run, ps


def test_study_page_and_report_never_test_maps_of_different_models(tmp_path):
    import importlib.util

    from xaiarena import stats
    from xaiarena.report.loading import load_run
    from xaiarena.report.study import improvement

    run, ps = _study_run(tmp_path)
    imp = improvement(load_run(run), {"compare": ["diet", "gradcam"], "metric": "keep"})
    # one comparison per scoring model, both maps scored on it: f_b first (DiET's maps as diet@f_s)
    assert [(v["view"], v["a_label"], v["b_label"]) for v in imp["views"]] == [
        ("f_b", "diet@f_s", "gradcam"),
        ("f_s", "diet", "gradcam"),
    ]
    means = ps.groupby(["explained_model", "explainer", "dataset"])["value"].mean()
    t_fb, p_fb = stats.paired_t((means["f_b", "diet@f_s"] - means["f_b", "gradcam"]).to_numpy())
    assert imp["views"][0]["across"].startswith(f"t = {t_fb:.3f}".replace("-", "−"))
    assert imp["views"][0]["wins"] == "0/3" and imp["views"][1]["wins"] == "3/3"

    path = ROOT / "benchmarks" / "study_page.py"
    spec = importlib.util.spec_from_file_location("study_page", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.page(run, "xaiarena run ...", None, tmp_path / "figs", "figs")
    assert "## Improvement: diet minus gradcam on keep" in text
    # the source's pairing (DiET on f_s against Grad-CAM on f_b) is never computed, let alone tested
    t_cross, _ = stats.paired_t((means["f_s", "diet"] - means["f_b", "gradcam"]).to_numpy())
    assert f"{t_cross:.3f}".replace("-", "−") not in text and f"{t_cross:.3f}" not in text
    assert "the source's pairing: different models" not in text
    assert "**diet's maps (computed on f_s) vs gradcam, both scored on f_b" in text
    assert "**diet vs gradcam, both explaining f_s" in text
    assert "## Home advantage" in text

    from xaiarena.report import build_report

    html = build_report(run).read_text()
    assert f"{t_cross:.3f}".replace("-", "−") not in html and "Home advantage" in html
