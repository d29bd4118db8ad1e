"""Fixtures of the explainer tests: the kit's tiny LeNet and blocky images."""

from __future__ import annotations

import pytest

from tests.support.models import tiny_lenet
from xaiarena.testing.fixtures import tiny_images


@pytest.fixture(scope="module")
def model():
    """A seeded LeNet on 3 x 32 x 32 images (the conformance kit's tiny image model)."""
    return tiny_lenet()


@pytest.fixture(scope="module")
def data():
    """Four blocky images and their targets (SLIC finds several superpixels)."""
    return tiny_images(4)
