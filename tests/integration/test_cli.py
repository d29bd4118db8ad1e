"""End-to-end tests through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from xaiarena.cli import app

runner = CliRunner()


def strict_json(text: str):
    """Parse JSON the way non-Python consumers do: NaN/Infinity are not JSON."""

    def reject(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=reject)


TINY = [
    "--set",
    "data.n_train=300",
    "--set",
    "data.n_test=60",
    "--set",
    "training.epochs=1",
    "--set",
    "evaluation.n_samples=8",
    "--set",
    "model.channels=[4,8,8]",
    "--quiet",
]


def test_list_json_contract():
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = strict_json(res.output)
    assert set(data) == {"datasets", "models", "explainers", "metrics", "dissect"}
    data.pop("dissect")  # {concept_sets, scorers, similarities}: tests/test_dissect.py
    for entries in data.values():
        for e in entries:
            assert e["name"] and e["description"]
    for m in data["metrics"]:
        assert {"category", "higher_is_better", "modality"} <= set(m)
        lo, hi = m["value_range"]  # null = unbounded
        assert lo is None or hi is None or lo <= hi
    ranges = {m["name"]: m["value_range"] for m in data["metrics"]}
    assert ranges["sparseness"] == [0.0, 1.0] and ranges["max_sensitivity"] == [0.0, None]
    assert "hard_mnist" in [d["name"] for d in data["datasets"]]


def test_list_human_readable():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "hard_mnist" in res.output and "lenet" in res.output


def test_misspelled_explainer_exits_2_with_suggestion(tmp_path):
    from xaiarena.registry import EXPLAINERS

    if not len(EXPLAINERS):
        pytest.skip("no explainer registered yet")
    good = EXPLAINERS.names()[0]
    bad = good[:-1] + ("x" if good[-1] != "x" else "y")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"data: hard_mnist\nmodel: lenet\nexplainers: [{bad}]\n")
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    assert f"'{bad}'" in res.output and f"Did you mean '{good}'" in res.output


def test_bad_set_exits_2_naming_key_and_value():
    res = runner.invoke(app, ["run", "--set", "model.name=lenett"])
    assert res.exit_code == 2
    assert (
        "model.name" in res.output
        and "'lenett'" in res.output
        and "Did you mean 'lenet'" in res.output
    )
    res = runner.invoke(app, ["run", "--set", "training.epochs=zero"])
    assert res.exit_code == 2 and "training.epochs" in res.output
    res = runner.invoke(app, ["run", "--set", "training.epochs"])
    assert res.exit_code == 2


def test_missing_config_file_exits_2(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_run_writes_contract_layout_and_reuses_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    for rel in (
        "config.yaml",
        "run.json",
        "results/summary.csv",
        "results/per_sample.parquet",
        "results/tests.csv",
    ):
        assert (out / rel).exists(), rel
    info = strict_json((out / "run.json").read_text())
    assert info["seed"] == 0 and info["config_hash"] and info["versions"]["torch"]
    train = info["stages"]["hard_mnist/train"]
    assert train["cache_hit"] is False and train["seconds"] > 0
    assert list((out / "cache" / "models").glob("*/model.pt"))
    # the contract's columns, with explained_model after dataset (f_b or f_s: which model a map
    # explains), then what a mean rests on (samples; 1 replicate) and the smallest p a test can give
    summary = pd.read_csv(out / "results" / "summary.csv")
    assert list(summary.columns) == [
        "dataset",
        "explained_model",
        "model",
        "explainer",
        "metric",
        "mean",
        "ci_low",
        "ci_high",
        "n",
        "higher_is_better",
        "n_samples",
        "n_replicates",
    ]
    assert (summary.n_samples == summary.n).all() and (summary.n_replicates == 1).all()
    assert list(pd.read_parquet(out / "results" / "per_sample.parquet").columns) == [
        "dataset",
        "explained_model",
        "explainer",
        "metric",
        "sample_id",
        "value",
    ]
    assert list(pd.read_csv(out / "results" / "tests.csv").columns) == [
        "dataset",
        "explained_model",
        "metric",
        "explainer_a",
        "explainer_b",
        "test",
        "statistic",
        "p_value",
        "p_holm",
        "effect_size",
        "min_p",
    ]

    res = runner.invoke(app, ["run", "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    # the printed summary says which model each row's maps explain (DiET makes both views)
    assert "explained_model" in res.output and " f_s " in res.output
    again = json.loads((out / "run.json").read_text())
    assert again["stages"]["hard_mnist/train"]["cache_hit"] is True
    assert (
        again["datasets"]["hard_mnist"]["test_accuracy"]
        == info["datasets"]["hard_mnist"]["test_accuracy"]
    )


def test_report_command_rejects_non_run_dir(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "xaiarena.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "run" in out.stdout
