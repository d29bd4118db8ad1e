"""A study's presets and its reference section (the source's numbers beside ours)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

import xaiarena
from xaiarena.errors import ConfigError
from xaiarena.report.study import reference_rows
from xaiarena.report.tables import p_eq

PRESETS = {"data": "hard_mnist", "model": "lenet", "explainers": ["saliency"], "metrics": ["sparseness"],
           "presets": {"small": {"training.epochs": 1, "evaluation.n_samples": 4}}}


def test_a_preset_applies_its_overrides_and_the_command_line_wins():
    cfg = xaiarena.load_config(PRESETS, overrides=["preset=small"])
    assert cfg.training.epochs == 1 and cfg.evaluation.n_samples == 4
    cfg = xaiarena.load_config(PRESETS, overrides=["preset=small", "evaluation.n_samples=6"])
    assert cfg.evaluation.n_samples == 6 and cfg.training.epochs == 1


def test_an_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'smal'.*did you mean 'small'.*valid: small"):
        xaiarena.load_config(PRESETS, overrides=["preset=smal"])


def _data(tmp_path, rows):
    summary = pd.DataFrame(rows, columns=["dataset", "explained_model", "explainer", "metric", "mean", "ci_low",
                                          "ci_high", "higher_is_better"])
    return SimpleNamespace(summary=summary, datasets=["d"], run_dir=tmp_path)


def test_reference_values_and_ranges_are_judged_by_our_ci_and_orderings_need_two_explainers(tmp_path):
    data = _data(tmp_path, [("d", "f_b", "a", "m", 0.5, 0.4, 0.6, True),
                            ("d", "f_b", "b", "m", 0.2, 0.1, 0.3, True)])
    refs = [{"metric": "m", "explainer": "a", "value": 0.45, "source": "s"},        # inside our CI
            {"metric": "m", "explainer": "a", "range": [0.7, 0.9], "source": "s"},   # no overlap
            {"metric": "m", "explainer": "b", "value": 0.35, "source": "s"}]         # outside
    rows, orderings = reference_rows(data, refs)
    assert [r["agrees"] for r in rows] == ["yes", "no", "no"]
    # one ordering over the two distinct explainers (a listed twice counts once)
    assert len(orderings) == 1 and "source order a > b; ours a > b" in orderings[0]
    assert "the same ordering" in orderings[0]
    _, only_a = reference_rows(data, refs[:2])
    assert only_a == []  # one explainer, given twice: no ordering to compare


@pytest.mark.parametrize(("p", "text"), [(0.0312, "p = 0.031"), (0.004, "p = 0.0040"), (3e-7, "p < 0.0001"),
                                         (float("nan"), "p = –")])
def test_p_values_read_as_a_relation(p, text):
    """The smallest p-values read 'p < 0.0001', never 'p = < 0.0001'."""
    assert p_eq("p", p) == text
