"""Runner: same-model views for learned explainers, batching/order independence, labelled metric
outputs, reading attributions by their recorded key."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

import xaiarena

TINY = {
    "data.n_train": 300, "data.n_test": 80, "training.epochs": 1, "model.channels": [4, 8, 8],
    "evaluation.n_samples": 24, "evaluation.batch_size": 8,
}
TINY_DIET = {"name": "diet", "n_train": 48, "rounds": 1, "mask_max_epochs": 1, "model_max_epochs": 1,
             "test_max_steps": 3}


def _cfg(explainers, metrics, **extra):
    return {"name": "t", "data": "hard_mnist", "model": "lenet", "explainers": explainers, "metrics": metrics,
            **extra}


@pytest.fixture(scope="module")
def diet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "run"
    return xaiarena.run(_cfg(["saliency", "random", TINY_DIET],
                             ["sparseness", {"name": "agreement_spearman", "reference": "saliency"}]),
                        out=out, overrides=TINY, show_progress=False)


def test_other_explainers_also_explain_f_s_and_rows_say_which_model(diet_run):
    ps = diet_run.per_sample
    assert set(ps["explained_model"]) == {"f_b", "f_s"}
    by_view = ps.groupby("explained_model")["explainer"].agg(set)
    assert by_view["f_b"] == {"saliency", "random", "saliency~random"}
    assert {"saliency", "random", "diet"} <= by_view["f_s"]
    assert "explained_model" in diet_run.summary.columns and "explained_model" in diet_run.tests.columns
    assert not ((ps["explained_model"] == "f_b") & (ps["explainer"] == "diet")).any()
    # the maps of f_s are maps of f_s, recorded per view
    info = diet_run.info["datasets"]["hard_mnist"]["explainers"]
    assert set(info["saliency"]["views"]) == {"f_b", "f_s"} and set(info["diet"]["views"]) == {"f_s"}
    assert diet_run.attributions("saliency", explained_model="f_s").shape == (24, 64, 64)


def test_paired_tests_compare_maps_of_one_model_only(diet_run):
    tests = diet_run.tests
    for _, row in tests.iterrows():
        for e in (row["explainer_a"], row["explainer_b"]):
            sel = diet_run.per_sample
            assert ((sel["explained_model"] == row["explained_model"]) & (sel["explainer"] == e)).any()
    fb = tests[tests["explained_model"] == "f_b"]
    assert "diet" not in set(fb["explainer_a"]) | set(fb["explainer_b"])
    fs = tests[(tests["explained_model"] == "f_s") & (tests["metric"] == "sparseness")]
    assert {"diet", "saliency", "random"} == set(fs["explainer_a"]) | set(fs["explainer_b"])


def test_report_shows_both_views(diet_run):
    html = diet_run.report_path.read_text()
    assert "maps of f_b" in html and "maps of f_s" in html and "fair comparisons with DiET" in html


def test_the_fair_view_can_be_turned_off(tmp_path):
    res = xaiarena.run(_cfg(["saliency", TINY_DIET], ["sparseness"]), out=tmp_path / "r",
                       overrides={**TINY, "evaluation.also_explain_f_s": False}, show_progress=False)
    ps = res.per_sample
    assert set(ps.loc[ps["explained_model"] == "f_s", "explainer"]) == {"diet"}
    assert set(ps.loc[ps["explained_model"] == "f_b", "explainer"]) == {"saliency"}


@pytest.mark.integration
def test_results_do_not_depend_on_batch_size_or_metric_order(tmp_path):
    """The same config with evaluation.batch_size 16 and 64 (and the metric list reversed)
    gives identical per-sample results."""
    metrics = [{"name": "faithfulness_correlation", "nr_runs": 20, "subset_size": 64},
               {"name": "max_sensitivity", "nr_samples": 3}, "topk_iou"]
    explainers = [{"name": "smoothgrad", "nt_samples": 4}, {"name": "gradient_shap", "n_samples": 4}, "random"]
    over = {**TINY, "evaluation.n_samples": 40}
    a = xaiarena.run(_cfg(explainers, metrics), out=tmp_path / "a",
                     overrides={**over, "evaluation.batch_size": 16}, show_progress=False).per_sample
    b = xaiarena.run(_cfg(explainers, metrics[::-1]), out=tmp_path / "b",
                     overrides={**over, "evaluation.batch_size": 64}, show_progress=False).per_sample
    key = ["dataset", "explained_model", "explainer", "metric", "sample_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_two_labelled_instances_of_one_metric_coexist(tmp_path):
    res = xaiarena.run(_cfg(["saliency", "random"], [
        {"name": "pixel_perturbation", "label": "pp_black", "percentages": [20], "fill": "black"},
        {"name": "pixel_perturbation", "label": "pp_mean", "percentages": [20], "fill": "mean"},
        {"name": "aopc", "label": "aopc4", "steps": 4}]), out=tmp_path / "r", overrides=TINY, show_progress=False)
    metrics = set(res.summary["metric"])
    assert {"pp_black:keep20_accuracy", "pp_mean:keep20_accuracy", "pp_black:remove20_drop",
            "aopc4_morf", "aopc4_lerf"} <= metrics
    assert not any(m.startswith("keep20") for m in metrics)
    meta = res.info["metrics_meta"]
    assert meta["pp_mean:keep20_accuracy"]["label"] == "pp_mean"


def test_attributions_are_read_by_their_recorded_key(tmp_path):
    out = tmp_path / "r"
    res = xaiarena.run(_cfg(["saliency"], ["sparseness"]), out=out, overrides=TINY, show_progress=False)
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
    assert hits["hard_mnist/explain/saliency@f_s"] is False and hits["hard_mnist/explain/diet"] is False
    assert not torch.equal(third.attributions("saliency", explained_model="f_s"),
                           first.attributions("saliency", explained_model="f_s"))
