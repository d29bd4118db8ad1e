"""User models: torch_module (factories, checkpoints, normalisation, CAM layer, checks) and a
fine-tuned transformer folder used as it is."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from xaiarena.config import TrainingConfig
from xaiarena.data import load_task
from xaiarena.errors import ConfigError
from xaiarena.models import build_model, train_model
from xaiarena.registry import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


class Opaque:
    """Not a tensor: pickling it into a checkpoint must be refused on load."""

    def __init__(self):
        self.payload = "not weights"


def problem(excinfo) -> tuple[str, str]:
    ((key, msg),) = excinfo.value.problems
    return key, msg


@pytest.fixture(scope="module")
def task(image_folder_data):
    root, masks = image_folder_data
    return load_task("image_folder", root=str(root), masks_root=str(masks))


def torch_module(task, **options):
    return build_model("torch_module", task, seed=0, **options)


def test_checkpoint_model_is_used_as_is(task, user_model):
    model = torch_module(
        task,
        factory=user_model["factory"],
        checkpoint=str(user_model["pt"]),
        mean=0.5,
        std=0.25,
        cam_layer="features.2",
    )
    for k, v in user_model["state"].items():
        assert torch.equal(model.net.state_dict()[k], v), k
    assert model.pretrained and model.cam_layer() == "net.features.2"
    assert torch.allclose(model.mean.flatten(), torch.full((3,), 0.5)) and torch.allclose(
        model.std.flatten(), torch.full((3,), 0.25)
    )
    x = task.test.float_images(slice(0, 2))
    assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_model(
        model, task, TrainingConfig(epochs=1), seed=0, device=CPU, show_progress=False
    )
    assert res.history == [] and 0 <= res.test_accuracy <= 1  # no training, accuracy only
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    described = model.describe()
    assert described["checkpoint"] == str(user_model["pt"]) and described["pretrained"] is True


def test_safetensors_and_wrapped_checkpoints_load_the_same_weights(task, user_model, tmp_path):
    ref = torch_module(
        task, factory=user_model["factory"], checkpoint=str(user_model["pt"]), mean=0, std=1
    )
    wrapped = tmp_path / "wrapped.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in user_model["state"].items()}},
        wrapped,
    )
    x = task.test.float_images(slice(0, 3))
    for ckpt in (user_model["safetensors"], wrapped):
        other = torch_module(
            task, factory=user_model["factory"], checkpoint=str(ckpt), mean=0, std=1
        )
        assert torch.equal(other(x), ref(x)), ckpt


def test_module_factory_and_pass_through_options(task, user_model, tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(user_model["file"].read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    model = torch_module(task, factory="userpkg.nets:build", width=6)
    assert (
        model.net.features[0].out_channels == 6 and model.net.head.out_features == task.num_classes
    )
    assert not model.pretrained
    with pytest.raises(LookupError, match="declares no CAM layer"):
        model.cam_layer()  # issue 12.1: no guessed layer; the cam_layer option names it
    assert tuple(model.mean.flatten().tolist()) == pytest.approx(
        task.mean
    )  # dataset stats when trained here
    res = train_model(
        model, task, TrainingConfig(epochs=1, batch_size=4), seed=0, device=CPU, show_progress=False
    )
    assert len(res.history) == 1  # trained with the training section
    again = torch_module(task, factory="userpkg.nets:build", width=6)
    fresh = torch_module(task, factory="userpkg.nets:build", width=6)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), fresh.state_dict().values(), strict=True)
    )


def test_pickled_objects_are_refused(task, user_model, tmp_path):
    bad = tmp_path / "objects.pt"
    torch.save({"w": Opaque()}, bad)
    whole = tmp_path / "whole_model.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), whole)
    for path in (bad, whole):
        with pytest.raises(ConfigError) as exc:
            torch_module(task, factory=user_model["factory"], checkpoint=str(path), mean=0, std=1)
        key, msg = problem(exc)
        assert key == "model.checkpoint" and str(path) in msg and "pickled Python objects" in msg, (
            msg
        )
        assert "state_dict()" in msg


@pytest.mark.parametrize(
    "case",
    [
        "no_colon",
        "no_file",
        "no_attr",
        "not_module",
        "not_callable",
        "unknown_option",
        "no_norm",
        "bad_keys",
        "not_state",
        "missing_ckpt",
        "bad_layer",
        "outputs",
        "channels",
        "no_factory",
    ],
)
def test_bad_model_options_name_the_key(task, user_model, tmp_path, case):
    f = user_model["file"]
    opts = {"factory": user_model["factory"]}
    if case == "no_colon":
        opts["factory"], key, needle = str(f), "model.factory", "must look like"
    elif case == "no_file":
        opts["factory"], key, needle = f"{tmp_path}/missing.py:build", "model.factory", "missing.py"
    elif case == "no_attr":
        opts["factory"], key, needle = f"{f}:biuld", "model.factory", "did you mean 'build'"
    elif case == "not_module":
        opts["factory"], key, needle = f"{f}:not_a_module", "model.factory", "not a torch.nn.Module"
    elif case == "not_callable":
        opts["factory"], key, needle = (
            f"{f}:NOT_A_MODULE",
            "model.factory",
            "not a function or class",
        )
    elif case == "unknown_option":
        opts["widht"], key, needle = 3, "model.widht", "did you mean 'width'"
    elif case == "no_norm":
        opts["checkpoint"], key, needle = str(user_model["pt"]), "model.mean", "mean and std"
    elif case == "bad_keys":
        opts.update(checkpoint=str(user_model["pt"]), mean=0, std=1, width=5)
        key, needle = "model.checkpoint", "shape mismatches"
    elif case == "not_state":
        p = tmp_path / "list.pt"
        torch.save([1, 2], p)
        opts.update(checkpoint=str(p), mean=0, std=1)
        key, needle = "model.checkpoint", "not a state dict"
    elif case == "missing_ckpt":
        opts.update(checkpoint=str(tmp_path / "none.pt"), mean=0, std=1)
        key, needle = "model.checkpoint", "none.pt"
    elif case == "bad_layer":
        opts["cam_layer"], key, needle = "featurs.2", "model.cam_layer", "did you mean 'features.2'"
    elif case == "outputs":  # the model has 3 classes, the folder 2
        opts["num_classes"], key, needle = 3, "model", "list the model's classes in output order"
    elif case == "channels":
        opts["in_channels"], key, needle = 1, "model.factory", "fails on the dataset's images"
    else:
        opts, key, needle = {}, "model.factory", "required"
    with pytest.raises(ConfigError) as exc:
        torch_module(task, **opts)
    got, msg = problem(exc)
    assert got == key and needle in msg, msg


def test_fewer_outputs_than_classes_says_labels_are_outside(user_model, image_folder_data):
    root, _ = image_folder_data
    three = load_task("image_folder", root=str(root), classes=["left", "right", "up"])
    with pytest.raises(ConfigError, match=r"labels 2\.\.2 lie outside the model's classes"):
        torch_module(three, factory=user_model["factory"], num_classes=2)


def test_cam_layer_is_the_default_layer_of_cams(task, user_model):
    from xaiarena.registry import EXPLAINERS

    model = torch_module(
        task,
        factory=user_model["factory"],
        checkpoint=str(user_model["pt"]),
        mean=0,
        std=1,
        cam_layer="features.0",
    )
    x, y = task.test.float_images(slice(0, 4)), task.test.labels[:4]
    declared = EXPLAINERS.create("gradcam").explain(model, x, y)
    explicit = EXPLAINERS.create("gradcam", layer="net.features.0").explain(model, x, y)
    last = EXPLAINERS.create("gradcam", layer="net.features.2").explain(model, x, y)
    assert torch.equal(declared, explicit) and not torch.equal(declared, last)


def test_model_fingerprint_follows_checkpoint_and_factory_file(user_model, tmp_path):
    entry = MODELS.entry("torch_module")
    ckpt = tmp_path / "w.pt"
    torch.save(user_model["state"], ckpt)
    params = {"factory": user_model["factory"], "checkpoint": str(ckpt)}
    first = entry.fingerprint_of(params)
    torch.save({k: v + 1 for k, v in user_model["state"].items()}, ckpt)
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert entry.fingerprint_of(params) != first
    assert MODELS.entry("lenet").fingerprint_of({}) == {}


# ------------------------------------------------------------------------ text: a fine-tuned folder


@pytest.fixture(scope="module")
def finetuned_folder(tmp_path_factory):
    """A tiny BERT classifier with classes neg/pos and its tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from xaiarena.models.text import minilm_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = tmp_path_factory.mktemp("finetuned")
    tok = AutoTokenizer.from_pretrained(str(minilm_path()), use_fast=True, local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_finetuned_transformer_folder_is_used_as_is(finetuned_folder, tmp_path):
    import pandas as pd
    from transformers import BertForSequenceClassification

    pd.DataFrame(
        {
            "text": ["a fine day", "a bad day", "good", "awful"],
            "label": ["pos", "neg", "pos", "neg"],
        }
    ).to_csv(tmp_path / "t.csv", index=False)
    task = load_task("csv_text", path=str(tmp_path / "t.csv"))
    model = build_model(
        "transformer",
        task,
        seed=0,
        name_or_path=str(finetuned_folder),
        finetuned=True,
        max_length=16,
    )
    saved = BertForSequenceClassification.from_pretrained(finetuned_folder)
    assert torch.equal(model.net.classifier.weight, saved.classifier.weight)  # the head is kept
    res = train_model(
        model, task, TrainingConfig(epochs=1), seed=0, device=CPU, show_progress=False
    )
    assert res.history == [] and 0 <= res.test_accuracy <= 1
    entry = MODELS.entry("transformer")
    assert entry.fingerprint_of({"name_or_path": str(finetuned_folder)})["files"]
    assert entry.fingerprint_of({"name_or_path": "bert-base-uncased"}) == {"files": None}

    pd.DataFrame({"text": ["x", "y", "z"], "label": ["a", "b", "c"]}).to_csv(
        tmp_path / "three.csv", index=False
    )
    with pytest.raises(ConfigError, match="classifies 2 classes"):
        build_model(
            "transformer",
            load_task("csv_text", path=str(tmp_path / "three.csv")),
            name_or_path=str(finetuned_folder),
            finetuned=True,
        )
    swapped = load_task("csv_text", path=str(tmp_path / "t.csv"), classes=["pos", "neg"])
    with pytest.raises(ConfigError, match="names its classes"):
        build_model("transformer", swapped, name_or_path=str(finetuned_folder), finetuned=True)
