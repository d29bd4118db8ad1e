"""Property tests (hypothesis) of the metrics: value ranges, invariance of rank-based
metrics to monotone transforms, random tie-breaking, and perfect maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from tests.support.metrics import H, W, gen, saliency_fn, small_lenet, test_batch, tiny_batch
from xaiarena.registry import METRICS

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# integer-valued maps: many ties, and monotone transforms keep ties and order exactly
int_maps = arrays(np.int64, (3, H, W), elements=st.integers(-6, 6))
masks_st = arrays(np.bool_, (3, H, W), elements=st.booleans())

MODEL_FREE = {
    "sparseness": {},
    "complexity": {},
    "topk_iou": {},
    "pointing_game": {},
    "relevance_mass_accuracy": {},
    "relevance_rank_accuracy": {},
    "top_k_intersection": {"k": 7},
    "fg_bg_attribution": {},
    "agreement_topk_iou": {},
    "agreement_spearman": {},
    "agreement_topk_overlap": {},
}
MODEL_BASED = {
    "pixel_flipping": {"features_in_step": 10},
    "region_perturbation": {"patch_size": 3},
    "selectivity": {"patch_size": 5},
    "aopc": {"unit": "patch", "patch_size": 2, "steps": 5},
    "insertion": {"steps": 5},
    "deletion": {"steps": 5},
    "pixel_perturbation": {"percentages": (10, 50)},
    "faithfulness_correlation": {"nr_runs": 8, "subset_size": 20},
    "irof": {"n_segments": 8},
}


def _in_range(metric, out):
    for spec in metric.outputs():
        lo, hi = spec.value_range
        for key, v in out.scores[spec.name].items():
            v = v[~torch.isnan(v)]
            assert bool(((v >= lo - 1e-6) & (v <= hi + 1e-6)).all()), (
                metric.name,
                spec.name,
                key,
                v,
                lo,
                hi,
            )


@FAST
@given(
    a=int_maps,
    b=arrays(np.float32, (3, H, W), elements=st.floats(-1e3, 1e3, width=32)),
    masks=masks_st,
)
def test_model_free_metrics_stay_in_range(a, b, masks):
    batch = tiny_batch(3, masks)
    maps = {"ints": torch.as_tensor(a).float(), "floats": torch.as_tensor(b)}
    for name, params in MODEL_FREE.items():
        metric = METRICS.create(name, **params)
        out = metric.evaluate(batch, maps, generator=gen(0))
        assert set(out.scores) == set(metric.output_names())
        _in_range(metric, out)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=int_maps, seed=st.integers(0, 2**31 - 1))
def test_model_based_metrics_stay_in_range(a, seed):
    batch = tiny_batch(3, seed=seed % 1000)
    maps = {"ints": torch.as_tensor(a).float(), "const": torch.zeros(3, H, W)}
    for name, params in MODEL_BASED.items():
        metric = METRICS.create(name, **params)
        out = metric.evaluate(batch, maps, generator=gen(seed))
        assert set(out.scores) == set(metric.output_names())
        _in_range(metric, out)


RANK_BASED = {
    "topk_iou": {},
    "pointing_game": {},
    "relevance_rank_accuracy": {},
    "top_k_intersection": {"k": 9},
    "agreement_topk_iou": {"k": 9},
    "agreement_spearman": {},
    "agreement_topk_overlap": {"k": 0.2},
    "pixel_flipping": {"features_in_step": 7},
    "pixel_perturbation": {"percentages": (5, 30)},
    "insertion": {"steps": 6},
    "deletion": {"steps": 6},
    "aopc": {"unit": "pixel", "steps": 6},
}
TRANSFORMS = {
    "affine": lambda a: 3 * a + 1,
    "cube": lambda a: a**3,
    "exp": lambda a: torch.exp(a / 4),
}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    a=int_maps,
    b=int_maps,
    masks=masks_st,
    transform=st.sampled_from(sorted(TRANSFORMS)),
    seed=st.integers(0, 2**31 - 1),
)
def test_rank_based_metrics_invariant_to_monotone_transforms(a, b, masks, transform, seed):
    masks[:, 0, 0] = True  # non-empty masks
    batch = tiny_batch(3, masks)
    f = TRANSFORMS[transform]
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    before = {"a": a.float(), "b": b.float()}
    after = {"a": f(a).float(), "b": f(b).float()}
    for name, params in RANK_BASED.items():
        metric = METRICS.create(name, **params)
        o1 = metric.evaluate(batch, before, generator=gen(seed))
        o2 = metric.evaluate(batch, after, generator=gen(seed))
        for out_name in metric.output_names():
            for key in o1.scores[out_name]:
                torch.testing.assert_close(
                    o1.scores[out_name][key],
                    o2.scores[out_name][key],
                    equal_nan=True,
                    msg=f"{name}/{out_name}/{key} changed under {transform}",
                )


@FAST
@given(masks=masks_st)
def test_ground_truth_map_is_perfect(masks):
    masks[:, 3, 4] = True  # non-empty
    batch = tiny_batch(3, masks)
    perfect = {"gt": torch.as_tensor(masks).float()}
    for name in ("topk_iou", "relevance_rank_accuracy", "pointing_game", "relevance_mass_accuracy"):
        v = METRICS.create(name).evaluate(batch, perfect, generator=gen(1)).scores[name]["gt"]
        torch.testing.assert_close(v, torch.ones(3))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.floats(-1e3, 1e3, allow_nan=False), seed=st.integers(0, 2**31 - 1))
def test_constant_maps_do_not_depend_on_the_constant(c, seed):
    """Ties are broken by the seed alone: every constant map ranks pixels identically."""
    batch = tiny_batch(3, np.ones((3, H, W), bool))
    for name, params in (
        ("pixel_perturbation", {"percentages": (20,)}),
        ("deletion", {"steps": 4}),
    ):
        metric = METRICS.create(name, **params)
        o1 = metric.evaluate(batch, {"c": torch.full((3, H, W), c)}, generator=gen(seed))
        o2 = metric.evaluate(batch, {"c": torch.zeros(3, H, W)}, generator=gen(seed))
        for k in o1.scores:
            torch.testing.assert_close(o1.scores[k]["c"], o2.scores[k]["c"])


@pytest.fixture(scope="module")
def digits():
    batch = test_batch(160)
    sal = saliency_fn(small_lenet())(batch.inputs, batch.targets)
    return batch, sal


def test_constant_map_scores_like_a_random_map(digits):
    """Keep/remove scores of a constant map and of a random map are statistically
    indistinguishable, while a saliency map's are clearly different (so the test has power)."""
    batch, sal = digits
    g = torch.Generator().manual_seed(5)
    maps = {
        "const": torch.zeros_like(sal),
        "random": torch.rand(sal.shape, generator=g),
        "sal": sal,
    }
    metric = METRICS.create("pixel_perturbation", percentages=(10, 30))
    out = metric.evaluate(batch, maps, generator=gen(3))
    for name in ("keep10_drop", "remove10_drop", "keep30_drop", "remove30_drop"):
        s = out.scores[name]
        p_same = stats.wilcoxon(s["const"].numpy(), s["random"].numpy()).pvalue
        assert p_same > 0.001, (name, p_same)
    for name in ("remove10_drop", "keep30_drop"):
        s = out.scores[name]
        p_diff = stats.wilcoxon(s["sal"].numpy(), s["random"].numpy()).pvalue
        assert p_diff < 1e-4, (name, p_diff)
    for name in ("keep10_accuracy", "remove10_accuracy"):
        s = out.scores[name]
        assert abs(float(s["const"].mean() - s["random"].mean())) < 3 * math.sqrt(
            0.25 / len(sal)
        ) * math.sqrt(2)
