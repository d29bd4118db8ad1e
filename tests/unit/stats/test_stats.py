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
    return pd.DataFrame(rows, columns=stats.PER_SAMPLE_REQUIRED)


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
    assert list(out.columns) == stats.SUMMARY_COLUMNS + stats.COUNT_COLUMNS
    assert (out.n_samples == out.n).all() and (out.n_replicates == 1).all()  # one model
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
        [
            ("d", "a", "m", 0, np.nan),
            ("d", "b", "m", 0, 3.0),
            ("d", "c", "m", 0, 1.0),
            ("d", "c", "m", 1, 1.0),
        ],
        columns=stats.PER_SAMPLE_REQUIRED,
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
    assert list(out.columns) == stats.TESTS_COLUMNS + ["min_p", "n", "n_dropped"]
    assert list(stats.paired_tests(ps).columns) == stats.TESTS_COLUMNS + ["min_p"]
    assert (out[out.test == "t"].min_p == 0).all()
    assert (out[out.test == "wilcoxon"].min_p == 2.0 ** (1 - out[out.test == "wilcoxon"].n)).all()
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
@given(
    st.lists(st.integers(-3, 3), min_size=2, max_size=10).filter(lambda v: any(v)),
    st.sampled_from([1.0, 0.1, 0.37]),
)
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
        rows += [
            ("d", "same1", "m", i, float(i)),
            ("d", "same2", "m", i, float(i)),
            ("d", "plus1", "m", i, float(i) + 1),
        ]
    rows += [("d", "lonely", "m", 0, 1.0)] + [("d", "lonely", "m", i, np.nan) for i in range(1, 6)]
    ps = pd.DataFrame(rows, columns=stats.PER_SAMPLE_REQUIRED)
    out = (
        stats.paired_tests(ps, with_n=True)
        .set_index(["explainer_a", "explainer_b", "test"])
        .sort_index()
    )
    same = out.loc[("same1", "same2")]
    assert (
        (same.statistic == 0).all() and (same.p_value == 1).all() and (same.effect_size == 0).all()
    )
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
    summ = pd.DataFrame(
        {
            "dataset": "d",
            "model": "",
            "explainer": ["a", "b", "c"],
            "metric": "m",
            "mean": [1.0, np.nan, 2.0],
            "ci_low": np.nan,
            "ci_high": np.nan,
            "n": [3, 0, 3],
            "higher_is_better": True,
        }
    )
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
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.sets(
                st.sampled_from(list(itertools.combinations(range(k), 2)))
                if k > 1
                else st.nothing()
            ),
        )
    )
)
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
    ranks = pd.DataFrame(
        {
            "dataset": ["d1", "d1", "d2", "d2", "d1", "d1"],
            "metric": ["m", "m", "m", "m", "k", "k"],
            "explainer": ["a", "b", "a", "b", "a", "b"],
            "rank": pd.array([1, 2, 1, 1, 2, 1], dtype="Int64"),
            "group": ["a", "b", "a", "a", "b", "a"],
        }
    )
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

    ps = make_per_sample(
        n=128,
        explainers=tuple("abcdef"),
        metrics=tuple(f"m{i}" for i in range(8)),
        datasets=("d1", "d2"),
    )
    meta = {f"m{i}": i % 2 == 0 for i in range(8)}
    t0 = time.perf_counter()
    summ = stats.summarize(ps, meta, seed=0)
    tests = stats.paired_tests(ps)
    ranks = stats.rank(summ, tests)
    stats.combined_ranking(ranks)
    assert time.perf_counter() - t0 < 20
    assert len(tests) == 2 * 8 * 15 * 2


# --------------------------------------------------------------------------- replicates x samples


def replicate_table(reps=3, n=40, image_sd=0.3, seed_sd=0.1, resid_sd=0.1, shift=None, seed=0):
    """The per_sample table of a replicate run: seeds crossed with samples, explainers a, b, c."""
    rng = np.random.default_rng(seed)
    shift = shift or {}
    rows = []
    for e in ("a", "b", "c"):
        y = (
            shift.get(e, 0.0)
            + rng.normal(0, seed_sd, (reps, 1))
            + rng.normal(0, image_sd, (1, n))
            + rng.normal(0, resid_sd, (reps, n))
        )
        for r in range(reps):
            rows.append(
                pd.DataFrame(
                    {
                        "dataset": "d",
                        "replicate": r,
                        "seed": 10 + r,
                        "explainer": e,
                        "metric": "m",
                        "sample_id": np.arange(n),
                        "value": y[r],
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def hand_mean_squares(y):
    """Two-way ANOVA without replication, written the textbook way (sums of squares by loops)."""
    reps, n = len(y), len(y[0])
    grand = sum(sum(row) for row in y) / (reps * n)
    rows = [sum(row) / n for row in y]
    cols = [sum(y[r][i] for r in range(reps)) / reps for i in range(n)]
    ss_r = n * sum((m - grand) ** 2 for m in rows)
    ss_i = reps * sum((m - grand) ** 2 for m in cols)
    ss_t = sum((y[r][i] - grand) ** 2 for r in range(reps) for i in range(n))
    return ss_r / (reps - 1), ss_i / (n - 1), (ss_t - ss_r - ss_i) / ((reps - 1) * (n - 1))


def test_crossed_mean_is_the_crossed_random_effects_interval():
    y = np.random.default_rng(1).normal(size=(4, 15)) + np.linspace(0, 1, 4)[:, None]
    ms_r, ms_i, ms_e = hand_mean_squares(y.tolist())
    mean, var, df = stats._crossed_parts(y)
    reps, n = y.shape
    v = (ms_r + ms_i - ms_e) / (reps * n)  # both components positive here
    nu = (ms_r + ms_i - ms_e) ** 2 / (ms_r**2 / 3 + ms_i**2 / 14 + ms_e**2 / 42)
    np.testing.assert_allclose(var, [v, ms_r / (reps * n), ms_i / (reps * n)], rtol=1e-12)
    np.testing.assert_allclose(df, [nu, 3, 14], rtol=1e-12)
    r = stats.crossed_mean(y)
    assert r["mean"] == pytest.approx(y.mean())
    # never narrower than the t-interval over replicate means nor the one over per-sample means
    for means in (y.mean(axis=1), y.mean(axis=0)):
        lo, hi = sps.t.interval(0.95, means.size - 1, loc=means.mean(), scale=sps.sem(means))
        assert r["ci_low"] <= lo + 1e-12 and hi <= r["ci_high"] + 1e-12
    half = max(
        sps.t.ppf(0.975, nu) * np.sqrt(v),
        *(sps.t.ppf(0.975, m.size - 1) * sps.sem(m) for m in (y.mean(axis=1), y.mean(axis=0))),
    )
    assert r["ci_high"] - r["mean"] == pytest.approx(half, rel=1e-12)


def test_crossed_mean_truncates_negative_components_and_degenerate_tables():
    # identical replicates: no seed variance (MS_R = 0 < MS_E is impossible here, MS_E = 0 too)
    row = np.random.default_rng(2).normal(size=12)
    r = stats.crossed_mean(np.tile(row, (3, 1)))
    lo, hi = sps.t.interval(0.95, 11, loc=row.mean(), scale=sps.sem(row))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), rel=1e-12) and r["df"] == 11
    # pure noise: components estimated <= 0 are truncated, the variance never below MS_E / (R n)
    noise = np.random.default_rng(3).normal(size=(3, 30))
    _, var, _ = stats._crossed_parts(noise)
    assert var[0] >= hand_mean_squares(noise.tolist())[2] / 90 - 1e-15
    assert np.isnan(
        stats.crossed_mean(np.ones((1, 5)))["ci_low"]
    )  # one replicate: seed variance unknown
    assert np.isnan(
        stats.crossed_mean(np.ones((3, 1)))["ci_low"]
    )  # one sample: sample variance unknown
    assert stats.crossed_mean(np.full((3, 4), 2.0))["ci_low"] == 2.0
    assert np.isnan(stats.crossed_t(np.ones((1, 5)))[1])
    assert stats.crossed_t(np.zeros((3, 4)))[:2] == (0.0, 1.0)
    assert stats.crossed_t(np.full((3, 4), -1.0))[:2] == (-np.inf, 0.0)
    with pytest.raises(ValueError, match="complete"):
        stats.crossed_mean(np.array([[1.0, np.nan], [1.0, 2.0]]))


@FAST
@given(st.integers(2, 5), st.integers(2, 12), st.integers(0, 2**32 - 1), st.floats(0.0, 3.0))
def test_crossed_test_and_interval_are_dual(reps, n, seed, shift):
    """p < alpha exactly when the (1 - alpha) interval of the mean difference excludes 0, and the
    batched call gives the values of single calls."""
    d = np.random.default_rng(seed).normal(size=(reps, n)) + shift
    t, p, df = stats.crossed_t(d)
    for alpha in (0.05, 0.2):
        r = stats.crossed_mean(d, 1 - alpha)
        excludes = not (r["ci_low"] <= 0 <= r["ci_high"])
        if abs(p - alpha) > 1e-9:
            assert (p < alpha) == excludes
    batch = np.stack([d, d + 1.0])
    tb, pb, dfb = stats.crossed_t(batch)
    assert (tb[0], pb[0], dfb[0]) == pytest.approx((t, p, df))
    assert p == pytest.approx(min(1.0, 2 * sps.t.sf(abs(t), df)))


def test_wilcoxon_min_p_is_scipys_smallest_p():
    for n in range(2, 12):
        assert stats.wilcoxon_min_p(n) == pytest.approx(
            sps.wilcoxon(np.arange(1.0, n + 1)).pvalue, rel=1e-12
        )
    assert stats.wilcoxon_min_p(3) == 0.25 and stats.wilcoxon_min_p(0) == 1.0


def test_summarize_replicates_counts_samples_and_replicates():
    ps = replicate_table(reps=3, n=20)
    out = stats.summarize_replicates(ps, {"m": True}, models={"d": "lenet"})
    assert list(out.columns) == [*stats.SUMMARY_COLUMNS, *stats.COUNT_COLUMNS, "df"]
    a = out.set_index("explainer").loc["a"]
    assert (a.n, a.n_samples, a.n_replicates, a.model) == (
        20,
        20,
        3,
        "lenet",
    )  # n: distinct samples, not 60
    y = (
        ps[ps.explainer == "a"]
        .pivot(index="replicate", columns="sample_id", values="value")
        .to_numpy()
    )
    r = stats.crossed_mean(y)
    assert (a["mean"], a.ci_low, a.ci_high, a.df) == pytest.approx(
        (r["mean"], r["ci_low"], r["ci_high"], r["df"])
    )
    # a sample missing in one replicate leaves the design; a replicate without scores leaves it too
    ps.loc[(ps.explainer == "a") & (ps.sample_id == 4) & (ps.replicate == 1), "value"] = np.nan
    ps.loc[(ps.explainer == "b") & (ps.replicate == 2), "value"] = np.nan
    out = stats.summarize_replicates(ps, {"m": True}).set_index("explainer")
    assert (out.loc["a", "n_samples"], out.loc["a", "n_replicates"]) == (19, 3)
    assert (out.loc["b", "n_samples"], out.loc["b", "n_replicates"]) == (20, 2)
    assert out.loc["a", "mean"] == pytest.approx(np.delete(y, 4, axis=1).mean())


def test_replicate_tests_pair_by_seed_and_sample():
    ps = replicate_table(reps=3, n=30, shift={"a": 1.0})
    out = stats.replicate_tests(ps)
    assert list(out.columns) == ["dataset", *stats.REPLICATE_TESTS_COLUMNS[1:]]
    assert len(out) == 3 * 2 and (out.n_replicates == 3).all() and (out.n == 30).all()
    ab = out[(out.explainer_a == "a") & (out.explainer_b == "b")].set_index("test")
    wide = {
        e: g.pivot(index="replicate", columns="sample_id", values="value")
        for e, g in ps.groupby("explainer")
    }
    d = (wide["a"] - wide["b"]).to_numpy()
    assert tuple(ab.loc["t", ["statistic", "p_value", "df"]]) == pytest.approx(stats.crossed_t(d))
    assert ab.loc["t", "effect_size"] == pytest.approx(stats.cohens_dz(d.mean(axis=0)))
    ref = sps.wilcoxon(d.mean(axis=1))
    assert (ab.loc["wilcoxon", "statistic"], ab.loc["wilcoxon", "p_value"]) == pytest.approx(
        (ref.statistic, ref.pvalue)
    )
    assert (
        ab.loc["wilcoxon", "min_p"] == 0.25 and ab.loc["t", "min_p"] == 0
    )  # 3 replicates: p >= 0.25
    assert (ab.unit == pd.Series(stats.REPLICATE_TEST_UNITS)).all()
    for _, grp in out.groupby("test"):
        np.testing.assert_allclose(grp.p_holm, stats.holm(grp.p_value))
    # the pairing is by replicate and sample id, not by row order (explainers in first appearance)
    shuffled = stats.replicate_tests(
        ps.sample(frac=1, random_state=1).sort_values("explainer", kind="stable")
    )
    pd.testing.assert_frame_equal(shuffled, out)
    with pytest.raises(ValueError, match="duplicated"):
        stats.replicate_tests(pd.concat([ps, ps.iloc[:1]]))
    with pytest.raises(ValueError, match="replicate column"):
        stats.replicate_tests(ps.drop(columns=["replicate", "seed"]))


def test_a_wilcoxon_that_cannot_reach_alpha_does_not_vote():
    """3 replicates: the signed-rank test over replicates can never give p < 0.25. Ranking by it
    alone calls nothing significant; with test="both" the t-test decides alone."""
    ps = replicate_table(reps=3, n=40, shift={"a": 2.0}, seed_sd=0.01)
    summ = stats.summarize_replicates(ps, {"m": True})
    tests = stats.replicate_tests(ps)
    assert (tests[tests.test == "wilcoxon"].p_value >= 0.25).all()
    t_rank = stats.rank(summ, tests, test="t").set_index("explainer")["rank"]
    assert t_rank["a"] == 1 and t_rank["b"] == 2 and t_rank["c"] == 2
    assert (stats.rank(summ, tests, test="wilcoxon")["rank"] == 1).all()
    pd.testing.assert_series_equal(
        stats.rank(summ, tests, test="both").set_index("explainer")["rank"], t_rank
    )
    best = stats.compare_to_best(summ, tests, test="both").set_index("explainer")
    t_only = tests[(tests.test == "t") & (tests.explainer_a == "a") & (tests.explainer_b == "b")]
    assert (
        best.loc["b", "p_holm"] == pytest.approx(t_only.p_holm.iloc[0])
        and best.loc["b", "significant"]
    )
    assert np.isnan(
        stats.compare_to_best(summ, tests, test="wilcoxon")
        .set_index("explainer")
        .loc["b", "p_holm"]
    )
    # with 6 replicates the Wilcoxon can reach 0.05 (smallest p 1/32) and votes again
    six = stats.replicate_tests(replicate_table(reps=6, n=40, shift={"a": 2.0}, seed_sd=0.01))
    assert (six[six.test == "wilcoxon"].min_p == 2.0**-5).all()


def test_result_tables_of_a_replicate_run():
    ps = replicate_table(reps=3, n=16)
    tables = stats.result_tables(ps, {"m": True}, replicates=True, seed=0)
    assert set(tables) == {
        "summary",
        "summary_per_replicate",
        "ranks_per_replicate",
        "tests_replicates",
        "tests",
    }
    assert (tables["summary"].n_replicates == 3).all() and (tables["summary"].n == 16).all()
    assert (tables["summary_per_replicate"].n_replicates == 1).all()
    assert set(tables["tests"].replicate) == {
        0,
        1,
        2,
    }  # per-sample tests within each retrained model
    pd.testing.assert_frame_equal(tables["tests_replicates"], stats.replicate_tests(ps))


# Coverage and false rejections by simulation. Scores y[r, i] = mu + a_r + b_i + e_ri (seed,
# sample, interaction effects; normal) for 256 samples x 3 seeds, in the two regimes of issue 23.
# With RUNS simulated runs the Monte-Carlo standard error of a rate q is sqrt(q (1 - q) / RUNS):
# 0.0034 at q = 0.95 or 0.05 for 4000 runs, and the tolerance is 3 of them (0.0103): a method
# whose true coverage is exactly 95% fails this seeded check with probability 0.3%. The old
# method (t over replicate means) covers 71% / rejects 28% in the first regime and fails it.
RUNS = 4000
TOL = 3 * np.sqrt(0.95 * 0.05 / RUNS)
REGIMES = {"images dominate": (0.15, 0.005, 0.05), "seeds dominate": (0.15, 0.10, 0.05)}


def _simulate(image_sd, seed_sd, resid_sd, seed, runs=RUNS, reps=3, n=256):
    rng = np.random.default_rng(seed)
    return 0.5 + (
        rng.normal(0, seed_sd, (runs, 2, reps, 1))
        + rng.normal(0, image_sd, (runs, 2, 1, n))
        + rng.normal(0, resid_sd, (runs, 2, reps, n))
    )


@pytest.mark.parametrize("regime", list(REGIMES))
def test_replicate_interval_covers_and_test_holds_its_size_by_simulation(regime):
    y = _simulate(
        *REGIMES[regime], seed=23
    )  # (runs, explainer, replicate, sample); true means equal: 0.5
    r = stats.crossed_mean(y[:, 0])
    coverage = np.mean((r["ci_low"] <= 0.5) & (0.5 <= r["ci_high"]))
    rejection = np.mean(stats.crossed_t(y[:, 0] - y[:, 1])[1] < 0.05)
    assert abs(coverage - 0.95) < TOL, f"{regime}: coverage {coverage:.4f}"
    assert abs(rejection - 0.05) < TOL, f"{regime}: false rejections {rejection:.4f}"
    # the frame functions a run calls give the same numbers on the long table of a run
    one = pd.concat(
        [
            pd.DataFrame(
                {
                    "dataset": "d",
                    "replicate": rep,
                    "seed": rep,
                    "explainer": e,
                    "metric": "m",
                    "sample_id": np.arange(y.shape[-1]),
                    "value": y[0, k, rep],
                }
            )
            for k, e in enumerate("ab")
            for rep in range(y.shape[2])
        ],
        ignore_index=True,
    )
    s = stats.summarize_replicates(one, {"m": True}).set_index("explainer").loc["a"]
    assert (s.ci_low, s.ci_high) == pytest.approx((r["ci_low"][0], r["ci_high"][0]), rel=1e-12)
    t = stats.replicate_tests(one, tests=("t",))
    assert t.p_value.iloc[0] == pytest.approx(stats.crossed_t(y[0, 0] - y[0, 1])[1], rel=1e-12)
    if regime == "images dominate":  # the check can fail: the replicate-means interval of old does
        m = y[:, 0].mean(axis=2)
        lo, hi = sps.t.interval(0.95, 2, loc=m.mean(axis=1), scale=sps.sem(m, axis=1))
        assert np.mean((lo <= 0.5) & (0.5 <= hi)) < 0.95 - TOL
