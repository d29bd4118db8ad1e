"""Property tests (hypothesis) of the metrics of issue 27: value ranges, invariances (rank-based
ROAD under monotone transforms, scale-free statistics under rescaling), and maps whose scores are
known (a constant map and a random map, a perfect Focus map, a class-independent map)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.support.metrics import (
    TINY,
    H,
    W,
    constant_fn,
    gen,
    gradient_fn,
    hashed_random_fn,
    tiny_batch,
)
from xaiarena.metrics import EvalBatch, SamplePool
from xaiarena.registry import METRICS

FEW = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
int_maps = arrays(np.int64, (3, H, W), elements=st.integers(-6, 6))

OPTIONS = {
    "road": {"percentages": (20, 60), "output": "probability"},
    "infidelity": {"n_perturb_samples": 5},
    "sensitivity_n": {"n_values": (5, 0.4), "nr_subsets": 6},
    "monotonicity_correlation": {"nr_samples": 2, "n_steps": 5},
    "local_lipschitz_estimate": {"nr_samples": 2},
    "relative_output_stability": {"nr_samples": 2, "prediction_change": "ignore"},
    "random_logit": {"win_size": 3},
    "focus": {"mosaic_size": "same"},
}


def pooled(n: int = 6, seed: int = 0) -> EvalBatch:
    b = tiny_batch(n, seed=seed)
    b.sample_ids = torch.arange(n)
    b.pool = SamplePool(b.inputs, b.labels, b.sample_ids)
    return b


BATCH = pooled(3)


@FEW
@given(a=int_maps, seed=st.integers(0, 2**31 - 1))
def test_new_metrics_stay_in_range(a, seed):
    maps = {"ints": torch.as_tensor(a).float(), "const": torch.zeros(3, H, W)}
    fns = {"ints": gradient_fn(TINY), "const": constant_fn(0.0)}
    for name, params in OPTIONS.items():
        metric = METRICS.create(name, **params)
        out = metric.evaluate(BATCH, maps, generator=gen(seed), explainers=fns)
        assert set(out.scores) == set(metric.output_names())
        for spec in metric.outputs():
            lo, hi = spec.value_range
            for key, v in out.scores[spec.name].items():
                v = v[~torch.isnan(v)]
                assert bool(((v >= lo - 1e-6) & (v <= hi + 1e-6)).all()), (name, spec.name, key, v)


TRANSFORMS = {
    "affine": lambda a: 3 * a + 1,
    "cube": lambda a: a**3,
    "exp": lambda a: torch.exp(a / 4),
}


@FEW
@given(a=int_maps, transform=st.sampled_from(sorted(TRANSFORMS)), seed=st.integers(0, 2**31 - 1))
def test_road_is_invariant_to_monotone_transforms(a, transform, seed):
    """ROAD reads only the order of the pixels (ties included: integer maps)."""
    metric = METRICS.create("road", **OPTIONS["road"])
    a = torch.as_tensor(a).double()
    o1 = metric.evaluate(BATCH, {"m": a.float()}, generator=gen(seed))
    o2 = metric.evaluate(BATCH, {"m": TRANSFORMS[transform](a).float()}, generator=gen(seed))
    for k in o1.scores:
        torch.testing.assert_close(o1.scores[k]["m"], o2.scores[k]["m"], equal_nan=True)


@FEW
@given(
    a=arrays(np.float32, (3, H, W), elements=st.floats(-10, 10, width=32)),
    scale=st.floats(0.01, 100),
    shift=st.floats(-5, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_free_statistics(a, scale, shift, seed):
    """Pearson Sensitivity-n is invariant to a positive affine map of the attribution (sums move by
    a constant per n); optimally scaled infidelity is invariant to a positive scaling."""
    a = torch.as_tensor(a)
    sn = METRICS.create("sensitivity_n", **OPTIONS["sensitivity_n"])
    s1 = sn.evaluate(BATCH, {"m": a}, generator=gen(seed)).scores["sensitivity_n"]["m"]
    s2 = sn.evaluate(BATCH, {"m": scale * a + shift}, generator=gen(seed)).scores["sensitivity_n"][
        "m"
    ]
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=0, equal_nan=True)
    inf = METRICS.create("infidelity", **OPTIONS["infidelity"])
    i1 = inf.evaluate(BATCH, {"m": a}, generator=gen(seed)).scores["infidelity"]["m"]
    i2 = inf.evaluate(BATCH, {"m": scale * a}, generator=gen(seed)).scores["infidelity"]["m"]
    torch.testing.assert_close(i1, i2, atol=1e-5, rtol=1e-4)


@FEW
@given(seed=st.integers(0, 2**31 - 1), value=st.floats(0.1, 10))
def test_focus_of_known_maps(seed, value):
    """A map that puts all positive relevance on the target images scores 1, a constant positive map
    exactly 0.5 (two of four equal quadrants), a map without positive relevance 0 (Quantus)."""
    b = pooled(6, seed=seed % 100)
    metric = METRICS.create("focus", mosaic_size="same")
    mosaics, target, ok, _ = metric.mosaics(b, gen(seed))
    q = torch.zeros(4, H, W, dtype=torch.bool)
    for k in range(4):
        r, c = divmod(k, 2)
        q[k, r * H // 2 : (r + 1) * H // 2, c * W // 2 : (c + 1) * W // 2] = True
    perfect = (target.float() @ q.flatten(1).float()).view(-1, H, W)
    fns = {
        "perfect": lambda x, t, generator=None: perfect,
        "const": constant_fn(value),
        "neg": constant_fn(-value),
    }
    maps = {k: torch.zeros(6, H, W) for k in fns}
    out = metric.evaluate(b, maps, generator=gen(seed), explainers=fns).scores["focus"]
    torch.testing.assert_close(out["perfect"][ok], torch.ones(int(ok.sum())))
    torch.testing.assert_close(out["const"][ok], torch.full((int(ok.sum()),), 0.5))
    torch.testing.assert_close(out["neg"][ok], torch.zeros(int(ok.sum())))


def test_random_logit_of_a_class_independent_map_is_one_and_a_gradient_map_lower():
    b = pooled(6)
    fns = {"random": hashed_random_fn(), "grad": gradient_fn(TINY)}
    maps = {k: f(b.inputs, b.targets) for k, f in fns.items()}
    out = METRICS.create("random_logit", win_size=3).evaluate(
        b, maps, generator=gen(0), explainers=fns
    )
    s = out.scores["random_logit"]
    torch.testing.assert_close(s["random"], torch.ones(6))
    assert bool((s["grad"] < 1 - 1e-3).all())


def test_robustness_of_a_constant_map_is_zero_and_rescaling_does_not_matter():
    """LLE (normalised maps) and ROS (relative changes) do not depend on the scale of an
    explainer."""
    b = pooled(4)
    grad = gradient_fn(TINY)
    fns = {
        "grad": grad,
        "grad10": lambda x, t, generator=None: 10 * grad(x, t),
        "const": constant_fn(2.0),
    }
    maps = {k: f(b.inputs, b.targets) for k, f in fns.items()}
    for name in ("local_lipschitz_estimate", "relative_output_stability"):
        s = (
            METRICS.create(name, **OPTIONS[name])
            .evaluate(b, maps, generator=gen(1), explainers=fns)
            .scores[name]
        )
        torch.testing.assert_close(s["grad"], s["grad10"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s["const"], torch.zeros(4))
