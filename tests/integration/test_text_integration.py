"""End to end: `xaiarena run configs/text_offline.yaml` (shrunk) through the CLI, offline, with
MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.support.paths import ROOT, SHARED

SHRINK = [
    "data.0.n_train=320",
    "data.0.n_test=60",
    "data.1.n_train=160",
    "data.1.n_test=60",
    "training.epochs=1",
    "training.lr=1.0e-4",
    "evaluation.n_samples=8",
    "evaluation.batch_size=8",
    "explainers.3.n_steps=8",
    "explainers.5.n_samples=16",
    "explainers.6.n_samples=16",
    "explainers.8.n_train=32",
    "explainers.8.rounds=1",
    "explainers.8.test_max_steps=6",
]


@pytest.mark.skipif(
    not (SHARED / "sst2" / "train.parquet").exists(), reason=f"no shared datasets under {SHARED}"
)
def test_text_offline_config_runs_offline_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, XAIARENA_DATA_DIR=str(SHARED), HF_HUB_OFFLINE="1", XAIARENA_QUIET="1")
    cmd = [
        sys.executable,
        "-m",
        "xaiarena.cli",
        "run",
        str(ROOT / "configs" / "text_offline.yaml"),
        "--out",
        str(out),
        "--quiet",
    ]
    for s in SHRINK:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in (
        "config.yaml",
        "run.json",
        "report.html",
        "results/summary.csv",
        "results/per_sample.parquet",
        "results/tests.csv",
        "results/examples/planted_sentiment.json",
        "results/examples/sst2.json",
    ):
        assert (out / rel).exists(), rel
    summary = pd.read_csv(out / "results" / "summary.csv")
    assert set(summary.dataset) == {"planted_sentiment", "sst2"}
    run = json.loads((out / "run.json").read_text())
    assert (
        run["datasets"]["planted_sentiment"]["test_accuracy"] > 0.75
    )  # one short epoch; chance is 0.5
    assert "text_diet" in run["datasets"]["sst2"]["learned"]
    # Every explainer explains f_b and, because text_diet is learned, also f_s: compare maps of one
    # model.
    assert set(summary.explained_model) == {"f_b", "f_s"}
    f1 = summary[
        (summary.dataset == "planted_sentiment")
        & (summary.metric == "rationale_f1")
        & (summary.explained_model == "f_b")
    ].set_index("explainer")
    assert f1.loc["text_integrated_gradients", "mean"] > f1.loc["text_random", "mean"]
    html = (out / "report.html").read_text()
    assert (
        html.count("Word attributions") == 4 and "text_diet" in html
    )  # 2 datasets x maps of f_b and f_s
