"""Post-processing of maps (xaiarena.postprocess): properties, Quantus as an oracle, config, cache
key, and the explain stage applying the steps (maps and re-explanations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xaiarena import postprocess as pp
from xaiarena.config import ExplainerSpec, validate
from xaiarena.engine import cache as ck
from xaiarena.errors import ConfigError

# multiples of 1e-3 up to 1e6 in magnitude: no value is so small that dividing it by the largest one
# underflows to 0 (a float32 effect, in Quantus too, not a property of the rules)
FINITE = st.integers(-(10**9), 10**9).map(lambda v: v / 1000.0)


def maps_strategy():
    """(N, H, W) float32 maps with some exact zeros and, often, constant or one-signed samples."""
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
    elements = st.one_of(FINITE, st.just(0.0), st.just(1.0), st.just(-2.0))
    return shapes.flatmap(lambda s: arrays(np.float32, s, elements=elements)).map(torch.from_numpy)


@settings(max_examples=200, deadline=None)
@given(maps_strategy())
def test_normalise_by_negative_properties(a):
    out = pp.normalise_by_negative(a)
    assert out.shape == a.shape and out.dtype == a.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(torch.sign(out), torch.sign(a)), "signs (and zeros) are kept"
    for i in range(len(a)):
        if (a[i] > 0).any():
            assert out[i].max() == 1, "the largest positive value becomes 1"
        if (a[i] < 0).any():
            assert out[i].min() == -1, "the most negative value becomes -1"
        pos, neg = a[i] > 0, a[i] < 0
        # each part is scaled by its own positive constant (Quantus's rule)
        torch.testing.assert_close(out[i][neg], a[i][neg] / a[i].min().abs(), rtol=0, atol=0)
        torch.testing.assert_close(out[i][pos], a[i][pos] / a[i].max(), rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(maps_strategy())
def test_normalise_by_max_and_abs_properties(a):
    out = pp.normalise_by_max(a)
    assert torch.isfinite(out).all() and out.abs().max() <= 1
    assert torch.equal(torch.sign(out), torch.sign(a))
    for i in range(len(a)):
        m = a[i].abs().max()
        if m > 0:
            assert out[i].abs().max() == 1
            torch.testing.assert_close(out[i], a[i] / m, rtol=0, atol=0)
        else:
            assert (out[i] == 0).all()
    assert torch.equal(pp.abs_(a), a.abs())
    assert (pp.apply(a, ["abs", "normalise_by_negative"]) >= 0).all()


@settings(max_examples=200, deadline=None)
@given(maps_strategy())
def test_minmax_properties(a):
    out = pp.minmax(a)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for i in range(len(a)):
        if a[i].max() > a[i].min():
            assert out[i].min() == 0 and out[i].max() == 1
            # monotone: the order of the values is kept
            flat, o = a[i].flatten(), out[i].flatten()
            j, k = flat.argmin(), flat.argmax()
            assert o[j] == 0 and o[k] == 1
            assert ((flat[:, None] < flat[None, :]) <= (o[:, None] <= o[None, :])).all()
        else:
            assert (out[i] == 0).all(), "a constant map becomes 0"


@settings(max_examples=50, deadline=None)
@given(maps_strategy())
def test_steps_are_per_sample(a):
    """A sample's result does not depend on its batch mates (every step but the ``_over_set``
    ones)."""
    for name in filter(pp.per_sample, pp.STEPS):
        whole = pp.STEPS[name](a)
        for i in range(len(a)):
            torch.testing.assert_close(
                whole[i : i + 1], pp.STEPS[name](a[i : i + 1]), rtol=0, atol=0
            )


@settings(max_examples=100, deadline=None)
@given(maps_strategy(), st.randoms(use_true_random=False))
def test_set_steps_take_one_scale_for_all_maps(a, rnd):
    """``<rule>_over_set`` is ``<rule>`` applied to all maps as one; the order of the maps does not
    matter."""
    set_steps = [name for name in pp.STEPS if pp.over_set(name)]
    assert sorted(set_steps) == sorted(k + pp.SET_SUFFIX for k in pp.NORMALISATIONS)
    perm = list(range(len(a)))
    rnd.shuffle(perm)
    for name in set_steps:
        out = pp.STEPS[name](a)
        one = pp.STEPS[name.removesuffix(pp.SET_SUFFIX)](a.reshape(1, -1)).reshape(a.shape)
        torch.testing.assert_close(out, one, rtol=0, atol=0)
        torch.testing.assert_close(pp.STEPS[name](a[perm]), out[perm], rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(maps_strategy())
def test_second_moment_properties(a):
    out = pp.normalise_by_average_second_moment_estimate(a)
    assert out.shape == a.shape and out.dtype == a.dtype and torch.isfinite(out).all()
    assert torch.equal(torch.sign(out), torch.sign(a))
    for i in range(len(a)):
        if (a[i] != 0).any():
            rms = out[i].double().square().mean().sqrt()
            assert abs(float(rms) - 1) < 1e-5, "each map's root mean square becomes 1"
    whole = pp.STEPS["normalise_by_average_second_moment_estimate_over_set"](a)
    if (a != 0).any():
        assert abs(float(whole.double().square().mean().sqrt()) - 1) < 1e-5, (
            "the set's root mean square is 1"
        )


def test_all_zero_maps_stay_zero():
    a = torch.zeros(2, 3, 3)
    for name in pp.STEPS:
        assert torch.equal(pp.STEPS[name](a), a)


def test_steps_equal_quantus_per_sample(monkeypatch):
    quantus = pytest.importorskip("quantus")
    from tests.support.quantus_compat import patched_normalise_funcs

    nf = patched_normalise_funcs(monkeypatch)  # NumPy 2 + Quantus 0.6: see DivideWithOut
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 7, 7, generator=g)
    a[1] = a[1].abs()  # one-signed samples take Quantus's other branches
    a[2] = -a[2].abs()
    a[3, 2:5] = 0.0
    axes = (1, 2)
    theirs = nf.normalise_by_negative(a.numpy(), normalise_axes=axes)
    np.testing.assert_array_equal(pp.normalise_by_negative(a).numpy(), theirs)
    theirs = nf.normalise_by_max(a.numpy(), normalise_axes=axes)
    np.testing.assert_array_equal(pp.normalise_by_max(a).numpy(), theirs)
    theirs = nf.normalise_by_average_second_moment_estimate(a.numpy().copy(), normalise_axes=axes)
    np.testing.assert_allclose(
        pp.normalise_by_average_second_moment_estimate(a).numpy(), theirs, rtol=1e-6
    )
    # without normalise_axes Quantus takes one scale for the whole batch: the _over_set steps
    for name in pp.NORMALISATIONS:
        theirs = getattr(nf, name)(a.numpy().copy())
        np.testing.assert_allclose(
            pp.STEPS[name + pp.SET_SUFFIX](a).numpy(), theirs, rtol=1e-6, atol=0
        )
    np.testing.assert_array_equal(
        pp.STEPS["normalise_by_negative_over_set"](a).numpy(), nf.normalise_by_negative(a.numpy())
    )
    assert quantus is not None


def test_bad_step_names_list_the_valid_ones():
    with pytest.raises(ValueError) as err:
        pp.check(["abs", "normalize"])
    assert "normalize" in str(err.value)
    for name in pp.STEPS:
        assert name in str(err.value)


BASE = {"data": ["hard_mnist"], "model": "lenet", "metrics": ["sparseness"]}


def test_config_accepts_and_checks_postprocess():
    cfg = validate(
        {
            **BASE,
            "explainers": [
                {"name": "saliency", "postprocess": ["abs", "normalise_by_negative"]},
                "gradcam",
            ],
        }
    )
    assert cfg.explainers[0].postprocess == ["abs", "normalise_by_negative"]
    assert cfg.explainers[0].params == {}, "postprocess is not an option of the explainer"
    assert cfg.explainers[1].postprocess == []
    with pytest.raises(ConfigError) as err:
        validate({**BASE, "explainers": [{"name": "saliency", "postprocess": ["abs", "min_max"]}]})
    msg = str(err.value)
    assert (
        "explainers.0.postprocess" in msg
        and "min_max" in msg
        and "minmax" in msg
        and "normalise_by_negative" in msg
    )


def test_config_needs_the_steps_of_re_explanations_with_set_steps():
    ok = validate(
        {
            **BASE,
            "explainers": [
                {
                    "name": "saliency",
                    "postprocess": ["normalise_by_negative_over_set"],
                    "reexplain_postprocess": [],
                },
                "gradcam",
            ],
        }
    )
    spec = ok.explainers[0]
    assert spec.reexplain_steps == [] and spec.params == {}
    assert spec.hash_dict()["reexplain_postprocess"] == []
    assert (
        ok.explainers[1].reexplain_steps == []
        and "reexplain_postprocess" not in ok.explainers[1].hash_dict()
    )
    same = validate(
        {**BASE, "explainers": [{"name": "saliency", "postprocess": ["abs"]}]}
    ).explainers[0]
    assert same.reexplain_steps == ["abs"], "by default re-explanations get the maps' steps"
    with pytest.raises(ConfigError) as err:
        validate(
            {
                **BASE,
                "explainers": [{"name": "saliency", "postprocess": ["normalise_by_max_over_set"]}],
            }
        )
    msg = str(err.value)
    assert (
        "explainers.0" in msg
        and "normalise_by_max_over_set" in msg
        and "reexplain_postprocess" in msg
    )
    with pytest.raises(ConfigError) as err:
        validate(
            {
                **BASE,
                "explainers": [
                    {
                        "name": "saliency",
                        "postprocess": ["normalise_by_max_over_set"],
                        "reexplain_postprocess": ["normalise_by_max_over_set"],
                    }
                ],
            }
        )
    msg = str(err.value)
    assert "explainers.0.reexplain_postprocess" in msg and "'normalise_by_max'" in msg


def test_config_refuses_minmax_for_text_explainers():
    pytest.importorskip("transformers")
    from xaiarena.registry import EXPLAINERS

    text = [
        e.name for e in EXPLAINERS if e.meta.get("modality") and "image" not in e.meta["modality"]
    ]
    if not text:
        pytest.skip("no text explainer registered")
    raw = {
        "data": ["sst2"],
        "model": "lenet",
        "explainers": [{"name": text[0], "postprocess": ["minmax"]}],
    }
    with pytest.raises(ConfigError, match="padding"):
        validate(raw)
    raw["explainers"][0]["postprocess"] = ["normalise_by_average_second_moment_estimate"]
    with pytest.raises(ConfigError, match="count the padding"):
        validate(raw)


def test_explain_key_includes_postprocess_only_when_given():
    model = ck.Key("model", "m" * 16, {})
    spec = ExplainerSpec.model_validate({"name": "saliency", "n": 1})
    old = ck._key(
        "explain",
        {
            "model": model.hash,
            "explainer": spec.hash_dict(),
            "ids": "ids",
            "seed": 0,
            "target": "label",
            "rng": ck.RNG_SCHEME,
        },
    )
    plain = ck.explain_key(model, spec.hash_dict(), "ids", 0, "label")
    empty = ck.explain_key(model, spec.hash_dict(), "ids", 0, "label", [])
    assert plain.hash == empty.hash == old.hash, "entries without steps keep their cache keys"
    steps = ck.explain_key(model, spec.hash_dict(), "ids", 0, "label", ["abs"])
    other = ck.explain_key(model, spec.hash_dict(), "ids", 0, "label", ["abs", "minmax"])
    assert len({plain.hash, steps.hash, other.hash}) == 3


def _stage_setup(tmp_path):
    from types import SimpleNamespace

    from torch import nn

    from xaiarena.engine import stages

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    cfg = validate({**BASE, "explainers": ["input_x_gradient"]})
    s = stages.Settings(
        cfg=cfg,
        cache=ck.Cache(tmp_path / "cache", tmp_path),
        device=torch.device("cpu"),
        batch_size=3,
        show_progress=False,
    )
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    prep = SimpleNamespace(dataset="d", ids_hash="ids", inputs=x, sample_ids=torch.arange(5))
    view = SimpleNamespace(
        name="f_b",
        key=ck.Key("model", "k" * 16, {}),
        model=model,
        targets=torch.tensor([0, 1, 2, 3, 0]),
    )
    return s, prep, view


def test_explain_stage_applies_the_steps_to_maps_and_re_explanations(tmp_path):
    from xaiarena.engine import stages
    from xaiarena.registry import EXPLAINERS

    s, prep, view = _stage_setup(tmp_path)
    explainer = EXPLAINERS.create("input_x_gradient")
    plain = stages.explain(s, prep, view, ExplainerSpec(name="input_x_gradient"), explainer, {})
    spec = ExplainerSpec.model_validate(
        {"name": "input_x_gradient", "label": "ixg", "postprocess": ["abs", "normalise_by_max"]}
    )
    info: dict = {}
    post = stages.explain(s, prep, view, spec, explainer, info)
    assert (plain.maps.full() < 0).any(), "the raw maps are signed"
    torch.testing.assert_close(
        post.maps.full(), pp.normalise_by_max(plain.maps.full().abs()), rtol=0, atol=0
    )
    assert post.key.hash != plain.key.hash and post.key.inputs["postprocess"] == [
        "abs",
        "normalise_by_max",
    ]
    assert "postprocess" not in plain.key.inputs
    # re-explanations (robustness metrics) get the same steps
    again = post.explain_fn(prep.inputs[:2], view.targets[:2])
    torch.testing.assert_close(again, post.maps.full()[:2], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        plain.explain_fn(prep.inputs[:2], view.targets[:2]),
        plain.maps.full()[:2],
        rtol=1e-6,
        atol=1e-7,
    )
    # the cached maps are the post-processed ones
    cached = stages.explain(s, prep, view, spec, explainer, info2 := {})
    assert info2.get("cache_hit") and torch.equal(cached.maps.full(), post.maps.full())
    assert not info.get("cache_hit")


def test_explain_stage_normalises_over_the_whole_set(tmp_path):
    """An ``_over_set`` step takes one scale over every evaluation sample, not over a batch of
    evaluation.batch_size (3 here, 5 samples); re-explanations get ``reexplain_postprocess``."""
    from xaiarena.engine import stages
    from xaiarena.registry import EXPLAINERS

    s, prep, view = _stage_setup(tmp_path)
    explainer = EXPLAINERS.create("input_x_gradient")
    plain = stages.explain(s, prep, view, ExplainerSpec(name="input_x_gradient"), explainer, {})
    spec = ExplainerSpec.model_validate(
        {
            "name": "input_x_gradient",
            "label": "ixg",
            "reexplain_postprocess": [],
            "postprocess": ["normalise_by_negative_over_set"],
        }
    )
    post = stages.explain(s, prep, view, spec, explainer, {})
    torch.testing.assert_close(
        post.maps.full(), pp.normalise_by_negative(plain.maps.full(), over="set"), rtol=0, atol=0
    )
    # one scale for the 5 samples: only the batch holding the largest value reaches 1
    assert (
        post.maps.full().max() == 1
        and min(post.maps.full()[:3].max(), post.maps.full()[3:].max()) < 1
    )
    assert post.key.inputs["explainer"]["reexplain_postprocess"] == []
    torch.testing.assert_close(
        post.explain_fn(prep.inputs[:2], view.targets[:2]),
        plain.maps.full()[:2],
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.integration
def test_run_records_postprocess(tmp_path):
    import xaiarena

    tiny = {
        "data.n_train": 200,
        "data.n_test": 40,
        "training.epochs": 1,
        "model.channels": [4, 8],
        "evaluation.n_samples": 4,
        "evaluation.batch_size": 4,
    }
    cfg = {
        "name": "pp",
        "data": "hard_mnist",
        "model": "lenet",
        "explainers": [
            "input_x_gradient",
            {
                "name": "input_x_gradient",
                "label": "ixg_nbn",
                "postprocess": ["normalise_by_negative"],
            },
            {
                "name": "input_x_gradient",
                "label": "ixg_set",
                "reexplain_postprocess": [],
                "postprocess": ["normalise_by_negative_over_set"],
            },
        ],
        "metrics": ["sparseness"],
    }
    res = xaiarena.run(cfg, out=tmp_path / "run", overrides=tiny, show_progress=False)
    raw = res.attributions("input_x_gradient")
    torch.testing.assert_close(
        res.attributions("ixg_nbn"), pp.normalise_by_negative(raw), rtol=0, atol=0
    )
    torch.testing.assert_close(
        res.attributions("ixg_set"), pp.normalise_by_negative(raw, over="set"), rtol=0, atol=0
    )
    entries = res.info["datasets"]["hard_mnist"]["explainers"]
    assert entries["ixg_nbn"]["postprocess"] == ["normalise_by_negative"]
    assert (
        "postprocess" not in entries["input_x_gradient"]
        and "reexplain_postprocess" not in entries["ixg_nbn"]
    )
    assert entries["ixg_set"]["reexplain_postprocess"] == []
