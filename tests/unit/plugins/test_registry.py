from __future__ import annotations

import pytest

from xaiarena.errors import UnknownNameError
from xaiarena.registry import DATASETS, MODELS, REGISTRIES, Registry, suggest


def test_builtin_entries_are_registered():
    assert "hard_mnist" in DATASETS
    assert {"lenet", "resnet"} <= set(MODELS.names())


def test_unknown_name_suggests_and_lists_choices():
    with pytest.raises(UnknownNameError) as exc:
        MODELS.get("resnett")
    assert exc.value.suggestion == "resnet"
    assert "lenet" in str(exc.value)


def test_suggest_is_case_insensitive_and_returns_none_for_garbage():
    assert suggest("LeNet", ["lenet", "resnet"]) == "lenet"
    assert suggest("zzzzzz", ["lenet", "resnet"]) is None


def test_register_twice_is_an_error_and_metadata_is_kept():
    reg = Registry("things", meta_attrs=("family",))

    @reg.register("a", description="first", modality="image")
    class A:
        family = "x"

        def __init__(self, k: int = 1):
            pass

    # origin: "builtin" for xaiarena's own components, else the registering module (or plugin)
    assert reg.describe() == [
        {
            "name": "a",
            "description": "first",
            "family": "x",
            "modality": "image",
            "origin": __name__,
        }
    ]
    assert list(reg.entry("a").parameters()) == ["k"]

    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(type("B", (), {}))


def test_reserved_arguments_are_not_config_parameters():
    assert "task" not in MODELS.entry("lenet").parameters()
    assert "seed" not in DATASETS.entry("hard_mnist").parameters()


def test_every_entry_has_a_description():
    for reg in REGISTRIES.values():
        for entry in reg:
            assert entry.description, f"{reg.kind} '{entry.name}' has no description"
