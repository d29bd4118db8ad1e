"""Metric meta-evaluation statistics (xaiarena.meta): hand-computed values, Krippendorff's published
example, SciPy's Friedman test, MetaQuantus's own MetaEvaluation code on the same arrays, and
constructed cases in which the numbers must move the expected way."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from xaiarena import meta

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
nan = np.nan


# --------------------------------------------------------------------------- reliability


def test_sample_ranks_by_hand():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, nan]])
    np.testing.assert_array_equal(
        meta.sample_ranks(scores, higher_is_better=True), [[1, 3, 2], [1.5, 1.5, nan]]
    )
    np.testing.assert_array_equal(
        meta.sample_ranks(scores, higher_is_better=False), [[3, 1, 2], [1.5, 1.5, nan]]
    )


def test_krippendorff_alpha_of_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units,
    # missing values;
    # published alpha: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797
    d = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
        ]
    )
    for level, published in (
        ("nominal", 0.743),
        ("ordinal", 0.815),
        ("interval", 0.849),
        ("ratio", 0.797),
    ):
        assert meta.krippendorff_alpha(d, level) == pytest.approx(published, abs=5e-4)


def test_krippendorff_alpha_by_hand_and_degenerate_cases():
    # two samples rank three explainers [1, 2, 3] and [1, 3, 2]: coincidences o11 = 2,
    # o23 = o32 = 2, n_c = 2 each; ordinal delta^2(1,2) = delta^2(2,3) = 4, delta^2(1,3) = 16;
    # alpha = 1 - 5 * 16 / 192 = 7/12
    assert meta.krippendorff_alpha(np.array([[1, 2, 3], [1, 3, 2]])) == pytest.approx(7 / 12)
    assert meta.krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])) == pytest.approx(
        1.0
    )
    assert np.isnan(
        meta.krippendorff_alpha(np.full((4, 3), 2.0))
    )  # every explainer tied: no order at all
    assert np.isnan(meta.krippendorff_alpha(np.array([[1, 2, 3]])))  # one sample
    # a sample that ranks a single explainer is left out (it says nothing about the order)
    assert meta.krippendorff_alpha(
        np.array([[1, 2, 3], [1, 3, 2], [nan, 1, nan]])
    ) == pytest.approx(7 / 12)


def test_kendall_w_by_hand_and_with_ties():
    # R = (3, 7, 8), mean 6, S = 14; W = 12 * 14 / (3^2 * (27 - 3)) = 7/9
    assert meta.kendall_w(np.array([[1, 2, 3], [1, 3, 2], [1, 2, 3]])) == pytest.approx(7 / 9)
    # ties: R = (2, 4.5, 5.5), S = 6.5, T = (2^3 - 2) + 0 = 6; W = 78 / (4 * 24 - 2 * 6) = 13/14
    assert meta.kendall_w(np.array([[1, 2.5, 2.5], [1, 2, 3]])) == pytest.approx(13 / 14)
    assert meta.kendall_w(np.array([[1, 2, 3], [3, 2, 1]])) == pytest.approx(0.0)
    assert np.isnan(meta.kendall_w(np.array([[1, 2, 3]])))
    assert np.isnan(meta.kendall_w(np.full((3, 3), 2.0)))
    # rows with a missing rank are left out
    assert meta.kendall_w(
        np.array([[1, 2, 3], [1, 3, 2], [1, 2, 3], [nan, 1, 2]])
    ) == pytest.approx(7 / 9)


def test_friedman_p_is_scipys_friedman_test():
    rng = np.random.default_rng(3)
    for ties in (False, True):
        scores = rng.normal(size=(25, 5)) + np.arange(5) * 0.3
        if ties:
            scores = np.round(scores)
        ranks = meta.sample_ranks(scores)
        ref = sps.friedmanchisquare(*scores.T)
        assert meta.friedman_p(ranks) == pytest.approx(ref.pvalue, rel=1e-10)
        w = meta.kendall_w(ranks)
        assert w == pytest.approx(ref.statistic / (25 * 4), rel=1e-10)  # chi2 = m (n - 1) W


@FAST
@given(st.integers(0, 10_000), st.integers(3, 6), st.integers(3, 12))
def test_reliability_is_invariant_to_the_order_of_samples_and_explainers(seed, n_expl, n_samples):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_samples, n_expl)) + rng.normal(size=n_expl)
    ranks = meta.sample_ranks(scores)
    perm = rng.permutation(ranks[rng.permutation(n_samples)].T).T
    for f in (meta.krippendorff_alpha, meta.kendall_w):
        a, b = f(ranks), f(perm)
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b)
    w = meta.kendall_w(ranks)
    assert 0.0 <= w <= 1.0 + 1e-12
    # a strictly increasing transform of the scores ranks alike
    np.testing.assert_array_equal(meta.sample_ranks(np.exp(scores)), ranks)


def test_a_metric_that_is_noise_has_reliability_near_zero_and_a_consistent_one_near_one():
    rng = np.random.default_rng(0)
    noise = meta.sample_ranks(rng.normal(size=(400, 6)))
    assert abs(meta.krippendorff_alpha(noise)) < 0.03
    assert meta.kendall_w(noise) < 0.02 and meta.friedman_p(noise) > 0.01
    quality = np.arange(6.0)  # every sample orders the explainers alike, up to small noise
    steady = meta.sample_ranks(quality + rng.normal(scale=0.1, size=(400, 6)))
    assert meta.krippendorff_alpha(steady) > 0.95 and meta.kendall_w(steady) > 0.95
    assert meta.friedman_p(steady) < 1e-10
    # explainers that trade places from sample to sample while one order prevails: alpha is low,
    # yet Friedman's test finds the order
    mixed = meta.sample_ranks(quality * 0.3 + rng.normal(size=(400, 6)))
    assert 0.05 < meta.krippendorff_alpha(mixed) < 0.5 and meta.friedman_p(mixed) < 1e-6


# --------------------------------------------------------------------------- agreement


def test_agreement_pairs_orient_directions_and_skip_outputs_of_one_metric_entry():
    means = pd.DataFrame(
        {
            "a": [1.0, 2, 3, 4],
            "b_low": [4.0, 3, 2, 1],
            "a_keep": [4.0, 3, 2, 1],
            "c": [1.0, 3, 2, 4],
            "other": [1.0, 2, 3, 4],
        },
        index=list("wxyz"),
    )
    outputs = {
        "a": {"category": "faith", "label": "A", "higher_is_better": True},
        "a_keep": {"category": "faith", "label": "A", "higher_is_better": True},  # same entry as a
        "b_low": {"category": "faith", "label": "B", "higher_is_better": False},
        "c": {"category": "faith", "label": "C", "higher_is_better": True},
        "other": {"category": "complexity", "label": "D", "higher_is_better": True},
    }
    pairs = meta.agreement_pairs(means, outputs).set_index(["metric_a", "metric_b"])
    assert pairs.loc[("a", "b_low"), "spearman"] == pytest.approx(
        1.0
    )  # lower is better, same order
    assert pairs.loc[("a", "c"), "spearman"] == pytest.approx(
        0.8
    )  # one swap of neighbours: 1 - 6*2/60
    assert pairs.loc[("a", "c"), "kendall_tau"] == pytest.approx(4 / 6)
    assert ("a", "a_keep") not in pairs.index and ("a", "other") not in pairs.index
    assert pairs.loc[("a_keep", "b_low"), "spearman"] == pytest.approx(-1.0)
    assert (pairs["n_explainers"] == 4).all()
    # fewer than three explainers scored by both, or a constant ordering: undefined
    means.loc[["w", "x"], "c"] = nan
    assert np.isnan(
        meta.agreement_pairs(means, outputs)
        .set_index(["metric_a", "metric_b"])
        .loc[("a", "c"), "spearman"]
    )


# --------------------------------------------------------------------------- MetaQuantus criteria


def test_iac_by_hand():
    q = np.arange(1.0, 9.0)
    every = np.ones(8, dtype=bool)
    # eight equal differences: the exact two-sided Wilcoxon p-value is 2 / 2^8
    assert meta.iac(q, q + 1, every, disruptive=False) == pytest.approx(2 / 256)
    assert meta.iac(q, q + 1, every, disruptive=True) == pytest.approx(1 - 2 / 256)
    assert meta.iac(q, q, every, disruptive=False) == pytest.approx(1.0)  # nothing moved (zsplit)
    assert meta.iac(q, q, every, disruptive=True) == pytest.approx(0.0)
    # only the samples in `indices` count; a failing test (one sample) is p = 0, as in MetaQuantus
    one = np.zeros(8, dtype=bool)
    one[3] = True
    assert meta.iac(q, q, one, disruptive=False) == 0.0
    # a NaN score leaves its sample out
    q_hat = q + 1
    q_hat[0] = nan
    assert meta.iac(q, q_hat, every, disruptive=False) == pytest.approx(2 / 128)


def test_iec_by_hand():
    scores = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])  # (explainers, samples)
    perturbed = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    # sample 0 keeps its order (3 of 3 positions), sample 1 swaps its first two (1 of 3)
    assert meta.iec_minor(scores, perturbed, np.array([True, True])) == pytest.approx(4 / 6)
    assert meta.iec_minor(scores, perturbed, np.array([True, False])) == pytest.approx(1.0)
    assert np.isnan(meta.iec_minor(scores, perturbed, np.array([False, False])))
    q, q_hat = np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([[0.0, 2.0], [1.0, 1.0]])
    assert meta.iec_disruptive(
        q, q_hat, np.array([True, True]), higher_is_better=True
    ) == pytest.approx(3 / 4)
    assert meta.iec_disruptive(
        q, q_hat, np.array([True, True]), higher_is_better=False
    ) == pytest.approx(1 / 4)
    assert meta.iec_disruptive(
        q, q_hat, np.array([False, True]), higher_is_better=True
    ) == pytest.approx(1 / 2)


def test_consistency_and_meta_consistency_by_hand():
    q = np.array([np.arange(1.0, 9.0), np.arange(11.0, 19.0)])  # 2 explainers x 8 samples
    qh = np.stack([q, q + 1])  # draw 0 changes nothing, draw 1 shifts every score by +1
    same = np.ones((2, 8), dtype=bool)
    iac, iec = meta.consistency(q, qh, same, meta.MINOR, higher_is_better=True)
    assert iac == pytest.approx((1 + 1 + 2 / 256 + 2 / 256) / 4)  # mean over explainers and draws
    assert iec == pytest.approx(1.0)  # the order of the two explainers never changes
    # disruptive: only samples whose prediction changed; none did in draw 0 (NaN, skipped)
    changed = np.zeros((2, 8), dtype=bool)
    changed[1, :4] = True
    iac, iec = meta.consistency(q, qh, ~changed, meta.DISRUPTIVE, higher_is_better=False)
    # draw 1, 4 samples with equal differences: exact p = 2 / 2^4; lower is better and the scores
    # rose: all worse
    assert iac == pytest.approx(1 - 2 / 16) and iec == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes"):
        meta.consistency(q, qh[:, :1], same, meta.MINOR, True)
    with pytest.raises(ValueError, match="strength"):
        meta.consistency(q, qh, same, "medium", True)

    crit = {
        "iac_nr_model": 0.8,
        "iac_ar_model": 0.6,
        "iec_nr_model": 1.0,
        "iec_ar_model": 0.2,
        "iac_nr_input": 0.4,
        "iac_ar_input": 0.2,
        "iec_nr_input": 0.6,
        "iec_ar_input": nan,
    }
    out = meta.meta_consistency(crit)
    assert out["mc_model"] == pytest.approx(0.65) and np.isnan(
        out["mc_input"]
    )  # a criterion missing
    assert out["mc"] == pytest.approx(0.65)
    assert out["resilience"] == pytest.approx(0.9) and out["reactivity"] == pytest.approx(0.4)
    crit["iec_ar_input"] = 0.4
    out = meta.meta_consistency(crit)
    assert out["mc_input"] == pytest.approx(0.4) and out["mc"] == pytest.approx((0.65 + 0.4) / 2)
    assert out["resilience"] == pytest.approx((0.9 + 0.5) / 2) and out[
        "reactivity"
    ] == pytest.approx((0.4 + 0.3) / 2)
    assert out["mc"] == pytest.approx((out["resilience"] + out["reactivity"]) / 2)


def _problem(rng, n_expl=5, n=30, draws=3):
    quality = np.linspace(0, 1, n_expl)[:, None]
    return quality + 0.05 * rng.normal(size=(n_expl, n)), quality, np.ones((draws, n), dtype=bool)


def test_resilience_and_reactivity_move_the_expected_way_on_constructed_metrics():
    """A metric that keeps its scores under minor perturbations and loses them under disruptive ones
    beats one that never moves and one whose scores are noise."""
    rng = np.random.default_rng(1)
    q, quality, same = _problem(rng)
    draws = same.shape[0]
    minor = np.stack([q + 1e-4 * rng.normal(size=q.shape) for _ in range(draws)])
    broken = np.stack([0.2 * rng.normal(size=q.shape) - 1 for _ in range(draws)])
    good = {}
    for strength, qh, flags in ((meta.MINOR, minor, same), (meta.DISRUPTIVE, broken, ~same)):
        good[strength] = meta.consistency(q, qh, flags, strength, higher_is_better=True)
    inert = {
        s: meta.consistency(q, np.stack([q] * draws), f, s, True)
        for s, f in ((meta.MINOR, same), (meta.DISRUPTIVE, ~same))
    }
    noisy_q = rng.normal(size=q.shape)
    noisy = {
        s: meta.consistency(
            noisy_q, np.stack([rng.normal(size=q.shape) for _ in range(draws)]), f, s, True
        )
        for s, f in ((meta.MINOR, same), (meta.DISRUPTIVE, ~same))
    }

    def mc(c):
        return meta.meta_consistency(
            {
                "iac_nr_model": c[meta.MINOR][0],
                "iec_nr_model": c[meta.MINOR][1],
                "iac_ar_model": c[meta.DISRUPTIVE][0],
                "iec_ar_model": c[meta.DISRUPTIVE][1],
            }
        )

    g, i, n = mc(good), mc(inert), mc(noisy)
    assert g["reactivity"] > 0.95 and i["reactivity"] == pytest.approx(
        0.0
    )  # the inert metric never reacts
    assert i["resilience"] == pytest.approx(1.0) and g["resilience"] > 0.6
    assert (
        n["resilience"] < 0.75 and n["reactivity"] < 0.75
    )  # noise: rankings reshuffle, scores do not worsen
    assert g["mc"] > max(i["mc"], n["mc"]) + 0.15


# --------------------------------------------------------------------------- MetaQuantus's own code


def _load_metaquantus(monkeypatch):
    """MetaQuantus 0.0.5's ``meta_evaluation.py`` (the module with the summary-score computations),
    loaded from the installed package with stub modules for what it imports but these
    computations do not use (the package's __init__ imports torchvision, which is not installed
    here)."""
    spec = importlib.util.find_spec("metaquantus")
    if spec is None or spec.origin is None:
        pytest.skip("metaquantus is not installed")
    path = Path(spec.origin).parent / "meta_evaluation.py"
    if not path.exists():
        pytest.skip(f"{path} not found")

    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so that submodules resolve
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    def unused(*args, **kwargs):  # pragma: no cover - the computations never call these
        raise AssertionError("not used by the summary scores")

    stub("quantus", explain=unused)
    stub("quantus.helpers", utils=stub("quantus.helpers.utils"))
    stub("quantus.metrics")
    stub("quantus.metrics.base", Metric=object)
    stub("metaquantus")
    stub("metaquantus.helpers")
    stub("metaquantus.helpers.utils", generate_explanations=unused, dump_obj=unused)
    stub(
        "metaquantus.helpers.sanity_checks",
        sanity_analysis=unused,
        sanity_analysis_under_perturbation=unused,
    )
    stub("metaquantus.perturbation_tests")
    stub("metaquantus.perturbation_tests.base", PerturbationTestBase=object)
    mspec = importlib.util.spec_from_file_location("metaquantus.meta_evaluation", path)
    module = importlib.util.module_from_spec(mspec)
    monkeypatch.setitem(sys.modules, "metaquantus.meta_evaluation", module)
    mspec.loader.exec_module(module)
    return module.MetaEvaluation


def test_criteria_equal_metaquantus_on_the_same_arrays(monkeypatch):
    MetaEvaluation = _load_metaquantus(monkeypatch)
    rng = np.random.default_rng(7)
    for _ in range(30):
        n = int(rng.integers(3, 20))
        q = rng.normal(size=n)
        q_hat = q + rng.normal(scale=rng.choice([0.01, 1.0]), size=n) + rng.choice([0.0, 0.5])
        q_hat = np.where(
            rng.random(n) < 0.3, q, q_hat
        )  # unchanged scores: zero differences (zsplit)
        idx = rng.random(n) < 0.8
        idx[0] = True
        for disruptive, name in ((False, "Model Resilience Test"), (True, "Input Adversary Test")):
            ref = MetaEvaluation.compute_iac_score(q, q_hat, idx, name)
            assert meta.iac(q, q_hat, idx, disruptive) == pytest.approx(ref, abs=1e-12)
        # no ties across explainers (argsort orders are unique), but unchanged scores (q_hat == q)
        qs = rng.normal(size=(4, n))
        qhs = np.where(rng.random((4, n)) < 0.3, qs, rng.normal(size=(4, n)))
        assert meta.iec_minor(qs, qhs, idx) == pytest.approx(
            MetaEvaluation.compute_iec_resilience(qs, qhs, idx)
        )
        for hib in (True, False):
            ref = MetaEvaluation.compute_iec_adversary(qs, qhs, idx, score_direction=not hib)
            assert meta.iec_disruptive(qs, qhs, idx, hib) == pytest.approx(ref)


def test_meta_consistency_equals_metaquantus_meta_evaluation(monkeypatch):
    """The whole summary (IAC/IEC per test, MC per perturbation type) against MetaQuantus's
    run_intra_analysis, run_inter_analysis and run_meta_consistency_analysis (one iteration)."""
    MetaEvaluation = _load_metaquantus(monkeypatch)
    rng = np.random.default_rng(11)
    methods, n, draws = ["g", "ig", "rnd"], 12, 3
    tests = {
        "Model Resilience Test": ("model", meta.MINOR),
        "Model Adversary Test": ("model", meta.DISRUPTIVE),
        "Input Resilience Test": ("input", meta.MINOR),
        "Input Adversary Test": ("input", meta.DISRUPTIVE),
    }
    for hib in (True, False):
        mq = MetaEvaluation(
            test_suite=dict.fromkeys(tests),
            xai_methods={m: {} for m in methods},
            iterations=1,
            nr_perturbations=draws,
            write_to_file=False,
        )
        mq.results_y_preds = np.zeros(n, dtype=int)  # read for the number of samples
        q = rng.normal(size=(len(methods), n))
        crit = {}
        for name, (ptype, strength) in tests.items():
            scale = 0.02 if strength == meta.MINOR else 1.0
            qh = (
                q[None]
                + rng.normal(scale=scale, size=(draws, len(methods), n))
                - (0 if strength == meta.MINOR else 0.5)
            )
            qh = np.where(rng.random(qh.shape) < 0.25, q[None], qh)  # some scores do not move
            same = rng.random((draws, n)) < (0.85 if strength == meta.MINOR else 0.2)
            flags = same if strength == meta.MINOR else ~same
            flags[:, 0] = True  # every draw has a sample to test
            same = flags if strength == meta.MINOR else ~flags
            mq.results_eval_scores[name] = {m: q[i] for i, m in enumerate(methods)}
            mq.results_eval_scores_perturbed[name] = {
                0: {m: qh[:, i] for i, m in enumerate(methods)}
            }
            mq.results_indices_perturbed[name] = {0: flags.astype(np.bool_)}
            tag = "nr" if strength == meta.MINOR else "ar"
            crit[f"iac_{tag}_{ptype}"], crit[f"iec_{tag}_{ptype}"] = meta.consistency(
                q, qh, same, strength, hib
            )
        mq.run_intra_analysis()
        mq.run_inter_analysis(score_direction=not hib)
        ref = mq.run_meta_consistency_analysis()
        mine = meta.meta_consistency(crit)
        for ptype, key in (("model", "Model"), ("input", "Input")):
            res = ref[key]["consistency_results"]
            assert crit[f"iac_nr_{ptype}"] == pytest.approx(res["IAC_{NR} mean"])
            assert crit[f"iac_ar_{ptype}"] == pytest.approx(res["IAC_{AR} mean"])
            assert crit[f"iec_nr_{ptype}"] == pytest.approx(res["IEC_{NR} mean"])
            assert crit[f"iec_ar_{ptype}"] == pytest.approx(res["IEC_{AR} mean"])
            assert mine[f"mc_{ptype}"] == pytest.approx(ref[key]["MC_mean"])


# --------------------------------------------------------------------------- the table of a run


def _run_tables(rng, n=40):
    """A run's per-sample scores: 'steady' orders 4 explainers alike on every sample, 'noise' is
    noise, 'desc' is a descriptive output; two explained models."""
    rows, pert = [], []
    quality = {"e0": 0.0, "e1": 1.0, "e2": 2.0, "e3": 3.0}
    for view in ("f_b", "f_s"):
        for e, qv in quality.items():
            for s in range(n):
                rows += [
                    ("d", view, e, "steady", s, qv + 0.1 * rng.normal()),
                    ("d", view, e, "noise", s, rng.normal()),
                    ("d", view, e, "desc", s, rng.normal()),
                    ("d", view, e, "steady_low", s, -qv + 0.1 * rng.normal()),
                ]
                if s < 8:
                    for ptype in ("model", "input"):
                        for strength in (meta.MINOR, meta.DISRUPTIVE):
                            v = qv if strength == meta.MINOR else -5.0
                            pert.append(
                                (
                                    "d",
                                    view,
                                    e,
                                    "steady",
                                    s,
                                    v + 0.1 * rng.normal(),
                                    ptype,
                                    strength,
                                    0,
                                    strength == meta.MINOR,
                                )
                            )
    per_sample = pd.DataFrame(
        rows, columns=["dataset", "explained_model", "explainer", "metric", "sample_id", "value"]
    )
    return per_sample, pd.DataFrame(pert, columns=meta.PERTURBED_COLUMNS)


def test_meta_table_of_a_constructed_run():
    per_sample, perturbed = _run_tables(np.random.default_rng(0))
    outputs = {
        "steady": {"category": "faithfulness", "label": "steady", "higher_is_better": True},
        "steady_low": {"category": "faithfulness", "label": "low", "higher_is_better": False},
        "noise": {"category": "complexity", "label": "noise", "higher_is_better": True},
        "desc": {
            "category": "faithfulness",
            "label": "desc",
            "higher_is_better": True,
            "ranked": False,
            "unranked_reason": "descriptive",
        },
    }
    table, pairs = meta.meta_table(per_sample, outputs, perturbed)
    assert list(table.columns) == ["dataset", "explained_model", *meta.META_COLUMNS[1:]]
    assert set(table["metric"]) == {"steady", "steady_low", "noise"}  # ranked outputs only
    assert len(table) == 6  # per explained model
    t = table.set_index(["explained_model", "metric"])
    for view in ("f_b", "f_s"):
        assert (
            t.loc[(view, "steady"), "reliability"] > 0.9
            and t.loc[(view, "steady_low"), "reliability"] > 0.9
        )
        assert abs(t.loc[(view, "noise"), "reliability"]) < 0.15
        assert t.loc[(view, "steady"), "agreement"] == pytest.approx(
            1.0
        )  # with steady_low, lower is better
        assert np.isnan(t.loc[(view, "noise"), "agreement"])  # alone in its category
        assert (
            t.loc[(view, "steady"), "n_meta_samples"] == 8
            and t.loc[(view, "noise"), "n_meta_samples"] == 0
        )
        assert t.loc[(view, "steady"), "reactivity"] == pytest.approx(1 - 2 / 256, abs=0.01)
        assert t.loc[(view, "steady"), "iec_nr_model"] == pytest.approx(1.0)
        assert np.isnan(t.loc[(view, "noise"), "mc"])  # not perturbed: no MetaQuantus numbers
    assert set(pairs["metric_a"]) == {"steady", "steady_low"}
    assert (pairs["spearman"] == 1.0).all()
    # without perturbed scores: reliability and agreement only
    table2, _ = meta.meta_table(per_sample, outputs)
    assert table2["mc"].isna().all()
    pd.testing.assert_series_equal(table2["reliability"], table["reliability"])
