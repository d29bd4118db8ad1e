"""LRP, DeepLIFT, DeepLiftSHAP, Guided Backprop, Guided Grad-CAM, Eigen-CAM against references.

* LRP = zennit 0.5.1 (run from its wheel in a subprocess: installed, zennit breaks
  ``import quantus`` here) for every composite, with BatchNorm canonisation and ResNet
  residual additions; = Captum's LRP for the rules Captum has; conservation where it must hold.
* DeepLIFT / DeepLiftSHAP = Captum's ``DeepLift`` / ``DeepLiftShap`` where Captum has a rule for
  every module; summation-to-delta where Captum has none (adaptive max pooling, ReLU6).
* Guided Backprop / Guided Grad-CAM = Captum's ``GuidedBackprop`` / ``GuidedGradCam``.
* Eigen-CAM = a port of pytorch-grad-cam's ``get_2d_projection`` with its sign correction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaiarena
from tests.support.paths import ROOT
from xaiarena.explainers.lrp import COMPOSITES, LRP, merge_batch_norm
from xaiarena.explainers.propagation import deeplift
from xaiarena.models.pretrained import PretrainedClassifier
from xaiarena.models.user import UserImageClassifier
from xaiarena.models.vision import ImageClassifier, LeNet, ResNet
from xaiarena.registry import EXPLAINERS

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.3, 0.4, 0.5), (0.25, 0.2, 0.3)


def images(n: int = 3, size: int = 32, seed: int = 1, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(n, channels, 4, 4, generator=g)
    x = blocks.repeat_interleave(size // 4, 2).repeat_interleave(size // 4, 3)
    return (x + 0.05 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)


TARGETS = torch.tensor([0, 3, 7])


def randomise_batch_norms(net: nn.Module, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                k = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(k, generator=g))
                m.running_var.copy_(0.5 + torch.rand(k, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(k, generator=g))
                m.bias.copy_(0.1 * torch.randn(k, generator=g))


NETS = {
    "lenet": ("lenet", {"channels": (4, 8), "hidden": (16,), "kernel_size": 3}),
    "lenet_bn": (
        "lenet",
        {"channels": (4, 8), "hidden": (16,), "kernel_size": 3, "batch_norm": True},
    ),
    "lenet_avg": ("lenet", {"channels": (4, 8), "hidden": (16,), "kernel_size": 3, "pool": "avg"}),
    "resnet": ("resnet", {"depth": 8, "width": 4}),
}


def build(name: str, seed: int = 0) -> tuple[ImageClassifier, str, dict]:
    arch, opts = NETS[name]
    kwargs = {"in_channels": 3, "num_classes": 10, "input_size": (32, 32), **opts}
    torch.manual_seed(seed)
    net = LeNet(**kwargs) if arch == "lenet" else ResNet(**kwargs)
    randomise_batch_norms(net)
    return ImageClassifier(net, MEAN, STD).eval(), arch, kwargs


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------- LRP against zennit


def zennit_wheel() -> Path | None:
    """zennit 0.5.1's wheel: $XAIARENA_ZENNIT_WHEEL, .ci/cache (``.ci/run`` downloads it) or
    ../oracles."""
    found = (
        [Path(os.environ["XAIARENA_ZENNIT_WHEEL"])]
        if os.environ.get("XAIARENA_ZENNIT_WHEEL")
        else []
    )
    for folder in (ROOT / ".ci" / "cache", ROOT.parent / "oracles"):
        found += sorted(folder.glob("zennit-0.5.1-*.whl")) if folder.is_dir() else []
    return next((p for p in found if p.is_file()), None)


ZENNIT_CASES = [("lenet", c) for c in COMPOSITES] + [
    ("lenet_bn", "epsilon_gamma_box"),
    ("lenet_bn", "epsilon_plus_flat"),
    ("lenet_avg", "epsilon_plus"),
    ("resnet", "epsilon_gamma_box"),
    ("resnet", "epsilon_alpha_beta"),
    ("resnet", "epsilon_plus_flat"),
    ("lenet_bare", "epsilon_gamma_box"),  # the network alone on pixels: z^B bounds 0 and 1
    ("lenet_bare", "epsilon_plus"),
]
LRP_OPTS = {"epsilon": 1e-3, "gamma": 0.25, "stabilizer": 1e-6}


def lrp_opts(net: str) -> dict:
    """zennit's stabiliser (1e-6) is also in the Norm rule of its ResNet canonizer's ``Sum`` module;
    our residual additions split relevance exactly (a functional ``+`` has no module to stabilise),
    which differs by ~stabiliser / |sum| (2e-3 of the map's maximum on this ResNet): the ResNet
    cases use 1e-9 to compare the rules themselves."""
    return {**LRP_OPTS, "stabilizer": 1e-9} if net == "resnet" else LRP_OPTS


@pytest.fixture(scope="module")
def zennit_results(tmp_path_factory):
    """``{(net, composite): (ours, zennit's)}`` relevance at the network input (one zennit run)."""
    wheel = zennit_wheel()
    if wheel is None:
        pytest.skip(
            "zennit 0.5.1's wheel is not available (set XAIARENA_ZENNIT_WHEEL; .ci/run downloads "
            "it)"
        )
    cases, ours = [], []
    for net_name, composite in ZENNIT_CASES:
        x = images()
        z = normalised(x)
        low, high = normalised(torch.zeros(1, 3, 1, 1)), normalised(torch.ones(1, 3, 1, 1))
        model, arch, kwargs = build(net_name.removesuffix("_bare"))
        if net_name.endswith("_bare"):  # not an ImageClassifier: relevance of its own input
            model, z, low, high = model.net, x, torch.zeros(()), torch.ones(())
        cases.append(
            {
                "arch": arch,
                "kwargs": kwargs,
                "state": getattr(model, "net", model).state_dict(),
                "z": z,
                "targets": TARGETS,
                "composite": composite,
                "opts": {**lrp_opts(net_name), "low": low, "high": high},
            }
        )
        ours.append(LRP(composite=composite, **lrp_opts(net_name)).relevance(model, x, TARGETS))
    folder = tmp_path_factory.mktemp("zennit")
    torch.save(cases, folder / "in.pt")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(xaiarena.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "support" / "zennit_oracle.py"),
            str(wheel),
            str(folder / "in.pt"),
            str(folder / "out.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(folder / "out.pt")
    assert str(wheel) in theirs["zennit"]
    return {
        case: (o, t) for case, o, t in zip(ZENNIT_CASES, ours, theirs["relevance"], strict=True)
    }


@pytest.mark.parametrize("case", ZENNIT_CASES, ids=[f"{n}-{c}" for n, c in ZENNIT_CASES])
def test_lrp_equals_zennit(zennit_results, case):
    ours, theirs = zennit_results[case]
    assert theirs.abs().max() > 0
    assert rel_error(ours, theirs) < 1e-4, (
        f"{case}: max |ours - zennit| / max |zennit| = {rel_error(ours, theirs):.2e}"
    )


# ----------------------------------------------------------------------------- LRP against Captum


def _captum_lrp(net: nn.Module, z: torch.Tensor, rules: dict) -> torch.Tensor:
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in net.modules():
        if isinstance(m, (nn.AdaptiveMaxPool2d, nn.Flatten)):
            m.rule = (
                EpsilonRule()
            )  # Captum has no default rule for them; as max pooling, relevance goes to the max
    for module, rule in rules.items():
        module.rule = rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CaptumLRP(net).attribute(z.clone().requires_grad_(True), target=TARGETS).detach()


@pytest.mark.parametrize("conv", ["epsilon", "gamma", "zplus"])
def test_lrp_equals_captum_lrp(conv):
    """Captum: EpsilonRule everywhere, or GammaRule / Alpha1_Beta0_Rule on the convolutions after
    the first.

    Captum's gamma rule leaves the bias unchanged and only enhances positive weights (zennit's
    and ours add gamma * b+ and treat negative outputs with gamma * W-), so the convolutions'
    biases are zero there; after a ReLU the inputs are non-negative and the rules agree.
    """
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    model, _, _ = build("lenet")
    convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    if conv != "epsilon":
        with torch.no_grad():
            for m in convs:
                m.bias.zero_()
    x = images()
    ours = LRP(composite="epsilon", epsilon=1e-9, conv_rule=conv, first_rule="epsilon").relevance(
        model, x, TARGETS
    )
    rule = {
        "epsilon": EpsilonRule,
        "gamma": lambda: GammaRule(gamma=0.25),
        "zplus": Alpha1_Beta0_Rule,
    }[conv]
    rules = {m: (EpsilonRule() if i == 0 else rule()) for i, m in enumerate(convs)}
    theirs = _captum_lrp(model.net, normalised(x), rules)
    assert rel_error(ours, theirs) < 1e-4, rel_error(ours, theirs)


# ----------------------------------------------------------------------------- LRP properties


def _zero_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):  # merged bias (b - mean) * scale + beta = 0
                m.running_mean.zero_()
                m.bias.zero_()


CONSERVING = [
    (n, c)
    for n in ("lenet", "lenet_bn")
    for c in ("epsilon", "epsilon_gamma_box", "epsilon_plus_flat")
]
CONSERVING += [("resnet", "epsilon"), ("resnet", "epsilon_gamma_box")]


@pytest.mark.parametrize(("net", "composite"), CONSERVING)
def test_lrp_conserves_relevance_without_biases(net, composite):
    """No biases, tiny stabilisers: the map sums to the target logit, also through BatchNorm
    (merged) and residual additions (split in proportion to the summands). (z+ conserves only
    where a ReLU follows, so not on a residual branch whose output may be negative; alpha-beta
    not where a neuron has no negative contributions: neither is listed for the ResNet.)"""
    model, _, _ = build(net)
    _zero_biases(model)
    x = images()
    rel = LRP(composite=composite, epsilon=1e-9, stabilizer=1e-9).relevance(model, x, TARGETS)
    logit = model(x).gather(1, TARGETS[:, None]).squeeze(1).detach()
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-6)


def test_lrp_conservation_check_can_fail():
    """With biases (and the canonised BatchNorm's shifts) relevance leaks: the check has teeth."""
    model, _, _ = build("resnet")
    x = images()
    rel = LRP(composite="epsilon_gamma_box", epsilon=1e-9, stabilizer=1e-9).relevance(
        model, x, TARGETS
    )
    logit = model(x).gather(1, TARGETS[:, None]).squeeze(1).detach()
    assert (rel.flatten(1).sum(1) - logit).abs().max() > 1e-3


def test_merge_batch_norm_is_the_composed_affine_map():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    randomise_batch_norms(bn)
    bn.eval()
    w, b = merge_batch_norm(conv, bn)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(F.conv2d(x, w, b), bn(conv(x)), rtol=1e-5, atol=1e-6)


def test_lrp_without_canonisation_passes_batch_norm_relevance():
    """canonize=False: BatchNorm passes relevance (zennit's Pass); the map differs from the merged
    one."""
    model, _, _ = build("lenet_bn")
    x = images()
    merged = LRP().relevance(model, x, TARGETS)
    passed = LRP(canonize=False).relevance(model, x, TARGETS)
    assert torch.isfinite(passed).all()
    assert rel_error(passed, merged) > 1e-2


class _GreyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU6(), nn.AvgPool2d(2)
        )
        self.head = nn.Linear(4 * 24 * 24, 5, bias=False)

    def forward(self, z):
        return self.head(self.features(z).flatten(1))


@pytest.mark.parametrize("channels", [1, 3])
def test_lrp_carries_relevance_through_a_pretrained_models_resizing(channels):
    """A pretrained model resizes (32 -> 48) and expands grey to RGB before normalising: the pixel
    map holds exactly the relevance of the network's input (the sum is kept), (N, H, W) at 32x32."""
    model = PretrainedClassifier(
        _GreyNet(), MEAN, STD, class_names=[str(i) for i in range(5)], input_size=48
    ).eval()
    x = images(2, channels=channels)
    t = torch.tensor([1, 4])
    lrp = LRP(composite="epsilon_plus_flat", epsilon=1e-9, stabilizer=1e-9)
    rel = lrp.relevance(model, x, t)
    assert rel.shape == x.shape
    logit = model(x).gather(1, t[:, None]).squeeze(1).detach()
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-6)
    z = normalised(
        F.interpolate(x.expand(-1, 3, -1, -1), size=(48, 48), mode="bilinear", align_corners=False)
    )
    at_z = lrp.relevance(model.net, z, t)  # the bare network: relevance of its own input
    torch.testing.assert_close(rel.flatten(1).sum(1), at_z.flatten(1).sum(1), rtol=1e-4, atol=1e-6)
    assert lrp.explain(model, x, t).shape == (2, 32, 32)


def test_lrp_on_a_user_model_with_functional_max_pooling():
    """The BYO example network (conv-ReLU x2, then a functional amax over positions, a linear head):
    a functional max is max pooling (relevance to the maximum); the map conserves the logit."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1, bias=False),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, padding=1, bias=False),
                nn.ReLU(),
            )
            self.head = nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return self.head(self.features(x).amax((2, 3)))

    torch.manual_seed(0)
    model = UserImageClassifier(Net(), MEAN, STD, pretrained=False).eval()
    x, t = images(2), torch.tensor([0, 1])
    rel = LRP(epsilon=1e-9, stabilizer=1e-9).relevance(model, x, t)
    torch.testing.assert_close(
        rel.flatten(1).sum(1),
        model(x).gather(1, t[:, None]).squeeze(1).detach(),
        rtol=1e-4,
        atol=1e-6,
    )


def test_propagation_methods_on_efficientnet_lite0():
    """Depthwise convolutions, ReLU6 (one module used twice per block), BatchNorm after every
    convolution, residual additions, 'same'-padding convolutions (a module with a child) and
    resizing: LRP conserves the logit without biases, DeepLIFT sums to f(x) - f(0) (no warning),
    Guided Backprop runs."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from xaiarena.models.pretrained import LITE_MEAN, LITE_STD, _lite_class

    torch.manual_seed(0)
    net = _lite_class().from_name("efficientnet-lite0").eval()
    randomise_batch_norms(net)
    model = PretrainedClassifier(
        net,
        LITE_MEAN,
        LITE_STD,
        class_names=[str(i) for i in range(1000)],
        input_size=64,
        cam_layer="_head_act",
    ).eval()
    x, t = images(2), torch.tensor([1, 2])
    for name in ("lrp", "deeplift", "guided_backprop", "guided_gradcam"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # deeplift: no completeness warning (ReLU6 has its rule)
            maps = EXPLAINERS.create(name).explain(model, x, t)
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0, (
            name
        )
    _zero_biases(model)
    logit = model(x).gather(1, t[:, None]).squeeze(1).detach()
    for composite in ("epsilon_gamma_box", "epsilon_plus_flat"):
        rel = LRP(composite=composite, epsilon=1e-9, stabilizer=1e-9).relevance(model, x, t)
        torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-3, atol=1e-6)


class _WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm([4, 30, 30])
        self.unused = nn.Embedding(3, 2)  # never runs: not refused
        self.fc = nn.Linear(4 * 30 * 30, 2)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).flatten(1))


def test_lrp_refuses_unsupported_layers_by_name():
    with pytest.raises(ValueError, match=r"no rule for norm \(LayerNorm\)") as err:
        LRP().explain(_WithLayerNorm().eval(), images(1), torch.tensor([0]))
    assert "Embedding" not in str(err.value)


def test_lrp_refuses_a_path_around_the_first_layer():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 32 * 32, 2)

        def forward(self, x):
            return self.fc((self.conv(x) + x).flatten(1))

    with pytest.raises(ValueError, match="other than through the first layer"):
        LRP().explain(Skip().eval(), images(1), torch.tensor([0]))


def test_lrp_zbox_needs_known_pixel_bounds():
    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.fc = nn.Linear(2 * 30 * 30, 2)

        def forward(self, x):
            return self.fc(self.conv(2 * x).flatten(1))

    model, x, t = Doubled().eval(), images(1), torch.tensor([0])
    with pytest.raises(ValueError, match="zbox rule needs the first layer"):
        LRP().explain(model, x, t)
    assert torch.isfinite(LRP(first_rule="flat").explain(model, x, t)).all()


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"composite": "epsilon_gama_box"}, ["epsilon_gamma_box", "did you mean"]),
        ({"conv_rule": "flat"}, ["first-layer rule", "first_rule"]),
        ({"dense_rule": "zbox"}, ["first-layer rule"]),
        ({"first_rule": "box"}, ["zbox"]),
        ({"alpha": 2.0, "beta": 0.5}, ["alpha - beta must be 1"]),
        ({"stabilizer": 0.0}, ["stabilizer"]),
        ({"epsilon": -1.0}, ["epsilon"]),
    ],
)
def test_lrp_bad_options_name_the_value(opts, words):
    with pytest.raises(ValueError) as err:
        LRP(**opts)
    for w in words:
        assert w in str(err.value)


# ----------------------------------------------------------------------------- DeepLIFT


def _captum(cls, model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(x.clone().requires_grad_(True), target=TARGETS, **kw).detach()


class _One(nn.Module):
    def forward(self, x):
        return x * 1.0


def separated_lenet() -> ImageClassifier:
    """A LeNet whose ReLU and max-pooling modules do not touch: Captum's DeepLift records a module's
    output gradient before the next hooked module's hook rewrites it, so where a ReLU feeds a
    MaxPool2d directly (every LeNet block) its maps miss summation-to-delta; a ``x * 1.0`` module
    between them avoids that."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        _One(),
        nn.MaxPool2d(2),
        _One(),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        _One(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    return ImageClassifier(net, MEAN, STD).eval()


def dl_model(net: str) -> ImageClassifier:
    return separated_lenet() if net == "lenet_separated" else build(net)[0]


@pytest.mark.parametrize("net", ["lenet_separated", "resnet"])
@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_deeplift_equals_captum(net, baseline):
    """Models on which Captum's DeepLift has a rule for every nonlinear module (ReLU, MaxPool2d) and
    no two hooked modules touch (see :func:`separated_lenet`)."""
    from captum.attr import DeepLift

    from xaiarena.ops.fill import BASELINE_BLUR, make_fill

    model = dl_model(net)
    x = images()
    ref = make_fill(x, baseline, blur=BASELINE_BLUR)
    ours, _, _ = deeplift(model, x, ref, TARGETS)
    theirs = _captum(DeepLift, model, x, baselines=ref)
    assert rel_error(ours, theirs) < 1e-4, rel_error(ours, theirs)
    maps = EXPLAINERS.create("deeplift", baseline=baseline).explain(model, x, TARGETS)
    torch.testing.assert_close(
        maps, theirs.sum(1), rtol=1e-4, atol=1e-6 * float(theirs.abs().max())
    )


def test_deeplift_sums_to_the_output_difference_on_the_default_lenet():
    """The default LeNet has ReLUs feeding max pooling (Captum's DeepLift misses summation-to-delta
    there,
    see :func:`separated_lenet`) and ends in AdaptiveMaxPool2d, which Captum passes by its plain
    gradient; ours applies the max-pool rule per call, so the maps sum to f(x) - f(baseline)."""
    model, _, _ = build("lenet")
    assert any(isinstance(m, nn.AdaptiveMaxPool2d) for m in model.modules())
    x = images()
    for baseline in ("black", "mean"):
        ref = (
            torch.zeros_like(x)
            if baseline == "black"
            else x.mean((2, 3), keepdim=True).expand_as(x)
        )
        attr, f, f_ref = deeplift(model, x, ref, TARGETS)
        torch.testing.assert_close(attr.flatten(1).sum(1), f - f_ref, rtol=1e-4, atol=1e-6)


def test_deeplift_warns_when_the_model_has_functional_nonlinearities():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 30 * 30, 10)

        def forward(self, x):
            return self.fc(F.silu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="nonlinear operations outside modules"):
        EXPLAINERS.create("deeplift").explain(Functional().eval(), images(), TARGETS)
    model, _, _ = build("resnet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EXPLAINERS.create("deeplift").explain(model, images(), TARGETS)


@pytest.mark.parametrize(
    "baselines", [("black", "white", "blur"), ("uniform",), ("black", "uniform")]
)
def test_deeplift_shap_equals_captum_deepliftshap(baselines):
    """Captum's DeepLiftShap averages DeepLift over a baseline distribution shared by the batch;
    ours
    draws per sample, so compare one sample at a time on the same references. Each listed baseline
    weighs 1/len(baselines): Captum's DeepLift for a single reference, its DeepLiftShap (a mean) for
    the uniform draws."""
    from captum.attr import DeepLift, DeepLiftShap

    model = separated_lenet()
    x = images()
    ex = EXPLAINERS.create("deeplift_shap", baselines=list(baselines), n_samples=3)
    maps = ex.explain(model, x, TARGETS, generator=torch.Generator().manual_seed(4))
    refs, w = ex.references(x, torch.Generator().manual_seed(4))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    names = [b for b in baselines for _ in range(3 if b == "uniform" else 1)]
    for i in range(len(x)):
        theirs = torch.zeros(x.shape[1:])
        for name in baselines:
            sel = refs[i, [j for j, v in enumerate(names) if v == name]]
            cls = DeepLift if len(sel) == 1 else DeepLiftShap
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = (
                    cls(model)
                    .attribute(
                        x[i : i + 1].clone().requires_grad_(True),
                        baselines=sel,
                        target=int(TARGETS[i]),
                    )
                    .detach()[0]
                )
            theirs += a / len(baselines)
        torch.testing.assert_close(
            maps[i], theirs.sum(0), rtol=1e-4, atol=1e-5 * float(theirs.abs().max())
        )


def test_deeplift_handles_reused_and_inplace_activations():
    """One ReLU module used twice, another in place: per-call rules, summation-to-delta holds, and
    the
    module's inplace flag is restored."""

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.act = nn.ReLU()
            self.act2 = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(self.act2(self.act(self.c2(self.act(self.c1(x))))).flatten(1))

    torch.manual_seed(0)
    model = Reuse().eval()
    x = images()
    attr, f, f_ref = deeplift(model, x, torch.zeros_like(x), TARGETS)
    torch.testing.assert_close(attr.flatten(1).sum(1), f - f_ref, rtol=1e-4, atol=1e-6)
    assert model.act2.inplace is True


# ---------------------------------------------------------------- Guided Backprop, Guided Grad-CAM


@pytest.mark.parametrize("net", ["lenet", "resnet"])
def test_guided_backprop_equals_captum(net):
    from captum.attr import GuidedBackprop

    model, _, _ = build(net)
    x = images()
    theirs = _captum(GuidedBackprop, model, x)
    ours = EXPLAINERS.create("guided_backprop", reduction="sum").explain(model, x, TARGETS)
    torch.testing.assert_close(ours, theirs.sum(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("net", ["lenet", "resnet"])
def test_guided_gradcam_equals_captum_with_bilinear_upsampling(net):
    from captum.attr import GuidedGradCam

    model, _, _ = build(net)
    x = images()
    targets = model(x).argmax(1)  # the predicted class: a Grad-CAM that is not all zero
    layer = model.cam_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = (
            GuidedGradCam(model, model.get_submodule(layer))
            .attribute(x.clone().requires_grad_(True), target=targets, interpolate_mode="bilinear")
            .detach()
        )
    ours = EXPLAINERS.create("guided_gradcam").explain(model, x, targets)
    assert theirs.abs().max() > 0
    torch.testing.assert_close(
        ours, theirs.sum(1), rtol=1e-5, atol=1e-6 * float(theirs.abs().max())
    )


def test_guided_backprop_refuses_a_model_without_rectifier_modules():
    model = nn.Sequential(
        nn.Conv2d(3, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(2 * 30 * 30, 10)
    ).eval()
    with pytest.raises(ValueError, match="no nn.ReLU or nn.ReLU6 module"):
        EXPLAINERS.create("guided_backprop").explain(model, images(), TARGETS)


# ----------------------------------------------------------------------------- Eigen-CAM


def _eigencam_port(acts: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection_with_sign_correction, then BaseCAM's
    np.maximum(cam, 0)."""
    out = []
    for a in acts:
        m = a.reshape(a.shape[0], -1).T
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=True)
        p = (m @ vt[0, :]).reshape(a.shape[1:])
        if abs(p.min()) > abs(p.max()):
            p = -p
        out.append(np.maximum(p, 0))
    return np.float32(out)


@pytest.mark.parametrize("net", ["lenet", "resnet"])
def test_eigencam_equals_a_port_of_pytorch_grad_cam(net):
    model, _, _ = build(net)
    x = images()
    acts = []
    handle = model.get_submodule(model.cam_layer()).register_forward_hook(
        lambda m, a, o: acts.append(o.detach())
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    ref = torch.from_numpy(_eigencam_port(acts[0].double().numpy()))
    ref = F.interpolate(ref[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    ours = EXPLAINERS.create("eigencam").explain(model, x, TARGETS)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    other = EXPLAINERS.create("eigencam").explain(model, x, torch.tensor([1, 1, 1]))
    torch.testing.assert_close(ours, other, rtol=0, atol=0)  # class-agnostic


# ----------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_new_explainers_run_through_the_cli(tmp_path):
    """A tiny run with every method added here: each gets a score; `list --json` shows metadata."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from xaiarena.cli import app

    cfg = tmp_path / "new.yaml"
    cfg.write_text(
        "data: {name: hard_mnist, n_train: 200, n_test: 40}\nmodel: "
        "{name: lenet, channels: [4, 8, 8], batch_norm: true}\ntraining: {epochs: 1}\nevaluation: "
        "{n_samples: 6}\nexplainers: [lrp, "
        "{name: lrp, label: lrp_eps, composite: epsilon, epsilon: 0.01}, deeplift,\n             "
        "{name: deeplift_shap, n_samples: 2}, guided_backprop, guided_gradcam, eigencam]\nmetrics: "
        "[sparseness, {name: deletion, steps: 5}]\n"
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(out / "results" / "summary.csv")
    expected = {
        "lrp",
        "lrp_eps",
        "deeplift",
        "deeplift_shap",
        "guided_backprop",
        "guided_gradcam",
        "eigencam",
    }
    assert expected <= set(summary["explainer"])
    assert summary.loc[summary["explainer"].isin(expected), "mean"].notna().all()
    listed = {
        e["name"]: e
        for e in json.loads(CliRunner().invoke(app, ["list", "--json"]).output)["explainers"]
    }
    for name in ("lrp", "deeplift", "deeplift_shap", "guided_backprop"):
        assert listed[name]["family"] == "propagation" and listed[name]["needs_layer"] is False
    for name in ("guided_gradcam", "eigencam"):
        assert listed[name]["family"] == "cam" and listed[name]["needs_layer"] is True
    assert all(listed[n]["modality"] == ["image"] for n in expected - {"lrp_eps"})
