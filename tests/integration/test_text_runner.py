"""Text through the runner: modality checks, a small end-to-end run, the report's word
highlighting."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import xaiarena  # noqa: E402
from tests.support.paths import ROOT, SHARED
from xaiarena.config import load_config  # noqa: E402
from xaiarena.errors import ConfigError  # noqa: E402
from xaiarena.modalities import check_modalities  # noqa: E402

TINY = {
    "name": "text_tiny",
    "seed": 0,
    "data": {"name": "planted_sentiment", "n_train": 600, "n_test": 60},
    "model": {"name": "tiny_bert"},
    "training": {
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.003,
        "optimizer": "adamw",
        "num_threads": 1,
    },
    "evaluation": {"n_samples": 16, "batch_size": 8},
    "explainers": [
        "text_random",
        "text_saliency",
        {"name": "text_integrated_gradients", "n_steps": 8},
        {"name": "text_lime", "n_samples": 30},
        "attention_rollout",
        {
            "name": "text_diet",
            "n_train": 100,
            "rounds": 1,
            "mask_max_epochs": 2,
            "test_max_steps": 5,
        },
    ],
    "metrics": [
        "comprehensiveness",
        "sufficiency",
        {"name": "text_topk_overlap", "k": [1, 3]},
        "text_spearman",
        "rationale_f1",
        "explained_model_accuracy",
    ],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("text_run") / "run"
    try:
        res = xaiarena.run(TINY, out=out, show_progress=False)
    finally:
        torch.set_num_threads(n)
    return res


def _problems(raw):
    with pytest.raises(ConfigError) as exc:
        check_modalities(load_config(raw))
    return exc.value


def test_image_only_items_with_a_text_dataset_are_config_errors_naming_them():
    raw = dict(
        TINY,
        explainers=["text_saliency", "gradcam", "diet"],
        metrics=["sparseness", "rationale_f1"],
    )
    err = _problems(raw)
    paths = [p for p, _ in err.problems]
    assert paths == ["explainers.1.name", "explainers.2.name", "metrics.0.name"]
    msg = err.format()
    assert (
        "explainer 'gradcam' supports image inputs only, but dataset 'planted_sentiment' "
        "(data.0) is text" in msg
    )
    assert "'text_diet'" in msg and "text_integrated_gradients" in msg  # hint and valid choices
    assert "metric 'sparseness' supports image inputs only" in msg and "comprehensiveness" in msg


def test_text_items_with_an_image_dataset_and_mismatched_models_are_config_errors():
    err = _problems(
        {
            "data": "hard_mnist",
            "model": "minilm",
            "explainers": ["text_lime"],
            "metrics": ["comprehensiveness"],
        }
    )
    assert [p for p, _ in err.problems] == ["model.name", "explainers.0.name", "metrics.0.name"]
    assert (
        "model 'minilm' supports text inputs only, but dataset 'hard_mnist' (data.0) is image"
        in err.format()
    )


def test_cli_exits_2_on_a_modality_mismatch(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from xaiarena.cli import app

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY, explainers=["gradcam"], metrics=[])))
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2
    assert "explainers.0.name" in res.output and "gradcam" in res.output
    assert not (tmp_path / "out" / "cache").exists()  # failed before any work


def test_shipped_text_configs_are_valid():
    for name in ("text_offline.yaml", "text_diet_vs_ig.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        check_modalities(cfg)


def test_end_to_end_run_writes_text_results_and_report(tiny_run):
    res = tiny_run
    summary = res.summary
    singles = summary[~summary.explainer.str.contains("~")]
    # text_diet@f_s: DiET's maps (of f_s) scored on f_b
    assert set(singles.explainer) == {
        "text_random",
        "text_saliency",
        "text_integrated_gradients",
        "text_lime",
        "attention_rollout",
        "text_diet",
        "text_diet@f_s",
    }
    assert set(singles.loc[singles.explainer == "text_diet@f_s", "explained_model"]) == {"f_b"}
    assert {"comprehensiveness", "sufficiency", "rationale_f1", "explained_model_accuracy"} <= set(
        singles.metric
    )
    pairs = summary[summary.explainer.str.contains("~")]
    assert {"text_topk_overlap@1", "text_topk_overlap@3", "text_spearman"} <= set(pairs.metric)
    # agreement pairs compare maps of the same model: DiET (f_s) meets the others on their f_s maps
    f_s_pairs = [set(p.split("~")) for p in pairs[pairs.explained_model == "f_s"].explainer]
    assert {"text_diet", "text_integrated_gradients"} in f_s_pairs
    # on f_b DiET's maps meet the others' only as text_diet@f_s, scored on f_b like them
    assert not any(
        "text_diet" in p.split("~") for p in pairs[pairs.explained_model == "f_b"].explainer
    )
    assert res.attributions("text_saliency", "planted_sentiment").shape[0] == 16
    info = res.info["datasets"]["planted_sentiment"]
    assert (
        info["explainers"]["text_diet"]["explains"] == "f_s"
        and "test_agreement_fs_fb" in info["learned"]["text_diet"]
    )
    assert info["max_length"] == 64 and info["mean_words"] > 5
    doc = json.loads((res.run_dir / "results" / "examples" / "planted_sentiment.json").read_text())
    s0 = doc["samples"][0]
    assert len(s0["words"]) == len(s0["rationale"]) == len(s0["scores"]["text_saliency"])
    # every explainer's scores, and those of its f_s maps under "<name>@f_s" (DiET explains only
    # f_s)
    assert {k.split("@")[0] for k in s0["scores"]} == {e.split("@")[0] for e in singles.explainer}
    assert {k for k in s0["scores"] if k.endswith("@f_s")} == {
        f"{e}@f_s" for e in singles.explainer if e != "text_diet" and "@" not in e
    }
    html = res.report_path.read_text()
    assert "Word attributions" in html and 'class="tok gt"' in html
    # planted cues: the gradient method finds them better than the random baseline
    f1 = singles[(singles.metric == "rationale_f1") & (singles.explained_model == "f_b")].set_index(
        "explainer"
    )["mean"]
    assert f1["text_saliency"] > f1["text_random"]


def test_report_escapes_words_that_look_like_html(tiny_run, tmp_path):
    import shutil

    from xaiarena.report import build_report

    run = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("cache"))
    path = run / "results" / "examples" / "planted_sentiment.json"
    doc = json.loads(path.read_text())
    sample = doc["samples"][0]
    sample["words"][0] = "<script>alert('x')</script>"
    sample["words"][1] = 'a"onmouseover="alert(1)'
    path.write_text(json.dumps(doc))
    html = build_report(run).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert 'a"onmouseover' not in html and "a&#34;onmouseover=&#34;alert(1)" in html


@pytest.mark.skipif(
    not (SHARED / "sst2" / "validation.parquet").exists(), reason="shared datasets not found"
)
def test_sst2_from_parquet_runs_through_the_runner(tmp_path):
    raw = dict(
        TINY,
        data={"name": "sst2", "n_train": 200, "n_test": 40, "data_dir": str(SHARED)},
        explainers=["text_random", "text_input_x_gradient", "text_occlusion"],
        metrics=["comprehensiveness", "explained_model_accuracy"],
        training=dict(TINY["training"], epochs=1),
        evaluation={"n_samples": 8, "batch_size": 8},
    )
    res = xaiarena.run(raw, out=tmp_path / "sst2", show_progress=False)
    assert set(res.summary.dataset) == {"sst2"} and len(res.per_sample) == 3 * 2 * 8
    assert not res.summary["mean"].isna().any()
