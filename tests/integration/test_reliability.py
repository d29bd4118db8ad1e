"""Reliability of runs: one run per directory, checksummed cache, config written with its results,
clipped sample counts said, non-finite models refused, reports that fail leave things as they
were."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import xaiarena
from tests.support.runs import CFG, TINY
from xaiarena.cli import app
from xaiarena.engine.cache import MANIFEST_SUFFIX, explain_cache
from xaiarena.engine.lock import LOCK_FILE, run_lock
from xaiarena.errors import RunError

cli = CliRunner()


# --------------------------------------------------------------------------- lock


def test_second_run_in_a_locked_directory_names_the_holder(tmp_path):
    with run_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        with pytest.raises(RunError, match=f"pid {holder['pid']}"):
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(proc.stdout)
    import socket

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": dead, "host": socket.gethostname(), "command": "x"})
    )
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_cli_exits_2_when_the_directory_is_in_use(tmp_path):
    (tmp_path / "r").mkdir()
    with run_lock(tmp_path / "r"):
        res = cli.invoke(app, ["run", "--out", str(tmp_path / "r"), "--quiet", *_sets(TINY)])
    assert res.exit_code == 2 and "in use by another run" in res.output


def _sets(over):
    return [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]


# -------------------------------------------------------------------------- config with its results


def test_config_is_written_with_the_results_it_describes(tiny_run_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_run_dir, out)
    before = (out / "config.yaml").read_text()
    summary = (out / "results" / "summary.csv").read_text()
    # a re-run with another config that fails (bad data option at run time) leaves both as they were
    res = cli.invoke(
        app, ["run", "--out", str(out), "--quiet", *_sets({**TINY, "training.lr": 1e12})]
    )
    assert res.exit_code != 0
    assert (out / "config.yaml").read_text() == before
    assert (out / "results" / "summary.csv").read_text() == summary


# --------------------------------------------------------------------------- checksummed cache


def test_every_cached_artefact_has_a_manifest_with_its_key_inputs(tiny_run_dir):
    rows = explain_cache(tiny_run_dir)
    stages = {r["stage"] for r in rows}
    assert {"model", "explain", "score"} <= stages and all(r["ok"] for r in rows)
    explain = next(r for r in rows if r["stage"] == "explain")
    assert {"model", "explainer", "ids", "seed", "target"} <= set(explain["inputs"])
    res = subprocess.run(
        [sys.executable, "-m", "xaiarena.engine.cache", str(tiny_run_dir), "--explain"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "explainer:" in res.stdout


@pytest.mark.parametrize("kind", ["attribution", "metric", "model", "train_json"])
def test_corrupt_cache_files_are_detected_and_recomputed(tiny_run_dir, tmp_path, kind):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_run_dir, out)
    cache = out / "cache"
    target = {
        "attribution": next((cache / "attributions" / "hard_mnist").glob("saliency-*.pt")),
        "metric": next((cache / "metrics" / "hard_mnist").glob("sparseness-*[0-9a-f].parquet")),
        "model": next((cache / "models").glob("*/model.pt")),
        "train_json": next((cache / "models").glob("*/train.json")),
    }[kind]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # truncated
    ref = pd.read_parquet(tiny_run_dir / "results" / "per_sample.parquet")
    res = xaiarena.run(CFG, out=out, overrides=TINY, show_progress=False)
    pd.testing.assert_frame_equal(res.per_sample, ref)
    assert target.exists() and target.read_bytes() != data[: len(data) // 2]


def test_a_valid_file_with_other_content_is_not_used(tiny_run_dir, tmp_path):
    import shutil

    import torch

    out = tmp_path / "copy"
    shutil.copytree(tiny_run_dir, out)
    target = next((out / "cache" / "attributions" / "hard_mnist").glob("saliency-*.pt"))
    torch.save(torch.zeros(16, 64, 64), target)  # readable, but not what the manifest recorded
    res = xaiarena.run(CFG, out=out, overrides=TINY, show_progress=False)
    assert res.info["stages"]["hard_mnist/explain/saliency"]["cache_hit"] is False
    assert res.attributions("saliency").abs().sum() > 0
    assert (target.parent / (target.name + MANIFEST_SUFFIX)).exists()


# --------------------------------------------------------------------------- said, not silent


def test_clipped_sample_count_is_warned_and_recorded(tmp_path, caplog):
    res = xaiarena.run(
        CFG,
        out=tmp_path / "r",
        overrides={**TINY, "evaluation.n_samples": 1_000_000},
        show_progress=False,
    )
    info = res.info["datasets"]["hard_mnist"]
    assert info["n_eval"] == 80 and info["n_samples_requested"] == 1_000_000
    assert any("n_samples is 1000000" in r.getMessage() for r in caplog.records)


def test_diverged_training_is_an_error_not_a_result(tmp_path):
    out = tmp_path / "r"
    res = cli.invoke(
        app, ["run", "--out", str(out), "--quiet", *_sets({**TINY, "training.lr": 1e12})]
    )
    assert res.exit_code == 2, res.output
    assert "diverged" in res.output and "training.lr" in res.output
    assert (
        not list((out / "cache" / "models").glob("*/model.pt"))
        if (out / "cache" / "models").exists()
        else True
    )
    assert not (out / "results").exists()


# --------------------------------------------------------------------------- report


@pytest.mark.parametrize("damage", ["run_json", "summary", "curves"])
def test_report_on_damaged_results_exits_2_and_keeps_figures(tiny_run_dir, tmp_path, damage):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_run_dir, out)
    figures = sorted(p.name for p in (out / "figures").iterdir())
    if damage == "run_json":
        (out / "run.json").write_text('{"datasets": [1, 2], "metrics_meta": 3}')
    elif damage == "summary":
        (out / "results" / "summary.csv").write_text("dataset,explainer\nx\n")
    else:
        (out / "results" / "curves.parquet").write_bytes(b"not parquet")
    res = cli.invoke(app, ["report", str(out)])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in (out / "figures").iterdir()) == figures
