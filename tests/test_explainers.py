"""Conformance tests run for EVERY registered image explainer (except learned ones, which need fit).

A tiny seeded CNN on 32x32 inputs keeps this fast; expensive knobs are turned
down per explainer in ``CHEAP`` (an explainer added later runs with its defaults).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiarena.models.vision import ImageClassifier, LeNet
from xaiarena.registry import EXPLAINERS

FAMILIES = {"gradient", "propagation", "cam", "perturbation", "learned", "baseline"}

#: cheap settings for the tests (defaults are sized for 64x64 benchmarks)
CHEAP: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 4},
    "gradient_shap": {"n_samples": 3, "stdevs": 0.05},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"window": 8, "stride": 8},
    "lime": {"n_samples": 24, "n_segments": 12},
    "kernel_shap": {"n_samples": 24, "n_segments": 12},
    "captum_lime": {"n_samples": 12},
    "deeplift_shap": {"n_samples": 2},
}


def image_explainers() -> list[str]:
    out = []
    for entry in EXPLAINERS:
        if "image" in entry.meta.get("modality", ()) and entry.meta.get("family") != "learned":
            out.append(entry.name)
    return out


NAMES = image_explainers()


def make(name: str):
    return EXPLAINERS.create(name, **CHEAP.get(name, {}))


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = LeNet(3, 10, (32, 32), channels=(4, 8), hidden=(16,), kernel_size=3)
    return ImageClassifier(net, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(123)
    blocks = torch.rand(4, 3, 4, 4, generator=g)  # blocky colours: SLIC finds several superpixels
    x = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.05 * torch.rand(4, 3, 32, 32, generator=g)
    return x.clamp(0, 1), torch.tensor([0, 3, 5, 9])


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def all_hooks(model: nn.Module) -> list[str]:
    left = []
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if len(getattr(m, attr, {})):
                left.append(f"{name or '<root>'}.{attr}")
    from torch.nn.modules import module as mod

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if len(getattr(mod, attr, {})):
            left.append(attr)
    return left


def test_there_is_something_to_test():
    expected = {"gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
                "saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "smoothgrad",
                "occlusion", "lime", "kernel_shap", "captum_lime", "random", "sobel", "lrp", "deeplift",
                "deeplift_shap", "guided_backprop", "guided_gradcam", "eigencam"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    entry = EXPLAINERS.entry(name)
    cls = entry.factory
    assert cls.name == name
    assert entry.meta["family"] in FAMILIES
    assert isinstance(entry.meta["needs_layer"], bool)
    assert len(entry.description) >= 40, "descriptions are what `xaiarena list` shows; make them informative"
    for pname, p in entry.parameters().items():
        assert p.default is not p.empty, f"option {pname} needs a default so configs may omit it"
    for knob in getattr(cls, "cost_knobs", ()):
        assert knob in entry.parameters(), f"cost knob {knob} is not a constructor option"
    if entry.meta["needs_layer"]:
        assert "layer" in entry.parameters()


@pytest.mark.parametrize("name", NAMES)
def test_output_contract_and_determinism(name, model, data):
    x, t = data
    ex = make(name)
    a = ex.explain(model, x, t, generator=gen())
    assert a.shape == (4, 32, 32)
    assert a.dtype == torch.float32
    assert torch.isfinite(a).all()
    b = ex.explain(model, x, t, generator=gen())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all_hooks(model)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_by_one(name, model, data):
    x, t = data
    ex = make(name)
    batch = ex.explain(model, x, t, generator=gen())
    single = torch.cat([ex.explain(model, x[i : i + 1], t[i : i + 1], generator=gen()) for i in range(len(x))])
    scale = batch.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(single / scale, batch / scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_and_model_untouched(name, model, data):
    x, t = data
    x0, state0 = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    frozen = [m for m in model.modules() if m is not model][-1]
    frozen.eval()  # a submodule kept in eval mode inside a training model (e.g. frozen BatchNorm)
    modes = {n: m.training for n, m in model.named_modules()}
    make(name).explain(model, x, t, generator=gen())
    assert {n: m.training for n, m in model.named_modules()} == modes, \
        "explain() must restore every submodule's own mode"
    model.eval()
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    assert not x.requires_grad
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state0[k], rtol=0, atol=0)


class Boom(nn.Module):
    """Runs the wrapped model, then raises: every hook registered before the forward has fired."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def cam_layer(self) -> str:
        return f"inner.{self.inner.cam_layer()}"

    def forward(self, x):
        self.inner(x)
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", NAMES)
def test_hooks_released_after_an_exception(name, model, data):
    x, t = data
    boom = Boom(model).eval()
    try:
        make(name).explain(boom, x, t, generator=gen())
    except RuntimeError as exc:
        assert "boom" in str(exc)
    assert not all_hooks(boom), f"{name} left hooks behind: {all_hooks(boom)}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, model, data):
    x, t = data
    ex = make(name)
    cpu = ex.explain(model, x, t, generator=gen())
    cuda_model = tiny_model().cuda()
    out = ex.explain(cuda_model, x.cuda(), t.cuda(), generator=gen())
    assert out.device.type == "cuda"
    scale = cpu.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(out.cpu() / scale, cpu / scale, rtol=0, atol=2e-3)
