"""Runner with ``evaluation.meta: true``: results/meta.csv, the report section, the perturbation
stage's caching and its independence of the batch size; the perturbations themselves."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

import xaiarena
from xaiarena import meta
from xaiarena.engine.meta_stage import NOISE, meta_positions, perturbed_inputs, perturbed_model
from xaiarena.errors import ConfigError

TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "evaluation.n_samples": 24,
    "evaluation.batch_size": 8,
    "training.num_threads": 1,
    "evaluation.meta": True,
    "evaluation.meta_samples": 6,
}
CFG = {
    "name": "t",
    "data": "hard_mnist",
    "model": "lenet",
    "explainers": ["saliency", "gradcam", "random"],
    "metrics": ["sparseness", "topk_iou", {"name": "deletion", "steps": 5}],
}
SECTION = "Which metrics can you trust here?"


def _run(out, **overrides):
    return xaiarena.run(CFG, out=out, overrides={**TINY, **overrides}, show_progress=False)


def test_meta_run_writes_meta_csv_and_report_section_reruns_from_cache_and_ignores_batch_size(
    tmp_path,
):
    out = tmp_path / "run"
    res = _run(out)
    table = pd.read_csv(out / "results" / "meta.csv")
    assert list(table.columns) == ["dataset", "explained_model", *meta.META_COLUMNS[1:]]
    assert list(table["metric"]) == ["sparseness", "topk_iou", "deletion"]
    assert (table["n_explainers"] == 3).all() and (table["n_samples"] == 24).all()
    assert (table["n_meta_samples"] == 6).all()
    for col in ("resilience", "reactivity", "mc", "mc_model", "mc_input", *meta.CRITERIA):
        assert table[col].between(0, 1).all(), col
    assert table["reliability"].between(-1, 1).all() and table["kendall_w"].between(0, 1).all()
    assert table["agreement"].isna().all()  # one metric per category here
    stage = res.info["stages"]["hard_mnist/meta"]
    assert not stage["cache_hit"] and stage["meta_samples"] == 6
    report = (out / "report.html").read_text()
    assert SECTION in report and 'href="#trust"' in report

    pert = pd.read_parquet(out / "results" / "meta_per_sample.parquet")
    assert list(pert.columns) == meta.PERTURBED_COLUMNS
    # 3 metrics x 3 explainers x 6 samples x 4 tests (one draw each)
    assert len(pert) == 3 * 3 * 6 * 4 and set(pert["draw"]) == {0}
    kept = pert.groupby(["perturbation", "strength"])["same_prediction"].mean()
    assert kept[("model", meta.MINOR)] == 1.0 and kept[("input", meta.MINOR)] == 1.0
    assert kept[("model", meta.DISRUPTIVE)] < 0.5 and kept[("input", meta.DISRUPTIVE)] < 0.5
    # the maps of the input test are the run's own maps, scored on perturbed inputs: a metric
    # that reads only the maps (sparseness) gives the run's scores
    base = res.per_sample.set_index(["explainer", "metric", "sample_id"])["value"]
    inp = pert[(pert["perturbation"] == "input") & (pert["metric"] == "sparseness")]
    pd.testing.assert_series_equal(
        inp.set_index(["explainer", "metric", "sample_id"])["value"],
        base.loc[inp.set_index(["explainer", "metric", "sample_id"]).index],
        check_names=False,
    )

    again = _run(out)  # everything cached, the perturbation stage included
    assert again.info["stages"]["hard_mnist/meta"]["cache_hit"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "results" / "meta.csv"), table)

    shutil.rmtree(
        out / "cache" / "meta"
    )  # recompute the perturbed problems with another batch size
    other = _run(out, **{"evaluation.batch_size": 5})
    assert not other.info["stages"]["hard_mnist/meta"]["cache_hit"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results" / "meta_per_sample.parquet"), pert
    )

    _run(
        out, **{"evaluation.meta": False}
    )  # off: the earlier meta files go, and the section with them
    assert not (out / "results" / "meta.csv").exists()
    assert not (out / "results" / "meta_per_sample.parquet").exists()
    assert SECTION not in (out / "report.html").read_text()


def test_meta_options_are_validated():
    with pytest.raises(ConfigError, match="evaluation.meta"):
        xaiarena.load_config({**CFG, "evaluation": {"meta": "yes"}})
    with pytest.raises(ConfigError, match="evaluation.meta_samples"):
        xaiarena.load_config({**CFG, "evaluation": {"meta": True, "meta_samples": 1}})
    with pytest.raises(ConfigError, match="evaluation.meta_perturbations"):
        xaiarena.load_config({**CFG, "evaluation": {"meta_perturbations": 0}})
    cfg = xaiarena.load_config(CFG)
    assert cfg.evaluation.meta is False  # off by default


def test_meta_tasks_are_planned_per_scored_view_only_when_asked():
    from xaiarena.engine.plan import plan_units
    from xaiarena.engine.tasks import plan_tasks

    def names(cfg):
        return [
            t.name for t in plan_tasks(plan_units(xaiarena.load_config(cfg))) if t.kind == "meta"
        ]

    assert names(CFG) == []
    assert names({**CFG, "evaluation": {"meta": True}}) == ["hard_mnist/meta"]
    with_diet = {**CFG, "explainers": [*CFG["explainers"], "diet"], "evaluation": {"meta": True}}
    assert names(with_diet) == ["hard_mnist/meta", "hard_mnist/meta@f_s"]


def test_perturbations_are_seeded_leave_the_model_alone_and_do_not_depend_on_the_batch():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    a, b = (
        perturbed_model(model, NOISE[("model", meta.DISRUPTIVE)], 5),
        perturbed_model(model, 2.0, 5),
    )
    for p, q, r in zip(model.parameters(), a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, r)  # seeded
        assert not torch.equal(p, q)
    for p, q in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p, q)  # the original is untouched
    tiny = perturbed_model(model, NOISE[("model", meta.MINOR)], 5)
    ratio = torch.cat(
        [(q / p).flatten() for p, q in zip(model.parameters(), tiny.parameters(), strict=True)]
    )
    assert (ratio - 1).abs().max() < 0.01 and (ratio != 1).all()

    x = torch.rand(6, 1, 4, 4)
    ids = torch.tensor([3, 9, 12, 20, 31, 40])
    full = perturbed_inputs(x, ids, NOISE[("input", meta.DISRUPTIVE)], 7)
    torch.testing.assert_close(
        perturbed_inputs(x[2:5], ids[2:5], 5.0, 7), full[2:5]
    )  # per sample, not per batch
    assert full.min() >= 0 and full.max() <= 1 and (full != x).any()
    small = perturbed_inputs(x, ids, NOISE[("input", meta.MINOR)], 7)
    assert (small - x).abs().max() <= 0.001 + 1e-7

    pos = meta_positions(24, 6, 0)
    assert pos.tolist() == sorted(pos.tolist()) and len(set(pos.tolist())) == 6
    torch.testing.assert_close(meta_positions(24, 6, 0), pos)
    assert meta_positions(4, 6, 0).tolist() == [0, 1, 2, 3]
