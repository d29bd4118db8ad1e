"""Oracle checks: explainers against Captum, closed forms and properties that must hold."""

from __future__ import annotations

import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge
from captum.attr import KernelShap, LayerAttribution, LayerGradCam, Lime, Occlusion
from torch import nn

from tests.support.models import tiny_lenet
from xaiarena.explainers.base import reduce_channels
from xaiarena.models.vision import ImageClassifier, LeNet, ResNet
from xaiarena.ops.fill import BASELINE_BLUR, make_fill
from xaiarena.ops.seeding import sample_generators
from xaiarena.registry import EXPLAINERS


def make_baseline(kind, x, generators=None):
    """The explainers' baseline ``kind`` for ``x`` (their blur: sigma = side / 8, replicate)."""
    return make_fill(x, kind, generators=generators, blur=BASELINE_BLUR)


def default_lenet() -> nn.Module:
    """The benchmark's LeNet (16/32/64 channels) on 64x64 RGB, untrained but seeded."""
    torch.manual_seed(2)
    return ImageClassifier(LeNet(3, 10, (64, 64)), (0.3,) * 3, (0.25,) * 3).eval()


def tiny_resnet(depth: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return ImageClassifier(
        ResNet(3, 10, (32, 32), depth=depth, width=4), (0.3,) * 3, (0.25,) * 3
    ).eval()


def tiny_resnet14() -> nn.Module:
    """Its last block has an identity shortcut: the last registered conv is the branch's conv2."""
    return tiny_resnet(14)


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Blocky colour images with mild noise (SLIC finds several superpixels in them)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(n, 3, 4, 4, generator=g)
    x = blocks.repeat_interleave(size // 4, 2).repeat_interleave(size // 4, 3)
    return (x + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def smooth_cnn() -> nn.Module:
    """Conv-Softplus-AvgPool-Linear with large weights: curved, but smooth along IG's path."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Softplus(),
        nn.AvgPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    with torch.no_grad():
        m[0].weight.mul_(6.0)
        m[4].weight.mul_(6.0)
    return m.eval()


class Linear(nn.Module):
    """``W x + b`` on flattened pixels."""

    def __init__(self, shape=(3, 16, 16), classes: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = shape
        self.fc = nn.Linear(shape[0] * shape[1] * shape[2], classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def weight_map(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc.weight.detach()[t].view(len(t), *self.shape)


def gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Grad-CAM family

GRADCAM_CASES = {
    "lenet-auto-layer": (tiny_lenet, 32, None, "net.features.4"),  # the last block's ReLU
    "lenet-named-layer": (tiny_lenet, 32, "net.features.0", "net.features.0"),
    "default-lenet-64px": (default_lenet, 64, None, "net.features.7"),
    "resnet-auto-layer": (tiny_resnet, 32, None, "net.layers.2"),  # the last block's output
    "resnet14-auto-layer": (tiny_resnet14, 32, None, "net.layers.5"),
    "resnet-named-conv": (tiny_resnet, 32, "net.layers.1.conv1", "net.layers.1.conv1"),
}


@pytest.mark.parametrize("case", list(GRADCAM_CASES))
def test_gradcam_equals_captum_layergradcam(case):
    model_fn, size, layer, layer_name = GRADCAM_CASES[case]
    model, x, t = model_fn(), images(3, size), torch.tensor([1, 4, 7])
    ours = EXPLAINERS.create("gradcam", layer=layer).explain(model, x, t)
    ref = LayerGradCam(model, model.get_submodule(layer_name)).attribute(
        x, target=t, relu_attributions=True
    )
    ref = LayerAttribution.interpolate(ref, tuple(x.shape[-2:]), interpolate_mode="bilinear")[
        :, 0
    ].detach()
    scale = ref.abs().max()
    assert scale > 0, "degenerate oracle: all-zero Grad-CAM"
    torch.testing.assert_close(
        ours / scale, ref / scale, rtol=0, atol=1e-5
    )  # untrained nets: tiny logits


CAM_NAMES = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam"]


@pytest.mark.parametrize("name", CAM_NAMES)
@pytest.mark.parametrize("model_fn", [tiny_lenet, tiny_resnet, tiny_resnet14])
def test_cam_default_layer_is_the_declared_one(name, model_fn):
    """Every CAM hooks exactly the module the model declares, and never a conv by default."""
    model, x, t = model_fn(), images(2), torch.tensor([0, 1])
    declared = model.cam_layer()
    hooked = []
    real = nn.Module.register_forward_hook

    def spy(module, hook, *args, **kwargs):
        hooked.append(next(n for n, m in model.named_modules() if m is module))
        return real(module, hook, *args, **kwargs)

    nn.Module.register_forward_hook = spy
    try:
        auto = EXPLAINERS.create(name).explain(model, x, t)
    finally:
        nn.Module.register_forward_hook = real
    assert set(hooked) == {declared}
    assert not isinstance(model.get_submodule(declared), nn.Conv2d)
    assert "shortcut" not in declared and "conv" not in declared
    named = EXPLAINERS.create(name, layer=declared).explain(model, x, t)
    torch.testing.assert_close(auto, named, rtol=0, atol=0)
    assert auto.abs().max() > 0


def test_cam_on_a_model_that_declares_no_layer_lists_candidates():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()
    with pytest.raises(ValueError) as err:
        EXPLAINERS.create("gradcam").explain(model, images(1, 16), torch.tensor([0]))
    msg = str(err.value)
    assert "gradcam" in msg and "'layer' option" in msg and "declares no CAM layer" in msg
    assert (
        "Candidates" in msg and "0, 1, 2, 3, 4" in msg
    )  # the 4-D outputs, the pooled one included


class _NoLayer(ImageClassifier):
    def cam_layer(self) -> str:
        raise LookupError("a transformer has no (N, K, h, w) maps")


def test_cam_on_a_model_without_a_conventional_layer_gives_its_reason():
    model = _NoLayer(
        LeNet(3, 10, (32, 32), channels=(4,), hidden=()), (0.3,) * 3, (0.25,) * 3
    ).eval()
    with pytest.raises(ValueError, match="transformer has no .*'layer' option.*net.features.1"):
        EXPLAINERS.create("scorecam").explain(model, images(1), torch.tensor([0]))
    out = EXPLAINERS.create("scorecam", layer="net.features.1").explain(
        model, images(1), torch.tensor([0])
    )
    assert out.shape == (1, 32, 32)


class _Unset(ImageClassifier):
    def cam_layer(self) -> None:  # e.g. a user model whose cam_layer option is not set
        return None


def test_cam_on_a_model_whose_declared_layer_is_unset():
    model = _Unset(LeNet(3, 10, (32, 32), channels=(4,), hidden=()), (0.3,) * 3, (0.25,) * 3).eval()
    with pytest.raises(
        ValueError,
        match=r"ablationcam: _Unset declares no CAM layer \(cam_layer\(\) returned None\)",
    ):
        EXPLAINERS.create("ablationcam").explain(model, images(1), torch.tensor([0]))


def test_cam_variants_by_hand():
    """Each CAM's weighting against a direct re-implementation from captured
    activations/gradients."""
    model, x, t = tiny_lenet(), images(3), torch.tensor([2, 5, 8])
    layer = model.get_submodule("net.features.4")
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    a, g = a.detach(), g.detach()
    g2, g3 = g**2, g**3
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, 0.0)
    expected = {
        "gradcam": (g.mean((2, 3), keepdim=True) * a).sum(1),
        "gradcam_pp": ((torch.relu(g) * alpha).sum((2, 3), keepdim=True) * a).sum(1),
        "xgradcam": (
            ((g * a).sum((2, 3), keepdim=True) / (a.sum((2, 3), keepdim=True) + 1e-7)) * a
        ).sum(1),
        "layercam": (torch.relu(g) * a).sum(1),
        "hirescam": (g * a).sum(1),
    }
    for name, cam in expected.items():
        ours = EXPLAINERS.create(name).explain(model, x, t)
        ref = torch.nn.functional.interpolate(
            torch.relu(cam)[:, None], size=(32, 32), mode="bilinear"
        )[:, 0]
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6, msg=name)


def test_scorecam_matches_a_per_channel_loop():
    model, x, t = tiny_lenet(), images(2), torch.tensor([3, 6])
    layer = model.get_submodule("net.features.4")
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    a = store["a"]
    ref = torch.zeros(2, *a.shape[-2:])
    with torch.no_grad():
        for i in range(2):
            for k in range(a.shape[1]):
                if a[i, k].max() == a[i, k].min():
                    continue
                m = torch.nn.functional.interpolate(
                    a[i, k][None, None], size=(32, 32), mode="bilinear"
                )[0, 0]
                m = (m - m.min()) / (m.max() - m.min())
                p = model(x[i : i + 1] * m).softmax(1)[0, t[i]]
                ref[i] += p * a[i, k]
    ref = torch.nn.functional.interpolate(torch.relu(ref)[:, None], size=(32, 32), mode="bilinear")[
        :, 0
    ]
    ours = EXPLAINERS.create("scorecam", batch_size=5).explain(model, x, t)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_ablationcam_matches_a_per_channel_loop():
    model, x, t = tiny_lenet(), images(2), torch.tensor([3, 6])
    layer = model.get_submodule("net.features.4")
    store: dict = {}

    def hook(m, i, o):
        store["a"] = o
        if "k" in store:
            o = o.clone()
            o[:, store["k"]] = 0
            return o
        return None

    h = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            y = model(x).gather(1, t[:, None])[:, 0]
            a = store["a"]
            ref = torch.zeros(2, *a.shape[-2:])
            for i in range(2):
                for k in range(a.shape[1]):
                    store["k"] = k
                    yk = model(x[i : i + 1])[0, t[i]]
                    ref[i] += (y[i] - yk) / y[i].abs() * a[i, k]
                store.pop("k")
    finally:
        h.remove()
    ref = torch.nn.functional.interpolate(torch.relu(ref)[:, None], size=(32, 32), mode="bilinear")[
        :, 0
    ]
    ours = EXPLAINERS.create("ablationcam", batch_size=3).explain(model, x, t)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


class ConcatSkip(nn.Module):
    """A DenseNet-style block: the layer's output is concatenated with its input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(7 * 4, 5))

    def forward(self, x):
        return self.head(torch.cat([torch.relu(self.conv(x)), x], dim=1))


@pytest.mark.parametrize(
    "model_fn, layer",
    [
        (tiny_lenet, None),
        (tiny_resnet, None),  # the last block's output
        (tiny_resnet, "net.layers.1.conv1"),  # a residual connection bypasses the layer
    ],
)
def test_ablationcam_shared_upstream_equals_full_passes(model_fn, layer, recwarn):
    model, x, t = model_fn(), images(3), torch.tensor([1, 4, 7])
    shared = EXPLAINERS.create("ablationcam", layer=layer).explain(model, x, t)
    full = EXPLAINERS.create("ablationcam", layer=layer, share_upstream=False).explain(model, x, t)
    assert full.abs().max() > 0
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-6 * float(full.abs().max()))
    assert not [w for w in recwarn if "share" in str(w.message)]


def test_ablationcam_falls_back_when_the_tail_cannot_take_the_expanded_batch():
    model, x, t = ConcatSkip().eval(), images(2, 16), torch.tensor([1, 3])
    with pytest.warns(RuntimeWarning, match="full forward pass"):
        shared = EXPLAINERS.create("ablationcam", layer="conv").explain(model, x, t)
    full = EXPLAINERS.create("ablationcam", layer="conv", share_upstream=False).explain(model, x, t)
    torch.testing.assert_close(shared, full, rtol=0, atol=0)


def test_cam_without_conv_layer_names_explainer_and_option():
    model = Linear()
    for name in ("gradcam", "scorecam"):
        with pytest.raises(ValueError) as err:
            EXPLAINERS.create(name).explain(model, torch.rand(1, 3, 16, 16), torch.tensor([0]))
        assert name in str(err.value) and "layer" in str(err.value)


def test_cam_bad_layer_name_suggests():
    with pytest.raises(ValueError) as err:
        EXPLAINERS.create("gradcam", layer="net.feature.3").explain(
            tiny_lenet(), images(1), torch.tensor([0])
        )
    msg = str(err.value)
    assert "net.feature.3" in msg and "net.features.3" in msg


def test_cam_layer_with_non_spatial_output_is_refused():
    with pytest.raises(RuntimeError, match="net.classifier.0"):
        EXPLAINERS.create("gradcam", layer="net.classifier.0").explain(
            tiny_lenet(), images(1), torch.tensor([0])
        )


def _vgg_like(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(inplace),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 5),
    ).eval()


@pytest.mark.parametrize("name", CAM_NAMES)
@pytest.mark.parametrize("layer", ["2", "3"])
def test_cam_layer_followed_by_or_being_an_inplace_relu(name, layer):
    """VGG-style Conv2d -> ReLU(inplace=True): on the conv ("2") the CAM must see the conv's output,
    not the ReLU's; on the in-place ReLU itself ("3", VGG's conventional layer) the same maps as
    with a plain ReLU."""
    x, t = images(2, 16), torch.tensor([1, 3])
    plain = EXPLAINERS.create(name, layer=layer).explain(_vgg_like(False), x, t)
    assert plain.abs().max() > 0
    inplace = EXPLAINERS.create(name, layer=layer).explain(_vgg_like(True), x, t)
    torch.testing.assert_close(inplace, plain, rtol=1e-5, atol=1e-7)


def test_cam_works_with_frozen_parameters():
    model = tiny_lenet()
    for p in model.parameters():
        p.requires_grad_(False)
    x, t = images(2), torch.tensor([1, 2])
    frozen = EXPLAINERS.create("gradcam").explain(model, x, t)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.testing.assert_close(frozen, EXPLAINERS.create("gradcam").explain(model, x, t))


# ----------------------------------------------------------------------------- gradient methods


def _delta(model, x, b, t):
    with torch.no_grad():
        return (model(x) - model(b)).gather(1, t[:, None])[:, 0]


@pytest.mark.parametrize("baseline", ["black", "white", "mean", "blur", "uniform"])
def test_integrated_gradients_completeness(baseline):
    """sum of attributions = f(x) - f(baseline), tightly on a smooth CNN."""
    model, x, t = smooth_cnn(), images(3), torch.tensor([0, 4, 9])
    ex = EXPLAINERS.create("integrated_gradients", n_steps=32, baseline=baseline)
    attr = ex.explain(model, x, t, generator=gen())
    # rebuild the baseline the explainer used (uniform: from the same per-sample seeds)
    b = make_baseline(baseline, x, sample_generators(x, gen()) if baseline == "uniform" else None)
    delta = _delta(model, x, b, t)
    assert delta.abs().min() > 1e-2, "degenerate test: f(x) == f(baseline)"
    torch.testing.assert_close(attr.sum((1, 2)), delta, rtol=1e-3, atol=1e-5)


def test_integrated_gradients_completeness_on_relu_lenet():
    """ReLU + max-pool nets have kinks along the path: Riemann sums converge, more slowly."""
    model, x, t = tiny_lenet(), images(3), torch.tensor([1, 2, 3])
    ex = EXPLAINERS.create(
        "integrated_gradients", n_steps=256, method="riemann_trapezoid", internal_batch_size=256
    )
    delta = _delta(model, x, torch.zeros_like(x), t)
    assert delta.abs().min() > 1e-2
    torch.testing.assert_close(ex.explain(model, x, t).sum((1, 2)), delta, rtol=0.03, atol=1e-4)


def test_integrated_gradients_completeness_check_can_fail():
    """Sanity of the tests above: 2 left-Riemann steps are far from the integral."""
    model, x, t = smooth_cnn(), images(3), torch.tensor([0, 4, 9])
    attr = EXPLAINERS.create("integrated_gradients", n_steps=2, method="riemann_left").explain(
        model, x, t
    )
    delta = _delta(model, x, torch.zeros_like(x), t)
    assert not torch.allclose(attr.sum((1, 2)), delta, rtol=1e-2, atol=1e-4)


def test_input_x_gradient_of_linear_model_is_weight_times_input():
    model = Linear()
    x, t = torch.rand(3, 3, 16, 16, generator=gen()), torch.tensor([0, 2, 3])
    expected = (model.weight_map(t) * x).sum(1)
    ours = EXPLAINERS.create("input_x_gradient").explain(model, x, t)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("integrated_gradients", {"n_steps": 5}),
        ("gradient_shap", {"n_samples": 4, "baselines": "black"}),
    ],
)
def test_path_methods_on_linear_model_equal_weight_times_input(name, opts):
    model = Linear()
    x, t = torch.rand(3, 3, 16, 16, generator=gen()), torch.tensor([1, 2, 3])
    ours = EXPLAINERS.create(name, **opts).explain(model, x, t, generator=gen())
    torch.testing.assert_close(ours, (model.weight_map(t) * x).sum(1), rtol=1e-5, atol=1e-6)


def test_saliency_of_linear_model_is_max_abs_weight():
    model = Linear()
    x, t = torch.rand(2, 3, 16, 16, generator=gen()), torch.tensor([1, 3])
    ours = EXPLAINERS.create("saliency").explain(model, x, t)
    torch.testing.assert_close(ours, model.weight_map(t).abs().amax(1), rtol=0, atol=0)


def test_smoothgrad_of_linear_model_is_the_gradient_and_noise_is_seeded():
    model = Linear()
    x, t = torch.rand(2, 3, 16, 16, generator=gen()), torch.tensor([1, 3])
    ours = EXPLAINERS.create("smoothgrad", nt_samples=3, reduction="sum").explain(
        model, x, t, generator=gen()
    )
    torch.testing.assert_close(ours, model.weight_map(t).abs().sum(1), rtol=1e-5, atol=1e-7)
    m = tiny_lenet()
    ex = EXPLAINERS.create("smoothgrad", nt_samples=3)
    a = ex.explain(m, images(2), torch.tensor([0, 1]), generator=gen(1))
    b = ex.explain(m, images(2), torch.tensor([0, 1]), generator=gen(2))
    assert not torch.allclose(a, b), "different seeds must give different noise"


def test_gradient_shap_completeness_in_expectation():
    """E[sum of attributions] = f(x) - f(0) with a black baseline (Monte Carlo, 400 draws)."""
    model, x, t = smooth_cnn(), images(2), torch.tensor([1, 5])
    attr = EXPLAINERS.create(
        "gradient_shap", n_samples=400, baselines="black", batch_size=400
    ).explain(model, x, t, generator=gen())
    delta = _delta(model, x, torch.zeros_like(x), t)
    torch.testing.assert_close(
        attr.sum((1, 2)), delta, rtol=0, atol=0.05 * float(delta.abs().max())
    )


# ----------------------------------------------------------------------------- perturbation methods


@pytest.mark.parametrize(
    "window, stride, baseline",
    [
        (8, 8, "black"),  # windows tile the image
        (8, 6, "blur"),  # overlapping windows, the last one clipped at the border
        ((6, 10), (5, 7), "white"),
    ],
)
def test_occlusion_equals_captum_occlusion(window, stride, baseline):
    model, x, t = tiny_lenet(), images(3), torch.tensor([1, 5, 8])
    ex = EXPLAINERS.create(
        "occlusion", window=window, stride=stride, baseline=baseline, perturbations_per_eval=7
    )
    ours = ex.explain(model, x, t)
    (wh, ww), (sh, sw) = ex.window, ex.stride
    ref = Occlusion(model).attribute(
        x,
        sliding_window_shapes=(3, wh, ww),
        strides=(3, sh, sw),
        baselines=make_baseline(baseline, x),
        target=t,
    )
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref.mean(1), rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_occlusion_of_linear_model_is_window_averaged_contribution():
    """For a linear model, occluding a window removes sum_{p in window} w_p x_p."""
    model = Linear()
    x, t = torch.rand(1, 3, 16, 16, generator=gen()), torch.tensor([2])
    ours = EXPLAINERS.create("occlusion", window=4, stride=4, reduction="mean").explain(model, x, t)
    contrib = (model.weight_map(t) * x)[0].sum(0)  # (16, 16)
    block = contrib.view(4, 4, 4, 4).sum((1, 3))  # per 4x4 window
    torch.testing.assert_close(
        ours[0], block.repeat_interleave(4, 0).repeat_interleave(4, 1), rtol=1e-4, atol=1e-5
    )


def _captum_surrogate_oracle(name: str, model, x, t, ex):
    """Run Captum's Lime with exactly our perturbations and weights; return its (N, H, W) maps."""
    segs = ex.segments(x)
    gens = sample_generators(x, gen())
    maps = []
    for i in range(len(x)):
        d = int(segs[i].max()) + 1
        z, w = ex.sample(d, gens[i])
        rows = iter(z.long())
        weights = iter(w.tolist())
        model_cls = (
            SkLearnRidge(alpha=ex.ridge_alpha) if name == "lime" else SkLearnLinearRegression()
        )
        lime = Lime(
            model,
            interpretable_model=model_cls,
            similarity_func=lambda *a, _w=weights, **k: next(_w),
            perturb_func=lambda *a, _r=rows, **k: next(_r)[None],
        )
        fm = torch.from_numpy(segs[i])[None, None].expand(1, 3, *segs[i].shape)
        attr = lime.attribute(
            x[i : i + 1],
            target=int(t[i]),
            baselines=0.0,
            feature_mask=fm,
            n_samples=ex.n_samples,
            perturbations_per_eval=1,
        )
        maps.append(attr[0, 0])
    return torch.stack(maps)


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_surrogates_match_captum_lime_on_the_same_perturbations(name):
    model, x, t = tiny_lenet(), images(2), torch.tensor([2, 7])
    ex = EXPLAINERS.create(name, n_samples=40, n_segments=10)
    ours = ex.explain(model, x, t, generator=gen())
    ref = _captum_surrogate_oracle(name, model, x, t, ex)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref.float(), rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_surrogates_recover_a_linear_model_exactly(name):
    """A linear model is additive over superpixels: an unregularised surrogate fits it exactly."""
    model = Linear()
    x, t = images(2, 16), torch.tensor([0, 3])
    opts = {"ridge_alpha": 0.0} if name == "lime" else {}
    ex = EXPLAINERS.create(name, n_samples=60, n_segments=6, **opts)
    ours = ex.explain(model, x, t, generator=gen())
    contrib = (model.weight_map(t) * x).sum(1)  # (N, H, W) per-pixel w.x
    for i, seg in enumerate(ex.segments(x)):
        seg = torch.from_numpy(seg)
        per_seg = torch.zeros(int(seg.max()) + 1).index_add_(0, seg.flatten(), contrib[i].flatten())
        torch.testing.assert_close(ours[i], per_seg[seg], rtol=1e-4, atol=1e-5)


def test_kernel_shap_matches_captum_kernelshap_on_linear_model():
    """Captum's own KernelShap (its own sampling) gives the same exact Shapley values."""
    model = Linear()
    x, t = images(1, 16), torch.tensor([1])
    ex = EXPLAINERS.create("kernel_shap", n_samples=50, n_segments=6)
    ours = ex.explain(model, x, t, generator=gen())
    seg = torch.from_numpy(ex.segments(x)[0])
    fm = seg[None, None].expand(1, 3, *seg.shape)
    torch.manual_seed(0)
    ref = KernelShap(model).attribute(x, target=1, baselines=0.0, feature_mask=fm, n_samples=50)[
        0, 0
    ]
    torch.testing.assert_close(ours[0], ref.float(), rtol=1e-3, atol=1e-5)


def test_kernel_shap_efficiency():
    """Coefficients sum (over superpixels) to f(x) - f(baseline)."""
    model, x, t = tiny_lenet(), images(2), torch.tensor([2, 7])
    ex = EXPLAINERS.create("kernel_shap", n_samples=30, n_segments=10)
    ours = ex.explain(model, x, t, generator=gen())
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None])[:, 0]
    for i, seg in enumerate(ex.segments(x)):
        seg = torch.from_numpy(seg).flatten()
        coef = torch.zeros(int(seg.max()) + 1).index_copy_(0, seg, ours[i].flatten())
        torch.testing.assert_close(coef.sum(), delta[i], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_surrogates_survive_a_single_superpixel(name):
    model, x, t = tiny_lenet(), images(2), torch.tensor([1, 2])
    ex = EXPLAINERS.create(name, n_samples=8, n_segments=1)
    assert all(int(s.max()) == 0 for s in ex.segments(x))
    out = ex.explain(model, x, t, generator=gen())
    assert out.shape == (2, 32, 32) and torch.isfinite(out).all()
    if name == "kernel_shap":  # the only player gets f(x) - f(baseline)
        torch.testing.assert_close(
            out[:, 0, 0], _delta(model, x, torch.zeros_like(x), t), rtol=1e-3, atol=1e-5
        )


def test_lime_uses_the_generator():
    model, x, t = tiny_lenet(), images(1), torch.tensor([4])
    ex = EXPLAINERS.create("lime", n_samples=20, n_segments=8)
    a, b = ex.explain(model, x, t, generator=gen(1)), ex.explain(model, x, t, generator=gen(2))
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------- baselines and options


def test_random_is_seeded_noise():
    x, t = images(2), torch.tensor([0, 0])
    ex = EXPLAINERS.create("random")
    a, b = (
        ex.explain(tiny_lenet(), x, t, generator=gen(1)),
        ex.explain(tiny_lenet(), x, t, generator=gen(2)),
    )
    assert not torch.allclose(a, b)
    assert 0 <= float(a.min()) and float(a.max()) < 1
    assert a.std() > 0.2  # uniform noise, not a constant


def test_sobel_is_model_independent_edge_magnitude():
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, :, 8:] = 1.0  # a vertical edge between columns 7 and 8
    ex = EXPLAINERS.create("sobel")
    a = ex.explain(tiny_lenet(seed=0), x, torch.tensor([0]))
    b = ex.explain(Linear(), x, torch.tensor([0]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (
        torch.all(a[0, :, 7:9] > 0) and torch.all(a[0, :, :6] == 0) and torch.all(a[0, :, 10:] == 0)
    )
    assert ex.explain(Linear(), torch.full((1, 3, 16, 16), 0.3), torch.tensor([0])).abs().max() == 0


@pytest.mark.parametrize(
    "name, opts, words",
    [
        ("saliency", {"reduction": "median"}, ["median", "sum", "max_abs"]),
        ("integrated_gradients", {"baseline": "grey"}, ["grey", "black", "uniform"]),
        ("integrated_gradients", {"n_steps": 0}, ["n_steps", "0"]),
        ("lime", {"n_samples": 1}, ["n_samples", "2"]),
        ("occlusion", {"window": (4, 4, 4)}, ["window"]),
        ("gradient_shap", {"baselines": ["black", "noise"]}, ["noise", "uniform"]),
        ("smoothgrad", {"nt_type": "smoothgrad2"}, ["smoothgrad2", "vargrad"]),
        ("scorecam", {"batch_size": 0}, ["batch_size"]),
        ("random", {"distribution": "gauss"}, ["gauss", "normal"]),
    ],
)
def test_bad_options_name_the_value_and_the_choices(name, opts, words):
    with pytest.raises(ValueError) as err:
        EXPLAINERS.create(name, **opts)
    for w in [name, *words]:
        assert w in str(err.value)


def test_reduction_option_is_applied():
    model = Linear()
    x, t = torch.rand(2, 3, 16, 16, generator=gen()), torch.tensor([0, 1])
    raw = model.weight_map(t) * x
    for rule in ("sum", "abs_sum", "max_abs", "mean"):
        ours = EXPLAINERS.create("input_x_gradient", reduction=rule).explain(model, x, t)
        torch.testing.assert_close(ours, reduce_channels(raw, rule), rtol=0, atol=0)


# -------------------------------------------------------------- captum_lime (Captum's default Lime)


def _scaled_lenet(channels: int = 3, size: int = 12) -> nn.Module:
    """A small LeNet whose logits vary by several units, so Lasso(alpha=0.01) keeps many
    coefficients."""
    model = tiny_lenet(size, channels=channels)
    with torch.no_grad():
        model.net.classifier[-1].weight.mul_(40.0)
    return model


def _captum_lime_oracle(model, x, t, ex, generator):
    """Captum's own Lime (default interpretable model, similarity kernel, feature mask unless the
    explainer groups pixels) fed exactly our per-sample Bernoulli draws; returns (N, H, W)."""
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    n, c, h, w = x.shape
    gens = sample_generators(x, generator)
    maps = []
    for i in range(n):
        z = ex.sample(ex.n_features(c, h, w), gens[i])

        def draws(inp, _z=z, **kw):
            for row in _z.long():
                yield row[None]

        opts = {}
        if (ex.distance, ex.kernel_width) != ("cosine", 1.0):  # else Captum's own default kernel
            opts["similarity_func"] = get_exp_kernel_similarity_function(
                ex.distance, ex.kernel_width
            )
        if ex.alpha != 0.01:  # else Captum's own default SkLearnLasso(alpha=0.01)
            opts["interpretable_model"] = SkLearnLasso(alpha=ex.alpha)
        lime = Lime(model, perturb_func=draws, **opts)
        fm = (
            None
            if ex.features == "element"
            else torch.arange(h * w).view(1, 1, h, w).expand(1, c, h, w)
        )
        base = make_baseline(ex.baseline, x[i : i + 1])
        attr = lime.attribute(
            x[i : i + 1], target=int(t[i]), baselines=base, feature_mask=fm, n_samples=ex.n_samples
        )
        maps.append(reduce_channels(attr, ex.reduction)[0])
    return torch.stack(maps)


def test_captum_lime_defaults_are_captums():
    import inspect

    from captum.attr._core.lime import get_exp_kernel_similarity_function

    ex = EXPLAINERS.create("captum_lime")
    assert inspect.signature(Lime.attribute).parameters["n_samples"].default == ex.n_samples == 25
    kernel = inspect.signature(get_exp_kernel_similarity_function).parameters
    assert kernel["distance_mode"].default == ex.distance == "cosine"
    assert kernel["kernel_width"].default == ex.kernel_width == 1.0
    default_model = Lime(Linear()).interpretable_model
    assert type(default_model).__name__ == "SkLearnLasso" and default_model.construct_kwargs == {
        "alpha": ex.alpha
    }
    assert (
        ex.alpha == 0.01
        and ex.features == "element"
        and ex.baseline == "black"
        and ex.reduction == "sum"
    )


@pytest.mark.parametrize(
    "opts, channels",
    [
        ({}, 3),  # every default
        ({}, 1),  # grey images (Fashion-MNIST-like)
        ({"features": "pixel", "n_samples": 40}, 3),
        ({"baseline": "white", "distance": "euclidean", "kernel_width": 3.0, "alpha": 0.05}, 3),
    ],
)
def test_captum_lime_equals_captum_lime_on_the_same_draws(opts, channels):
    model = _scaled_lenet(channels)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, channels, 12, 12, generator=g)
    t = torch.tensor([1, 6])
    ex = EXPLAINERS.create("captum_lime", **opts)
    ours = ex.explain(model, x, t, generator=gen())
    ref = _captum_lime_oracle(model, x, t, ex, gen())
    assert (ref != 0).sum() >= 10, "the oracle case must keep some coefficients"
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_captum_lime_recovers_a_linear_model():
    """f(x) = W x + b is linear in the on/off draws: Lasso with a small alpha returns w_i * x_i per
    element (baseline 0), and Captum's own Lime, with its own random draws, agrees statistically."""
    model = Linear(shape=(1, 6, 6), classes=3)
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
    x = torch.rand(2, 1, 6, 6, generator=gen(7)) + 0.2
    t = torch.tensor([0, 2])
    truth = (model.weight_map(t) * x).sum(1)
    ex = EXPLAINERS.create("captum_lime", n_samples=400, alpha=1e-4)
    ours = ex.explain(model, x, t, generator=gen())
    torch.testing.assert_close(ours, truth, rtol=0, atol=0.02 * float(truth.abs().max()))
    # Captum's default Lime (alpha 0.01), its own sampling: both recover the same map up to
    # shrinkage
    torch.manual_seed(0)
    ref = Lime(model).attribute(x, target=t, n_samples=400).sum(1)
    ours_default = EXPLAINERS.create("captum_lime", n_samples=400).explain(
        model, x, t, generator=gen()
    )
    for a in (ref, ours_default):
        assert torch.corrcoef(torch.stack([a.flatten(), truth.flatten()]))[0, 1] > 0.99
        torch.testing.assert_close(a, truth, rtol=0, atol=0.1 * float(truth.abs().max()))


def test_captum_lime_seeds_each_sample():
    """Maps do not depend on the batch (per-sample generators) but do depend on the generator."""
    model = _scaled_lenet(1)
    x, t = torch.rand(3, 1, 12, 12, generator=gen(9)), torch.tensor([0, 4, 8])
    ex = EXPLAINERS.create("captum_lime", perturbations_per_eval=7)
    batch = ex.explain(model, x, t, generator=gen(1))
    alone = torch.cat(
        [ex.explain(model, x[i : i + 1], t[i : i + 1], generator=gen(1)) for i in range(3)]
    )
    torch.testing.assert_close(batch, alone, rtol=0, atol=0)
    assert not torch.equal(batch, ex.explain(model, x, t, generator=gen(2)))
    assert (batch != 0).float().mean() < 0.5  # Lasso on 25 draws of 144 features: a sparse map


@pytest.mark.parametrize(
    "opts, words",
    [
        ({"features": "superpixel"}, ["features", "element", "pixel"]),
        ({"distance": "l1"}, ["distance", "cosine", "euclidean"]),
        ({"alpha": 0}, ["alpha"]),
    ],
)
def test_captum_lime_bad_options(opts, words):
    with pytest.raises(ValueError) as err:
        EXPLAINERS.create("captum_lime", **opts)
    for w in ["captum_lime", *words]:
        assert w in str(err.value)
