"""xaiarena.ops: option validation (one declarative style, one message), fills, blur, pairs."""

from __future__ import annotations

import math

import pytest
import torch

from xaiarena.ops.blur import gaussian_blur
from xaiarena.ops.fill import BASELINE_BLUR, FILL_BLUR, make_fill
from xaiarena.ops.pairs import explainer_pairs, has_pairs, is_pair, pair_key
from xaiarena.ops.prediction import predict_in_batches
from xaiarena.ops.seeding import sample_generators
from xaiarena.ops.validation import (
    COUNT,
    FRACTION,
    Boolean,
    Interval,
    ListOf,
    Null,
    OneOf,
    OptionError,
    invalid_values,
    option_error,
    validate_options,
)

SPEC = {
    "n": COUNT,
    "q": FRACTION,
    "mode": OneOf(("black", "white", "blur")),
    "k": [COUNT, Null("all")],
    "ps": [
        Interval(float, 0, 100, closed="right"),
        ListOf(Interval(float, 0, 100, closed="right"), unique=True),
    ],
    "flag": Boolean(),
}


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("n", 0, "thing: n=0 is not valid; it must be an integer >= 1"),
        ("n", 2.0, "thing: n=2.0 is not valid; it must be an integer >= 1"),
        ("n", True, "thing: n=True is not valid; it must be an integer >= 1"),
        ("q", 0, "thing: q=0 is not valid; it must be a number in (0, 1]"),
        ("q", math.nan, "thing: q=nan is not valid; it must be a number in (0, 1]"),
        (
            "mode",
            "blurr",
            "thing: mode='blurr' is not valid; it must be one of black, white, blur "
            "(did you mean 'blur'?)",
        ),
        ("k", -1, "thing: k=-1 is not valid; it must be an integer >= 1 or null (all)"),
        (
            "ps",
            [10, 10.0],
            "thing: ps=[10, 10.0] is not valid; it must be a number in (0, 100] or a non-empty "
            "list without repeats, each item a number in (0, 100] (10.0 is repeated)",
        ),
        (
            "ps",
            [150],
            "thing: ps=[150] is not valid; it must be a number in (0, 100] or a non-empty list "
            "without repeats, each item a number in (0, 100] (150 is not a number in (0, 100])",
        ),
        ("flag", "yes", "thing: flag='yes' is not valid; it must be true or false"),
    ],
)
def test_one_message_names_the_component_option_value_and_valid_ones(option, value, expected):
    with pytest.raises(OptionError) as err:
        validate_options("thing", SPEC, {option: value})
    assert str(err.value) == expected and err.value.message == expected
    assert (err.value.component, err.value.option) == ("thing", option) and err.value.value is value
    assert isinstance(err.value, ValueError)


def test_valid_values_are_converted_and_undeclared_options_pass_through():
    out = validate_options("thing", SPEC, {"n": 3, "q": 1, "k": None, "ps": [10, 20], "other": "x"})
    assert out == {"n": 3, "q": 1.0, "k": None, "ps": (10.0, 20.0), "other": "x"}
    assert isinstance(out["q"], float) and isinstance(
        validate_options("t", SPEC, {"ps": 5})["ps"], float
    )


def test_invalid_values_are_refused_by_every_constraint_of_the_option():
    for option, spec in SPEC.items():
        bad = invalid_values(spec)
        assert bad, option
        for v in bad:
            with pytest.raises(OptionError):
                validate_options("thing", SPEC, {option: v})


def test_option_error_for_rules_across_options_has_the_same_format():
    err = option_error("lrp", "beta", 0.5, "alpha - 1", detail="alpha - beta must be 1")
    assert str(err) == "lrp: beta=0.5 is not valid; it must be alpha - 1 (alpha - beta must be 1)"


def test_components_refuse_bad_values_in_the_one_format():
    from xaiarena.registry import EXPLAINERS, METRICS

    with pytest.raises(
        OptionError,
        match=r"^integrated_gradients: n_steps=0 is not valid; it must be an integer >= 1$",
    ):
        EXPLAINERS.create("integrated_gradients", n_steps=0)
    with pytest.raises(
        OptionError, match=r"^deletion: fill='bluur' is not valid; .*did you mean 'blur'"
    ):
        METRICS.create("deletion", fill="bluur")


def test_blur_padding_and_kernel_are_parameters():
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    rep = gaussian_blur(x, 2.0, padding="replicate")
    ref = gaussian_blur(x, 2.0, padding="reflect")
    assert not torch.equal(rep, ref)  # the borders differ
    torch.testing.assert_close(rep[..., 7:-7, 7:-7], ref[..., 7:-7, 7:-7])  # the inside does not
    assert torch.equal(gaussian_blur(x, 0.0), x)
    small = torch.rand(1, 1, 4, 4)  # radius 6 >= the side: reflect cannot pad, replicate is used
    assert torch.equal(
        gaussian_blur(small, 2.0, padding="reflect"), gaussian_blur(small, 2.0, padding="replicate")
    )
    torch.testing.assert_close(
        gaussian_blur(x, 1.5, kernel="square_over_variance"), gaussian_blur(x, 1.5)
    )


def test_fill_uniform_draws_per_sample_and_blur_follows_the_caller():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    full = make_fill(
        x, "uniform", generators=sample_generators(x, torch.Generator().manual_seed(2))
    )
    alone = make_fill(
        x[1:2], "uniform", generators=sample_generators(x[1:2], torch.Generator().manual_seed(2))
    )
    assert torch.equal(full[1], alone[0])
    assert torch.equal(make_fill(x, 0.25), torch.full_like(x, 0.25))
    assert torch.equal(make_fill(x, "mean"), x.mean((2, 3), keepdim=True).expand_as(x))
    assert torch.equal(
        make_fill(x, "blur", blur=BASELINE_BLUR),
        gaussian_blur(x, 1.0, padding="replicate", kernel="square_over_variance"),
    )
    assert torch.equal(make_fill(x, "blur", blur=FILL_BLUR), gaussian_blur(x, 5.0))
    with pytest.raises(ValueError, match="per-sample generators"):
        make_fill(x, "uniform")


def test_agreement_pairs():
    assert explainer_pairs(["a", "b", "c"], None, "m") == [("a", "b"), ("a", "c"), ("b", "c")]
    assert explainer_pairs(["a", "b", "c"], "b", "m") == [("b", "a"), ("b", "c")]
    with pytest.raises(
        ValueError, match=r"m: reference='z' is not among the explainers; valid: a, b"
    ):
        explainer_pairs(["a", "b"], "z", "m")
    assert (
        has_pairs(["a", "b"], None)
        and not has_pairs(["a"], None)
        and not has_pairs(["a", "b"], "z")
    )
    assert pair_key("a", "b") == "a~b" and is_pair("a~b") and not is_pair("a")


def test_predict_in_batches():
    model = torch.nn.Linear(3, 2)
    x = torch.rand(7, 3)
    with torch.no_grad():
        out = predict_in_batches(model, x, 3)
        torch.testing.assert_close(out, model(x))
        assert predict_in_batches(model, x[:0], 3).shape == (0, 0)
        assert (
            predict_in_batches(model, x, 2, keep=lambda y: y.argmax(1)).tolist()
            == model(x).argmax(1).tolist()
        )
