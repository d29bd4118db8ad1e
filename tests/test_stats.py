"""Statistics: cross-checked against SciPy and hand computations, plus property tests."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from xaiarena import stats

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_per_sample(
    n=30, explainers=("a", "b", "c"), metrics=("m1", "m2"), datasets=("d1",), seed=0, shift=None
):
    rng = np.random.default_rng(seed)
    shift = shift or {}
    rows = []
    for d in datasets:
        base = rng.normal(size=n)
        for m in metrics:
            for e in explainers:
                vals = base + shift.get(e, 0.0) + rng.normal(scale=0.5, size=n)
                rows += [(d, e, m, i, v) for i, v in enumerate(vals)]
    return pd.DataFrame(rows, columns=stats.PER_SAMPLE_COLUMNS)


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["bca", "percentile"])
@pytest.mark.parametrize("n", [5, 37])
def test_bootstrap_matches_scipy(method, n):
    x = np.random.default_rng(n).exponential(size=n)  # skewed: BCa differs from percentile
    mine = stats.bootstrap_ci(x, rng=np.random.default_rng(3), n_boot=999, method=method)
    ref = sps.bootstrap(
        (x,), np.mean, n_resamples=999, rng=np.random.default_rng(3), method=method
    ).confidence_interval
    np.testing.assert_allclose(mine, (ref.low, ref.high), rtol=1e-12, atol=1e-12)


def test_bootstrap_degenerate():
    assert np.isnan(stats.bootstrap_ci(np.array([]))).all()
    assert np.isnan(stats.bootstrap_ci(np.array([1.5]))).all()
    assert stats.bootstrap_ci(np.array([2.0, 2.0, np.nan, 2.0])) == (2.0, 2.0)
    with pytest.raises(ValueError, match="unknown CI method"):
        stats.bootstrap_ci(np.arange(3.0), method="basic")


def test_bootstrap_chunking_is_still_a_bootstrap():
    x = np.random.default_rng(0).normal(size=200)
    one = stats.bootstrap_ci(x, rng=1, n_boot=4000)
    chunked = stats.bootstrap_ci(x, rng=1, n_boot=4000, max_chunk=1000)
    np.testing.assert_allclose(one, chunked, atol=0.05)


@FAST
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=40),
    st.sampled_from(["bca", "percentile"]),
    st.integers(0, 2**32 - 1),
)
def test_ci_contains_mean(values, method, seed):
    x = np.array(values)
    lo, hi = stats.bootstrap_ci(x, rng=seed, n_boot=400, method=method)
    tol = 1e-9 * (1 + np.abs(x).max())
    assert lo <= hi + tol
    assert lo - tol <= x.mean() <= hi + tol
    assert x.min() - tol <= lo and hi <= x.max() + tol


# --------------------------------------------------------------------------- summarize


def test_summarize_columns_values_and_nan():
    ps = make_per_sample(explainers=("a", "b"), metrics=("m1", "m2"), datasets=("d1", "d2"))
    ps.loc[(ps.explainer == "a") & (ps.metric == "m1") & (ps.sample_id < 4), "value"] = np.nan
    meta = {"m1": True, "m2": {"higher_is_better": False, "category": "x"}}
    out = stats.summarize(ps, meta, seed=1, models={"d1": "lenet", "d2": "resnet"}, n_boot=500)
    assert list(out.columns) == stats.SUMMARY_COLUMNS
    assert len(out) == 2 * 2 * 2
    row = out[(out.dataset == "d1") & (out.explainer == "a") & (out.metric == "m1")].iloc[0]
    vals = ps[(ps.dataset == "d1") & (ps.explainer == "a") & (ps.metric == "m1")]["value"]
    assert row.n == 26 and row["mean"] == pytest.approx(vals.mean())  # pandas skips NaN
    assert row.ci_low < row["mean"] < row.ci_high
    assert set(out[out.dataset == "d2"].model) == {"resnet"}
    assert out.set_index("metric").loc["m2", "higher_is_better"].eq(False).all()
    assert out.set_index("metric").loc["m1", "higher_is_better"].eq(True).all()


def test_summarize_deterministic_and_independent_of_other_groups():
    ps = make_per_sample(explainers=("a", "b", "c"))
    meta = {"m1": True, "m2": True}
    full = stats.summarize(ps, meta, seed=7, n_boot=300)
    again = stats.summarize(ps.sample(frac=1, random_state=0), meta, seed=7, n_boot=300)
    key = ["dataset", "explainer", "metric"]
    pd.testing.assert_frame_equal(
        full.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    )
    alone = stats.summarize(ps[ps.explainer == "b"], meta, seed=7, n_boot=300)
    pd.testing.assert_frame_equal(
        full[full.explainer == "b"].reset_index(drop=True), alone.reset_index(drop=True)
    )
    other = stats.summarize(ps, meta, seed=8, n_boot=300)
    assert not np.allclose(full.ci_low, other.ci_low)


def test_summarize_degenerate_and_errors():
    ps = pd.DataFrame(
        [("d", "a", "m", 0, np.nan), ("d", "b", "m", 0, 3.0), ("d", "c", "m", 0, 1.0),
         ("d", "c", "m", 1, 1.0)],
        columns=stats.PER_SAMPLE_COLUMNS,
    )
    out = stats.summarize(ps, {"m": True}).set_index("explainer")
    assert out.loc["a", "n"] == 0 and np.isnan(out.loc["a", ["mean", "ci_low", "ci_high"]]).all()
    assert out.loc["b", "mean"] == 3.0 and np.isnan(out.loc["b", "ci_low"])
    assert (out.loc["c", ["mean", "ci_low", "ci_high"]] == 1.0).all()
    assert (out.model == "").all()
    with pytest.raises(ValueError, match="metric 'm' has no entry"):
        stats.summarize(ps, {"other": True})
    with pytest.raises(ValueError, match="no model given"):
        stats.summarize(ps, {"m": True}, models={})
    with pytest.raises(ValueError, match="lacks column"):
        stats.summarize(ps.drop(columns="sample_id"), {"m": True})


# --------------------------------------------------------------------------- paired tests


def hand_holm(p):
    """Holm written the textbook way, for comparison."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * p[i])
        adj[i] = min(1.0, running)
    return adj


def test_holm_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max-accumulated 0.06
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm(p), hand_holm(p))
    out = stats.holm([0.01, np.nan, 0.02])  # NaN is not counted in m
    np.testing.assert_allclose(out, [0.02, np.nan, 0.02])
    assert stats.holm([]).shape == (0,)


def test_holm_matches_statsmodels_if_available():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(size=17) ** 3
    np.testing.assert_allclose(stats.holm(p), multitest.multipletests(p, method="holm")[1])


@FAST
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_properties(p):
    p = np.array(p)
    adj = stats.holm(p)
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in the raw p-values
    np.testing.assert_allclose(adj, hand_holm(list(p)))


def test_paired_tests_match_scipy():
    ps = make_per_sample(n=25, explainers=("a", "b", "c"), shift={"a": 0.4, "c": -0.1})
    ps.loc[(ps.explainer == "b") & (ps.sample_id.isin([3, 9])), "value"] = np.nan
    ps = ps[~((ps.explainer == "c") & (ps.sample_id == 5))]  # unmatched sample
    out = stats.paired_tests(ps, with_n=True)
    assert list(out.columns) == stats.TESTS_COLUMNS + ["n", "n_dropped"]
    assert list(stats.paired_tests(ps).columns) == stats.TESTS_COLUMNS
    assert len(out) == 2 * 3 * 2  # metrics x pairs x tests
    for (metric, a, b), grp in out.groupby(["metric", "explainer_a", "explainer_b"]):
        wide = ps[ps.metric == metric].pivot(index="sample_id", columns="explainer", values="value")
        pair = wide[[a, b]].dropna()
        t = grp[grp.test == "t"].iloc[0]
        w = grp[grp.test == "wilcoxon"].iloc[0]
        ref_t = sps.ttest_rel(pair[a], pair[b])
        ref_w = sps.wilcoxon(pair[a], pair[b])
        assert t.statistic == pytest.approx(ref_t.statistic, rel=1e-10)
        assert t.p_value == pytest.approx(ref_t.pvalue, rel=1e-9)
        assert w.statistic == pytest.approx(ref_w.statistic)
        assert w.p_value == pytest.approx(ref_w.pvalue, rel=1e-12)
        d = pair[a] - pair[b]
        assert t.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
        assert t.n == len(pair) and t.n_dropped == len(wide) - len(pair)
    for _, grp in out.groupby(["metric", "test"]):
        np.testing.assert_allclose(grp.p_holm, hand_holm(list(grp.p_value)))
    ab = out[(out.explainer_a == "a") & (out.explainer_b == "b") & (out.test == "t")]
    assert (ab.effect_size > 0).all()  # a was shifted up


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(-3, 3), min_size=2, max_size=10).filter(lambda v: any(v)),
       st.sampled_from([1.0, 0.1, 0.37]))
def test_wilcoxon_with_ties_or_zeros_equals_scipy(values, scale):
    """Small samples with ties or zeros take the enumerated sign-flip path; scipy is the oracle
    (its own exact permutation test, 2**n calls of the statistic)."""
    d = np.asarray(values, dtype=np.float64) * scale
    stat, p = stats.paired_wilcoxon(d)
    ref = sps.wilcoxon(d)
    assert stat == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)


def test_paired_tests_degenerate():
    rows = []
    for i in range(6):
        rows += [("d", "same1", "m", i, float(i)), ("d", "same2", "m", i, float(i)),
                 ("d", "plus1", "m", i, float(i) + 1)]
    rows += [("d", "lonely", "m", 0, 1.0)] + [("d", "lonely", "m", i, np.nan) for i in range(1, 6)]
    ps = pd.DataFrame(rows, columns=stats.PER_SAMPLE_COLUMNS)
    out = stats.paired_tests(ps, with_n=True).set_index(["explainer_a", "explainer_b", "test"]).sort_index()
    same = out.loc[("same1", "same2")]
    assert (same.statistic == 0).all() and (same.p_value == 1).all() and (same.effect_size == 0).all()
    const = out.loc[("same1", "plus1", "t")]
    assert const.statistic == -np.inf and const.p_value == 0 and const.effect_size == -np.inf
    wil = out.loc[("same1", "plus1", "wilcoxon")]
    assert wil.p_value == pytest.approx(sps.wilcoxon(-np.ones(6)).pvalue)
    lonely = out.loc[("same1", "lonely")]
    assert lonely.isna()[["statistic", "p_value", "p_holm", "effect_size"]].all().all()
    assert (lonely.n == 1).all() and (lonely.n_dropped == 5).all()
    # NaN p-values are left out of the Holm family: 5 finite t p-values here
    t = out.xs("t", level="test")
    np.testing.assert_allclose(t.p_holm.dropna(), stats.holm(t.p_value.dropna()))


def test_paired_tests_rejects_duplicates():
    ps = make_per_sample(n=5)
    with pytest.raises(ValueError, match="duplicated"):
        stats.paired_tests(pd.concat([ps, ps.iloc[:1]]))


def test_tests_never_pool_datasets():
    ps = make_per_sample(n=20, datasets=("d1", "d2"), shift={"a": 0.3})
    out = stats.paired_tests(ps)
    assert set(out.dataset) == {"d1", "d2"}
    one = stats.paired_tests(ps[ps.dataset == "d2"])
    pd.testing.assert_frame_equal(out[out.dataset == "d2"].reset_index(drop=True), one)


# --------------------------------------------------------------------------- ranking


def _summary_and_tests(shift, n=60, hib=True, seed=0):
    ps = make_per_sample(n=n, explainers=tuple(shift), metrics=("m",), shift=shift, seed=seed)
    summ = stats.summarize(ps, {"m": hib}, n_boot=200)
    return ps, summ, stats.paired_tests(ps)


def test_rank_ties_and_groups():
    _, summ, tests = _summary_and_tests({"good": 2.0, "good2": 1.98, "bad": 0.0, "worst": -2.0})
    r = stats.rank(summ, tests, alpha=0.05)
    assert list(r.columns) == stats.RANK_COLUMNS
    r = r.set_index("explainer")
    assert list(r.index) == ["good", "good2", "bad", "worst"]  # best mean first
    assert r.loc["good", "rank"] == 1 and r.loc["good2", "rank"] == 1
    assert r.loc["bad", "rank"] == 3 and r.loc["worst", "rank"] == 4
    assert r.loc["good", "group"] == "a" and r.loc["good2", "group"] == "a"
    assert r.loc["bad", "group"] == "b" and r.loc["worst", "group"] == "c"


def test_rank_lower_is_better_and_test_choice():
    _, summ, tests = _summary_and_tests({"x": 2.0, "y": 0.0}, hib=False)
    r = stats.rank(summ, tests).set_index("explainer")
    assert r.loc["y", "rank"] == 1 and r.loc["x", "rank"] == 2
    for test in ("wilcoxon", "both"):
        assert stats.rank(summ, tests, test=test).set_index("explainer").loc["x", "rank"] == 2
    # with a tiny alpha nothing is significant: everybody ties
    assert (stats.rank(summ, tests, alpha=1e-300)["rank"] == 1).all()
    with pytest.raises(ValueError, match="unknown test"):
        stats.rank(summ, tests, test="anova")


def test_rank_without_tests_and_with_nan_mean():
    summ = pd.DataFrame({
        "dataset": "d", "model": "", "explainer": ["a", "b", "c"], "metric": "m",
        "mean": [1.0, np.nan, 2.0], "ci_low": np.nan, "ci_high": np.nan, "n": [3, 0, 3],
        "higher_is_better": True,
    })
    r = stats.rank(summ, pd.DataFrame(columns=stats.TESTS_COLUMNS)).set_index("explainer")
    assert list(r.index) == ["c", "a", "b"]
    assert r.loc["c", "rank"] == 1 and r.loc["a", "rank"] == 1 and pd.isna(r.loc["b", "rank"])
    assert r.loc["b", "group"] == "" and r.loc["a", "group"] == "a"


def test_compare_to_best():
    _, summ, tests = _summary_and_tests({"good": 2.0, "tie": 1.99, "bad": 0.0})
    c = stats.compare_to_best(summ, tests).set_index("explainer")
    assert c.loc["good", "is_best"] and not c.loc["good", "significant"]
    assert not c.loc["tie", "significant"] and c.loc["bad", "significant"]
    assert (c.best == "good").all() and np.isnan(c.loc["good", "p_holm"])


@FAST
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.sets(st.sampled_from(list(itertools.combinations(range(k), 2))) if k > 1
                        else st.nothing()))))
def test_compact_letter_display_property(case):
    k, diff = case
    order = [f"e{i}" for i in range(k)]
    different = [(order[i], order[j]) for i, j in diff]
    letters = stats.compact_letter_display(order, different)
    assert all(letters[e] for e in order)
    for i, j in itertools.combinations(range(k), 2):
        share = bool(set(letters[order[i]]) & set(letters[order[j]]))
        assert share == ((i, j) not in diff)
    assert "a" in letters[order[0]]


def test_compact_letter_display_known():
    # a-b-c chain where only the ends differ: a:"a", b:"ab", c:"b"
    out = stats.compact_letter_display(["x", "y", "z"], [("z", "x")])
    assert out == {"x": "a", "y": "ab", "z": "b"}


def test_combined_ranking():
    ranks = pd.DataFrame({
        "dataset": ["d1", "d1", "d2", "d2", "d1", "d1"],
        "metric": ["m", "m", "m", "m", "k", "k"],
        "explainer": ["a", "b", "a", "b", "a", "b"],
        "rank": pd.array([1, 2, 1, 1, 2, 1], dtype="Int64"),
        "group": ["a", "b", "a", "a", "b", "a"],
    })
    out = stats.combined_ranking(ranks)
    assert list(out.columns) == stats.COMBINED_COLUMNS
    m = out[out.metric == "m"].set_index("explainer")
    assert m.loc["a", "mean_rank"] == 1.0 and m.loc["b", "mean_rank"] == 1.5
    assert (m.n_datasets == 2).all()
    everything = out[out.metric == stats.ALL_METRICS].set_index("explainer")
    assert everything.loc["a", "mean_rank"] == pytest.approx(4 / 3)
    assert everything.loc["b", "mean_rank"] == pytest.approx(4 / 3)
    assert list(out.metric.unique()) == ["m", "k", stats.ALL_METRICS]


def test_end_to_end_speed_budget():
    """A realistic size (2 datasets x 6 explainers x 8 metrics x 128 samples) stays fast."""
    import time

    ps = make_per_sample(n=128, explainers=tuple("abcdef"), metrics=tuple(f"m{i}" for i in range(8)),
                         datasets=("d1", "d2"))
    meta = {f"m{i}": i % 2 == 0 for i in range(8)}
    t0 = time.perf_counter()
    summ = stats.summarize(ps, meta, seed=0)
    tests = stats.paired_tests(ps)
    ranks = stats.rank(summ, tests)
    stats.combined_ranking(ranks)
    assert time.perf_counter() - t0 < 20
    assert len(tests) == 2 * 8 * 15 * 2
