"""Quantus 0.6 (and the authors' formulas) as oracles for the metrics of issue 27: ROAD, Infidelity,
Sensitivity-n, Monotonicity Correlation, Local Lipschitz Estimate, Relative Output Stability,
Random Logit and Focus.

Where Quantus is deterministic (ROAD without noise, Infidelity's patch perturbation, Monotonicity
Correlation with a constant fill, Focus) both must agree to float precision on the same model,
maps and parameters. Where Quantus draws random numbers (LLE's and ROS's noise, Random Logit's
class) the draws are matched: xaiarena's own draws are injected into Quantus (its ``perturb_func``,
its class draw), and the two must then agree to float precision. Infidelity's noisy baseline and
Sensitivity-n (whose Quantus 0.6 implementation computes another statistic, see docs/metrics.md)
are checked against the papers' formulas with the same draws and on hand-computed cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tests.support.metrics import (
    gen,
    input_x_gradient_fn,
    saliency_fn,
    small_lenet,
    test_batch,
    tie_free,
)
from xaiarena.metrics import EvalBatch, SamplePool
from xaiarena.metrics.core import SampleRNG
from xaiarena.metrics.road import NEIGHBOUR_WEIGHTS, imputation_system, linear_imputation
from xaiarena.metrics.sanity import ssim
from xaiarena.registry import METRICS

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def setup():
    batch = test_batch(16)
    sal = saliency_fn(small_lenet())(batch.inputs, batch.targets)
    return batch, tie_free(sal)


def _np(batch, a):
    return batch.inputs.numpy(), batch.targets.numpy(), a.numpy()[:, None]


def _q_explain(explain):
    def f(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()[:, None]

    return f


# --------------------------------------------------------------------------- ROAD


def test_linear_imputation_matches_quantus_and_the_authors():
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    image = rng.random((3, 11, 8))
    masks = np.stack(
        [np.isin(np.arange(88), rng.permutation(88)[:k]).reshape(11, 8) for k in (1, 5, 40, 87)]
        + [np.pad(np.ones((5, 4), bool), ((0, 6), (0, 4)))]
    )  # a corner block: border weights
    ours = linear_imputation(image, masks)
    for m, o in zip(masks, ours, strict=True):
        theirs = noisy_linear_imputation(image, np.nonzero(m.ravel())[0], noise=0.0)
        np.testing.assert_allclose(o, theirs, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(o[:, ~m], image[:, ~m])  # known pixels untouched
    # the paper's definition: every removed pixel is the weighted mean of its neighbours (inside the
    # image)
    o, m = ours[2], masks[2]
    pad = np.pad(o, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones((11, 8)), 1)
    k = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    ys, xs = np.nonzero(m)
    for y, x in zip(ys, xs, strict=True):
        w = k * inside[y : y + 3, x : x + 3]
        np.testing.assert_allclose(
            o[:, y, x], (pad[:, y : y + 3, x : x + 3] * w).sum((1, 2)) / w.sum(), atol=1e-10
        )
    with pytest.raises(ValueError, match="removes every pixel"):
        linear_imputation(image, np.ones((1, 11, 8), bool))


def _system_by_coordinates(image: np.ndarray, masks: np.ndarray):
    """The imputation system written pixel by pixel from the paper's definition, assembled by
    scipy from coordinates (sums duplicates, sorts indices)."""
    from scipy.sparse import csc_matrix

    k, h, w = masks.shape
    unknowns = list(zip(*np.nonzero(masks), strict=True))
    number = {p: i for i, p in enumerate(unknowns)}
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(unknowns), image.shape[0]))
    for i, (m, y, x) in enumerate(unknowns):
        total = 0.0
        for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            total += weight
            if masks[m, yy, xx]:
                rows.append(i), cols.append(number[m, yy, xx]), vals.append(-weight)
            else:
                rhs[i] += weight * image[:, yy, xx]
        rows.append(i), cols.append(i), vals.append(total)
    n = len(unknowns)
    return csc_matrix((vals, (rows, cols)), shape=(n, n)), rhs


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(1, 3),
    st.floats(0.05, 0.95),
    st.integers(0, 2**31 - 1),
)
def test_imputation_system_equals_the_system_assembled_from_coordinates(k, h, w, c, p, seed):
    """The compressed arrays ROAD builds directly are, entry for entry, scipy's canonical form of
    the system written from the definition (so the sparse solves see the same matrix)."""
    rng = np.random.default_rng(seed)
    image = rng.random((c, h, w))
    masks = rng.random((k, h, w)) < p
    masks[:, 0, 0] = False  # a known pixel in every mask
    ours, rhs = imputation_system(image, masks)
    ref, ref_rhs = _system_by_coordinates(image, masks)
    assert ours.format == "csc" and ours.has_canonical_format
    np.testing.assert_array_equal(ours.indptr, ref.indptr)
    np.testing.assert_array_equal(ours.indices, ref.indices)
    np.testing.assert_array_equal(ours.data, ref.data)
    np.testing.assert_array_equal(rhs, ref_rhs)  # the same sums in the same order


def test_road_matches_quantus_without_noise(setup):
    """MoRF as Quantus's ROAD (noise 0, accuracy per percentage); LeRF as Quantus's MoRF of the
    reversed map at the authors' LeRF counts (Quantus has no LeRF)."""
    batch, a = setup
    x, y, a_np = _np(batch, a)
    ps = [1, 10, 30, 50, 70, 99]
    metric = METRICS.create("road", percentages=ps, noise=0.0)
    out = metric.evaluate(batch, {"m": a}, generator=gen(0))
    q = quantus.ROAD(percentages=ps, noise=0.0, disable_warnings=True)
    theirs = q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu")
    np.testing.assert_allclose(
        out.curves["road_morf"]["m"].mean(0).numpy(), [theirs[p] for p in ps], atol=1e-12
    )
    npix = 28 * 28
    lerf_counts = metric.counts(npix)[1].tolist()
    assert lerf_counts == [
        npix - int(npix * (100 - p) / 100) for p in ps
    ]  # the authors' th_p = 1 - p/100
    qp = [
        100 * (k + 0.5) / npix for k in lerf_counts
    ]  # Quantus removes int(npix * p / 100) = k pixels
    q = quantus.ROAD(percentages=qp, noise=0.0, disable_warnings=True)
    reverse = (
        a_np.reshape(len(a_np), -1).max(1)[:, None, None, None] - a_np
    )  # Quantus rejects all-negative maps
    theirs = q(model=batch.model, x_batch=x, y_batch=y, a_batch=reverse, device="cpu")
    np.testing.assert_allclose(
        out.curves["road_lerf"]["m"].mean(0).numpy(), [theirs[p] for p in qp], atol=1e-12
    )
    np.testing.assert_allclose(
        out.scores["road_morf"]["m"].numpy(), out.curves["road_morf"]["m"].mean(1).numpy()
    )


def test_road_noise_is_the_papers_and_shared_by_explainers(setup):
    """With noise, the imputed pixels differ from the noise-free imputation by N(0, 0.01^2) draws;
    two explainers with the same order get the same scores (the same noise)."""
    batch, a = setup
    b = EvalBatch(
        batch.model,
        batch.inputs[:4],
        batch.targets[:4],
        batch.labels[:4],
        sample_ids=batch.sample_ids[:4],
    )
    metric = METRICS.create("road", percentages=(50,), output="probability")
    out = metric.evaluate(b, {"m": a[:4], "same": a[:4] * 3}, generator=gen(1))
    for k in ("road_morf", "road_lerf"):
        torch.testing.assert_close(out.curves[k]["m"], out.curves[k]["same"])
    # the noise itself: rebuild sample 0's MoRF image from the metric's streams
    rng = SampleRNG.for_batch(b, gen(1), "road")
    z = torch.randn((2, 1, 1, 28, 28), generator=rng.generator(0, "noise"), dtype=torch.float64)
    rank = metric.unit_ranks({"m": a[:4]}, SampleRNG.for_batch(b, gen(1), "road"), tag="morf")[0, 0]
    mask = (rank < metric.counts(784)[0, 0]).numpy()
    clean = linear_imputation(b.inputs[0].double().numpy(), mask[None])[0]
    noisy = torch.from_numpy(clean) + 0.01 * z[0, 0] * torch.from_numpy(mask)
    p = torch.softmax(b.model(noisy.float()[None]), -1)[0, b.targets[0]]
    torch.testing.assert_close(out.curves["road_morf"]["m"][0, 0], p.detach(), atol=1e-5, rtol=0)
    assert float(z[0, 0, 0][torch.from_numpy(mask)].std()) == pytest.approx(1.0, abs=0.15)


# --------------------------------------------------------------------------- infidelity


@pytest.mark.parametrize("sizes", [[4], [7, 14]])
def test_infidelity_patches_match_quantus(setup, sizes):
    batch, a = setup
    x, y, a_np = _np(batch, a)
    q = quantus.Infidelity(
        perturb_patch_sizes=sizes, n_perturb_samples=2, perturb_baseline=0.0, disable_warnings=True
    )
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu")
    )
    ours = (
        METRICS.create(
            "infidelity", perturbation="patches", patch_sizes=sizes, optimal_scaling=False
        )
        .evaluate(batch, {"m": a}, generator=gen(0))
        .scores["infidelity"]["m"]
        .numpy()
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_infidelity_noisy_baseline_is_the_papers_estimator(setup):
    """Yeh et al.'s code (``get_exp_infid``, Gaussian perturbation, optimal scaling) recomputed with
    the metric's own noise draws."""
    batch, a = setup
    b = EvalBatch(
        batch.model,
        batch.inputs[:6],
        batch.targets[:6],
        batch.labels[:6],
        sample_ids=batch.sample_ids[:6],
    )
    r = 12
    metric = METRICS.create("infidelity", n_perturb_samples=r)
    ours = metric.evaluate(b, {"m": a[:6]}, generator=gen(4)).scores["infidelity"]["m"].numpy()
    rng = SampleRNG.for_batch(b, gen(4), "infidelity")
    with torch.no_grad():
        for i in range(6):
            z = torch.randn((r, 1, 28, 28), generator=rng.generator(i, "noise"))
            xt = (0.2 * z).clamp(0, 1)  # the noisy baseline around black
            pdt = b.model(b.inputs[i : i + 1])[0, b.targets[i]].double()
            pdt_diff = (pdt - b.model(xt)[:, b.targets[i]].double()).numpy()
            exp_sum = (
                (b.inputs[i] - xt).sum(1).flatten(1).double() @ a[i].flatten().double()
            ).numpy()
            beta = np.mean(pdt_diff * exp_sum) / np.mean(exp_sum * exp_sum)
            assert ours[i] == pytest.approx(np.mean((pdt_diff - beta * exp_sum) ** 2), rel=1e-4)


class Linear(torch.nn.Module):
    def __init__(self, shape=(1, 28, 28), classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(classes, int(np.prod(shape)), generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def test_a_linear_model_and_its_input_times_gradient_are_perfect():
    """For f(x) = w.x, input x gradient satisfies sensitivity-n for every n (Ancona et al., Prop.
    2): the correlation is exactly 1; its infidelity under the noisy baseline is 0 with and without
    scaling."""
    batch = test_batch(5)
    model = Linear()
    b = EvalBatch(
        model, batch.inputs, batch.targets % 3, batch.labels % 3, sample_ids=batch.sample_ids
    )
    ixg = input_x_gradient_fn(model)(b.inputs, b.targets)
    grad = model.w[b.targets].detach().view(-1, 28, 28)
    sn = METRICS.create("sensitivity_n", n_values=(3, 0.1, 0.6), nr_subsets=10).evaluate(
        b, {"ixg": ixg}, generator=gen(0)
    )
    torch.testing.assert_close(
        sn.curves["sensitivity_n"]["ixg"], torch.ones(5, 3), atol=1e-5, rtol=0
    )
    for scaling in (True, False):
        inf = (
            METRICS.create("infidelity", n_perturb_samples=10, optimal_scaling=scaling)
            .evaluate(b, {"grad": grad}, generator=gen(0))
            .scores["infidelity"]["grad"]
        )
        torch.testing.assert_close(inf, torch.zeros(5), atol=1e-6, rtol=0)


def test_sensitivity_n_is_pearson_over_the_subsets(setup):
    """Each n: Pearson (scipy) over the metric's own subsets of the attribution sums and output
    drops."""
    batch, a = setup
    b = EvalBatch(
        batch.model,
        batch.inputs[:4],
        batch.targets[:4],
        batch.labels[:4],
        sample_ids=batch.sample_ids[:4],
    )
    metric = METRICS.create("sensitivity_n", n_values=(20, 0.5), nr_subsets=15)
    out = metric.evaluate(b, {"m": a[:4]}, generator=gen(6)).curves["sensitivity_n"]["m"]
    rng = SampleRNG.for_batch(b, gen(6), "sensitivity_n")
    with torch.no_grad():
        for i in range(4):
            for t, k in enumerate(metric.sizes(784)):
                m = metric.subsets(rng, i, t, k, 784, "cpu")
                xt = torch.where(m.view(-1, 1, 28, 28), 0.0, b.inputs[i])
                drops = (
                    b.model(b.inputs[i : i + 1])[0, b.targets[i]] - b.model(xt)[:, b.targets[i]]
                ).numpy()
                sums = (m.double() @ a[i].flatten().double()).numpy()
                assert float(out[i, t]) == pytest.approx(stats.pearsonr(sums, drops)[0], abs=1e-5)


# ------------------------------------------------------------------------- monotonicity correlation


@pytest.mark.parametrize("similarity", ["spearman", "pearson"])
def test_monotonicity_correlation_matches_quantus(setup, similarity):
    """A constant fill that changes every group (0.5): Quantus is deterministic (its nr_samples
    draws coincide). With black fill MNIST's empty groups, and with probabilities saturated groups,
    give tied variances, which Quantus (scipy) averages and xaiarena breaks at random."""
    batch, a = setup
    x, y, a_np = _np(batch, a)
    func = getattr(quantus.similarity_func, f"correlation_{similarity}")
    q = quantus.MonotonicityCorrelation(
        nr_samples=1,
        features_in_step=28,
        perturb_baseline=0.5,
        similarity_func=func,
        disable_warnings=True,
    )
    # logits: saturated probabilities (exactly 1 in float32) tie, and ties are where the two differ
    theirs = np.asarray(
        q(model=batch.model, x_batch=x, y_batch=y, a_batch=a_np.copy(), device="cpu", softmax=False)
    )
    ours = (
        METRICS.create(
            "monotonicity_correlation",
            features_in_step=28,
            fill=0.5,
            similarity=similarity,
            output="logit",
        )
        .evaluate(batch, {"m": a}, generator=gen(0))
        .scores["monotonicity_correlation"]["m"]
        .numpy()
    )
    if similarity == "pearson":
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    else:
        # a variance tied (or tied in float32) in one group pair moves a Spearman rank: one
        # sample, by < 1e-3
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
        assert (np.abs(ours - theirs) < 1e-6).mean() >= 0.9


# -------------------------------------------------------------------- robustness with matched noise


@pytest.mark.parametrize(
    "name,quantus_cls,params",
    [
        ("local_lipschitz_estimate", "LocalLipschitzEstimate", {}),
        ("relative_output_stability", "RelativeOutputStability", {"prediction_change": "nan"}),
    ],
)
def test_robustness_matches_quantus_with_matched_noise(name, quantus_cls, params):
    batch = test_batch(12)
    explain = saliency_fn(batch.model)
    sal = explain(batch.inputs, batch.targets)
    x, y, a_np = _np(batch, sal)
    r = 4
    metric = METRICS.create(name, nr_samples=r, **params)
    ours = (
        metric.evaluate(batch, {"m": sal}, generator=gen(3), explainers={"m": explain})
        .scores[name]["m"]
        .numpy()
    )
    rng = SampleRNG.for_batch(batch, gen(3), name)
    n = len(x)
    noise = metric._noise(
        rng, torch.arange(n).repeat(r), torch.arange(r).repeat_interleave(n), x.shape[1:], "cpu"
    )
    noise = noise.view(r, n, -1).numpy()
    calls = []

    def perturb(arr, indices=None, **kwargs):  # draw k of Quantus = draw k of xaiarena
        calls.append(1)
        return arr + noise[len(calls) - 1]

    kw = (
        {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}}
        if name == "local_lipschitz_estimate"
        else {}
    )
    q = getattr(quantus, quantus_cls)(
        nr_samples=r, perturb_func=perturb, disable_warnings=True, **kw
    )
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=x,
            y_batch=y,
            a_batch=a_np.copy(),
            device="cpu",
            explain_func=_q_explain(explain),
            batch_size=64,
        )
    )
    assert len(calls) == r
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    ok = ~np.isnan(theirs)
    assert ok.sum() >= 3
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=1e-5)


# --------------------------------------------------------------------------- random logit, focus


def test_ssim_matches_skimage():
    skimage = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 20, 17, generator=g, dtype=torch.float64)
    b = a + 0.4 * torch.rand(3, 20, 17, generator=g, dtype=torch.float64) - 0.1
    for flat in (False, True):
        ours = ssim(a, b, 7, flat=flat).numpy()
        for i in range(3):
            aa, bb = (a[i].flatten(), b[i].flatten()) if flat else (a[i], b[i])
            rng = float(
                torch.cat([aa.flatten(), bb.flatten()]).max()
                - torch.cat([aa.flatten(), bb.flatten()]).min()
            )
            theirs = skimage.structural_similarity(
                aa.numpy(), bb.numpy(), data_range=rng, win_size=7
            )
            assert ours[i] == pytest.approx(theirs, abs=1e-12)


def test_random_logit_matches_quantus_with_matched_classes(monkeypatch):
    batch = test_batch(12)
    explain = input_x_gradient_fn(batch.model)
    a = explain(batch.inputs, batch.targets)
    x, y, a_np = _np(batch, a)
    metric = METRICS.create("random_logit", similarity="ssim_flat")
    ours = metric.evaluate(batch, {"m": a}, generator=gen(3), explainers={"m": explain}).scores[
        "random_logit"
    ]["m"]
    others = metric.other_classes(
        SampleRNG.for_batch(batch, gen(3), "random_logit"), batch.targets, 10
    )
    assert bool((others != batch.targets).all())
    index = torch.where(
        others > batch.targets, others - 1, others
    ).numpy()  # among the other classes, in order

    import quantus.metrics.randomisation.random_logit as module

    class Random:  # Quantus' class draw returns xaiarena's
        seed = staticmethod(lambda s: None)
        randint = staticmethod(lambda low, high, size: index)

    class NumPy:
        random = Random

        def __getattr__(self, name):
            return getattr(np, name)

    monkeypatch.setattr(module, "np", NumPy())
    q = quantus.RandomLogit(
        num_classes=10, disable_warnings=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)}
    )
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=x,
            y_batch=y,
            a_batch=a_np.copy(),
            device="cpu",
            explain_func=_q_explain(explain),
            batch_size=64,
        )
    )
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)


def test_focus_matches_quantus_on_the_same_mosaics():
    batch = test_batch(12)
    pool_batch = test_batch(60, 2970)
    batch.pool = SamplePool(pool_batch.inputs, pool_batch.labels, pool_batch.sample_ids)
    explain = input_x_gradient_fn(batch.model)
    metric = METRICS.create("focus", mosaic_size="same")
    mosaics, target, ok, _ = metric.mosaics(batch, gen(0))
    assert bool(ok.all()) and bool((target.sum(1) == 2).all())
    maps = explain(mosaics, batch.labels)
    q = quantus.Focus(disable_warnings=True)
    theirs = np.asarray(
        q(
            model=batch.model,
            x_batch=mosaics.numpy(),
            y_batch=batch.labels.numpy(),
            a_batch=maps.numpy()[:, None],
            custom_batch=[tuple(int(v) for v in t) for t in target],
            device="cpu",
        )
    )
    ours = (
        metric.evaluate(
            batch,
            {"m": explain(batch.inputs, batch.targets)},
            generator=gen(0),
            explainers={"m": explain},
        )
        .scores["focus"]["m"]
        .numpy()
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
