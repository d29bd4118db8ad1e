"""The metric interface: metadata, config validation, determinism, common random
numbers, batching, NaN reporting, agreement keys, and the sanity metric."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.support.metrics import gen, input_x_gradient_fn, saliency_fn, small_lenet, test_batch
from xaiarena.metrics import CATEGORIES, EvalBatch, Metric, SamplePool
from xaiarena.registry import METRICS

EXPECTED = {
    "pixel_perturbation",
    "aopc",
    "insertion",
    "deletion",
    "faithfulness_correlation",
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "irof",
    "relative_input_stability",
    "max_sensitivity",
    "avg_sensitivity",
    "sparseness",
    "complexity",
    "topk_iou",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
    "fg_bg_attribution",
    "agreement_topk_iou",
    "agreement_spearman",
    "agreement_topk_overlap",
    "mprt",
    "road",
    "infidelity",
    "sensitivity_n",
    "monotonicity_correlation",
    "local_lipschitz_estimate",
    "relative_output_stability",
    "random_logit",
    "focus",
}
CHEAP = {  # small settings so that every metric runs in well under a second on 8 digits
    "pixel_flipping": {"features_in_step": 98},
    "region_perturbation": {"patch_size": 7, "regions_evaluation": 4},
    "selectivity": {"patch_size": 7},
    "aopc": {"steps": 4},
    "insertion": {"steps": 4},
    "deletion": {"steps": 4},
    "faithfulness_correlation": {"nr_runs": 6},
    "irof": {"n_segments": 10},
    "relative_input_stability": {"nr_samples": 3},
    "max_sensitivity": {"nr_samples": 3},
    "avg_sensitivity": {"nr_samples": 3},
    "mprt": {"n_layers": 2},
    "road": {"percentages": (20, 80)},
    "infidelity": {"n_perturb_samples": 6},
    "sensitivity_n": {"n_values": (0.1, 0.5), "nr_subsets": 6},
    "monotonicity_correlation": {"nr_samples": 2, "n_steps": 6},
    "local_lipschitz_estimate": {"nr_samples": 3},
    "relative_output_stability": {"nr_samples": 3},
    "focus": {"mosaic_size": "same"},
}


@pytest.fixture(scope="module")
def digits():
    batch = test_batch(8)
    batch.pool = SamplePool(
        *[getattr(test_batch(60, 2960), k) for k in ("inputs", "labels", "sample_ids")]
    )
    model = small_lenet()
    fns = {"sal": saliency_fn(model), "ixg": input_x_gradient_fn(model)}
    maps = {k: f(batch.inputs, batch.targets) for k, f in fns.items()}
    return batch, maps, fns


def test_every_metric_is_registered_with_metadata():
    assert EXPECTED <= set(METRICS.names())
    for entry in METRICS:
        meta = entry.as_dict()
        assert meta["category"] in CATEGORIES
        assert isinstance(meta["higher_is_better"], bool)
        assert set(meta["modality"]) <= {"image", "text"}
        lo, hi = meta["value_range"]
        assert lo < hi
        assert entry.description
        assert issubclass(entry.factory, Metric) and entry.factory.name == entry.name
    for name in EXPECTED:
        assert METRICS.entry(name).meta["modality"] == ("image",)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_metric_runs_and_returns_its_declared_outputs(name, digits):
    batch, maps, fns = digits
    metric = METRICS.create(name, **CHEAP.get(name, {}))
    out = metric.evaluate(batch, maps, generator=gen(0), explainers=fns)
    assert list(out.scores) == metric.output_names()
    keys = ["sal~ixg"] if metric.category == "agreement" else list(maps)
    for oname in metric.output_names():
        spec = metric.output_spec(oname)
        assert list(out.scores[oname]) == keys
        for v in out.scores[oname].values():
            assert v.shape == (8,) and v.dtype == torch.float32
            finite = v[~torch.isnan(v)]
            assert bool(
                (
                    (finite >= spec.value_range[0] - 1e-6) & (finite <= spec.value_range[1] + 1e-6)
                ).all()
            )
    for oname, per in out.curves.items():
        assert oname in out.curve_x
        for c in per.values():
            assert c.shape == (8, len(out.curve_x[oname]))
    # the same seed gives the same scores
    again = metric.evaluate(batch, maps, generator=gen(0), explainers=fns)
    for oname in out.scores:
        for k in out.scores[oname]:
            torch.testing.assert_close(out.scores[oname][k], again.scores[oname][k], equal_nan=True)


def test_bad_options_name_the_value_and_the_choices():
    with pytest.raises(
        ValueError, match=r"fill='bluur'.*black, white, mean, blur, uniform.*did you mean 'blur'"
    ):
        METRICS.create("deletion", fill="bluur")
    with pytest.raises(ValueError, match=r"order='mrof'.*morf, lerf, random"):
        METRICS.create("region_perturbation", order="mrof")
    with pytest.raises(ValueError, match=r"similarity='kendal'.*pearson, spearman"):
        METRICS.create("faithfulness_correlation", similarity="kendal")
    with pytest.raises(ValueError, match=r"prediction_change='drop'.*ignore, exclude, nan"):
        METRICS.create("relative_input_stability", prediction_change="drop")
    bad_item = r"\(150 is not a number in \(0, 100\]\)"
    with pytest.raises(ValueError, match=r"percentages=\(10, 150\) is not valid; .*" + bad_item):
        METRICS.create("pixel_perturbation", percentages=(10, 150))
    with pytest.raises(ValueError, match=r"k=0 is not valid"):
        METRICS.create("top_k_intersection", k=0)
    with pytest.raises(ValueError, match=r"normalise='l2'.*max_abs, sum_abs, none"):
        METRICS.create("fg_bg_attribution", normalise="l2")
    # constructor keywords are the config options
    assert "fill" in METRICS.entry("insertion").parameters()


def test_shape_errors_are_explicit(digits):
    batch, maps, _ = digits
    with pytest.raises(ValueError, match=r"attributions\['sal'\] has shape \(8, 27, 28\)"):
        METRICS.create("sparseness").evaluate(batch, {"sal": maps["sal"][:, :27]}, generator=gen(0))
    no_masks = EvalBatch(batch.model, batch.inputs, batch.targets, batch.labels)
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        METRICS.create("topk_iou").evaluate(no_masks, maps, generator=gen(0))
    with pytest.raises(ValueError, match="needs explainers"):
        METRICS.create("max_sensitivity", nr_samples=2).evaluate(batch, maps, generator=gen(0))


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


def test_faithfulness_correlation_shares_perturbations_across_explainers(digits):
    """Common random numbers: one set of forward passes for all explainers, and an
    explainer's score does not depend on which other explainers are scored with it."""
    batch, maps, _ = digits
    counting = CountingModel(batch.model)
    b = EvalBatch(counting, batch.inputs, batch.targets, batch.labels)
    many = {**maps, **{f"r{i}": torch.rand(8, 28, 28, generator=gen(i)) for i in range(6)}}
    metric = METRICS.create("faithfulness_correlation", nr_runs=20)
    out_many = metric.evaluate(b, many, generator=gen(7))
    assert counting.images == 8 * (20 + 1)
    out_one = metric.evaluate(b, {"sal": maps["sal"]}, generator=gen(7))
    torch.testing.assert_close(
        out_many.scores[metric.name]["sal"], out_one.scores[metric.name]["sal"]
    )
    other_seed = metric.evaluate(b, {"sal": maps["sal"]}, generator=gen(8))
    assert not torch.equal(
        other_seed.scores[metric.name]["sal"], out_one.scores[metric.name]["sal"]
    )


def test_sensitivity_shares_noise_across_explainers(digits):
    batch, maps, fns = digits
    metric = METRICS.create("avg_sensitivity", nr_samples=4)
    both = metric.evaluate(batch, maps, generator=gen(3), explainers=fns).scores[metric.name]
    alone = metric.evaluate(batch, {"ixg": maps["ixg"]}, generator=gen(3), explainers=fns).scores[
        metric.name
    ]
    torch.testing.assert_close(both["ixg"], alone["ixg"])


@pytest.mark.parametrize(
    "name,params",
    [
        ("pixel_flipping", {"features_in_step": 56}),
        ("aopc", {"steps": 5}),
        ("irof", {"n_segments": 10}),
        ("pixel_perturbation", {}),
        ("faithfulness_correlation", {"nr_runs": 10}),
    ],
)
def test_batch_size_does_not_change_scores(digits, name, params):
    batch, maps, _ = digits
    a = METRICS.create(name, **params).evaluate(batch, maps, generator=gen(0))
    b = METRICS.create(name, batch_size=5, **params).evaluate(batch, maps, generator=gen(0))
    for o in a.scores:
        for k in a.scores[o]:
            torch.testing.assert_close(
                a.scores[o][k], b.scores[o][k], atol=1e-5, rtol=1e-5, equal_nan=True
            )


def test_keep_everything_is_the_plain_model(digits):
    batch, maps, _ = digits
    out = METRICS.create("pixel_perturbation", percentages=(100,)).evaluate(
        batch, maps, generator=gen(0)
    )
    acc = (batch.model(batch.inputs).argmax(1) == batch.labels).float()
    torch.testing.assert_close(out.scores["keep100_accuracy"]["sal"], acc)
    torch.testing.assert_close(out.scores["keep100_drop"]["sal"], torch.zeros(8), atol=1e-6, rtol=0)


def test_output_directions(digits):
    pp = METRICS.create("pixel_perturbation", percentages=(10,))
    assert pp.output_spec("keep10_accuracy").higher_is_better
    assert not pp.output_spec("remove10_accuracy").higher_is_better
    assert pp.output_spec("remove10_drop").higher_is_better
    aopc = METRICS.create("aopc")
    assert (
        aopc.output_spec("aopc_morf").higher_is_better
        and not aopc.output_spec("aopc_lerf").higher_is_better
    )
    assert not METRICS.create("region_perturbation", order="lerf").outputs()[0].higher_is_better
    fg = METRICS.create("fg_bg_attribution")
    assert [o.name for o in fg.outputs()] == ["fg_mean", "bg_mean", "fg_minus_bg"]
    assert not fg.output_spec("bg_mean").higher_is_better


def test_faithful_maps_beat_random_ones(digits):
    """Sanity of direction: saliency beats a random map on MoRF deletion metrics."""
    batch = test_batch(48)
    sal = saliency_fn(batch.model)(batch.inputs, batch.targets)
    maps = {"sal": sal, "random": torch.rand(sal.shape, generator=gen(1))}
    aopc = (
        METRICS.create("aopc", steps=8).evaluate(batch, maps, generator=gen(0)).scores["aopc_morf"]
    )
    assert aopc["sal"].mean() > aopc["random"].mean()
    dele = (
        METRICS.create("deletion", steps=8)
        .evaluate(batch, maps, generator=gen(0))
        .scores["deletion"]
    )
    assert dele["sal"].mean() < dele["random"].mean()


def test_nan_only_with_a_logged_reason(digits, caplog):
    batch, maps, _ = digits
    masks = batch.masks.clone()
    masks[2] = False
    b = EvalBatch(batch.model, batch.inputs, batch.targets, batch.labels, masks)
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        v = METRICS.create("topk_iou").evaluate(b, maps, generator=gen(0)).scores["topk_iou"]["sal"]
    assert torch.isnan(v[2]) and not torch.isnan(v[[0, 1, 3]]).any()
    assert "mask is empty" in caplog.text and "[2]" in caplog.text


def test_prediction_change_exclude_and_nan(digits, caplog):
    batch, maps, fns = digits
    loud = dict(
        nr_samples=3, lower_bound=5.0, upper_bound=6.0
    )  # noise that changes most predictions
    with caplog.at_level(logging.WARNING, logger="xaiarena.metrics"):
        nan = (
            METRICS.create("relative_input_stability", prediction_change="nan", **loud)
            .evaluate(batch, maps, generator=gen(0), explainers=fns)
            .scores["relative_input_stability"]["sal"]
        )
    assert torch.isnan(nan).any() and "changed the prediction" in caplog.text
    ignore = (
        METRICS.create("relative_input_stability", prediction_change="ignore", **loud)
        .evaluate(batch, maps, generator=gen(0), explainers=fns)
        .scores["relative_input_stability"]["sal"]
    )
    assert not torch.isnan(ignore).any()
    assert bool((ignore[~torch.isnan(nan)] == nan[~torch.isnan(nan)]).all())


def test_agreement_pairs_and_reference(digits):
    batch, maps, _ = digits
    three = {**maps, "rnd": torch.rand(8, 28, 28, generator=gen(2))}
    out = METRICS.create("agreement_spearman").evaluate(batch, three, generator=gen(0))
    assert list(out.scores["agreement_spearman"]) == ["sal~ixg", "sal~rnd", "ixg~rnd"]
    ref = METRICS.create("agreement_topk_iou", reference="rnd").evaluate(
        batch, three, generator=gen(0)
    )
    assert list(ref.scores["agreement_topk_iou"]) == ["rnd~sal", "rnd~ixg"]
    same = METRICS.create("agreement_topk_overlap").evaluate(
        batch, {"a": maps["sal"], "b": maps["sal"] * 2}, generator=gen(0)
    )
    torch.testing.assert_close(same.scores["agreement_topk_overlap"]["a~b"], torch.ones(8))
    with pytest.raises(
        ValueError, match=r"reference='gradcam' is not among the explainers; valid: sal, ixg"
    ):
        METRICS.create("agreement_topk_iou", reference="gradcam").evaluate(
            batch, maps, generator=gen(0)
        )
    # two constant maps agree only by chance (independent tie-breaking per explainer)
    c = METRICS.create("agreement_topk_iou").evaluate(
        batch, {"c1": torch.zeros(8, 28, 28), "c2": torch.zeros(8, 28, 28)}, generator=gen(0)
    )
    assert c.scores["agreement_topk_iou"]["c1~c2"].mean() < 0.2


def test_mprt_never_modifies_the_model_and_flags_model_independent_maps(digits):
    batch, maps, fns = digits
    before = {k: v.clone() for k, v in batch.model.state_dict().items()}

    def edge(inputs, targets, generator=None, model=None):  # ignores the model
        return inputs.sum(1) + 1e-3 * torch.rand(
            inputs.shape[0], *inputs.shape[2:], generator=gen(9)
        )

    metric = METRICS.create("mprt")
    out = metric.evaluate(
        batch,
        {"sal": maps["sal"], "edge": edge(batch.inputs, batch.targets)},
        generator=gen(0),
        explainers={"sal": fns["sal"], "edge": edge},
    )
    for k, v in batch.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    s = out.scores["mprt"]
    assert s["edge"].mean() > 0.9  # a model-independent map survives randomisation: fails the check
    assert s["sal"].mean() < s["edge"].mean() - 0.3
    assert out.curves["mprt"]["sal"].shape == (8, 4)  # 4 layers with parameters in the small LeNet


def test_mprt_needs_explainers_that_take_a_model(digits):
    batch, maps, _ = digits

    def fixed(inputs, targets, generator=None):
        return inputs.sum(1)

    with pytest.raises(ValueError, match=r"explainers\['sal'\] must accept model="):
        METRICS.create("mprt").evaluate(
            batch, {"sal": maps["sal"]}, generator=gen(0), explainers={"sal": fixed}
        )


def test_training_flags_of_every_submodule_are_restored(digits):
    batch, maps, _ = digits
    wrapper = CountingModel(batch.model)  # training=True on top, the wrapped model in eval mode
    assert wrapper.training and not batch.model.training
    b = EvalBatch(wrapper, batch.inputs, batch.targets, batch.labels)
    METRICS.create("deletion", steps=3).evaluate(b, maps, generator=gen(0))
    assert wrapper.training and not batch.model.training


def test_agreement_topk_support_uses_the_reference_mask(digits, caplog):
    """k: support binarises the other map at the size of the reference's positive support."""
    batch, maps, _ = digits
    mask = torch.zeros(8, 28, 28)
    mask[:, 5:15, 5:15] = 1.0  # 100 pixels
    mask[7] = 0.0  # no positive pixel: NaN with a logged reason
    other = mask.clone()
    other[:, 5:15, 5:10] = 0.0  # keeps 50 of the 100 pixels on top ...
    other[:, 20:25, 20:25] = 0.5  # ... and 25 elsewhere; the rest ranks below by random ties
    metric = METRICS.create("agreement_topk_iou", k="support", reference="mask")
    with caplog.at_level(logging.WARNING):
        out = metric.evaluate(batch, {"mask": mask, "other": other}, generator=gen(0))
    iou = out.scores["agreement_topk_iou"]["mask~other"]
    # other's top 100: its 50 mask pixels, its 25 pixels at 0.5, then 25 of its zeros at random,
    # a few of which may fall inside the mask (the other 50 of the 100 mask pixels)
    assert bool((iou[:7] >= 50 / 150 - 1e-6).all()) and bool((iou[:7] <= 75 / 125 + 1e-6).all())
    assert torch.isnan(iou[7]) and "empty reference mask" in caplog.text
    same = metric.evaluate(batch, {"mask": mask, "copy": mask * 3}, generator=gen(0))
    torch.testing.assert_close(same.scores["agreement_topk_iou"]["mask~copy"][:7], torch.ones(7))
    with pytest.raises(ValueError, match="needs a reference"):
        METRICS.create("agreement_topk_iou", k="support")
    with pytest.raises(ValueError, match="'support'"):
        METRICS.create("agreement_topk_iou", k="all", reference="mask")


SET_RULES = [
    (
        "relative_input_stability",
        {
            "nr_samples": 3,
            "abs": True,
            "prediction_change": "nan",
            "normalise": "normalise_by_average_second_moment_estimate_over_set",
        },
    ),
    (
        "faithfulness_correlation",
        {"nr_runs": 6, "abs": True, "normalise": "normalise_by_negative_over_set"},
    ),
    ("sparseness", {"normalise": "normalise_by_average_second_moment_estimate_over_set"}),
]


@pytest.mark.parametrize("name,params", SET_RULES)
def test_set_normalisation_scores_the_whole_set_whatever_the_batch_size(digits, name, params):
    """A ``normalise`` rule ``..._over_set`` takes one scale over the maps of the call (Quantus's
    default axes); the runner then scores the whole evaluation set in one call, so that
    evaluation.batch_size changes nothing, while another set of samples changes the scale."""
    import xaiarena

    batch, maps, fns = digits
    metric = METRICS.create(name, **params)
    assert metric.needs_whole_set and not METRICS.create(name).needs_whole_set
    callables = {k: (lambda model, i, t, generator=None, _f=f: _f(i, t)) for k, f in fns.items()}

    def scores(n, batch_size):
        ev = xaiarena.evaluate(
            batch.model,
            batch.inputs[:n],
            batch.targets[:n],
            {k: v[:n] for k, v in maps.items()},
            [{"name": name, **params}],
            batch_size=batch_size,
            explainers=callables,
            sample_ids=batch.sample_ids[:n],
        )
        return ev.per_sample.sort_values(["explainer", "sample_id"])["value"].to_numpy().copy()

    whole, small_batches = scores(8, 64), scores(8, 3)
    torch.testing.assert_close(
        torch.as_tensor(whole), torch.as_tensor(small_batches), rtol=0, atol=0, equal_nan=True
    )
    direct = metric.evaluate(batch, maps, generator=torch.Generator(), explainers=fns)
    assert direct.scores, "evaluate() on a batch normalises over that batch"
    if name == "sparseness":
        return  # a Gini index ignores the scale (but for Quantus's +1e-7)
    # the first half on its own is another set: another scale
    half = scores(4, 64)
    first = whole.reshape(len(maps), 8)[:, :4].ravel()
    assert not torch.allclose(torch.as_tensor(half), torch.as_tensor(first), equal_nan=True)


def test_normalise_rules_are_checked(digits):
    with pytest.raises(
        ValueError,
        match=r"normalise='normalise_by_negative_over_sets'.*normalise_by_max_over_set.*"
        r"did you mean 'normalise_by_negative_over_set'",
    ):
        METRICS.create("sparseness", normalise="normalise_by_negative_over_sets")
