"""Views: learned maps scored on f_b (``diet@f_s``) and how standings move between f_b and f_s."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xaiarena import stats
from xaiarena.report.narrative import home_reading
from xaiarena.views import home_advantage, on_f_b_label, rank_shift, source_of

N = 40


def _rows(view: str, explainer: str, metric: str, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": "d",
            "explained_model": view,
            "explainer": explainer,
            "metric": metric,
            "sample_id": np.arange(N),
            "value": values,
        }
    )


def _hand_made() -> tuple[pd.DataFrame, dict]:
    """Per-sample scores built so the standings are known: on ``acc`` (higher is better) f_b orders
    a > b > diet@f_s with wide gaps, f_s orders diet > a > b; on ``err`` (lower is better) the means
    differ by far less than the noise, in the same order on both models (b < a < diet). Noise is
    centred, so every mean is exactly its constant (plus the shared per-sample effect)."""
    rng = np.random.default_rng(0)

    def noise(
        scale: float = 0.01,
    ) -> np.ndarray:  # centred: the means are exactly the constants below
        e = rng.normal(0, scale, N)
        return e - e.mean()

    common = rng.normal(0, 1.0, N)  # a per-sample effect shared by every map (what pairing removes)
    parts = [
        _rows("f_b", "a", "acc", 0.9 + noise()),
        _rows("f_b", "b", "acc", 0.6 + noise()),
        _rows("f_b", "diet@f_s", "acc", 0.3 + noise()),
        _rows("f_s", "a", "acc", 0.6 + noise()),
        _rows("f_s", "b", "acc", 0.3 + noise()),
        _rows("f_s", "diet", "acc", 0.9 + noise()),
        _rows("f_b", "a", "err", 0.50 + common + noise(0.5)),
        _rows("f_b", "b", "err", 0.49 + common + noise(0.5)),
        _rows("f_b", "diet@f_s", "err", 0.51 + common + noise(0.5)),
        _rows("f_s", "a", "err", 0.50 + common + noise(0.5)),
        _rows("f_s", "b", "err", 0.49 + common + noise(0.5)),
        _rows("f_s", "diet", "err", 0.51 + common + noise(0.5)),
        # left out: agreement pairs and descriptive outputs rank nobody
        _rows("f_b", "a~diet@f_s", "agree", rng.uniform(0, 1, N)),
        _rows("f_s", "a~diet", "agree", rng.uniform(0, 1, N)),
        _rows("f_b", "a", "fg_mean", rng.uniform(0, 1, N)),
        _rows("f_b", "diet@f_s", "fg_mean", rng.uniform(0, 1, N)),
        _rows("f_s", "a", "fg_mean", rng.uniform(0, 1, N)),
        _rows("f_s", "diet", "fg_mean", rng.uniform(0, 1, N)),
    ]
    meta = {
        "acc": {"higher_is_better": True},
        "err": {"higher_is_better": False},
        "agree": {"higher_is_better": True},
        "fg_mean": {"higher_is_better": True, "ranked": False},
    }
    return pd.concat(parts, ignore_index=True), meta


def test_the_label_of_learned_maps_on_f_b_round_trips():
    assert on_f_b_label("diet") == "diet@f_s" and source_of("diet@f_s") == "diet"
    assert source_of("diet") is None and source_of("a~b") is None and source_of("x@f_b") is None


def test_rank_shift_on_a_hand_made_per_sample_table():
    ps, meta = _hand_made()
    summary = stats.summarize(ps, meta)
    tests = stats.paired_tests(ps)
    # statistics never pair maps across views: every test lives within one explained model
    assert set(tests["explained_model"]) == {"f_b", "f_s"}
    assert not len(
        tests[
            (tests["explained_model"] == "f_s")
            & tests[["explainer_a", "explainer_b"]].isin(["diet@f_s"]).any(axis=1)
        ]
    )
    assert not len(
        tests[
            (tests["explained_model"] == "f_b")
            & tests[["explainer_a", "explainer_b"]].isin(["diet"]).any(axis=1)
        ]
    )

    shift = rank_shift(summary, tests, meta)
    assert set(shift["metric"]) == {"acc", "err"}  # not the pairs, not the descriptive output
    assert set(shift["explainer"]) == {"a", "b", "diet"} and set(shift["learned"]) == {"diet"}
    assert set(shift["view"]) == {"f_s"} and set(shift["n_explainers"]) == {3}
    acc = shift[shift["metric"] == "acc"].set_index("explainer")
    assert acc.loc[["a", "b", "diet"], "position_f_b"].tolist() == [1, 2, 3]
    assert acc.loc[["a", "b", "diet"], "position_f_s"].tolist() == [2, 3, 1]
    assert acc.loc[["a", "b", "diet"], "position_gain"].tolist() == [-1, -1, 2]
    # the gaps are wide and the noise small: every difference is significant, so ranks = positions
    assert acc.loc[["a", "b", "diet"], "rank_f_b"].tolist() == [1, 2, 3]
    assert acc.loc[["a", "b", "diet"], "rank_f_s"].tolist() == [2, 3, 1]
    assert acc.loc["diet", "mean_f_b"] == pytest.approx(0.3, abs=0.01)  # diet@f_s's mean on f_b
    assert acc.loc["diet", "mean_f_s"] == pytest.approx(0.9, abs=0.01)
    err = shift[shift["metric"] == "err"].set_index("explainer")
    assert err["position_gain"].abs().sum() == 0  # the same order (b, a, diet) on both models
    assert set(err["rank_f_b"]) == {1} and set(err["rank_f_s"]) == {1}  # nothing significant
    for _, g in shift.groupby("metric"):
        assert (
            g["position_gain"].sum() == 0
        )  # among the same explainers one's gain is the others' loss

    adv = home_advantage(shift).set_index("explainer")
    assert list(adv.index) == ["diet", "a", "b"]  # the learned explainer first
    assert adv.loc["diet", "mean_position_gain"] == pytest.approx(1.0)
    assert adv.loc["diet", ["up", "same", "down"]].tolist() == [1, 1, 0]
    assert adv.loc["a", "mean_position_gain"] == pytest.approx(-0.5)
    assert (
        adv.loc["diet", "mean_rank_f_b"] == pytest.approx(2.0)
        and adv.loc["diet", "mean_rank_f_s"] == 1.0
    )
    text = " ".join(home_reading(home_advantage(shift), "diet", 3))
    assert "diet's maps move up by 1.00 positions on average over 2 metrics" in text
    assert "more than any other explainer's, by position and by rank" in text


def test_rank_shift_needs_explainers_scored_on_both_models():
    ps, meta = _hand_made()
    only_fb = ps[ps["explained_model"] == "f_b"]
    assert rank_shift(stats.summarize(only_fb, meta), stats.paired_tests(only_fb), meta).empty
    # without diet@f_s rows the plain explainers' moves are still measured, DiET's is not
    no_cross = ps[ps["explainer"] != "diet@f_s"]
    shift = rank_shift(stats.summarize(no_cross, meta), stats.paired_tests(no_cross), meta)
    assert set(shift["explainer"]) == {"a", "b"}
    flat = stats.summarize(ps, meta).drop(columns=["explained_model"])
    assert rank_shift(flat, pd.DataFrame(columns=stats.TESTS_COLUMNS), meta).empty


@pytest.mark.parametrize(
    ("diet_gain", "diet_rank_gain", "other_gains", "says"),
    [
        (2.0, 1.0, [-1.0, -1.0], "favours diet's maps more than any other explainer's"),
        (0.5, 0.0, [-1.0, 0.5], "Other explainers gain as much or more"),
        (1.0, 0.0, [-0.5, -0.5], "its rank (significant differences only) does not improve"),
        (-0.5, 0.0, [0.25, 0.25], "f_s does not favour diet's maps"),
    ],
)
def test_the_home_reading_claims_no_more_than_the_gains(
    diet_gain, diet_rank_gain, other_gains, says
):
    rows = [("diet", diet_gain, diet_rank_gain)] + [
        (f"e{i}", g, 0.0) for i, g in enumerate(other_gains)
    ]
    adv = pd.DataFrame(
        [
            {
                "explainer": e,
                "n_metrics": 2,
                "mean_position_f_b": 2.0,
                "mean_position_f_s": 2.0 - g,
                "mean_position_gain": g,
                "mean_rank_f_b": 1.0,
                "mean_rank_f_s": 1.0 - rg,
                "mean_rank_gain": rg,
                "up": 0,
                "same": 2,
                "down": 0,
            }
            for e, g, rg in rows
        ]
    )
    text = " ".join(home_reading(adv, "diet", len(rows)))
    assert says in text
    claims = ["favours diet's maps more", "as much or more", "does not improve", "does not favour"]
    assert sum(c in text for c in claims) == 1  # one conclusion, the one the numbers support
