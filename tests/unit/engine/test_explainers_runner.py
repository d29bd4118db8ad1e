"""explain_images: the checked front door to the runner's batching path
(batching.explain_in_batches)."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import tiny_lenet
from xaiarena.engine.batching import explain_images
from xaiarena.registry import EXPLAINERS


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(5)
    blocks = torch.rand(7, 3, 4, 4, generator=g)
    x = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3) + 0.05 * torch.rand(
        7, 3, 32, 32, generator=g
    )
    return tiny_lenet(), x.clamp(0, 1), torch.randint(10, (7,), generator=g)


CASES = {
    "gradcam": {},
    "random": {},
    "smoothgrad": {"nt_samples": 3},
    "lime": {"n_samples": 16, "n_segments": 8},
}


@pytest.mark.parametrize("name", list(CASES))
def test_maps_do_not_depend_on_batch_size(name, setup):
    model, x, t = setup
    ex = EXPLAINERS.create(name, **CASES[name])
    runs = [
        explain_images(
            ex,
            model,
            x,
            t,
            batch_size=bs,
            generator=torch.Generator().manual_seed(11),
            device="cpu",
            progress=bs == 3,
        )
        for bs in (2, 3, 7)
    ]
    for out in runs:
        assert out.shape == (7, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    scale = runs[0].abs().max().clamp_min(1e-6)
    for out in runs[1:]:
        torch.testing.assert_close(out / scale, runs[0] / scale, rtol=0, atol=1e-5)


def test_seed_matters_for_random_explainers(setup):
    model, x, t = setup
    ex = EXPLAINERS.create("random")
    a = explain_images(ex, model, x, t, 4, torch.Generator().manual_seed(1), "cpu", progress=False)
    b = explain_images(ex, model, x, t, 4, torch.Generator().manual_seed(2), "cpu", progress=False)
    c = explain_images(ex, model, x, t, 4, torch.Generator().manual_seed(1), "cpu", progress=False)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_equals_a_direct_explain_call_for_deterministic_methods(setup):
    model, x, t = setup
    ex = EXPLAINERS.create("integrated_gradients", n_steps=4)
    out = explain_images(ex, model, x, t, 3, None, torch.device("cpu"), progress=False)
    torch.testing.assert_close(out, ex.explain(model, x, t), rtol=1e-5, atol=1e-7)


def test_empty_input(setup):
    model, _, _ = setup
    out = explain_images(
        EXPLAINERS.create("gradcam"),
        model,
        torch.zeros(0, 3, 32, 32),
        torch.zeros(0, dtype=torch.long),
        4,
        None,
        "cpu",
        progress=False,
    )
    assert out.shape == (0, 32, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(2, 32, 32)}, "N, C, H, W"),
        ({"images": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}, "float"),
        ({"batch_size": 0}, "batch_size"),
        ({"targets": torch.zeros(3, dtype=torch.long)}, "3 targets for 2 images"),
    ],
)
def test_bad_arguments(kwargs, match, setup):
    model, x, t = setup
    args = {"images": x[:2], "targets": t[:2], "batch_size": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        explain_images(
            EXPLAINERS.create("sobel"),
            model,
            args["images"],
            args["targets"],
            args["batch_size"],
            None,
            "cpu",
            progress=False,
        )


def test_model_on_another_device_is_refused(setup):
    _, x, t = setup
    model = tiny_lenet().to("meta")
    with pytest.raises(ValueError, match="model is on meta"):
        explain_images(EXPLAINERS.create("gradcam"), model, x, t, 4, None, "cpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_device_returns_cpu_maps(setup):
    model, x, t = setup
    ex = EXPLAINERS.create("gradcam")
    out = explain_images(ex, tiny_lenet().cuda(), x, t, 4, None, "cuda", progress=False)
    assert out.device.type == "cpu"
    torch.testing.assert_close(
        out, explain_images(ex, model, x, t, 4, None, "cpu", progress=False), rtol=1e-3, atol=1e-5
    )
