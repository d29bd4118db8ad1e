from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiarena.data import load_task
from xaiarena.data.synthetic import _mnist_source

SMALL = dict(n_train=300, n_test=100)


def test_shapes_dtypes_and_class_balance(small_task):
    t = small_task
    assert t.train.images.dtype == torch.uint8 and t.train.images.shape[1:] == (3, 64, 64)
    assert t.test.masks.dtype == torch.bool and t.test.masks.shape == (200, 64, 64)
    assert t.num_classes == 10 and t.modality == "image"
    assert set(t.train.labels.tolist()) == set(range(10))
    assert len(t.mean) == 3 and all(s > 0 for s in t.std)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b = load_task("hard_mnist", seed=3, **SMALL), load_task("hard_mnist", seed=3, **SMALL)
    c = load_task("hard_mnist", seed=4, **SMALL)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.masks, b.test.masks)
    assert not torch.equal(a.train.images, c.train.images)


def test_mask_is_exactly_the_main_digit_pixels():
    task = load_task("hard_mnist", seed=1, **SMALL)
    digits, labels = _mnist_source()
    for split, sources in (
        (task.train, task.meta["train_sources"]),
        (task.test, task.meta["test_sources"]),
    ):
        for i in range(len(split)):
            mask = split.masks[i].numpy()
            digit = digits[sources[i]]
            ys, xs = np.nonzero(mask)
            y0, x0 = ys.min() - np.nonzero(digit)[0].min(), xs.min() - np.nonzero(digit)[1].min()
            window = np.zeros_like(mask)
            window[y0 : y0 + 28, x0 : x0 + 28] = digit > 0
            assert np.array_equal(mask, window)
            assert mask.sum() == (digit > 0).sum()
            assert split.labels[i] == labels[sources[i]]


def test_masked_pixels_carry_the_digit_and_distractor_is_outside_the_mask():
    task = load_task("hard_mnist", seed=2, **SMALL)
    x = task.test.images.float()
    m = task.test.masks
    inside = x.amax(1)[m].mean()
    outside = x.amax(1)[~m].mean()
    assert inside > 2 * outside  # digits are bright, background is dark noise


def test_no_source_digit_shared_between_train_and_test():
    task = load_task("hard_mnist", seed=0, **SMALL)
    assert not set(task.meta["train_sources"]) & set(task.meta["test_sources"])


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="canvas=32"):
        load_task("hard_mnist", canvas=32)
    with pytest.raises(ValueError, match="test_fraction"):
        load_task("hard_mnist", test_fraction=1.5)


def test_task_description_rebuilds_the_task_without_its_samples():
    """What a worker rebuilds a model from (issue 26): classes, normalisation, shape and the plain
    entries of meta; a map with integer keys or an array is left out, and with whole_meta (a user
    model, which may read any of meta) the description is refused instead."""
    import numpy as np

    from xaiarena.data import Task

    task = load_task("hard_mnist", n_train=64, n_test=16, seed=0)
    task.meta.update(plain={"a": [1, 2]}, by_label={0: [3]}, array=np.zeros(3))
    again = Task.without_samples(task.description())
    assert (again.name, again.class_names, again.mean, again.std, again.input_shape) == (
        task.name,
        task.class_names,
        task.mean,
        task.std,
        task.input_shape,
    )
    assert len(again.train) == len(again.test) == 0
    assert again.meta["plain"] == {"a": [1, 2]}
    assert "by_label" not in again.meta and "array" not in again.meta
    assert task.description(whole_meta=True) is None
    task.meta = {"plain": {"a": [1, 2]}}
    assert task.description(whole_meta=True) is not None
