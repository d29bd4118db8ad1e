"""Runner: same-model views for learned explainers, batching/order independence, labelled metric
outputs, reading attributions by their recorded key."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

import xaiarena
from tests.support.paths import ROOT
from tests.support.runs import TINY_DIET
from tests.support.runs import config as _cfg

TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "evaluation.n_samples": 24,
    "evaluation.batch_size": 8,
}


@pytest.fixture(scope="module")
def diet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "run"
    return xaiarena.run(
        _cfg(
            ["saliency", "random", TINY_DIET],
            ["sparseness", {"name": "agreement_spearman", "reference": "saliency"}],
        ),
        out=out,
        overrides=TINY,
        show_progress=False,
    )


def test_other_explainers_also_explain_f_s_and_rows_say_which_model(diet_run):
    ps = diet_run.per_sample
    assert set(ps["explained_model"]) == {"f_b", "f_s"}
    by_view = ps.groupby("explained_model")["explainer"].agg(set)
    # f_b: the plain explainers' maps of f_b and DiET's maps (of f_s) scored on f_b, labelled
    # diet@f_s
    assert by_view["f_b"] == {
        "saliency",
        "random",
        "diet@f_s",
        "saliency~random",
        "saliency~diet@f_s",
    }
    assert {"saliency", "random", "diet"} <= by_view["f_s"] and "diet@f_s" not in by_view["f_s"]
    assert (
        "explained_model" in diet_run.summary.columns
        and "explained_model" in diet_run.tests.columns
    )
    assert not ((ps["explained_model"] == "f_b") & (ps["explainer"] == "diet")).any()
    # the maps of f_s are maps of f_s, recorded per view
    info = diet_run.info["datasets"]["hard_mnist"]["explainers"]
    assert set(info["saliency"]["views"]) == {"f_b", "f_s"} and set(info["diet"]["views"]) == {
        "f_s"
    }
    assert diet_run.attributions("saliency", explained_model="f_s").shape == (24, 64, 64)


def test_diets_maps_scored_on_f_b_are_its_maps_of_f_s(diet_run):
    """diet@f_s holds DiET's own maps: a score that does not call the model (sparseness) is the
    same, sample by sample, on f_b as on f_s; one that does (agreement with saliency) pairs them
    with f_b's maps."""
    ps = diet_run.per_sample
    sp = ps[ps["metric"] == "sparseness"]
    on_fb = sp[(sp["explained_model"] == "f_b") & (sp["explainer"] == "diet@f_s")].set_index(
        "sample_id"
    )["value"]
    own = sp[(sp["explained_model"] == "f_s") & (sp["explainer"] == "diet")].set_index("sample_id")[
        "value"
    ]
    assert len(on_fb) == 24
    pd.testing.assert_series_equal(on_fb.sort_index(), own.sort_index())
    info = diet_run.info["datasets"]["hard_mnist"]["explainers"]
    assert "diet@f_s" not in info  # no new maps: the rows reuse the recorded maps of f_s
    import torch

    assert torch.equal(diet_run.attributions("diet@f_s"), diet_run.attributions("diet"))
    assert "hard_mnist/metric/sparseness" in diet_run.info["stages"]


def test_paired_tests_compare_maps_of_one_model_only(diet_run):
    from xaiarena import stats

    tests, ps = diet_run.tests, diet_run.per_sample
    for _, row in tests.iterrows():
        for e in (row["explainer_a"], row["explainer_b"]):
            assert (
                (ps["explained_model"] == row["explained_model"]) & (ps["explainer"] == e)
            ).any()
    fb = tests[tests["explained_model"] == "f_b"]
    assert "diet" not in set(fb["explainer_a"]) | set(fb["explainer_b"])
    fs = tests[(tests["explained_model"] == "f_s") & (tests["metric"] == "sparseness")]
    assert {"diet", "saliency", "random"} == set(fs["explainer_a"]) | set(fs["explainer_b"])
    assert "diet@f_s" not in set(fs["explainer_a"]) | set(fs["explainer_b"])
    # DiET's maps scored on f_b are tested against the maps of f_b, on the scores of f_b only
    row = fb[
        (fb["metric"] == "sparseness")
        & (fb["test"] == "t")
        & ({"diet@f_s", "saliency"} == fb[["explainer_a", "explainer_b"]].apply(set, axis=1))
    ].iloc[0]
    sp = ps[(ps["metric"] == "sparseness") & (ps["explained_model"] == "f_b")]
    a = sp[sp["explainer"] == row["explainer_a"]].set_index("sample_id")["value"]
    b = sp[sp["explainer"] == row["explainer_b"]].set_index("sample_id")["value"]
    t, p = stats.paired_t((a - b.reindex(a.index)).to_numpy())
    assert row["statistic"] == pytest.approx(t) and row["p_value"] == pytest.approx(p)


def test_learned_maps_on_f_b_are_planned_as_f_b_rows_and_can_be_turned_off():
    from xaiarena.config import load_config
    from xaiarena.engine.plan import plan_units
    from xaiarena.engine.tasks import plan_tasks

    raw = _cfg(
        ["saliency", TINY_DIET],
        [
            "sparseness",
            {"name": "topk_iou", "explainers": ["diet"]},
            {"name": "pointing_game", "explainers": ["saliency"]},
        ],
    )

    def scored(cfg):
        return {t.name: t.explainers for t in plan_tasks(plan_units(cfg)) if t.kind == "score"}

    on = scored(load_config(raw))
    assert on["hard_mnist/metric/sparseness"] == ("saliency", "diet@f_s")
    assert on["hard_mnist/metric/topk_iou"] == ("diet@f_s",)  # 'diet' selects its maps on f_b too
    assert on["hard_mnist/metric/topk_iou@f_s"] == ("diet",)
    assert on["hard_mnist/metric/pointing_game"] == ("saliency",)
    task = next(
        t
        for t in plan_tasks(plan_units(load_config(raw)))
        if t.name == "hard_mnist/metric/topk_iou"
    )
    assert task.deps == ("hard_mnist/explain/diet",)  # after DiET's maps of f_s
    off = scored(load_config(raw, overrides=["evaluation.score_learned_on_f_b=false"]))
    assert (
        off["hard_mnist/metric/sparseness"] == ("saliency",)
        and "hard_mnist/metric/topk_iou" not in off
    )


def test_report_shows_both_views_and_the_home_advantage(diet_run):
    html = diet_run.report_path.read_text()
    assert "maps of f_b" in html and "maps of f_s" in html
    assert "diet@f_s" in html and "DiET&#39;s maps (its test-time masks" in html
    assert "Home advantage: how standings move between f_b and f_s" in html
    assert "favours every explainer" not in html  # the unmeasured claim is gone


def test_study_page_shows_the_home_advantage(diet_run, tmp_path):
    import importlib.util

    path = ROOT / "benchmarks" / "study_page.py"
    spec = importlib.util.spec_from_file_location("study_page", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.page(diet_run.run_dir, "xaiarena run ...", None, tmp_path / "figs", "figs")
    assert "## Home advantage: how standings move between f_b and f_s" in text
    assert "| diet (f_b: diet@f_s) |" in text and "`diet@f_s`: DiET's maps" in text


def test_the_fair_view_can_be_turned_off(tmp_path):
    res = xaiarena.run(
        _cfg(["saliency", TINY_DIET], ["sparseness"]),
        out=tmp_path / "r",
        overrides={**TINY, "evaluation.also_explain_f_s": False},
        show_progress=False,
    )
    ps = res.per_sample
    assert set(ps.loc[ps["explained_model"] == "f_s", "explainer"]) == {"diet"}
    # DiET is then compared with the others on f_b only, where its maps are scored as diet@f_s
    assert set(ps.loc[ps["explained_model"] == "f_b", "explainer"]) == {"saliency", "diet@f_s"}


def test_results_do_not_depend_on_batch_size_or_metric_order(tmp_path):
    """The same config with evaluation.batch_size 16 and 64 (and the metric list reversed)
    gives identical per-sample results."""
    metrics = [
        {"name": "faithfulness_correlation", "nr_runs": 20, "subset_size": 64},
        {"name": "max_sensitivity", "nr_samples": 3},
        "topk_iou",
    ]
    explainers = [
        {"name": "smoothgrad", "nt_samples": 4},
        {"name": "gradient_shap", "n_samples": 4},
        "random",
    ]
    over = {**TINY, "evaluation.n_samples": 40}
    a = xaiarena.run(
        _cfg(explainers, metrics),
        out=tmp_path / "a",
        overrides={**over, "evaluation.batch_size": 16},
        show_progress=False,
    ).per_sample
    b = xaiarena.run(
        _cfg(explainers, metrics[::-1]),
        out=tmp_path / "b",
        overrides={**over, "evaluation.batch_size": 64},
        show_progress=False,
    ).per_sample
    key = ["dataset", "explained_model", "explainer", "metric", "sample_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_two_labelled_instances_of_one_metric_coexist(tmp_path):
    res = xaiarena.run(
        _cfg(
            ["saliency", "random"],
            [
                {
                    "name": "pixel_perturbation",
                    "label": "pp_black",
                    "percentages": [20],
                    "fill": "black",
                },
                {
                    "name": "pixel_perturbation",
                    "label": "pp_mean",
                    "percentages": [20],
                    "fill": "mean",
                },
                {"name": "aopc", "label": "aopc4", "steps": 4},
            ],
        ),
        out=tmp_path / "r",
        overrides=TINY,
        show_progress=False,
    )
    metrics = set(res.summary["metric"])
    assert {
        "pp_black:keep20_accuracy",
        "pp_mean:keep20_accuracy",
        "pp_black:remove20_drop",
        "aopc4_morf",
        "aopc4_lerf",
    } <= metrics
    assert not any(m.startswith("keep20") for m in metrics)
    meta = res.info["metrics_meta"]
    assert meta["pp_mean:keep20_accuracy"]["label"] == "pp_mean"


def test_attributions_are_read_by_their_recorded_key(tmp_path):
    out = tmp_path / "r"
    res = xaiarena.run(
        _cfg(["saliency"], ["sparseness"]), out=out, overrides=TINY, show_progress=False
    )
    maps = res.attributions("saliency")
    # a newer file of the same explainer (another config's maps) must not be picked up
    folder = out / "cache" / "attributions" / "hard_mnist"
    decoy = folder / "saliency-0000000000000000.pt"
    import torch

    torch.save(torch.zeros_like(maps), decoy)
    later = time.time() + 10
    os.utime(decoy, (later, later))
    assert torch.equal(xaiarena.load(out).attributions("saliency"), maps)


def test_maps_of_f_s_are_keyed_by_f_s_itself(tmp_path, monkeypatch):
    """Same config, same fit key, another f_s (e.g. DiET's code or a default changed): nothing
    cached from the old f_s is served; the maps of f_b stay cached."""
    import torch

    from xaiarena.explainers.diet import DiET

    out = tmp_path / "r"
    cfg = _cfg(["saliency", TINY_DIET], ["sparseness"])
    first = xaiarena.run(cfg, out=out, overrides=TINY, show_progress=False)
    again = xaiarena.run(cfg, out=out, overrides=TINY, show_progress=False)
    hits = {k: v["cache_hit"] for k, v in again.info["stages"].items() if "/explain/" in k}
    assert hits and all(hits.values())

    original = DiET.explained_model

    def other_f_s(self, model):
        f_s = original(self, model)
        with torch.no_grad():
            next(f_s.parameters()).mul_(1.5)  # a different f_s from the same fit
        return f_s

    monkeypatch.setattr(DiET, "explained_model", other_f_s)
    third = xaiarena.run(cfg, out=out, overrides=TINY, show_progress=False)
    hits = {k: v["cache_hit"] for k, v in third.info["stages"].items() if "/explain/" in k}
    assert hits["hard_mnist/explain/saliency"] is True
    assert (
        hits["hard_mnist/explain/saliency@f_s"] is False
        and hits["hard_mnist/explain/diet"] is False
    )
    assert not torch.equal(
        third.attributions("saliency", explained_model="f_s"),
        first.attributions("saliency", explained_model="f_s"),
    )
