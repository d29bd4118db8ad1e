"""Contracts every registered metric (image and text) keeps, iterated over the registry:

* the conformance kit (:func:`xaiarena.testing.check_metric`): metadata, option validation in
  the one format, output shapes and ranges, determinism under a seed, and randomness per sample
  (issue 12.8): scores of a batch equal those of the same samples scored in two batches, in
  another order, with the explainers in another order, or with another explainer added, each
  call given a generator in the same state;
* another seed changes every randomised metric;
* NaN only with a logged reason (issue 17.8), including for a model whose outputs are NaN.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

from tests.support.metrics import (
    TINY_OPTIONS,
    NaNModel,
    gen,
    gradient_fn,
    tiny_image_batch,
    tiny_text_batch,
)
from xaiarena.ops.pairs import PAIR_SEPARATOR
from xaiarena.registry import METRICS
from xaiarena.testing import check_metric
from xaiarena.testing.fixtures import metric_setup

ALL = METRICS.names()
#: metrics that draw no random numbers for the maps used here (no ranking, no noise)
DETERMINISTIC = {
    "sparseness",
    "complexity",
    "relevance_mass_accuracy",
    "fg_bg_attribution",
    "explained_model_accuracy",
}
N = 12


def setup(name: str, n: int = N, model=None):
    """The metric (cheap options), a batch, maps of four explainers (a constant map among them,
    so that ties matter) and their explain functions
    (:func:`xaiarena.testing.fixtures.metric_setup`)."""
    metric = METRICS.create(name, **TINY_OPTIONS.get(name, {}))
    batch, maps, fns = metric_setup("text" if "text" in metric.modality else "image", n, model)
    return metric, batch, maps, fns


def run(metric, batch, maps, fns, seed: int = 0):
    if fns is not None:
        fns = {k: fns[k] for k in maps}
    return metric.evaluate(batch, maps, generator=gen(seed), explainers=fns)


def pair_free(key: str) -> str:
    """Agreement keys as unordered pairs ("a~b" == "b~a")."""
    return PAIR_SEPARATOR.join(sorted(key.split(PAIR_SEPARATOR))) if PAIR_SEPARATOR in key else key


def flat(out, idx=None) -> dict[tuple[str, str], torch.Tensor]:
    """Every per-sample score and curve keyed by (kind, output, unordered key), rows ``idx``."""
    res = {}
    for kind, table in (("score", out.scores), ("curve", out.curves)):
        for o, per in table.items():
            for k, v in per.items():
                res[(kind, o, pair_free(k))] = v if idx is None else v[idx]
    return res


def assert_same(a: dict, b: dict, keys=None, what: str = ""):
    keys = a.keys() if keys is None else keys
    for k in keys:
        torch.testing.assert_close(
            a[k], b[k], rtol=1e-4, atol=1e-5, equal_nan=True, msg=lambda m, k=k: f"{what} {k}: {m}"
        )


@pytest.mark.parametrize("name", ALL)
def test_every_metric_passes_the_conformance_kit(name):
    check_metric(name, TINY_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", ALL)
def test_another_seed_changes_randomised_metrics_only(name):
    metric, batch, maps, fns = setup(name)
    a, b = flat(run(metric, batch, maps, fns, seed=0)), flat(run(metric, batch, maps, fns, seed=1))
    if name in DETERMINISTIC:
        assert_same(a, b, what="another seed")
    else:
        assert any(not torch.equal(a[k].nan_to_num(-9), b[k].nan_to_num(-9)) for k in a), (
            f"{name}: another seed gave identical scores"
        )


NAN_LINE = re.compile(
    r"^(\S+): NaN(?: for explainer '(.+?)')? at (\d+) sample\(s\) \[([\d, ]*)\]: (.*)$"
)


def assert_every_nan_logged(metric, out, records):
    """Every NaN score is covered by a warning of ``nan_where`` for its output and explainer."""
    logged = []
    for r in records:
        m = NAN_LINE.match(r.getMessage())
        if m:
            idx = {int(i) for i in m.group(4).split(",") if i.strip()}
            logged.append((m.group(1), m.group(2), int(m.group(3)), idx, m.group(5)))
    reasons = set()
    for o, per in out.scores.items():
        for k, v in per.items():
            bad = set(torch.nonzero(torch.isnan(v)).flatten().tolist())
            if not bad:
                continue
            mine = [
                entry
                for entry in logged
                if entry[0] in (metric.name, o)
                and (entry[1] == k or (entry[1] is None and PAIR_SEPARATOR in k))
            ]
            covered = set().union(*(entry[3] for entry in mine)) if mine else set()
            if not bad <= covered:  # lists are cut at 10 samples: then the counts must add up
                assert sum(entry[2] for entry in mine) >= len(bad), (
                    f"{metric.name}/{o}/{k}: NaN at {sorted(bad)} without a logged reason"
                )
            reasons |= {entry[4] for entry in mine}
    return reasons


@pytest.mark.parametrize("name", ALL)
def test_nan_only_with_a_logged_reason(name, caplog):
    metric, batch, maps, fns = setup(name)
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        out = run(metric, batch, maps, fns)
    assert_every_nan_logged(metric, out, caplog.records)


@pytest.mark.parametrize("name", [n for n in ALL if "model" in METRICS.entry(n).meta["requires"]])
def test_a_model_with_nan_outputs_gives_nan_with_its_reason(name, caplog):
    """Never a plausible number from a diverged model (e.g. an accuracy of 1/6): NaN, and the log
    says the model's output is not finite."""
    inner = (
        tiny_text_batch(1).model
        if "text" in METRICS.entry(name).meta["modality"]
        else tiny_image_batch(1).model
    )
    metric, batch, maps, fns = setup(name, model=NaNModel(inner))
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        out = run(metric, batch, maps, fns)
    reasons = assert_every_nan_logged(metric, out, caplog.records)
    for o, per in out.scores.items():
        for k, v in per.items():
            assert bool(torch.isnan(v).all()), (
                f"{name}/{o}/{k}: {v} from a model whose outputs are NaN"
            )
    assert any("not finite" in r for r in reasons), reasons


#: metrics that never rank a map's features by its values (no tie-breaking to fall back on), or
#: whose tie-breaking is shared between the two maps compared (mprt)
NO_RANKING = DETERMINISTIC | {
    "max_sensitivity",
    "avg_sensitivity",
    "relative_input_stability",
    "mprt",
    "faithfulness_correlation",
    "infidelity",
    "sensitivity_n",
    "local_lipschitz_estimate",
    "relative_output_stability",
    "random_logit",
    "focus",
}


@pytest.mark.parametrize("name", [n for n in ALL if n not in NO_RANKING])
def test_a_constant_map_gets_a_logged_note_where_ties_are_broken_at_random(name, caplog):
    """E.g. the pointing game of an all-zero map is a coin flip: say so."""
    metric, batch, maps, fns = setup(name)
    maps["const"] = torch.zeros_like(maps["const"])
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        run(metric, batch, maps, fns)
    notes = [r.getMessage() for r in caplog.records if "gives a constant map" in r.getMessage()]
    assert any("'const'" in m and f"at {N} sample(s)" in m for m in notes), notes
    assert not any("'a'" in m for m in notes)  # only the constant map


def test_faithfulness_correlation_logs_the_right_reason(caplog):
    metric = METRICS.create("faithfulness_correlation", **TINY_OPTIONS["faithfulness_correlation"])
    batch = tiny_image_batch(6)
    maps = {
        "const": torch.ones(6, 16, 16),
        "grad": gradient_fn(batch.model)(batch.inputs, batch.targets),
    }
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        out = metric.evaluate(batch, maps, generator=gen(0)).scores[metric.name]
    assert torch.isnan(out["const"]).all() and not torch.isnan(out["grad"]).any()
    assert "'const'" in caplog.text and "attribution sums are constant" in caplog.text
    assert "not finite" not in caplog.text
    caplog.clear()
    nan_batch = tiny_image_batch(6, model=NaNModel(batch.model))
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        out = metric.evaluate(nan_batch, maps, generator=gen(0)).scores[metric.name]
    assert torch.isnan(out["grad"]).all()
    assert "'grad'" in caplog.text and "the model's output is not finite" in caplog.text
    assert "constant across runs" not in caplog.text.split("'grad'")[1].split("\n")[0]


def test_keep_remove_accuracy_of_a_nan_model_is_nan_not_a_plausible_number(caplog):
    batch = tiny_image_batch(6)
    nan_batch = tiny_image_batch(6, model=NaNModel(batch.model))
    metric = METRICS.create("pixel_perturbation", percentages=(10,))
    maps = {"grad": gradient_fn(batch.model)(batch.inputs, batch.targets)}
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        out = metric.evaluate(nan_batch, maps, generator=gen(0)).scores
    for o in ("keep10_accuracy", "remove10_accuracy", "keep10_drop", "remove10_drop"):
        assert torch.isnan(out[o]["grad"]).all(), o
        assert f"{o}: NaN for explainer 'grad' at 6 sample(s)" in caplog.text
