"""Bring your own data and model, end to end through the CLI: an image folder with masks, a user
model file with a saved state dict, a text CSV; every bad input exits 2 naming the file or key."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from tests.support.paths import README
from xaiarena.cli import app
from xaiarena.testing import check_explainer

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def image_config(root, masks, model: dict, **extra) -> dict:
    cfg = {
        "name": "byo_images",
        "seed": 0,
        "data": {"name": "image_folder", "root": str(root), "masks_root": str(masks)},
        "model": {"name": "torch_module", **model},
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"n_samples": 6, "batch_size": 4},
        "explainers": ["gradcam", "saliency", "random"],
        "metrics": ["pointing_game", "relevance_mass_accuracy", {"name": "deletion", "steps": 4}],
    }
    cfg.update(extra)
    return cfg


def run_cli(tmp_path, cfg: dict, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])


def test_run_on_user_images_and_a_model_file_with_a_state_dict(
    tmp_path, image_folder_data, user_model
):
    src_root, src_masks = image_folder_data
    root, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(src_root, root)
    shutil.copytree(src_masks, masks)
    model = {
        "factory": user_model["factory"],
        "checkpoint": str(user_model["pt"]),
        "mean": 0.5,
        "std": 0.25,
        "cam_layer": "features.2",
    }
    res = run_cli(tmp_path, image_config(root, masks, model))
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    summary = pd.read_csv(run / "results" / "summary.csv")
    assert set(summary["explainer"]) == {"gradcam", "saliency", "random"}
    assert set(summary["metric"]) >= {"pointing_game", "relevance_mass_accuracy"}
    assert (summary["n"] == 6).all() and summary["mean"].notna().all()
    info = json.loads((run / "run.json").read_text())
    ds = info["datasets"]["image_folder"]
    assert ds["train_history"] == [] and ds["pretrained"]["checkpoint"] == str(user_model["pt"])
    assert ds["num_classes"] == 2 and ds["input_shape"] == [3, 16, 16]
    assert not list((run / "cache" / "models").glob("*/model.pt"))  # never trained, nothing saved

    again = run_cli(tmp_path, image_config(root, masks, model))
    assert again.exit_code == 0, again.output
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert stages["image_folder/explain/gradcam"]["cache_hit"] is True

    # the user edits an image in place: the data fingerprint changes, so nothing stale is reused
    p = root / "test" / "left" / "0.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    edited = run_cli(tmp_path, image_config(root, masks, model))
    assert edited.exit_code == 0, edited.output
    info2 = json.loads((run / "run.json").read_text())
    assert info2["stages"]["image_folder/explain/gradcam"]["cache_hit"] is False
    assert info2["datasets"]["image_folder"]["model_hash"] != ds["model_hash"]


def test_user_images_are_named_by_file(tmp_path, image_folder_data, user_model):
    """run.json's sample_names and the examples' names: the file below the root (the report names
    images by them in per-image tables and figures)."""
    root, masks = image_folder_data
    model = {
        "factory": user_model["factory"],
        "checkpoint": str(user_model["pt"]),
        "mean": 0.5,
        "std": 0.25,
    }
    res = run_cli(
        tmp_path,
        image_config(root, masks, model, explainers=["saliency"], metrics=["pointing_game"]),
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["image_folder"]
    names = info["sample_names"]
    assert len(names) == 6 and all(
        re.fullmatch(r"test/(left|right)/\d+\.png", n) for n in names.values()
    )
    assert len(set(names.values())) == 6
    ex = np.load(tmp_path / "run" / "results" / "examples" / "image_folder.npz")
    assert [names[str(i)] for i in ex["sample_ids"]] == [str(n) for n in ex["sample_names"]]


def test_run_trains_a_user_model_without_checkpoint(tmp_path, image_folder_data, user_model):
    root, masks = image_folder_data
    cfg = image_config(
        root,
        masks,
        {"factory": user_model["factory"], "width": 3, "cam_layer": "features.3"},
        explainers=["gradcam"],
        metrics=["pointing_game"],
    )
    res = run_cli(tmp_path, cfg)
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["image_folder"]
    assert len(info["train_history"]) == 1 and "pretrained" not in info
    ckpts = list((tmp_path / "run" / "cache" / "models").glob("*/model.pt"))
    assert (
        len(ckpts) == 1
        and torch.load(ckpts[0], weights_only=True)["net.features.0.weight"].shape[0] == 3
    )


def test_run_on_a_text_csv(tmp_path):
    rng = np.random.default_rng(0)
    words = ["film", "plot", "the", "a", "scene", "actor", "was", "very"]

    def rows(n):
        out = []
        for i in range(n):
            label = ["negative", "positive"][i % 2]
            cue = "great" if label == "positive" else "awful"
            ws = list(rng.choice(words, 5)) + [cue]
            rng.shuffle(ws)
            out.append({"review": " ".join(ws), "sentiment": label})
        return pd.DataFrame(out)

    rows(40).to_csv(tmp_path / "train.csv", index=False)
    rows(12).to_csv(tmp_path / "test.csv", index=False)
    cfg = {
        "name": "byo_text",
        "seed": 0,
        "data": {
            "name": "csv_text",
            "path": str(tmp_path / "test.csv"),
            "train_path": str(tmp_path / "train.csv"),
            "text_column": "review",
            "label_column": "sentiment",
        },
        "model": {"name": "tiny_bert", "max_length": 16},
        "training": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 0.003},
        "evaluation": {"n_samples": 6, "batch_size": 6},
        "explainers": ["text_saliency", "text_random"],
        "metrics": ["comprehensiveness"],
    }
    res = run_cli(tmp_path, cfg)
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(tmp_path / "run" / "results" / "summary.csv")
    assert (
        set(summary["explainer"]) == {"text_saliency", "text_random"} and (summary["n"] == 6).all()
    )
    examples = json.loads((tmp_path / "run" / "results" / "examples" / "csv_text.json").read_text())
    assert examples["class_names"] == ["negative", "positive"]


class Opaque:
    pass


@pytest.mark.parametrize(
    "case",
    [
        "unreadable",
        "mixed_modes",
        "mask_size",
        "outside_classes",
        "pickled",
        "bad_factory",
        "no_train_split",
        "bad_option",
    ],
)
def test_bad_inputs_exit_2_naming_the_file_or_key(tmp_path, image_folder_data, user_model, case):
    src_root, src_masks = image_folder_data
    root, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(src_root, root)
    shutil.copytree(src_masks, masks)
    model = {
        "factory": user_model["factory"],
        "checkpoint": str(user_model["pt"]),
        "mean": 0,
        "std": 1,
        "cam_layer": "features.2",
    }  # gradcam needs it (else a config-time error before the one tested)
    if case == "unreadable":
        p = root / "test" / "right" / "1.png"
        p.write_bytes(b"\x89PNG broken")
        needles = ["data.root", str(p)]
    elif case == "mixed_modes":
        p = root / "train" / "left" / "2.png"
        Image.open(p).convert("L").save(p)
        needles = ["data.mode", str(p)]
    elif case == "mask_size":
        p = masks / "test" / "left" / "0.png"
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(p)
        needles = ["data.masks_root", str(p), "8x8"]
    elif case == "outside_classes":
        model["checkpoint"] = None
        model["num_classes"] = 1
        needles = ["model:", "labels 1..1 lie outside the model's classes"]
    elif case == "pickled":
        p = tmp_path / "model.pt"
        torch.save({"w": Opaque()}, p)
        model["checkpoint"] = str(p)
        needles = ["model.checkpoint", str(p), "pickled Python objects"]
    elif case == "bad_factory":
        model["factory"] = f"{user_model['file']}:buidl"
        needles = ["model.factory", "did you mean 'build'"]
    elif case == "no_train_split":
        shutil.rmtree(root / "train")
        model = {"factory": user_model["factory"], "cam_layer": "features.2"}
        needles = ["no training samples (no 'train' split)"]
    else:
        model["widht"] = 2
        needles = ["model.widht", "did you mean 'width'"]
    res = run_cli(
        tmp_path, image_config(root, masks, {k: v for k, v in model.items() if v is not None})
    )
    assert res.exit_code == 2, res.output
    assert all(n in res.output for n in needles), res.output
    assert "Traceback" not in res.output


def readme_blocks(lang: str) -> list[str]:
    """The ``lang`` code blocks of the README's "Use it on your model" section."""
    section = README.read_text().split("## Use it on your model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_readme_config_and_plugin_examples_run(
    tmp_path, monkeypatch, make_image_folder, isolated_plugins
):
    python, yamls = readme_blocks("python"), readme_blocks("yaml")
    model_src = next(b for b in python if b.startswith("# mymodel.py"))
    plugin_src = next(b for b in python if b.startswith("# my_plugin.py"))
    cfg = yaml.safe_load(next(b for b in yamls if b.startswith("# my_model.yaml")))
    plugin_keys = yaml.safe_load(next(b for b in yamls if b.startswith("plugins:")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel.py").write_text(model_src)
    (tmp_path / "my_plugin.py").write_text(plugin_src)
    make_image_folder(tmp_path / "my_images", tmp_path / "my_masks")
    shutil.rmtree(
        tmp_path / "my_images" / "train"
    )  # a model with a checkpoint needs no training images
    namespace: dict = {}
    exec(compile(model_src, "mymodel.py", "exec"), namespace)
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), "weights.pt")
    (tmp_path / "my_model.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["run", "my_model.yaml", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(tmp_path / "runs" / "my_model" / "results" / "summary.csv")
    assert set(summary["explainer"]) == set(cfg["explainers"])
    assert {"deletion", "pointing_game", "relevance_mass_accuracy", "sparseness"} <= set(
        summary["metric"]
    )

    (tmp_path / "with_plugin.yaml").write_text(yaml.safe_dump({**cfg, **plugin_keys}))
    res = runner.invoke(app, ["run", "with_plugin.yaml", "--out", "plugin_run", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(tmp_path / "plugin_run" / "results" / "summary.csv")
    assert set(summary["explainer"]) == set(plugin_keys["explainers"]) and "gradient_norm" in set(
        summary["explainer"]
    )
    check_explainer("gradient_norm")  # the README's plugin keeps the contract (xaiarena.testing)
