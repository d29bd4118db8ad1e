"""Data problems are DataErrors naming the file, row, column or key (issue 17.7, data parts): the
CLI prints them on one line and exits 2, never a traceback. Dataset option values are declared
in the loaders' signatures and fail at config time."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from tests.support.paths import SHARED
from xaiarena.cli import app
from xaiarena.config import load_config
from xaiarena.data import load_task
from xaiarena.environment import resolve_device
from xaiarena.errors import ConfigError, DataError, RunError
from xaiarena.registry import DATASETS

N_ROWS = 20


@pytest.fixture()
def root(tmp_path) -> Path:
    """A data folder with 20-row copies of the shared mnist files."""
    if not (SHARED / "mnist" / "train.parquet").exists():
        pytest.skip("shared mnist Parquet files not found")
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for split in ("train", "test"):
        table = pq.read_table(SHARED / "mnist" / f"{split}.parquet").slice(0, N_ROWS)
        pq.write_table(table, tmp_path / "data" / "mnist" / f"{split}.parquet")
    return tmp_path / "data"


def _edit(path: Path, column: str, edit) -> None:
    """Rewrite ``column`` of a Parquet file through ``edit(list) -> list`` (same type and
    metadata)."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    values = edit(table.column(column).to_pylist())
    table = table.set_column(
        i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type)
    )
    pq.write_table(table, path)


def _raises(match: str, **kwargs):
    with pytest.raises(DataError) as err:
        load_task("mnist", **kwargs)
    msg = str(err.value)
    assert match in msg, msg
    return msg


def test_the_fixture_loads(root):
    task = load_task("mnist", data_dir=str(root))
    assert len(task.train) == N_ROWS and task.num_classes == 10


def test_data_dir_that_does_not_exist(tmp_path):
    msg = _raises("does not exist", data_dir=str(tmp_path / "nowhere"))
    assert f"data_dir '{tmp_path / 'nowhere'}'" in msg and "mnist/<split>.parquet" in msg


def test_env_data_dir_without_the_dataset_lists_what_is_there(root, monkeypatch):
    (root / "cifar10").mkdir()
    shutil.rmtree(root / "mnist")
    monkeypatch.setenv("XAIARENA_DATA_DIR", str(root))
    msg = _raises("has no folder 'mnist'")
    assert "$XAIARENA_DATA_DIR" in msg and "its dataset folders: cifar10" in msg


def test_missing_split_file_lists_the_folder(root):
    (root / "mnist" / "test.parquet").unlink()
    (root / "mnist" / "tst.parquet").write_bytes(b"")
    msg = _raises("has no test.parquet", data_dir=str(root))
    assert "it holds: train.parquet, tst.parquet" in msg


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_unreadable_parquet_names_the_file(root, damage):
    path = root / "mnist" / "train.parquet"
    data = path.read_bytes()
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not parquet" * 50}[damage]
    )
    msg = _raises("is not a readable Parquet file", data_dir=str(root))
    assert str(path) in msg and "truncated or corrupt" in msg


def test_zero_row_parquet(root):
    path = root / "mnist" / "test.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    _raises(f"{path} has no rows", data_dir=str(root))


def test_wrong_column_says_expected_and_found(root):
    path = root / "mnist" / "test.parquet"
    pq.write_table(pq.read_table(path).rename_columns(["image", "digit"]), path)
    msg = _raises("lacks column(s) 'label'", data_dir=str(root))
    assert str(path) in msg and "found ['image', 'digit']" in msg


@pytest.mark.parametrize("bad", [b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"hello"])
def test_undecodable_image_names_file_and_row(root, bad):
    path = root / "mnist" / "train.parquet"
    _edit(
        path,
        "image",
        lambda rows: [dict(r, bytes=bad) if i == 7 else r for i, r in enumerate(rows)],
    )
    msg = _raises("row 7, column 'image'", data_dir=str(root))
    assert str(path) in msg and "not a decodable image" in msg


def test_undecodable_image_row_is_the_file_row_after_subsampling(root):
    kept = load_task(
        "mnist", data_dir=str(root), n_train=5
    ).train.ids  # the seeded subsample's file rows
    assert int(kept[0]) != 0
    path = root / "mnist" / "train.parquet"
    _edit(path, "image", lambda rows: [dict(r, bytes=b"x") for r in rows])  # every row bad
    msg = _raises("column 'image'", data_dir=str(root), n_train=5)
    assert f"row {int(kept[0])}," in msg


@pytest.mark.parametrize("label", [12, -1])
def test_labels_outside_the_class_range(root, label):
    path = root / "mnist" / "train.parquet"
    _edit(path, "label", lambda rows: [label if i == 5 else r for i, r in enumerate(rows)])
    msg = _raises("label(s) outside 0..9", data_dir=str(root))
    assert str(path) in msg and f"({label}; first at row 5)" in msg


def test_labels_of_text_datasets_are_checked_too(tmp_path):
    if not (SHARED / "sst2" / "train.parquet").exists():
        pytest.skip("shared sst2 Parquet files not found")
    (tmp_path / "sst2").mkdir()
    for split in ("train", "validation"):
        pq.write_table(
            pq.read_table(SHARED / "sst2" / f"{split}.parquet").slice(0, 10),
            tmp_path / "sst2" / f"{split}.parquet",
        )
    _edit(tmp_path / "sst2" / "validation.parquet", "label", lambda rows: [2] + rows[1:])
    with pytest.raises(
        DataError,
        match=r"validation.parquet column 'label' has 1 label\(s\) outside 0..1 \(2; "
        r"first at row 0\)",
    ):
        load_task("sst2", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- option values

#: (dataset, option, bad value): every numeric option of every registered dataset
BAD_OPTIONS = [
    *[
        (d, opt, v)
        for d in (
            "mnist",
            "cifar10",
            "cifar100",
            "svhn",
            "fashion_mnist",
            "colorized_mnist",
            "sst2",
            "imdb",
            "ag_news",
        )
        for opt in ("n_train", "n_test")
        for v in (0, -3)
    ],
    ("hard_mnist", "n_train", 0),
    ("hard_mnist", "n_test", -1),
    ("hard_mnist", "canvas", 0),
    ("hard_mnist", "test_fraction", 1.0),
    ("hard_mnist", "test_fraction", 0),
    ("hard_mnist", "distractor_size", 0),
    ("hard_mnist", "noise_bands", -1),
    ("hard_mnist", "noise_level", 1.5),
    ("hard_mnist_colorized", "n_train", 0),
    ("hard_mnist_colorized", "n_test", -2),
    ("hard_mnist_colorized", "canvas", -4),
    ("hard_mnist_colorized", "noise_bands", -1),
    ("hard_mnist_colorized", "noise_level", -0.1),
    ("hard_mnist_colorized", "band_width", 1.0),
    ("voc2012_seg", "n_test", 0),
    ("voc2012_seg", "size", 8),
    ("voc2012_seg", "min_object_fraction", 1.5),
    ("voc2012_seg", "min_object_fraction", -0.1),
    *[
        (d, opt, 0)
        for d in ("image_folder", "hf_image", "hf_text", "csv_text")
        for opt in ("n_train", "n_test")
    ],
    *[
        ("planted_sentiment", opt, 0)
        for opt in ("n_train", "n_test", "min_words", "max_words", "min_cues", "max_cues")
    ],
]


def test_every_numeric_dataset_option_has_a_declared_constraint():
    """Each int/float option of each dataset carries a pydantic constraint in its signature."""
    declared = {(d, o) for d, o, _ in BAD_OPTIONS}
    for entry in DATASETS:
        hints = typing.get_type_hints(entry.factory, include_extras=True)
        for name in entry.parameters():
            plain = typing.get_type_hints(entry.factory).get(name)
            if plain in (int, float, int | None, float | None):
                assert (entry.name, name) in declared, f"{entry.name}.{name} has no bad-value case"
                assert "Annotated" in str(hints[name]), f"{entry.name}.{name}: declare its range"


@pytest.mark.parametrize(
    "dataset, option, value", BAD_OPTIONS, ids=[f"{d}-{o}-{v}" for d, o, v in BAD_OPTIONS]
)
def test_bad_dataset_option_values_are_rejected_by_the_declared_types(dataset, option, value):
    hint = typing.get_type_hints(DATASETS.get(dataset), include_extras=True)[option]
    with pytest.raises(ValidationError):
        TypeAdapter(hint).validate_python(value, strict=False)
    default = DATASETS.entry(dataset).parameters()[option].default
    TypeAdapter(hint).validate_python(default, strict=False)


@pytest.mark.parametrize(
    "dataset, option, value",
    [("mnist", "n_train", 0), ("hard_mnist", "n_test", -1), ("planted_sentiment", "max_cues", 0)],
)
def test_bad_dataset_option_values_fail_at_config_time(dataset, option, value):
    with pytest.raises(ConfigError) as err:
        load_config({"data": {"name": dataset, option: value}, "model": "lenet"})
    assert f"data.{option}" in str(err.value)


def test_bad_count_from_the_python_api_is_a_data_error(root):
    with pytest.raises(
        DataError, match=r"dataset 'mnist': n_train=0 is not valid; it must be an integer >= 1"
    ):
        load_task("mnist", data_dir=str(root), n_train=0)
    with pytest.raises(DataError, match="dataset 'hard_mnist': n_test=0"):
        load_task("hard_mnist", n_train=10, n_test=0)


# ----------------------------------------------------------------------------- CLI and environment


def test_cli_data_error_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{name: mnist, data_dir: {tmp_path / 'nowhere'}}}\n"
        "model: lenet\nexplainers: [random]\n"
    )
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: dataset 'mnist': data_dir") and "does not exist" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_run_error(device):
    with pytest.raises(
        RunError, match=rf"device: '{device}' was asked for, but .*use device: auto"
    ):
        resolve_device(device)
    assert resolve_device("auto").type == "cpu"


# ---------------------------------------------------------------------------- ground-truth metadata


def test_every_dataset_declares_its_ground_truth():
    expected = {
        "hard_mnist": ("masks",),
        "hard_mnist_colorized": ("masks",),
        "voc2012_seg": ("masks",),
        "planted_sentiment": ("rationales",),
    }
    # the user's data: masks depend on its options (masks_root / mask_column), checked at load
    optional = {"image_folder", "hf_image"}
    for entry in DATASETS:
        gt = entry.meta["ground_truth"]
        if entry.name in optional:
            assert gt is None, entry.name
            continue
        assert isinstance(gt, tuple) and set(gt) <= {"masks", "rationales"}, entry.name
        assert gt == expected.get(entry.name, ()), entry.name
        assert bool(gt) == entry.meta["has_masks"], entry.name  # the older key agrees


def test_list_json_carries_ground_truth():
    import json

    res = CliRunner().invoke(app, ["list", "--json"])
    assert res.exit_code == 0
    rows = {d["name"]: d for d in json.loads(res.output)["datasets"]}
    assert rows["hard_mnist"]["ground_truth"] == ["masks"] and rows["mnist"]["ground_truth"] == []
    assert rows["planted_sentiment"]["ground_truth"] == ["rationales"]
    assert {"name", "description", "modality", "num_classes", "has_masks"} <= set(rows["mnist"])
