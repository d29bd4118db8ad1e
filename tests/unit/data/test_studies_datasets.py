"""Datasets added for the studies: colorized MNIST and Hard MNIST built from it (DiET paper's
construction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.paths import SHARED
from xaiarena.data import load_task
from xaiarena.data.synthetic import colorized_digit_masks
from xaiarena.errors import DataError

needs_colorized = pytest.mark.skipif(
    not (SHARED / "colorized_mnist").exists(), reason="shared colorized_mnist not found"
)


@pytest.fixture(scope="module")
def hmc():
    if not (SHARED / "colorized_mnist").exists():
        pytest.skip("shared colorized_mnist not found")
    return load_task("hard_mnist_colorized", data_dir=str(SHARED), n_train=300, n_test=100, seed=0)


@needs_colorized
def test_colorized_mnist_loads_its_own_data():
    t = load_task("colorized_mnist", data_dir=str(SHARED), n_train=32, n_test=16)
    assert t.input_shape == (3, 28, 28) and t.num_classes == 10 and t.class_names[3] == "3"
    assert t.train.images.dtype == torch.uint8 and len(t.mean) == 3


def test_digit_masks_are_robust_to_any_background_colour():
    """White strokes on an arbitrary (not only pure red/green/blue) background, with JPEG-like
    noise."""
    g = torch.Generator().manual_seed(0)
    strokes = torch.zeros(3, 28, 28, dtype=torch.bool)
    strokes[0, 5:20, 12:15] = True
    strokes[1, 8:11, 4:24] = True
    strokes[2, 10:18, 10:18] = True
    backgrounds = torch.tensor([[30, 200, 90], [255, 0, 0], [120, 120, 140]], dtype=torch.int16)
    imgs = backgrounds[:, :, None, None].expand(3, 3, 28, 28).clone()
    imgs = torch.where(strokes[:, None], torch.full_like(imgs, 250), imgs)
    imgs = (
        (imgs + torch.randint(-20, 21, imgs.shape, generator=g, dtype=torch.int16))
        .clamp(0, 255)
        .to(torch.uint8)
    )
    alpha, ink, paper = colorized_digit_masks(imgs)
    assert np.array_equal(alpha.astype(bool), strokes.numpy())
    assert np.allclose(paper * 255, backgrounds.numpy(), atol=21)
    assert (ink > 0.85).all()


@needs_colorized
def test_shared_colorized_images_give_plausible_masks():
    t = load_task("colorized_mnist", data_dir=str(SHARED), n_train=16, n_test=200)
    alpha, ink, paper = colorized_digit_masks(t.test.images)
    share = alpha.mean(axis=(1, 2))
    assert ((share > 0.03) & (share < 0.45)).all()
    assert set(map(tuple, np.round(paper).astype(int))) <= {(1, 0, 0), (0, 1, 0), (0, 0, 1)}
    assert np.allclose(ink, 1.0)  # white strokes


@needs_colorized
def test_hard_mnist_colorized_composition(hmc):
    assert hmc.input_shape == (3, 64, 64) and hmc.num_classes == 10
    assert len(hmc.train) == 300 and len(hmc.test) == 100
    imgs, masks = hmc.test.images, hmc.test.masks
    assert masks.dtype == torch.bool and masks.any(dim=(1, 2)).all()
    # mask pixels are the main digit's white strokes; the mask fits in a 32x32 (canvas/2) square
    on = imgs.permute(0, 2, 3, 1)[masks]
    assert (on.min(dim=1).values > 100).float().mean() > 0.95
    for m in masks[:20]:
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert int(ys.max() - ys.min()) < 32 and int(xs.max() - xs.min()) < 32
    # white pixels outside the mask exist (the distractor, or bright noise): the mask is not
    # simply "white pixels" as in the paper's script
    white = imgs.min(dim=1).values > 200
    assert (white & ~masks).any()
    assert set(hmc.meta) >= {"train_sources", "test_sources", "canvas"}


@needs_colorized
def test_hard_mnist_colorized_is_seeded_and_sized():
    a = load_task(
        "hard_mnist_colorized", data_dir=str(SHARED), n_train=20, n_test=10, seed=3, canvas=96
    )
    b = load_task(
        "hard_mnist_colorized", data_dir=str(SHARED), n_train=20, n_test=10, seed=3, canvas=96
    )
    assert a.input_shape == (3, 96, 96)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.masks, b.test.masks)


def test_hard_mnist_colorized_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="canvas=30"):
        load_task("hard_mnist_colorized", data_dir=str(tmp_path), canvas=30)
    with pytest.raises(ValueError, match="noise_level"):
        load_task("hard_mnist_colorized", data_dir=str(tmp_path), noise_level=2.0)
    with pytest.raises(DataError, match=r"has no folder 'colorized_mnist'"):
        load_task("hard_mnist_colorized", data_dir=str(tmp_path))


def test_hard_mnist_canvas_check_leaves_room_for_the_distractor():
    with pytest.raises(ValueError, match="28 \\+ 2 \\* distractor_size"):
        load_task("hard_mnist", canvas=48, n_train=10, n_test=10)
