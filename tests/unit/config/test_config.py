"""Config validation: unknown keys, wrong types, unknown names, --set overrides."""

from __future__ import annotations

import pytest
import yaml

from xaiarena.config import apply_overrides, load_config, load_raw, stable_hash
from xaiarena.errors import ConfigError


def _problems(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_config(raw)
    return dict(exc.value.problems)


BASE = {"data": "hard_mnist", "model": "lenet", "explainers": ["gradcam"]}


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg.data[0].name == "hard_mnist"
    assert cfg.model.name == "lenet"


def test_unknown_top_level_key_suggests_the_right_one():
    probs = _problems({**BASE, "evaluaton": {}})
    assert "evaluaton" in probs
    assert "did you mean 'evaluation'" in probs["evaluaton"]


def test_unknown_nested_key_names_valid_keys():
    probs = _problems({**BASE, "training": {"epoch": 3}})
    msg = probs["training.epoch"]
    assert "did you mean 'epochs'" in msg and "batch_size" in msg


def test_wrong_type_names_path_and_value():
    probs = _problems({**BASE, "training": {"epochs": "many"}})
    assert "'many'" in probs["training.epochs"]


def test_unknown_model_name_did_you_mean():
    probs = _problems({**BASE, "model": "lenett"})
    assert "Did you mean 'lenet'" in probs["model.name"]
    assert "resnet" in probs["model.name"]  # lists the valid choices


def test_unknown_dataset_and_several_problems_at_once():
    probs = _problems({"data": "hard_mnst", "model": "lenet", "seed": "x"})
    assert "hard_mnist" in probs["data.name"]
    assert "seed" in probs


def test_unknown_component_parameter():
    probs = _problems({**BASE, "model": {"name": "lenet", "chanels": [4, 8]}})
    assert "did you mean 'channels'" in probs["model.chanels"]


def test_component_parameter_type_is_checked():
    probs = _problems({**BASE, "model": {"name": "resnet", "depth": "deep"}})
    assert "'deep'" in probs["model.depth"]


def test_bad_device():
    probs = _problems({**BASE, "device": "tpu"})
    assert "auto, cpu, cuda" in probs["device"]


def test_overrides_parse_yaml_values_and_expand_bare_names():
    raw = apply_overrides(
        dict(BASE), ["training.epochs=7", "model.channels=[4, 8]", "evaluation.only_correct=true"]
    )
    cfg = load_config(raw)
    assert cfg.training.epochs == 7
    assert cfg.model.params == {"channels": [4, 8]}
    assert cfg.evaluation.only_correct is True


def test_override_list_index_out_of_range():
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides({**BASE, "explainers": []}, ["explainers.3.n_steps=2"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(dict(BASE), ["training.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_raw(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_raw(bad)


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config({**BASE, "training": {"epochs": 2}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["training"]["epochs"] == 2


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_metric_can_be_restricted_to_some_explainers():
    from xaiarena.registry import EXPLAINERS, METRICS

    if not {"saliency", "random"} <= set(EXPLAINERS.names()) or "sparseness" not in METRICS:
        pytest.skip("needs saliency, random and sparseness")
    cfg = load_config(
        {
            **BASE,
            "explainers": ["saliency", "random"],
            "metrics": [{"name": "sparseness", "explainers": ["saliency"]}],
        }
    )
    assert cfg.metrics[0].explainers == ["saliency"] and cfg.metrics[0].params == {}
    probs = _problems(
        {
            **BASE,
            "explainers": ["saliency"],
            "metrics": [{"name": "sparseness", "explainers": ["salency"]}],
        }
    )
    assert "did you mean 'saliency'" in probs["metrics.0.explainers"]


def test_data_dir_is_a_data_field_not_a_parameter():
    cfg = load_config({**BASE, "data": {"name": "hard_mnist", "data_dir": "/x", "n_train": 10}})
    assert cfg.data[0].data_dir == "/x" and cfg.data[0].params == {"n_train": 10}


# --------------------------------------------------------------------------- fixed target class


@pytest.mark.parametrize(
    "value, expected",
    [(404, 404), ("airliner", "airliner"), ("label", "label"), ("prediction", "prediction")],
)
def test_evaluation_target_accepts_an_index_or_a_class_name(value, expected):
    from xaiarena.config import load_config

    base = {"data": ["hard_mnist"], "model": "lenet", "explainers": ["saliency"], "metrics": []}
    cfg = load_config({**base, "evaluation": {"target": value}})
    assert cfg.evaluation.target == expected and type(cfg.evaluation.target) is type(expected)
    # from the command line: YAML parses 404 as an int, airliner as a string
    cfg = load_config(base, overrides=[f"evaluation.target={value}"])
    assert cfg.evaluation.target == expected and type(cfg.evaluation.target) is type(expected)


def test_fixed_target_resolves_against_the_model_then_the_dataset_classes():
    from types import SimpleNamespace

    import torch

    from xaiarena.engine.stages import fixed_targets
    from xaiarena.errors import ConfigError
    from xaiarena.models.pretrained import imagenet_classes

    prep = SimpleNamespace(task=SimpleNamespace(class_names=["background", "aeroplane", "bicycle"]))
    imagenet = SimpleNamespace(class_names=imagenet_classes())
    for target in (404, "airliner", "Airliner"):
        assert torch.equal(fixed_targets(target, prep, imagenet, 3), torch.full((3,), 404))
    assert (
        fixed_targets("label", prep, imagenet, 3) is None
        and fixed_targets("prediction", prep, imagenet, 3) is None
    )
    plain = SimpleNamespace()  # a model without class names: the dataset's
    assert fixed_targets("aeroplane", prep, plain, 2).tolist() == [1, 1]
    assert fixed_targets(2, prep, plain, 2).tolist() == [2, 2]
    with pytest.raises(ConfigError, match="airliner"):  # suggests the close name
        fixed_targets("airlinr", prep, imagenet, 3)
    with pytest.raises(ConfigError, match="1000 classes"):
        fixed_targets(1000, prep, imagenet, 3)
    with pytest.raises(ConfigError, match="3 classes"):
        fixed_targets(404, prep, plain, 3)
