"""User data: image_folder, hf_image, hf_text, csv_text (loading, options, errors, fingerprints)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xaiarena.data import load_task
from xaiarena.errors import DataError
from xaiarena.registry import DATASETS


def problem(excinfo) -> tuple[str, str]:
    """``(key, message)`` of a DataError ``data.<option>: <message>`` (one line)."""
    text = str(excinfo.value)
    assert "\n" not in text, text
    key, _, msg = text.partition(": ")
    return key, msg


@pytest.fixture()
def folder(tmp_path, image_folder_data):
    """A private copy of the image folder and its masks, for tests that break files."""
    root, masks = image_folder_data
    shutil.copytree(root, tmp_path / "images")
    shutil.copytree(masks, tmp_path / "masks")
    return tmp_path / "images", tmp_path / "masks"


# --------------------------------------------------------------------------- image_folder


def test_image_folder_layout_labels_masks_and_ids(image_folder_data):
    root, masks = image_folder_data
    task = load_task("image_folder", root=str(root), masks_root=str(masks))
    assert task.class_names == ["left", "right"] and task.modality == "image"
    assert tuple(task.train.images.shape) == (12, 3, 16, 16) and tuple(task.test.images.shape) == (
        8,
        3,
        16,
        16,
    )
    assert task.test.labels.tolist() == [0] * 4 + [1] * 4
    assert task.test.ids.tolist() == list(range(8)) and task.train.masks is None
    assert task.meta["file_names"][:2] == ["test/left/0.png", "test/left/1.png"]
    # the mask is the bright square: every masked pixel is bright, in the image's own half
    bright = task.test.images.float().mean(1) > 200
    assert task.test.masks.shape == (8, 16, 16) and torch.equal(task.test.masks, bright)
    cols = task.test.masks.any(1).float().argmax(1)
    assert (cols[:4] < 8).all() and (cols[4:] >= 8).all()


def test_image_folder_classes_option_sets_the_label_order(image_folder_data):
    root, _ = image_folder_data
    task = load_task("image_folder", root=str(root), classes=["right", "left", "other"])
    assert task.class_names == ["right", "left", "other"]
    assert task.test.labels.tolist() == [1] * 4 + [0] * 4


def test_image_folder_resize_crop_and_seeded_subsets(image_folder_data):
    root, masks = image_folder_data
    task = load_task("image_folder", root=str(root), masks_root=str(masks), resize=8, crop=[6, 4])
    assert tuple(task.test.images.shape[1:]) == (3, 6, 4) and tuple(task.test.masks.shape[1:]) == (
        6,
        4,
    )
    a = load_task("image_folder", root=str(root), n_test=3, seed=1)
    b = load_task("image_folder", root=str(root), n_test=3, n_train=2, seed=1)
    again = load_task("image_folder", root=str(root), n_test=3, seed=1)
    assert len(a.test) == 3 and len(b.train) == 2
    assert a.test.ids.tolist() == again.test.ids.tolist()  # seeded
    assert a.test.ids.tolist() == b.test.ids.tolist()  # n_train does not change the test draw
    full = load_task("image_folder", root=str(root))
    assert torch.equal(a.test.images, full.test.images[a.test.ids])


def test_image_folder_without_train_split_has_an_empty_train(folder):
    root, _ = folder
    shutil.rmtree(root / "train")
    task = load_task("image_folder", root=str(root))
    assert len(task.train) == 0 and tuple(task.train.images.shape[1:]) == (3, 16, 16)
    assert "no 'train' split" in task.meta["no_train_split"]


def test_image_folder_grey_images_stay_grey_and_mode_converts(folder):
    root, _ = folder
    for p in root.rglob("*.png"):
        Image.open(p).convert("L").save(p)
    assert load_task("image_folder", root=str(root)).test.images.shape[1] == 1
    assert load_task("image_folder", root=str(root), mode="RGB").test.images.shape[1] == 3


@pytest.mark.parametrize(
    "case",
    [
        "missing_root",
        "empty_class",
        "no_class_folders",
        "unreadable",
        "mixed_modes",
        "sizes",
        "sixteen_bit",
        "mask_size",
        "missing_mask",
        "outside_classes",
        "missing_test",
    ],
)
def test_image_folder_errors_name_the_key_and_file(folder, case):
    root, masks = folder
    opts = {"root": str(root), "masks_root": str(masks)}
    if case == "missing_root":
        opts["root"], key, needle = str(root / "nope"), "data.root", str(root / "nope")
    elif case == "empty_class":
        for p in (root / "test" / "left").iterdir():
            p.unlink()
        (root / "test" / "left" / "notes.txt").write_text("x")
        key, needle = "data.root", str(root / "test" / "left")
    elif case == "no_class_folders":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        key, needle = "data.root", str(root / "train")
    elif case == "unreadable":
        (root / "test" / "right" / "2.png").write_bytes(b"not a png")
        key, needle = "data.root", str(root / "test" / "right" / "2.png")
    elif case == "mixed_modes":
        p = root / "train" / "left" / "3.png"
        Image.open(p).convert("L").save(p)
        key, needle = "data.mode", str(p)
    elif case == "sizes":
        p = root / "train" / "right" / "1.png"
        Image.open(p).resize((20, 16)).save(p)
        key, needle = "data.resize", str(p)
    elif case == "sixteen_bit":
        p = root / "test" / "left" / "0.png"
        Image.fromarray(np.full((16, 16), 1000, dtype=np.uint16)).save(p)
        key, needle = "data.root", str(p)
    elif case == "mask_size":
        p = masks / "test" / "right" / "3.png"
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(p)
        key, needle = "data.masks_root", str(p)
    elif case == "missing_mask":
        (masks / "test" / "left" / "1.png").unlink()
        key, needle = "data.masks_root", str(masks / "test" / "left" / "1.png")
    elif case == "outside_classes":
        opts["classes"], key, needle = ["left"], "data.classes", str(root / "train" / "right")
    else:
        shutil.rmtree(root / "test")
        key, needle = "data.root", str(root / "test")
    with pytest.raises(DataError) as exc:
        load_task("image_folder", **opts)
    got_key, msg = problem(exc)
    assert got_key == key and needle in msg, msg


def test_image_folder_mixed_modes_message_states_the_rule(folder):
    root, _ = folder
    p = root / "test" / "left" / "0.png"
    Image.open(p).convert("L").save(p)
    with pytest.raises(DataError, match="mode: RGB"):
        load_task("image_folder", root=str(root))
    assert load_task("image_folder", root=str(root), mode="RGB").test.images.shape[1] == 3


def test_image_folder_fingerprint_follows_the_files(folder):
    root, masks = folder
    entry = DATASETS.entry("image_folder")
    params = {"root": str(root), "masks_root": str(masks)}
    first = entry.fingerprint_of(params)
    assert first == entry.fingerprint_of(params) and set(first) == {"files"}
    p = root / "test" / "left" / "0.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = entry.fingerprint_of(params)
    assert second != first
    (masks / "test" / "left" / "0.png").unlink()
    assert entry.fingerprint_of(params) != second
    assert DATASETS.entry("hard_mnist").fingerprint_of({}) == {}  # built-ins keep their cache keys


# --------------------------------------------------------------------------- csv_text


def test_csv_text_string_labels_sorted_and_train_file(tmp_path):
    pd.DataFrame(
        {
            "text": ["good film", "bad film", "fine", "awful plot"],
            "label": ["pos", "neg", "pos", "neg"],
        }
    ).to_csv(tmp_path / "test.csv", index=False)
    pd.DataFrame({"review": ["nice", "dull"], "label": ["pos", "neg"]}).to_parquet(
        tmp_path / "train.parquet"
    )
    pd.DataFrame({"text": ["nice", "dull"], "label": ["pos", "neg"]}).to_parquet(
        tmp_path / "train2.parquet"
    )
    task = load_task(
        "csv_text", path=str(tmp_path / "test.csv"), train_path=str(tmp_path / "train2.parquet")
    )
    assert task.modality == "text" and task.class_names == ["neg", "pos"]
    assert task.test.texts == ["good film", "bad film", "fine", "awful plot"]
    assert task.test.labels.tolist() == [1, 0, 1, 0] and task.train.labels.tolist() == [1, 0]
    with pytest.raises(DataError) as exc:  # the training file lacks the text column
        load_task(
            "csv_text", path=str(tmp_path / "test.csv"), train_path=str(tmp_path / "train.parquet")
        )
    key, msg = problem(exc)
    assert key == "data.text_column" and "train.parquet" in msg and "review" in msg


def test_csv_text_split_column_label_names_and_classes(tmp_path):
    df = pd.DataFrame(
        {
            "text": [f"text {i}" for i in range(6)],
            "y": [0, 1, 2, 0, 1, 2],
            "y_name": ["a", "b", "c", "a", "b", "c"],
            "part": ["train"] * 3 + ["test"] * 3,
        }
    )
    df.to_csv(tmp_path / "all.tsv", sep="\t", index=False)
    task = load_task(
        "csv_text",
        path=str(tmp_path / "all.tsv"),
        split_column="part",
        label_column="y",
        label_name_column="y_name",
    )
    assert (
        task.class_names == ["a", "b", "c"]
        and len(task.train) == 3
        and task.test.texts[0] == "text 3"
    )
    with pytest.raises(DataError) as exc:  # labels outside the given classes
        load_task(
            "csv_text",
            path=str(tmp_path / "all.tsv"),
            split_column="part",
            label_column="y",
            classes=["a", "b"],
        )
    key, msg = problem(exc)
    assert key == "data.label_column" and "all.tsv" in msg and "labels 2 outside 0..1" in msg


@pytest.mark.parametrize(
    "case", ["missing_file", "empty", "missing_label", "no_column", "bad_suffix"]
)
def test_csv_text_errors_name_the_file(tmp_path, case):
    path = tmp_path / "data.csv"
    key = "data.path"
    if case == "missing_file":
        path = tmp_path / "nope.csv"
    elif case == "empty":
        path.write_text("text,label\n")
    elif case == "missing_label":
        path.write_text("text,label\nhello,1\nworld,\n")
        key = "data.label_column"
    elif case == "no_column":
        path.write_text("sentence,label\nhello,1\n")
        key = "data.text_column"
    else:
        path = tmp_path / "data.xlsx"
        path.write_text("x")
    with pytest.raises(DataError) as exc:
        load_task("csv_text", path=str(path))
    got, msg = problem(exc)
    assert got == key and path.name in msg, msg


# --------------------------------------------------------------------------- hf_image / hf_text


@pytest.fixture()
def hf_folder(tmp_path):
    """A local HF dataset folder (``train.parquet``/``test.parquet`` written by ``datasets``) with
    an image, a mask, a ClassLabel and a text column."""
    import datasets

    rng = np.random.default_rng(0)

    def split(n):
        imgs, masks, labels, texts = [], [], [], []
        for i in range(n):
            a = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
            m = np.zeros((8, 10), np.uint8)
            m[2:4, 3:6] = 255
            imgs.append(Image.fromarray(a))
            masks.append(Image.fromarray(m))
            labels.append(i % 3)
            texts.append(f"sample number {i}")
        return {"img": imgs, "seg": masks, "label": labels, "sentence": texts}

    features = datasets.Features(
        {
            "img": datasets.Image(),
            "seg": datasets.Image(),
            "label": datasets.ClassLabel(names=["x", "y", "z"]),
            "sentence": datasets.Value("string"),
        }
    )
    folder = tmp_path / "hf"
    folder.mkdir()
    for name, n in (("train", 9), ("test", 6)):
        datasets.Dataset.from_dict(split(n), features=features).to_parquet(
            str(folder / f"{name}.parquet")
        )
    return folder


def test_hf_image_local_folder_with_masks_and_class_names(hf_folder):
    task = load_task(
        "hf_image", path=str(hf_folder), image_column="img", mask_column="seg", n_test=4
    )
    assert task.class_names == ["x", "y", "z"] and len(task.train) == 9 and len(task.test) == 4
    assert tuple(task.test.images.shape[1:]) == (3, 8, 10)
    assert int(task.test.masks[0].sum()) == 6 and bool(task.test.masks[0, 2, 3])
    assert task.test.labels.tolist() == [i % 3 for i in task.test.ids.tolist()]


def test_hf_text_local_folder_and_save_to_disk(hf_folder, tmp_path):
    import datasets

    task = load_task("hf_text", path=str(hf_folder), text_column="sentence")
    assert (
        task.modality == "text"
        and task.test.texts[0] == "sample number 0"
        and task.class_names == ["x", "y", "z"]
    )
    dd = datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"t": ["a b", "c d"], "lab": ["no", "yes"]})}
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    task = load_task(
        "hf_text",
        path=str(tmp_path / "saved"),
        text_column="t",
        label_column="lab",
        test_split="validation",
    )
    assert (
        task.class_names == ["no", "yes"]
        and len(task.train) == 0
        and task.test.labels.tolist() == [0, 1]
    )


@pytest.mark.parametrize("case", ["column", "split", "classes", "unreadable", "missing"])
def test_hf_errors_name_the_key_and_what_exists(hf_folder, tmp_path, case):
    import datasets

    opts = {"path": str(hf_folder), "image_column": "img"}
    if case == "column":
        opts["label_column"], key, needles = (
            "fine_label",
            "data.label_column",
            ["fine_label", "img, seg, label"],
        )
    elif case == "split":
        opts["test_split"], key, needles = (
            "validation",
            "data.test_split",
            ["validation", "train, test"],
        )
    elif case == "classes":
        opts["classes"], key, needles = (
            ["x", "y"],
            "data.label_column",
            ["labels 2 outside 0..1", "split 'train'"],
        )
    elif case == "unreadable":
        d = datasets.Dataset.from_dict(
            {"img": [{"bytes": b"junk", "path": "bad.png"}], "label": [0]},
            features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
        )
        folder = tmp_path / "bad"
        folder.mkdir()
        d.to_parquet(str(folder / "test.parquet"))
        opts["path"], key, needles = str(folder), "data.image_column", ["row 0", "bad.png"]
    else:
        opts["path"], key, needles = (
            str(tmp_path / "nothing_here" / "x"),
            "data.path",
            ["nothing_here"],
        )
    with pytest.raises(DataError) as exc:
        load_task("hf_image", **opts)
    got, msg = problem(exc)
    assert got == key and all(n in msg for n in needles), msg


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("image_folder", "data.root"),
        ("hf_image", "data.path"),
        ("hf_text", "data.path"),
        ("csv_text", "data.path"),
    ],
)
def test_the_required_option_is_named(name, key):
    with pytest.raises(DataError) as exc:
        load_task(name)
    got, msg = problem(exc)
    assert got == key and msg.startswith("required")
