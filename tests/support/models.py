"""Small seeded image models built the same way everywhere in the tests."""

from __future__ import annotations

import torch
from torch import nn

from xaiarena.models.vision import ImageClassifier, LeNet


def tiny_lenet(size: int = 32, seed: int = 0, channels: int = 3) -> nn.Module:
    """A seeded LeNet (4/8 channels, 3x3 kernels) on ``channels`` x ``size`` x ``size``
    pixel-space inputs, 10 classes, in eval mode; with the defaults it is the conformance kit's
    :func:`xaiarena.testing.fixtures.tiny_image_model`."""
    torch.manual_seed(seed)
    net = LeNet(channels, 10, (size, size), channels=(4, 8), hidden=(16,), kernel_size=3)
    return ImageClassifier(net, (0.3,) * channels, (0.25,) * channels).eval()
