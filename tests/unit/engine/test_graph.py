"""The stage graph: units and tasks, grids and replicates, and the Ray executor (a local Ray
instance started by the tests themselves)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pandas as pd
import pytest

import xaiarena
from tests.support.runs import CFG as TINY_CFG
from tests.support.runs import TINY
from xaiarena.config import load_config
from xaiarena.engine.plan import plan_units
from xaiarena.engine.tasks import plan_tasks

CFG = {**TINY_CFG, "name": "g"}


def test_units_and_tasks_of_a_grid_with_replicates():
    cfg = load_config(
        {
            **CFG,
            "replicates": 3,
            "grid": {"training.lr": [0.001, 0.002]},
            "explainers": ["saliency", {"name": "diet", "n_train": 8}],
            "metrics": ["sparseness", {"name": "agreement_spearman", "reference": "saliency"}],
        }
    )
    units = plan_units(cfg)
    assert len(units) == 6 and len({u.id for u in units}) == 6
    assert [u.seed for u in units[:3]] == cfg.replicate_seeds() and units[0].seed == cfg.seed
    assert {u.data_seed for u in units} == {
        cfg.seed
    }  # replicates retrain the model, same data and samples
    tasks = plan_tasks(units[:1])
    names = [t.name for t in tasks]
    u = units[0].id
    assert names[0] == f"{u}/train" and f"{u}/fit/diet" in names
    assert f"{u}/explain/saliency" in names and f"{u}/explain/saliency@f_s" in names
    assert f"{u}/explain/diet" in names and f"{u}/explain/diet@f_b" not in names
    # agreement needs two maps in the view: on f_b, saliency's and DiET's maps scored on f_b
    # (diet@f_s)
    assert f"{u}/metric/agreement_spearman@f_s" in names
    assert next(t for t in tasks if t.name == f"{u}/metric/agreement_spearman").explainers == (
        "saliency",
        "diet@f_s",
    )
    pos = {n: i for i, n in enumerate(names)}
    assert all(pos[d] < pos[t.name] for t in tasks for d in t.deps)
    # without DiET's maps on f_b, f_b has no pair for the agreement metric
    off = cfg.model_copy(
        update={"evaluation": cfg.evaluation.model_copy(update={"score_learned_on_f_b": False})}
    )
    names = [t.name for t in plan_tasks(plan_units(off)[:1])]
    assert (
        f"{u}/metric/agreement_spearman@f_s" in names
        and f"{u}/metric/agreement_spearman" not in names
    )


def test_only_correct_with_replicates_selects_the_same_samples_for_every_replicate():
    """Every replicate evaluates the samples that all replicates' models classify correctly, the
    first n_samples of one seeded order; the first replicate's train task trains them all (the
    others wait for it)."""
    from types import SimpleNamespace

    import torch

    from xaiarena.engine import stages

    n_test, labels = 60, torch.arange(60) % 4
    rng = torch.Generator().manual_seed(0)
    right = [
        torch.rand(n_test, generator=rng) < 0.7 for _ in range(3)
    ]  # which samples each model gets right

    class Model:  # predicts the label where it is right, another class elsewhere
        def __init__(self, ok):
            self.preds = torch.where(ok, labels, (labels + 1) % 4)

    class Mod:
        def logits(self, model, split, index, device):
            return torch.nn.functional.one_hot(model.preds[index], 4).float()

    class Split:
        def __len__(self):
            return n_test

    task = SimpleNamespace(name="toy", test=Split())
    task.test.labels = labels
    cfg = load_config({**CFG, "evaluation": {"only_correct": True, "n_samples": 10}})
    s = stages.Settings(cfg=cfg, cache=None, device=torch.device("cpu"), data_seed=5)
    models = [Model(ok) for ok in right]
    chosen = stages.select_samples(s, task, Mod(), models[0], iter(models[1:]))
    assert len(chosen) == 10 and bool((right[0] & right[1] & right[2])[chosen].all())
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(5 + 1))
    expected = order[(right[0] & right[1] & right[2])[order]][:10].sort().values
    assert torch.equal(
        chosen, expected
    )  # the first 10 of the seeded order that all three get right
    for k in (1, 2):  # every replicate, its own model first, selects the same samples
        rest = [m for j, m in enumerate(models) if j != k]
        assert torch.equal(stages.select_samples(s, task, Mod(), models[k], rest), chosen)
    alone = stages.select_samples(s, task, Mod(), models[1])  # without replicates: one model's rule
    assert bool(right[1][alone].all()) and not torch.equal(alone, chosen)

    rcfg = load_config({**CFG, "replicates": 3, "evaluation": {"only_correct": True}})
    units = plan_units(rcfg)
    assert {u.replicate_seeds for u in units} == {tuple(rcfg.replicate_seeds())}
    trains = [t for t in plan_tasks(units) if t.kind == "train"]
    assert trains[0].deps == () and all(t.deps == (trains[0].name,) for t in trains[1:])
    free = [
        t
        for t in plan_tasks(plan_units(load_config({**CFG, "replicates": 3})))
        if t.kind == "train"
    ]
    assert all(t.deps == () for t in free)  # without only_correct the replicates train in parallel


def test_bad_grid_values_are_config_errors_naming_the_point():
    from xaiarena.errors import ConfigError

    with pytest.raises(ConfigError, match=r"grid\[model.name=resnett\]\.model\.name"):
        load_config({**CFG, "grid": {"model.name": ["lenet", "resnett"]}})
    with pytest.raises(ConfigError, match="seeds"):
        load_config({**CFG, "seeds": [1, 1]})


@pytest.mark.integration
def test_grid_and_replicates_locally(tmp_path):
    res = xaiarena.run(
        {**CFG, "seeds": [0, 1], "grid": {"training.lr": [0.002, 0.004]}},
        out=tmp_path / "r",
        overrides=TINY,
        show_progress=False,
    )
    ps = res.per_sample
    assert {"grid", "replicate", "seed"} <= set(ps.columns) and set(ps["seed"]) == {0, 1}
    assert ps.groupby(["grid", "seed"]).size().nunique() == 1  # every unit scored the same rows
    # replicates share the data and the evaluation samples: only the model is retrained
    ids = ps.groupby("seed")["sample_id"].agg(frozenset)
    assert ids[0] == ids[1]
    s = res.summary
    assert (s["n_replicates"] == 2).all() and "replicate" not in s.columns
    per_rep = pd.read_csv(res.run_dir / "results" / "summary_per_replicate.csv")
    one = s.iloc[0]
    sel = per_rep[
        (per_rep.grid == one.grid)
        & (per_rep.explainer == one.explainer)
        & (per_rep.metric == one.metric)
    ]
    assert one["mean"] == pytest.approx(sel["mean"].mean())
    assert (s["n_samples"] == s["n"]).all() and set(s["n"]) == {16}  # distinct samples, not 2 x 16
    reps = pd.read_csv(res.run_dir / "results" / "tests_replicates.csv")
    assert set(reps["n_replicates"]) == {2} and set(reps["n_samples"]) == {16}
    html = res.report_path.read_text()
    assert "Stability across retrained models" in html and "training.lr=0.004" in html


@pytest.mark.integration
def test_cli_replicates_with_only_correct_explain_the_same_samples(tmp_path):
    """Through the CLI: 2 seeds with only_correct score the same samples, each classified
    correctly by both models; summary.csv counts samples and replicates; the report says which
    rule chose them."""
    from typer.testing import CliRunner

    from tests.support.paths import SHARED as shared
    from xaiarena.cli import app

    if not (shared / "mnist").is_dir():
        pytest.skip(f"no mnist under {shared}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: oc\nseeds: [0, 1]\n"
        f"data: {{name: mnist, n_train: 600, n_test: 60, data_dir: {shared}}}\n"
        "model: {name: lenet, channels: [4, 8, 8]}\ntraining: {epochs: 3, lr: 0.01}\n"
        "evaluation: {n_samples: 16, batch_size: 8, only_correct: true}\n"
        "explainers: [saliency, random]\nmetrics: [sparseness]\n"
    )
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "r"
    ps = pd.read_parquet(run_dir / "results" / "per_sample.parquet")
    ids = ps.groupby("seed")["sample_id"].agg(frozenset)
    assert len(ids) == 2 and ids[0] == ids[1]
    info = json.loads((run_dir / "run.json").read_text())
    units = info["units"].values()
    assert all(u["samples_correct_under_seeds"] == [0, 1] for u in units)
    assert {u["n_eval"] for u in units} == {len(ids[0])}
    assert info["stages"]["mnist#r1/train"][
        "cache_hit"
    ]  # trained by the first replicate's selection
    s = pd.read_csv(run_dir / "results" / "summary.csv")
    assert (
        (s["n_replicates"] == 2).all()
        and (s["n_samples"] == len(ids[0])).all()
        and (s["n"] == s["n_samples"]).all()
    )
    html = " ".join((run_dir / "report.html").read_text().split())
    assert (
        "every replicate&#39;s model classifies correctly" in html
        and "counts both sources of variance" in html
    )


def test_every_task_computes_with_the_thread_count_of_a_local_run(monkeypatch):
    """Float sums depend on torch's thread count: every task (local executor or Ray worker) runs
    with training.num_threads where set, else the starting process' count, and the count is
    restored."""
    import torch

    from xaiarena.engine import executors, tasks
    from xaiarena.engine.context import Env, thread_count

    unit = plan_units(load_config(CFG))[0]
    pinned = plan_units(load_config({**CFG, "training": {"num_threads": 1}}))[0]
    train, train1 = plan_tasks([unit])[0], plan_tasks([pinned])[0]
    assert thread_count(train.unit, Env("r", threads=3)) == 3
    assert thread_count(train1.unit, Env("r", threads=3)) == 1
    seen: list[int] = []
    monkeypatch.setattr(
        tasks, "_run_task", lambda task, env, say=None: seen.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    executors._remote_task(train1, Env("r", threads=2))
    assert seen == [1]
    torch.set_num_threads(before)
    executors.LocalExecutor(show_progress=False).run(
        [train1, train], Env("r", threads=2), lambda t, r: None
    )
    assert seen[1:] == [1, 2] and torch.get_num_threads() == before


# --------------------------------------------------------------------------- Ray


@pytest.mark.integration
def test_ray_gives_the_same_summary_as_the_local_executor(tmp_path, ray_instance):
    over = {**TINY, "ray.num_cpus": 2}
    cfg = {
        **CFG,
        "explainers": ["saliency", {"name": "smoothgrad", "nt_samples": 4}, "random"],
        "metrics": ["sparseness", {"name": "deletion", "steps": 5}, "topk_iou"],
    }
    local = xaiarena.run(cfg, out=tmp_path / "local", overrides=over, show_progress=False)
    ray_run = xaiarena.run(
        cfg, out=tmp_path / "ray", overrides=over, show_progress=False, executor="ray"
    )
    pd.testing.assert_frame_equal(local.summary, ray_run.summary)
    pd.testing.assert_frame_equal(local.per_sample, ray_run.per_sample)
    assert ray_run.info["executor"] == "ray"
    stages = ray_run.info["stages"]
    assert all(
        "host" in v and "pid" in v
        for v in stages.values()
        if isinstance(v, dict) and "seconds" in v
    )


@pytest.mark.integration
def test_ray_grid_of_two_datasets_and_three_seeds(tmp_path, ray_instance):
    cfg = {
        **CFG,
        "replicates": 3,
        "grid": {
            "data": [
                {"name": "hard_mnist", "n_train": 300, "n_test": 80},
                {"name": "hard_mnist", "label": "hm2", "n_train": 200, "n_test": 60},
            ]
        },
    }
    over = {k: v for k, v in TINY.items() if not k.startswith("data.")}
    res = xaiarena.run(
        cfg,
        out=tmp_path / "r",
        overrides={**over, "ray.num_cpus": 2},
        show_progress=False,
        executor="ray",
    )
    s = res.summary
    assert set(s["grid"]) == {"data=hard_mnist", "data=hm2"} and (s["n_replicates"] == 3).all()
    assert len(res.info["units"]) == 6


@pytest.mark.integration
def test_a_killed_ray_worker_does_not_change_the_numbers(tmp_path, ray_instance):
    cfg = {
        **CFG,
        "explainers": ["saliency", {"name": "occlusion", "window": 4, "stride": 2}],
        "metrics": ["sparseness"],
    }
    over = {**TINY, "evaluation.n_samples": 48, "ray.num_cpus": 2}
    ref = xaiarena.run(cfg, out=tmp_path / "ref", overrides=over, show_progress=False)
    killed: list[int] = []

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if "ray::_remote_task" in line:
                    pid = int(line.split()[0])
                    attr = tmp_path / "ray" / "cache" / "attributions" / "hard_mnist"
                    if attr.exists() and any(p.suffix == ".pt" for p in attr.iterdir()):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        break
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = xaiarena.run(
        cfg,
        out=tmp_path / "ray",
        overrides={**over, "ray.max_retries": 3},
        show_progress=False,
        executor="ray",
    )
    t.join(timeout=1)
    assert killed, "no Ray worker was running an explain task to kill"
    pd.testing.assert_frame_equal(res.per_sample, ref.per_sample)
