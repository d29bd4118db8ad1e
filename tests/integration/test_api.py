"""The functional API: xaiarena.evaluate / xaiarena.explain on the user's tensors give what a run
gives for the same model, samples and maps; bad inputs are clear errors; xaiarena score; the
README's example runs."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import xaiarena  # noqa: E402
from tests.support.paths import README
from xaiarena.cli import app  # noqa: E402
from xaiarena.errors import ConfigError, InputError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = ["dataset", "explained_model", "explainer", "metric", "sample_id"]
TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "evaluation.n_samples": 12,
    "evaluation.batch_size": 8,
}
EXPLAINERS = ["saliency", "random", {"name": "integrated_gradients", "n_steps": 4, "label": "ig4"}]
# deterministic and randomised metrics (random tie breaks, subsets, noise), masks, a pairwise
# metric, a re-explaining metric restricted to one explainer, a labelled metric
METRICS = [
    "sparseness",
    {"name": "deletion", "steps": 8},
    "pointing_game",
    {"name": "faithfulness_correlation", "nr_runs": 5, "subset_size": 64},
    {"name": "agreement_spearman", "reference": "saliency"},
    {"name": "max_sensitivity", "nr_samples": 2, "explainers": ["saliency"]},
    {"name": "deletion", "steps": 4, "label": "del4"},
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = {
        "name": "api",
        "data": "hard_mnist",
        "model": "lenet",
        "explainers": EXPLAINERS,
        "metrics": METRICS,
    }
    res = xaiarena.run(
        cfg, out=tmp_path_factory.mktemp("api") / "run", overrides=TINY, show_progress=False
    )
    return res, res.samples()


@pytest.fixture(scope="module")
def run_maps(tiny_run):
    res, _ = tiny_run
    return {k: res.attributions(k) for k in ("saliency", "random", "ig4")}


def _evaluate(samples, maps, metrics=METRICS, **kw):
    kw = {
        "masks": samples.masks,
        "labels": samples.labels,
        "sample_ids": samples.sample_ids,
        "seed": samples.seed,
        "dataset": samples.dataset,
        "explainers": {"saliency": "saliency"},
        **kw,
    }
    return xaiarena.evaluate(samples.model, samples.inputs, samples.targets, maps, metrics, **kw)


def _same_values(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> None:
    assert list(a.columns) == list(b.columns)
    m = a.merge(b, on=KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"][KEYS]
    assert len(m) == len(a) == len(b)
    np.testing.assert_allclose(m["value_a"], m["value_b"], atol=atol, rtol=1e-5, equal_nan=True)


# --------------------------------------------------------------------------- same numbers as a run


def test_samples_of_a_run_are_its_evaluation_samples(tiny_run):
    res, s = tiny_run
    assert s.inputs.shape == (12, 3, 64, 64) and s.masks.shape == (12, 64, 64)
    assert sorted(s.sample_ids.tolist()) == sorted(res.per_sample["sample_id"].unique().tolist())
    assert s.seed == 0 and s.batch_size == 8 and s.dataset == "hard_mnist"


def test_evaluate_gives_the_runs_per_sample_scores_summary_and_tests(tiny_run, run_maps):
    res, s = tiny_run
    ev = _evaluate(s, run_maps, batch_size=5)  # the run used 8
    _same_values(res.per_sample, ev.per_sample)
    assert {"del4", "agreement_spearman", "max_sensitivity", "pointing_game"} <= set(
        ev.per_sample["metric"]
    )
    cols = ["dataset", "explained_model", "explainer", "metric", "n", "higher_is_better"]
    summ_run, summ = res.summary.sort_values(cols[:4]), ev.summary.sort_values(cols[:4])
    assert summ[cols].reset_index(drop=True).equals(summ_run[cols].reset_index(drop=True))
    for c in ("mean", "ci_low", "ci_high"):
        np.testing.assert_allclose(summ[c], summ_run[c], atol=1e-5, equal_nan=True)
    key = ["metric", "explainer_a", "explainer_b", "test"]
    t_run, t = (
        res.tests.sort_values(key).reset_index(drop=True),
        ev.tests.sort_values(key).reset_index(drop=True),
    )
    assert list(t.columns) == list(t_run.columns) and t[key].equals(t_run[key])
    np.testing.assert_allclose(t["p_holm"], t_run["p_holm"], rtol=1e-4, atol=1e-9, equal_nan=True)
    assert set(ev.metrics_meta) == set(res.info["metrics_meta"])


def test_evaluate_does_not_depend_on_batch_size(tiny_run, run_maps):
    _, s = tiny_run
    metrics = [
        *METRICS[:2],
        *METRICS[3:5],
        "relevance_mass_accuracy",
    ]  # pointing_game: slow exact Wilcoxon (ties)
    a = _evaluate(s, run_maps, metrics, batch_size=1)
    b = _evaluate(s, run_maps, metrics, batch_size=64)
    _same_values(a.per_sample, b.per_sample, atol=1e-6)
    pd.testing.assert_frame_equal(a.summary, b.summary, atol=1e-6)


def test_evaluate_takes_numpy_arrays(tiny_run, run_maps):
    _, s = tiny_run
    metrics = ["sparseness", {"name": "deletion", "steps": 8}, "relevance_mass_accuracy"]
    torch_ev = _evaluate(s, run_maps, metrics, explainers=None)
    np_ev = xaiarena.evaluate(
        s.model,
        s.inputs.numpy(),
        s.targets.numpy(),
        {k: v.numpy() for k, v in run_maps.items()},
        metrics,
        masks=s.masks.numpy(),
        labels=s.labels.numpy(),
        sample_ids=s.sample_ids.numpy(),
        seed=s.seed,
        dataset=s.dataset,
    )
    _same_values(torch_ev.per_sample, np_ev.per_sample, atol=0)
    # defaults: rows numbered 0..N-1 under the dataset "data"; scores keyed by those ids
    ev = xaiarena.evaluate(
        s.model,
        s.inputs.numpy(),
        s.targets.tolist(),
        {"sal": run_maps["saliency"].numpy()},
        ["sparseness"],
    )
    assert ev.per_sample["sample_id"].tolist() == list(range(12)) and set(
        ev.per_sample["dataset"]
    ) == {"data"}
    assert ev.per_sample["value"].tolist() == pytest.approx(
        torch_ev.per_sample.query("explainer == 'saliency' and metric == 'sparseness'")[
            "value"
        ].tolist()
    )


def test_evaluate_leaves_the_model_as_it_was(tiny_run, run_maps):
    _, s = tiny_run
    model = s.model.train()
    flags = [p.requires_grad for p in model.parameters()]
    xaiarena.evaluate(model, s.inputs, s.targets, {"sal": run_maps["saliency"]}, ["sparseness"])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    model.eval()


def test_explain_gives_the_runs_maps(tiny_run, run_maps):
    _, s = tiny_run
    maps = xaiarena.explain(
        s.model, s.inputs.numpy(), s.targets.numpy(), EXPLAINERS, seed=s.seed, batch_size=5
    )
    assert list(maps) == ["saliency", "random", "ig4"]
    for k, m in maps.items():
        assert m.dtype == torch.float32 and m.shape == (12, 64, 64)
        torch.testing.assert_close(m, run_maps[k], atol=1e-6, rtol=1e-5)
    # and scoring them is scoring the run's maps
    _same_values(
        _evaluate(s, maps, METRICS[:2]).per_sample,
        _evaluate(s, run_maps, METRICS[:2]).per_sample,
        atol=1e-6,
    )


def test_a_callable_re_explains_like_the_named_explainer(tiny_run, run_maps):
    from xaiarena.registry import EXPLAINERS as REG

    _, s = tiny_run
    sal = REG.create("saliency")
    metric = [{"name": "max_sensitivity", "nr_samples": 2, "explainers": ["saliency"]}]
    named = _evaluate(s, run_maps, metric)
    fn = _evaluate(
        s,
        run_maps,
        metric,
        explainers={
            "saliency": lambda m, x, t, generator=None: sal.explain(m, x, t, generator=generator)
        },
    )
    _same_values(named.per_sample, fn.per_sample, atol=0)


def test_save_writes_the_tables(tiny_run, run_maps, tmp_path):
    _, s = tiny_run
    ev = _evaluate(s, run_maps, ["sparseness"], explainers=None)
    ev.save(tmp_path / "out")
    assert {"per_sample.csv", "summary.csv", "tests.csv", "curves.csv", "metrics_meta.json"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    assert list(pd.read_csv(tmp_path / "out" / "per_sample.csv").columns) == list(
        ev.per_sample.columns
    )


# --------------------------------------------------------------------------- clear errors


def _bad_cases(s, maps):
    x, t, m = s.inputs, s.targets, maps["saliency"]
    ok = {
        "model": s.model,
        "inputs": x,
        "targets": t,
        "attributions": {"sal": m},
        "metrics": ["sparseness"],
    }
    return [
        (
            {"metrics": ["delet"]},
            ConfigError,
            ["metrics.0.name", "'delet'", "did you mean 'deletion'", "sparseness"],
        ),
        (
            {"metrics": [{"name": "deletion", "stepz": 3}]},
            ConfigError,
            ["metrics.0.stepz", "did you mean 'steps'"],
        ),
        ({"metrics": [{"name": "deletion", "steps": -1}]}, ConfigError, ["metrics.0", "-1"]),
        (
            {"metrics": [{"name": "sparseness", "explainers": ["sall"]}]},
            ConfigError,
            ["metrics.0.explainers", "'sall'", "did you mean 'sal'"],
        ),
        ({"metrics": []}, ConfigError, ["metrics", "non-empty list"]),
        (
            {"metrics": ["comprehensiveness"]},
            ConfigError,
            ["metrics.0.name", "supports text", "the inputs are images"],
        ),
        (
            {"attributions": {"sal": m[:5]}},
            InputError,
            ["attributions['sal']", "(12, 64, 64)", "(5, 64, 64)", "5 maps for 12 inputs"],
        ),
        (
            {"attributions": {"sal": m[:, :32]}},
            InputError,
            ["attributions['sal']", "(12, 64, 64)", "(12, 32, 64)"],
        ),
        (
            {"attributions": {"sal": m[:, None].expand(-1, 3, -1, -1)}},
            InputError,
            ["reduce the channels"],
        ),
        ({"attributions": {"../x": m}}, InputError, ["attribution label", "'../x'"]),
        ({"attributions": {}}, InputError, ["attributions", "non-empty"]),
        ({"attributions": {"sal": m * float("nan")}}, InputError, ["attributions['sal']", "NaN"]),
        ({"targets": t[:7]}, InputError, ["targets", "7 entries for 12 inputs"]),
        ({"targets": t.float()}, InputError, ["targets", "integer class indices"]),
        ({"targets": t + 100}, InputError, ["targets", "entry 0", "10 classes (0..9)"]),
        ({"inputs": (x * 255).to(torch.uint8)}, InputError, ["inputs", "uint8", "x.float() / 255"]),
        ({"inputs": x[0]}, InputError, ["inputs", "(N, C, H, W)", "x[None]"]),
        ({"inputs": ["a text"]}, InputError, ["texts", "cannot tokenise", "tiny_bert"]),
        ({"inputs": "images.npy"}, InputError, ["inputs", "torch.Tensor or numpy.ndarray", "str"]),
        (
            {"metrics": ["pointing_game"]},
            InputError,
            ["pointing_game", "needs ground-truth masks", "masks="],
        ),
        (
            {"metrics": ["pointing_game"], "masks": s.masks[:, :10]},
            InputError,
            ["masks", "(12, 64, 64)", "(12, 10, 64)"],
        ),
        (
            {"metrics": ["max_sensitivity"]},
            InputError,
            ["max_sensitivity", "re-explains", "explainers={'sal'"],
        ),
        (
            {"metrics": ["max_sensitivity"], "explainers": {"sall": "saliency"}},
            InputError,
            ["explainers", "'sall'", "valid: sal"],
        ),
        (
            {"metrics": ["max_sensitivity"], "explainers": {"sal": "saliencyy"}},
            ConfigError,
            ["explainers.0.name", "did you mean 'saliency'"],
        ),
        ({"sample_ids": torch.zeros(12, dtype=torch.long)}, InputError, ["sample_ids", "distinct"]),
        ({"batch_size": 0}, InputError, ["batch_size", "0"]),
        ({"model": "lenet"}, InputError, ["model", "torch.nn.Module"]),
    ], ok


def test_bad_inputs_are_clear_errors(tiny_run, run_maps):
    _, s = tiny_run
    cases, ok = _bad_cases(s, run_maps)
    for change, exc, needles in cases:
        kw = {**ok, **change}
        with pytest.raises(exc) as info:
            xaiarena.evaluate(
                kw.pop("model"),
                kw.pop("inputs"),
                kw.pop("targets"),
                kw.pop("attributions"),
                kw.pop("metrics"),
                **kw,
            )
        msg = str(info.value).lower()
        assert all(n.lower() in msg for n in needles), (change, str(info.value))


def test_bad_explain_arguments_are_clear_errors(tiny_run):
    _, s = tiny_run
    with pytest.raises(ConfigError, match=r"(?i)explainers.0.name.*did you mean 'saliency'"):
        xaiarena.explain(s.model, s.inputs, s.targets, ["saliencyy"])
    with pytest.raises(ConfigError, match=r"explainers.1.n_stepz.*did you mean 'n_steps'"):
        xaiarena.explain(
            s.model,
            s.inputs,
            s.targets,
            ["saliency", {"name": "integrated_gradients", "n_stepz": 3}],
        )
    with pytest.raises(ConfigError, match=r"explainers.0.name.*learns from training data"):
        xaiarena.explain(s.model, s.inputs, s.targets, ["diet"])
    with pytest.raises(ConfigError, match=r"explainers.0.name.*supports text"):
        xaiarena.explain(s.model, s.inputs, s.targets, ["text_saliency"])
    with pytest.raises(InputError, match=r"targets: 3 entries for 12 inputs"):
        xaiarena.explain(s.model, s.inputs, s.targets[:3], ["saliency"])


# --------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    cfg = {
        "name": "api_text",
        "data": {"name": "planted_sentiment", "n_train": 200, "n_test": 40},
        "model": "tiny_bert",
        "training": {"epochs": 1, "batch_size": 32, "lr": 0.003, "optimizer": "adamw"},
        "evaluation": {"n_samples": 8, "batch_size": 4},
        "explainers": ["text_saliency", "text_random"],
        "metrics": ["comprehensiveness", "rationale_f1", "text_spearman"],
    }
    res = xaiarena.run(cfg, out=tmp_path_factory.mktemp("api_text") / "run", show_progress=False)
    return res, res.samples()


def test_text_evaluate_and_explain_give_the_runs_numbers(text_run):
    res, s = text_run
    maps = xaiarena.explain(
        s.model, s.inputs, s.targets, ["text_saliency", "text_random"], seed=s.seed, batch_size=3
    )
    run_maps = {k: res.attributions(k) for k in maps}
    for k in maps:
        torch.testing.assert_close(maps[k], run_maps[k], atol=1e-6, rtol=1e-5)
    ev = xaiarena.evaluate(
        s.model,
        s.inputs,
        s.targets,
        run_maps,
        ["comprehensiveness", "rationale_f1", "text_spearman"],
        masks=s.masks,
        labels=s.labels,
        sample_ids=s.sample_ids,
        seed=s.seed,
        batch_size=3,
        dataset=s.dataset,
    )
    _same_values(res.per_sample, ev.per_sample)
    # a list of strings is tokenised by the model (the same words, the same maps' width)
    texts = [" ".join(w) for w in s.inputs.words]
    ev2 = xaiarena.evaluate(
        s.model,
        texts,
        s.targets,
        run_maps,
        ["comprehensiveness"],
        sample_ids=s.sample_ids,
        seed=s.seed,
        dataset=s.dataset,
    )
    _same_values(
        ev.per_sample[ev.per_sample["metric"] == "comprehensiveness"].reset_index(drop=True),
        ev2.per_sample,
    )
    with pytest.raises(InputError, match=r"\(8, 16\) = \(N, L\) over words"):
        xaiarena.evaluate(
            s.model,
            s.inputs,
            s.targets,
            {"m": run_maps["text_saliency"][:, :5]},
            ["comprehensiveness"],
        )


# --------------------------------------------------------------------------- xaiarena score


def test_score_cli_scores_saved_maps_like_the_run(tiny_run, run_maps, tmp_path):
    res, _ = tiny_run
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    np.save(maps_dir / "saliency.npy", run_maps["saliency"].numpy())
    torch.save(run_maps["random"], maps_dir / "random.pt")
    out = CliRunner().invoke(
        app,
        [
            "score",
            str(res.run_dir),
            str(maps_dir),
            "--quiet",
            "--metric",
            "sparseness",
            "--metric",
            "{name: deletion, steps: 8}",
            "--out",
            str(tmp_path / "scores"),
        ],
    )
    assert out.exit_code == 0, out.output
    ps = pd.read_csv(tmp_path / "scores" / "per_sample.csv")
    run_ps = res.per_sample[
        res.per_sample["metric"].isin(["sparseness", "deletion"])
        & res.per_sample["explainer"].isin(["saliency", "random"])
    ]
    _same_values(run_ps.reset_index(drop=True), ps.astype({"value": "float32"}))
    assert {"summary.csv", "tests.csv"} <= {p.name for p in (tmp_path / "scores").iterdir()}
    # without --metric: the config's metrics; maps named like its explainers re-explain
    # (max_sensitivity)
    out = CliRunner().invoke(
        app, ["score", str(res.run_dir), str(maps_dir), "-q", "--out", str(tmp_path / "all")]
    )
    assert out.exit_code == 0, out.output
    assert "max_sensitivity" in set(pd.read_csv(tmp_path / "all" / "per_sample.csv")["metric"])


@pytest.mark.parametrize(
    "case", ["bad_metric", "bad_shape", "no_maps", "bad_dataset", "not_a_run", "bad_yaml"]
)
def test_score_cli_errors_exit_2_with_one_line(tiny_run, run_maps, tmp_path, case):
    res, _ = tiny_run
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    np.save(
        maps_dir / "saliency.npy",
        run_maps["saliency"].numpy()[:3] if case == "bad_shape" else run_maps["saliency"].numpy(),
    )
    args = ["score", str(res.run_dir), str(maps_dir), "-q", "-m", "sparseness"]
    needles = {
        "bad_metric": ["metrics.0.name", "'delet'", "deletion"],
        "bad_shape": ["(12, 64, 64)", "(3, 64, 64)"],
        "no_maps": ["no <label>.npy"],
        "bad_dataset": ["unknown dataset 'foo'"],
        "not_a_run": ["not a finished run"],
        "bad_yaml": ["--metric"],
    }[case]
    if case == "bad_metric":
        args[-1] = "delet"
    elif case == "no_maps":
        args[2] = str(tmp_path)
    elif case == "bad_dataset":
        args += ["--dataset", "foo"]
    elif case == "not_a_run":
        args[1] = str(tmp_path)
    elif case == "bad_yaml":
        args[-1] = "{name: [deletion"
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.output
    assert all(n in lines[0] for n in needles), out.output


# --------------------------------------------------------------------------- the README's example


def test_readme_functional_api_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Use it on your model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    model_src = next(b for b in blocks if b.startswith("# mymodel.py"))
    example = next(b for b in blocks if b.startswith("# score_my_maps.py"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mymodel", raising=False)
    (tmp_path / "mymodel.py").write_text(model_src)
    ns: dict = {}
    exec(compile(model_src, "mymodel.py", "exec"), ns)
    torch.manual_seed(0)
    torch.save(ns["build"]().state_dict(), tmp_path / "weights.pt")
    scope: dict = {"__name__": "__main__"}
    exec(compile(example, "score_my_maps.py", "exec"), scope)
    ev = scope["ev"]
    assert set(ev.summary["explainer"]) == {"mine", "saliency", "random"}
    assert set(ev.summary["metric"]) == {"sparseness", "deletion"}
    assert len(ev.tests) and ev.per_sample["value"].notna().all()
