"""Quantus 0.6 as an oracle.

Deterministic metrics must match to 1e-5 on shared inputs. The maps are
saliency maps plus a tiny continuous jitter so that no two pixels tie (Quantus
sorts with NumPy's unstable quicksort; xaiarena breaks ties at random). Flags
are set so both sides use the same conventions; each difference of defaults
is named where the flag is passed (see docs/metrics.md).

Randomised metrics (FaithfulnessCorrelation, RelativeInputStability,
MaxSensitivity) cannot match draw for draw. Both sides are unbiased draws of
the same per-sample estimator, so the per-sample differences have mean zero;
we require |mean difference| <= 4 standard errors of that mean (a z-test whose
false-alarm rate is about 6e-5), and also that the estimates carry signal
(they differ clearly between a faithful map and its negation), so that the
tolerance is not vacuous.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.metrics import (
    gen,
    input_x_gradient_fn,
    saliency_fn,
    small_lenet,
    test_batch,
    tie_free,
)
from tests.support.quantus_compat import patched_normalise_funcs
from xaiarena import postprocess as pp
from xaiarena.metrics.core import SampleRNG
from xaiarena.registry import METRICS

quantus = pytest.importorskip("quantus")

ATOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    batch = test_batch(24)
    sal = saliency_fn(small_lenet())(batch.inputs, batch.targets)
    return batch, tie_free(sal)


def _np(batch, a):
    return (
        batch.inputs.numpy(),
        batch.targets.numpy(),
        a.numpy()[:, None],
        batch.masks.numpy()[:, None].astype(bool),
    )


def _ours(name, batch, a, **params):
    return METRICS.create(name, **params).evaluate(batch, {"m": a}, generator=gen(0))


def _close(ours, theirs, atol=ATOL):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)


# --------------------------------------------------------------------------- complexity


def test_sparseness_matches_quantus(setup):
    batch, a = setup
    x, y, a_np, _ = _np(batch, a)
    # Quantus normalises by the max over the whole batch; per sample (as xaiarena) via
    # normalise_axes
    q = quantus.Sparseness(
        disable_warnings=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)}
    )
    theirs = q(model=None, x_batch=x, y_batch=y, a_batch=a_np.copy())
    _close(_ours("sparseness", batch, a).scores["sparseness"]["m"], theirs)


@pytest.fixture
def quantus_normalise_by_negative(monkeypatch):
    return patched_normalise_funcs(monkeypatch).normalise_by_negative


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_normalise_by_negative_matches_quantus(setup, name, quantus_normalise_by_negative):
    """``normalise: normalise_by_negative`` is Quantus's normalise_func (older releases' default),
    per sample, on a signed map (positive and negative parts are scaled differently)."""
    batch, a = setup
    signed = a - a.flatten(1).median(1).values[:, None, None]
    x, y, a_np, _ = _np(batch, signed)
    cls = {"sparseness": quantus.Sparseness, "complexity": quantus.Complexity}[name]
    q = cls(
        disable_warnings=True,
        normalise=True,
        abs=True,
        normalise_func=quantus_normalise_by_negative,
        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
    )
    theirs = q(model=None, x_batch=x, y_batch=y, a_batch=a_np.copy())
    ours = _ours(name, batch, signed, normalise="normalise_by_negative", abs=True).scores[name]["m"]
    _close(ours, theirs)
    by_max = _ours(name, batch, signed, normalise=True, abs=True).scores[name]["m"]
    assert (ours - by_max).abs().max() > 1e-3, "the two rules must differ on signed maps"


def test_complexity_matches_quantus(setup):
    batch, a = setup
    x, y, a_np, _ = _np(batch, a)
    q = quantus.Complexity(disable_warnings=True)
    theirs = q(model=None, x_batch=x, y_batch=y, a_batch=a_np.copy())
    _close(_ours("complexity", batch, a).scores["complexity"]["m"], theirs)


# --------------------------------------------------------------------------- localisation


@pytest.mark.parametrize("signed", [False, True])
def test_localisation_matches_quantus(setup, signed):
    batch, a = setup
    if signed:  # signed maps: the rankings and the signed mass still agree
        a = a - a.flatten(1).median(1).values.view(-1, 1, 1)
    x, y, a_np, s = _np(batch, a)
    kw = dict(disable_warnings=True)
    cases = [
        ("pointing_game", {}, quantus.PointingGame(**kw)),
        ("relevance_rank_accuracy", {}, quantus.RelevanceRankAccuracy(**kw)),
        ("top_k_intersection", {"k": 100}, quantus.TopKIntersection(k=100, **kw)),
        (
            "top_k_intersection",
            {"k": 100, "concept_influence": True},
            quantus.TopKIntersection(k=100, concept_influence=True, **kw),
        ),
        # Quantus' default is abs=False (signed sums); xaiarena's default is abs=True
        ("relevance_mass_accuracy", {"abs": False}, quantus.RelevanceMassAccuracy(**kw)),
        ("relevance_mass_accuracy", {"abs": True}, quantus.RelevanceMassAccuracy(abs=True, **kw)),
    ]
    for name, params, q in cases:
        theirs = q(model=None, x_batch=x, y_batch=y, a_batch=a_np.copy(), s_batch=s)
        ours = _ours(name, batch, a, **params).scores[name]["m"]
        _close(ours, theirs)


# --------------------------------------------------------------------------- perturbation curves


def test_pixel_flipping_matches_quantus(setup):
    batch, a = setup
    x, y, a_np, _ = _np(batch, a)
    q = quantus.PixelFlipping(features_in_step=28, perturb_baseline=0.0, disable_warnings=True)
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu")
    )
    out = _ours("pixel_flipping", batch, a, features_in_step=28, fill="black")
    _close(out.curves["pixel_flipping"]["m"], theirs)
    # the per-sample score is Quantus' trapezoid AUC over steps - 1
    _close(out.scores["pixel_flipping"]["m"], np.trapezoid(theirs, axis=1) / (theirs.shape[1] - 1))


@pytest.mark.parametrize("order,patch_size", [("morf", 4), ("lerf", 4), ("morf", 6)])
def test_region_perturbation_matches_quantus(setup, order, patch_size):
    batch, a = setup
    x, y, a_np, _ = _np(batch, a)
    q = quantus.RegionPerturbation(
        patch_size=patch_size,
        order=order,
        regions_evaluation=10,
        perturb_baseline=0.0,
        disable_warnings=True,
    )
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu")
    )
    out = _ours(
        "region_perturbation", batch, a, patch_size=patch_size, order=order, regions_evaluation=10
    )
    _close(out.curves["region_perturbation"]["m"], theirs)


@pytest.mark.parametrize("patch_size", [4, 6])  # 6 does not divide 28: Quantus' padding convention
def test_selectivity_matches_quantus(setup, patch_size):
    batch, a = setup
    x, y, a_np, _ = _np(batch, a)
    q = quantus.Selectivity(patch_size=patch_size, perturb_baseline=0.0, disable_warnings=True)
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu")
    )
    out = _ours("selectivity", batch, a, patch_size=patch_size)
    _close(out.curves["selectivity"]["m"], theirs)
    _close(out.scores["selectivity"]["m"], np.trapezoid(theirs, axis=1) / (theirs.shape[1] - 1))


def test_irof_matches_quantus(setup, monkeypatch):
    batch, a = setup
    batch = test_batch(4)
    a = a[:4]
    x, y, a_np, _ = _np(batch, a)
    # Quantus 0.6 calls np.trapz, removed in NumPy 2; np.trapezoid is the same function
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    # batch_size=1: Quantus pads the curves of a batch to its largest segment count with
    # zeros that enter its trapezoid; one sample per batch avoids that artefact
    q = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, disable_warnings=True)
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu", batch_size=1)
    )
    metric = METRICS.create("irof", fill=0.0)
    n_seg = metric.segments(batch.inputs).flatten(1).amax(1) + 1
    ours = metric.evaluate(batch, {"m": a}, generator=gen(0)).scores["irof"]["m"]
    _close(ours, theirs / n_seg.numpy())


# --------------------------------------------------------------------------- randomised metrics


def _mean_agrees(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    d = np.asarray(ours, float) - np.asarray(theirs, float)
    d = d[np.isfinite(d)]
    assert len(d) >= 10
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs(d.mean()) <= 4 * se + 1e-9, f"mean difference {d.mean():.4f} exceeds 4 SE ({se:.4f})"
    return d.mean(), se


def test_faithfulness_correlation_agrees_in_mean():
    batch = test_batch(48)
    sal = tie_free(saliency_fn(batch.model)(batch.inputs, batch.targets))
    inv = (
        sal.flatten(1).amax(1).view(-1, 1, 1) - sal
    )  # reversed order (Quantus rejects all-negative maps)
    x, y, _, _ = _np(batch, sal)
    metric = METRICS.create("faithfulness_correlation", nr_runs=50, subset_size=98)
    ours = metric.evaluate(batch, {"sal": sal, "inv": inv}, generator=gen(1)).scores[
        "faithfulness_correlation"
    ]
    np.random.seed(0)
    q = quantus.FaithfulnessCorrelation(
        nr_runs=50,
        subset_size=98,
        perturb_baseline=0.0,
        return_aggregate=False,
        disable_warnings=True,
    )
    tolerance = 0.0
    for name, a in (("sal", sal), ("inv", inv)):
        theirs = np.asarray(
            q(model=batch.model, x_batch=x, y_batch=y, a_batch=a.numpy()[:, None], device="cpu")
        )
        _, se = _mean_agrees(ours[name].numpy(), theirs)
        tolerance = max(tolerance, 4 * se)
    # signal: saliency correlates, its reversal anti-correlates, far beyond the tolerance
    assert float(ours["sal"].mean() - ours["inv"].mean()) > 3 * tolerance


def _saliency_numpy(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs)
    t = torch.as_tensor(targets).long()
    return saliency_fn(model)(x, t).numpy()[:, None]


@pytest.mark.parametrize(
    "name,quantus_cls,params,quantus_params",
    [
        (
            "relative_input_stability",
            "RelativeInputStability",
            {"prediction_change": "ignore"},
            {"return_nan_when_prediction_changes": False},
        ),
        ("max_sensitivity", "MaxSensitivity", {}, {}),
    ],
)
def test_robustness_agrees_in_mean(name, quantus_cls, params, quantus_params):
    batch = test_batch(32)
    explain = saliency_fn(batch.model)
    sal = explain(batch.inputs, batch.targets)
    x, y, _, _ = _np(batch, sal)
    ours = (
        METRICS.create(name, nr_samples=10, **params)
        .evaluate(batch, {"sal": sal}, generator=gen(2), explainers={"sal": explain})
        .scores[name]["sal"]
        .numpy()
    )
    np.random.seed(0)
    q = getattr(quantus, quantus_cls)(nr_samples=10, disable_warnings=True, **quantus_params)
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=x,
            y_batch=y,
            a_batch=sal.numpy()[:, None],
            device="cpu",
            explain_func=_saliency_numpy,
        )
    )
    _mean_agrees(ours, theirs)
    # signal: a tenfold noise level moves the estimate far beyond the tolerance
    louder = (
        {"lower_bound": 2.0}
        if name == "max_sensitivity"
        else {"lower_bound": 0.2, "upper_bound": 2.0}
    )
    loud = (
        METRICS.create(name, nr_samples=10, **params, **louder)
        .evaluate(batch, {"sal": sal}, generator=gen(2), explainers={"sal": explain})
        .scores[name]["sal"]
        .numpy()
    )
    assert abs(np.nanmean(loud) - np.nanmean(ours)) > 0.1 * abs(np.nanmean(ours))


# -------------------------------------------------------------------- study 002: the source's calls


def test_source_002_calls_match_quantus(quantus_normalise_by_negative, monkeypatch):
    """Study 002's Quantus 0.6 calls against xaiarena's options for Quantus's semantics, on one
    model, the same maps and the same random draws, sample by sample.

    The source normalised its maps with ``quantus.normalise_by_negative`` (default axes: one scale
    for the whole batch), re-explained with ``quantus.explain`` (the raw maps) and called
    ``RelativeInputStability(nr_samples=5, normalise=True, abs=True)`` (0.6: second-moment
    normalisation over the batch; NaN where a noisy copy changes the prediction),
    ``FaithfulnessCorrelation(nr_runs=50, subset_size=224, perturb_baseline="black",
    normalise=True, abs=True)`` and ``Sparseness(normalise=True)``. Quantus 0.6's
    ``normalise_by_negative`` raises under NumPy 2 on maps with both signs, so Quantus runs with a
    corrected copy (the ``quantus_normalise_by_negative`` fixture: ``np.divide`` given an ``out``;
    the values are unchanged). Quantus gets xaiarena's noise draws through its ``perturb_func`` and
    xaiarena's subsets through ``np.random.choice``, and holds all samples in one batch (xaiarena's
    set); the old 002 options (per-sample ``normalise_by_negative``) must differ, so the match is
    not vacuous.
    """
    import quantus.metrics.faithfulness.faithfulness_correlation as fcmod

    batch = test_batch(24)
    n = len(batch)
    explain = input_x_gradient_fn(batch.model)
    raw = explain(batch.inputs, batch.targets)  # signed, exact zeros on black pixels
    assert (raw < 0).any() and (raw > 0).any()
    theirs_maps = quantus_normalise_by_negative(raw.numpy())  # the source's call: default axes
    maps = pp.STEPS["normalise_by_negative_over_set"](raw)
    np.testing.assert_array_equal(maps.numpy(), theirs_maps)
    x, y = batch.inputs.numpy(), batch.targets.numpy()

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    # RelativeInputStability: xaiarena's noise draw r is Quantus's r-th perturbation
    ris = METRICS.create(
        "relative_input_stability",
        nr_samples=5,
        abs=True,
        prediction_change="nan",
        normalise="normalise_by_average_second_moment_estimate_over_set",
    )
    rng = SampleRNG.for_batch(batch, gen(3), ris.name)
    noise = ris._noise(
        rng, torch.arange(n).repeat(5), torch.arange(5).repeat_interleave(n), x.shape[1:], "cpu"
    )
    noise = noise.view(5, n, -1).numpy()
    calls = iter(range(5))

    def perturb(arr, indices=None, **kwargs):
        return arr + noise[next(calls)]

    q = quantus.RelativeInputStability(
        nr_samples=5, perturb_func=perturb, normalise=True, abs=True, disable_warnings=True
    )
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=x,
            y_batch=y,
            a_batch=theirs_maps[:, None].copy(),
            device="cpu",
            batch_size=n,
            explain_func=quantus_explain,
        ),
        float,
    )
    ours = ris.evaluate(batch, {"m": maps}, generator=gen(3), explainers={"m": explain}).scores[
        ris.name
    ]["m"]
    ours = ours.numpy().astype(float)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.isfinite(theirs).sum() >= n // 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    old = METRICS.create(
        "relative_input_stability", nr_samples=5, abs=True, normalise="normalise_by_negative"
    )
    before = old.evaluate(
        batch,
        {"m": pp.normalise_by_negative(raw)},
        generator=gen(3),
        explainers={"m": lambda i, t, generator=None: pp.normalise_by_negative(explain(i, t))},
    )
    assert np.nanmean(theirs) > 2 * np.nanmean(before.scores[old.name]["m"].numpy()), (
        "the options matter"
    )

    # FaithfulnessCorrelation: xaiarena's subsets in Quantus's order (run-major, then sample)
    fc = METRICS.create(
        "faithfulness_correlation",
        nr_runs=50,
        subset_size=224,
        fill="black",
        abs=True,
        normalise="normalise_by_max_over_set",
    )
    subsets = fc.subsets(SampleRNG.for_batch(batch, gen(4), fc.name), n, x[0, 0].size).numpy()
    seq = iter([subsets[i, r] for r in range(50) for i in range(n)])

    class _NP:
        def __getattr__(self, name):
            return getattr(np, name)

        class random:  # noqa: N801 - stands in for the module np.random
            @staticmethod
            def choice(*args, **kwargs):
                return next(seq)

    monkeypatch.setattr(fcmod, "np", _NP())
    q = quantus.FaithfulnessCorrelation(
        nr_runs=50,
        subset_size=224,
        perturb_baseline="black",
        normalise=True,
        abs=True,
        return_aggregate=False,
        disable_warnings=True,
    )
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=x,
            y_batch=y,
            a_batch=theirs_maps[:, None].copy(),
            device="cpu",
            batch_size=n,
        ),
        float,
    )
    ours = fc.evaluate(batch, {"m": maps}, generator=gen(4)).scores[fc.name]["m"].numpy()
    _close(ours, theirs)
    old = METRICS.create(
        "faithfulness_correlation",
        nr_runs=50,
        subset_size=224,
        fill="black",
        abs=True,
        normalise="normalise_by_negative",
    )
    before = old.evaluate(batch, {"m": pp.normalise_by_negative(raw)}, generator=gen(4)).scores[
        old.name
    ]["m"]
    assert np.abs(before.numpy() - theirs).max() > 1e-3, (
        "per-sample normalise_by_negative changes FC"
    )

    # Sparseness: Quantus 0.6's normalise=True divides by the batch's largest magnitude
    q = quantus.Sparseness(normalise=True, disable_warnings=True)
    theirs = q(model=None, x_batch=x, y_batch=y, a_batch=theirs_maps[:, None].copy(), batch_size=n)
    sp = METRICS.create("sparseness", normalise="normalise_by_max_over_set")
    _close(sp.evaluate(batch, {"m": maps}).scores[sp.name]["m"], theirs)
