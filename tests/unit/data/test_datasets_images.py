"""Loaders of real image datasets on the shared local Parquet files (never the network)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.support.paths import SHARED
from xaiarena.data import load_task
from xaiarena.data.images import SPECS
from xaiarena.errors import DataError

pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="shared datasets folder not found")

# (name, classes, channels, size) for every dataset the shared folder has
AVAILABLE = [
    (n, s.num_classes, s.channels, s.size) for n, s in SPECS.items() if (SHARED / n).exists()
]


@pytest.mark.parametrize("name,classes,channels,size", AVAILABLE)
def test_each_dataset_loads_its_own_data(name, classes, channels, size):
    task = load_task(name, seed=0, data_dir=str(SHARED), n_train=64, n_test=32)
    assert task.num_classes == classes
    assert task.train.images.dtype == torch.uint8
    assert tuple(task.train.images.shape[1:]) == (channels, size, size)
    assert len(task.train) == 64 and len(task.test) == 32
    assert int(task.train.labels.max()) < classes
    assert len(task.mean) == channels


def test_cifar10_and_mnist_differ():
    names = {n for n, *_ in AVAILABLE}
    if not {"cifar10", "mnist"} <= names:
        pytest.skip("needs cifar10 and mnist")
    a = load_task("cifar10", data_dir=str(SHARED), n_train=8, n_test=8)
    b = load_task("mnist", data_dir=str(SHARED), n_train=8, n_test=8)
    assert a.class_names[0] == "airplane" and b.class_names[0] == "0"
    assert a.input_shape != b.input_shape


def test_subsampling_is_seeded():
    name = AVAILABLE[0][0]
    a = load_task(name, seed=1, data_dir=str(SHARED), n_train=16, n_test=8)
    b = load_task(name, seed=1, data_dir=str(SHARED), n_train=16, n_test=8)
    c = load_task(name, seed=2, data_dir=str(SHARED), n_train=16, n_test=8)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.ids, c.train.ids)


def test_missing_local_file_names_the_expected_path(tmp_path):
    with pytest.raises(
        DataError, match=r"has no folder 'fashion_mnist'.*fashion_mnist/<split>\.parquet"
    ):
        load_task("fashion_mnist", data_dir=str(tmp_path))


def test_env_variable_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIARENA_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"\$XAIARENA_DATA_DIR '" + re.escape(str(tmp_path))):
        load_task("cifar100")
