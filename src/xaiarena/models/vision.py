"""Plain-torch image classifiers (no torchvision).

Every image model takes pixel-space inputs in [0, 1] and normalises them
itself (:class:`ImageClassifier` holds mean/std as buffers), so explainers,
metrics and DiET all perturb and attribute in pixel space.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..registry import MODELS


@runtime_checkable
class DeclaresCAMLayer(Protocol):
    """A model (or network) that declares the layer CAMs explain by default.

    ``cam_layer()`` returns the layer's dotted module name relative to the object it is
    called on (``model.get_submodule(model.cam_layer())``); the layer's *output* is used and
    must be ``(N, K, h, w)``, produced once per forward pass. It raises :class:`LookupError`,
    with the reason, when the model has no conventional CAM layer (a vision transformer), or
    returns None when none was configured: the CAM explainers then ask for their ``layer``
    option. See docs/explainers.md.
    """

    def cam_layer(self) -> str | None: ...


class ImageClassifier(nn.Module):
    """``net(normalise(x))`` for pixel-space ``x`` of shape (N, C, H, W) in [0, 1].

    ``cam_layer`` names the network's CAM layer relative to ``net``; by default the
    network's own :meth:`cam_layer` (LeNet, ResNet) is used. :meth:`cam_layer` returns
    it relative to this model (``net.<name>``).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        cam_layer: str | None = None,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = net
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1):
                m.register_forward_pre_hook(_contiguous_input)
        self._cam_layer = cam_layer

    def cam_layer(self) -> str:
        """The default CAM layer, relative to this model (see :class:`DeclaresCAMLayer`)."""
        if self._cam_layer is not None:
            return f"net.{self._cam_layer}"
        if isinstance(self.net, DeclaresCAMLayer):
            return f"net.{self.net.cam_layer()}"
        raise LookupError(f"its network ({type(self.net).__name__}) declares no CAM layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if z.ndim == 4:
            z = _ChannelsLast.apply(z)
        return self.net(z)


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """Run a strided 1x1 convolution on a contiguous (N, C, H, W) input.

    torch 2.13's oneDNN weight gradient of a strided 1x1 convolution on a channels-last
    input corrupts the heap when torch runs on one thread (measured on an AMD EPYC CPU:
    ``double free or corruption`` / segfaults in the backward pass of ResNet shortcut convs,
    nondeterministically; contiguous inputs and two threads were fine). These convolutions
    are cheap, so they run in the plain layout everywhere.
    """
    return (args[0].contiguous(),) + tuple(args[1:])


class _ChannelsLast(torch.autograd.Function):
    """Identity that hands the network a channels-last tensor (oneDNN runs CPU convolutions and
    max-pooling about twice as fast that way) and returns gradients contiguous (N, C, H, W), so
    explainers see the usual layout. Values are unchanged."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        return z.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class LeNet(nn.Module):
    """LeNet-style CNN: conv-[BatchNorm]-relu-pool blocks, then fully connected layers.

    ``pool="flatten"`` is classic LeNet; ``"max"``/``"avg"`` use global pooling
    after the last conv block (translation invariant, input-size agnostic).
    ``batch_norm`` puts a BatchNorm2d between each conv and its ReLU; ``dropout`` > 0 adds
    a Dropout after each hidden fully connected layer's ReLU. Their defaults (off) add no
    modules, so the default network and its state dict are unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        channels: tuple[int, ...] = (16, 32, 64),
        hidden: tuple[int, ...] = (128,),
        kernel_size: int = 5,
        pool: str = "max",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if pool not in ("flatten", "max", "avg"):
            raise ValueError(f"pool='{pool}' is not valid; choose one of flatten, max, avg")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} is not valid; it must be in [0, 1)")
        if kernel_size < 1:
            raise ValueError(f"kernel_size={kernel_size} is not valid; it must be >= 1")
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, input_size
        for out in channels:
            layers.append(nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        if pool == "flatten":
            self.pool: nn.Module = nn.Flatten()
            n = c * h * w
        else:
            self.pool = nn.Sequential(
                nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            n = c
        fc: list[nn.Module] = []
        for width in hidden:
            fc += [nn.Linear(n, width), nn.ReLU()]
            if dropout > 0:
                fc.append(nn.Dropout(dropout))
            n = width
        fc.append(nn.Linear(n, num_classes))
        self.classifier = nn.Sequential(*fc)

    def cam_layer(self) -> str:
        """The last conv block's activation (its ReLU, before the pooling): ``features.<3k-2>``
        (``features.<4k-2>`` with ``batch_norm``)."""
        if not len(self.features):
            raise LookupError("this LeNet has no convolutional block (channels is empty)")
        return f"features.{len(self.features) - 2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of width w, 2w, 4w."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        depth: int = 8,
        width: int = 16,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(
                f"depth={depth} is not valid; ResNet depth must be 6n+2 (8, 14, 20, 32, ...)"
            )
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    def cam_layer(self) -> str:
        """The last residual block's output (after the addition and its ReLU): ``layers.<last>``."""
        return f"layers.{len(self.layers) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


@MODELS.register(
    "lenet",
    description="LeNet-style CNN (configurable channels, hidden widths, kernel, pooling, "
    "BatchNorm, dropout)",
    modality="image",
)
def lenet(
    task,
    channels: tuple[int, ...] = (16, 32, 64),
    hidden: tuple[int, ...] = (128,),
    kernel_size: int = 5,
    pool: str = "max",
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> ImageClassifier:
    """``batch_norm``: BatchNorm2d after each conv; ``dropout``: Dropout(p) after each hidden FC
    layer's ReLU.

    The Captum + Quantus Fashion-MNIST LeNet is ``channels: [16, 32], kernel_size: 3,
    batch_norm: true, pool: flatten, hidden: [128, 64], dropout: 0.4``.
    """
    c, h, w = task.input_shape
    net = LeNet(
        c,
        task.num_classes,
        (h, w),
        tuple(channels),
        tuple(hidden),
        kernel_size,
        pool,
        batch_norm,
        dropout,
    )
    return ImageClassifier(net, task.mean, task.std)


@MODELS.register(
    "resnet",
    description="Small CIFAR-style ResNet (depth 6n+2, configurable width)",
    modality="image",
)
def resnet(task, depth: int = 8, width: int = 16) -> ImageClassifier:
    c, h, w = task.input_shape
    return ImageClassifier(ResNet(c, task.num_classes, (h, w), depth, width), task.mean, task.std)
