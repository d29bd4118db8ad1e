"""Runner: caching, resume after a kill, API, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import xaiarena
from tests.support.runs import config as _cfg
from xaiarena.registry import EXPLAINERS, METRICS

TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "evaluation.n_samples": 24,
    "evaluation.batch_size": 8,
}


def _need(*names):
    missing = [n for n in names if n not in EXPLAINERS and n not in METRICS]
    if missing:
        pytest.skip(f"not registered yet: {missing}")


def test_api_run_and_load_and_adding_a_metric_recomputes_only_it(tmp_path):
    _need("saliency", "random", "sparseness", "topk_iou")
    out = tmp_path / "run"
    res = xaiarena.run(
        _cfg(["saliency", "random"], ["sparseness"]), out=out, overrides=TINY, show_progress=False
    )
    assert set(res.summary.explainer) == {"saliency", "random"}
    assert res.attributions("saliency").shape == (24, 64, 64)
    with pytest.raises(KeyError, match="saliency"):
        res.attributions("nope")
    first = res.per_sample

    res2 = xaiarena.run(
        _cfg(["saliency", "random"], ["sparseness", "topk_iou"]),
        out=out,
        overrides=TINY,
        show_progress=False,
    )
    stages = res2.info["stages"]
    assert stages["hard_mnist/train"]["cache_hit"]
    assert (
        stages["hard_mnist/explain/saliency"]["cache_hit"]
        and stages["hard_mnist/explain/random"]["cache_hit"]
    )
    assert stages["hard_mnist/metric/sparseness"]["cache_hit"]
    assert not stages["hard_mnist/metric/topk_iou"]["cache_hit"]
    again = res2.per_sample
    pd.testing.assert_frame_equal(
        again[again.metric == "sparseness"].reset_index(drop=True), first.reset_index(drop=True)
    )
    loaded = xaiarena.load(out)
    assert len(loaded.summary) == len(res2.summary)


def test_same_config_gives_same_numbers_in_a_fresh_directory(tmp_path):
    _need("saliency", "random", "sparseness")
    a = xaiarena.run(
        _cfg(["saliency", "random"], ["sparseness"]),
        out=tmp_path / "a",
        overrides=TINY,
        show_progress=False,
    )
    b = xaiarena.run(
        _cfg(["saliency", "random"], ["sparseness"]),
        out=tmp_path / "b",
        overrides=TINY,
        show_progress=False,
    )
    pd.testing.assert_frame_equal(a.per_sample, b.per_sample)


def test_labels_and_duplicate_names(tmp_path):
    _need("saliency", "sparseness")
    with pytest.raises(Exception, match="appears twice"):
        xaiarena.load_config(_cfg(["saliency", "saliency"], []))
    res = xaiarena.run(
        _cfg(["saliency", {"name": "saliency", "label": "sal2"}], ["sparseness"]),
        out=tmp_path / "r",
        overrides=TINY,
        show_progress=False,
    )
    assert set(res.summary.explainer) == {"saliency", "sal2"}


def test_kill_during_attributions_then_resume_gives_identical_numbers(tmp_path):
    _need("occlusion", "saliency", "sparseness")
    cfg = tmp_path / "c.yaml"
    import yaml

    raw = _cfg(["saliency", {"name": "occlusion", "window": 4, "stride": 2}], ["sparseness"])
    cfg.write_text(yaml.safe_dump(raw))
    # one thread: tiny models gain nothing from a second one, and on a busy machine it spins
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    sets += ["--set", "evaluation.n_samples=64", "--set", "training.num_threads=1"]
    cmd = [sys.executable, "-m", "xaiarena.cli", "run", str(cfg), "--quiet", *sets]
    env = {**os.environ, "XAIARENA_QUIET": "1"}

    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--out", str(ref)], check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    attr_dir = out / "cache" / "attributions" / "hard_mnist"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if attr_dir.exists() and any(p.suffix == ".pt" for p in attr_dir.iterdir()):
            break  # the first explainer is done; the second is being computed
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, "the run finished before it could be killed; make the attribution stage longer"
    assert not (out / "results" / "summary.csv").exists()

    subprocess.run([*cmd, "--out", str(out)], check=True, env=env, capture_output=True)
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["hard_mnist/train"]["cache_hit"]
    assert info["stages"]["hard_mnist/explain/saliency"]["cache_hit"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results/per_sample.parquet"),
        pd.read_parquet(ref / "results/per_sample.parquet"),
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "results/summary.csv"), pd.read_csv(ref / "results/summary.csv")
    )
