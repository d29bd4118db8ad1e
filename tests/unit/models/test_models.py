from __future__ import annotations

import json

import pytest
import torch

from xaiarena.config import TrainingConfig
from xaiarena.data import load_task
from xaiarena.models import build_model, train_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_task():
    return load_task("hard_mnist", seed=0, n_train=256, n_test=64)


@pytest.mark.parametrize(
    "name,params",
    [("lenet", {}), ("lenet", {"pool": "flatten"}), ("resnet", {"depth": 8, "width": 8})],
)
def test_models_output_logits_for_pixel_space_inputs(tiny_task, name, params):
    model = build_model(name, tiny_task, **params)
    out = model(tiny_task.test.float_images(slice(0, 4)))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_bad_model_options_are_named(tiny_task):
    with pytest.raises(ValueError, match="depth=7"):
        build_model("resnet", tiny_task, depth=7)
    with pytest.raises(ValueError, match="pool='mean'"):
        build_model("lenet", tiny_task, pool="mean")


def _train(task, seed, ckpt=None, epochs=1):
    model = build_model("lenet", task, seed=seed, channels=(4, 8, 8), hidden=(16,))
    res = train_model(
        model,
        task,
        TrainingConfig(epochs=epochs, batch_size=64),
        seed=seed,
        device=CPU,
        checkpoint_dir=ckpt,
        show_progress=False,
    )
    return model, res


def test_training_is_reproducible_for_a_seed(tiny_task):
    a, ra = _train(tiny_task, seed=5)
    b, rb = _train(tiny_task, seed=5)
    c, _ = _train(tiny_task, seed=6)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert ra.history == rb.history
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


@pytest.mark.integration
def test_training_learns(small_task, trained_lenet):
    from xaiarena.models.training import accuracy

    assert accuracy(trained_lenet, small_task.test.images, small_task.test.labels, CPU) > 0.5


def test_checkpoint_is_reused(tiny_task, tmp_path):
    model, res = _train(tiny_task, seed=0, ckpt=tmp_path)
    assert not res.cache_hit and (tmp_path / "model.pt").exists()
    assert json.loads((tmp_path / "train.json").read_text())["history"] == res.history
    again, res2 = _train(
        tiny_task, seed=123, ckpt=tmp_path
    )  # other seed: would differ if retrained
    assert res2.cache_hit and res2.history == res.history
    for va, vb in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_early_stopping_keeps_best_epoch(tiny_task):
    model = build_model("lenet", tiny_task, channels=(4, 8, 8), hidden=(16,))
    cfg = TrainingConfig(epochs=6, batch_size=64, early_stop_patience=1, lr=0.05)
    res = train_model(model, tiny_task, cfg, seed=0, device=CPU, show_progress=False)
    assert len(res.history) <= 6
    assert (
        res.best_epoch
        == max(range(len(res.history)), key=lambda i: res.history[i]["val_accuracy"]) + 1
    )


@pytest.mark.integration
def test_resnet_backward_on_one_thread_does_not_corrupt_memory():
    """torch 2.13's oneDNN crashes (heap corruption) in the weight gradient of a strided 1x1 conv
    on a channels-last input when it runs on one thread; ImageClassifier runs those convs on a
    contiguous input. Run in a subprocess: a crash must fail the test, not kill pytest."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch
        torch.set_num_threads(1)
        from xaiarena.data.base import ImageSplit, Task
        from xaiarena.models import build_model
        g = torch.Generator().manual_seed(0)
        split = ImageSplit(torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8),
                           torch.zeros(8, dtype=torch.long))
        task = Task("t", split, split, ["a", "b"], mean=(0.5,) * 3, std=(0.3,) * 3)
        model = build_model("resnet", task, depth=8, width=4, seed=0).train()
        for n in (48, 16, 8, 48, 16, 8):
            model(torch.rand(n, 3, 16, 16)).softmax(1).sum().backward()
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def _fashion_task():
    from xaiarena.data.base import ImageSplit, Task

    split = ImageSplit(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2, 3]))
    return Task(
        name="toy28",
        train=split,
        test=split,
        class_names=[str(i) for i in range(10)],
        mean=(0.5,),
        std=(0.25,),
    )


def test_lenet_expresses_the_captum_quantus_lenet():
    """Seed 002's LeNet: conv 16/32 kernel 3 + BatchNorm + ReLU + max-pool, FC 128 -> 64 -> 10,
    dropout 0.4."""
    from torch import nn

    model = build_model(
        "lenet",
        _fashion_task(),
        seed=0,
        channels=(16, 32),
        kernel_size=3,
        batch_norm=True,
        pool="flatten",
        hidden=(128, 64),
        dropout=0.4,
    )
    shapes = {
        k: tuple(v.shape)
        for k, v in model.net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert shapes == {
        "features.0.weight": (16, 1, 3, 3),
        "features.0.bias": (16,),
        "features.1.weight": (16,),
        "features.1.bias": (16,),
        "features.1.running_mean": (16,),
        "features.1.running_var": (16,),
        "features.4.weight": (32, 16, 3, 3),
        "features.4.bias": (32,),
        "features.5.weight": (32,),
        "features.5.bias": (32,),
        "features.5.running_mean": (32,),
        "features.5.running_var": (32,),
        "classifier.0.weight": (128, 32 * 7 * 7),
        "classifier.0.bias": (128,),
        "classifier.3.weight": (64, 128),
        "classifier.3.bias": (64,),
        "classifier.6.weight": (10, 64),
        "classifier.6.bias": (10,),
    }
    kinds = [type(m) for m in model.net.features]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d] * 2
    assert [type(m) for m in model.net.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [
        nn.Linear
    ]
    assert all(m.p == 0.4 for m in model.net.classifier if isinstance(m, nn.Dropout))
    # the CAM layer stays the last conv block's activation (after BatchNorm and ReLU, before the
    # pool)
    assert model.cam_layer() == "net.features.6"
    assert isinstance(model.get_submodule(model.cam_layer()), nn.ReLU)
    assert (
        sum(p.numel() for p in model.parameters())
        == 16 * 9
        + 16
        + 32
        + 32 * 16 * 9
        + 32
        + 64
        + 1568 * 128
        + 128
        + 128 * 64
        + 64
        + 64 * 10
        + 10
    )
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), model(x))  # dropout is off in eval mode
    model.train()
    assert not torch.equal(model(x), model(x))  # and on in training mode


def test_lenet_defaults_are_unchanged():
    """The new options default to off and add no modules: the default LeNet is the old one."""
    from torch import nn

    task = _fashion_task()
    model = build_model("lenet", task, seed=0)
    explicit = build_model("lenet", task, seed=0, batch_norm=False, dropout=0.0, kernel_size=5)
    shapes = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    assert shapes == {
        "features.0.weight": (16, 1, 5, 5),
        "features.0.bias": (16,),
        "features.3.weight": (32, 16, 5, 5),
        "features.3.bias": (32,),
        "features.6.weight": (64, 32, 5, 5),
        "features.6.bias": (64,),
        "classifier.0.weight": (128, 64),
        "classifier.0.bias": (128,),
        "classifier.2.weight": (10, 128),
        "classifier.2.bias": (10,),
    }
    assert [type(m) for m in model.net.classifier] == [nn.Linear, nn.ReLU, nn.Linear]
    assert model.cam_layer() == "net.features.7"
    for (ka, va), (kb, vb) in zip(
        model.state_dict().items(), explicit.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_bad_lenet_options_are_named(tiny_task):
    with pytest.raises(ValueError, match="dropout=1.5"):
        build_model("lenet", tiny_task, dropout=1.5)
