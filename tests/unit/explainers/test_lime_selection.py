"""LIME's lime_image-style selection of the top superpixels (num_features, positive_only)."""

from __future__ import annotations

import pytest
import torch

from xaiarena.registry import EXPLAINERS
from xaiarena.testing.fixtures import gen

OPTS = {"n_samples": 24, "n_segments": 12}


def superpixel_values(maps: torch.Tensor, segs) -> list[torch.Tensor]:
    """Per image, the map's value on each superpixel (maps are constant on superpixels)."""
    return [
        torch.stack([m[torch.from_numpy(s == j)][0] for j in range(int(s.max()) + 1)])
        for m, s in zip(maps, segs, strict=True)
    ]


@pytest.mark.parametrize("positive_only", [True, False])
def test_num_features_keeps_exactly_the_top_superpixels(model, data, positive_only):
    x, t = data
    full_ex = EXPLAINERS.create("lime", **OPTS)
    top_ex = EXPLAINERS.create("lime", **OPTS, num_features=3, positive_only=positive_only)
    full = full_ex.explain(model, x, t, generator=gen(7))
    top = top_ex.explain(model, x, t, generator=gen(7))
    segs = full_ex.segments(x)
    for coef, kept in zip(superpixel_values(full, segs), superpixel_values(top, segs), strict=True):
        score = coef if positive_only else coef.abs()
        order = torch.sort(score, descending=True, stable=True).indices
        want = order[:3]
        if positive_only:
            want = want[coef[want] > 0]
        expected = torch.zeros_like(coef)
        expected[want] = coef[want]
        torch.testing.assert_close(kept, expected)
        assert int((kept != 0).sum()) == len(want) <= 3


def test_bad_selection_options_name_the_value():
    with pytest.raises(ValueError, match=r"num_features=0 is not valid"):
        EXPLAINERS.create("lime", num_features=0)
    with pytest.raises(ValueError, match=r"positive_only='yes' is not valid"):
        EXPLAINERS.create("lime", positive_only="yes")


def test_selections_reuse_the_full_fits_forward_passes_and_only_those(monkeypatch):
    """lime then lime(num_features=K) on the same model, images and seed: one set of forward
    passes, and the reused map equals a fresh computation; another seed, other weights or
    another sampling option recompute."""
    import xaiarena.explainers.perturbation as P

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    ).eval()
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    calls = []
    real = P.forward_scores
    monkeypatch.setattr(P, "forward_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    P._RESPONSES.clear()

    def run(ex, seed=1):
        return ex.attribute(net, x, t, generator=torch.Generator().manual_seed(seed))

    run(EXPLAINERS.create("lime", n_samples=40))
    reused = run(EXPLAINERS.create("lime", n_samples=40, num_features=4, positive_only=False))
    assert len(calls) == 1
    P._RESPONSES.clear()
    fresh = run(EXPLAINERS.create("lime", n_samples=40, num_features=4, positive_only=False))
    assert len(calls) == 2 and torch.equal(reused, fresh)
    run(EXPLAINERS.create("lime", n_samples=40, num_features=4), seed=2)
    assert len(calls) == 3
    run(EXPLAINERS.create("lime", n_samples=40, kernel_width=0.5), seed=2)
    assert len(calls) == 4
    with torch.no_grad():
        net[4].weight += 1
    run(EXPLAINERS.create("lime", n_samples=40, kernel_width=0.5), seed=2)
    assert len(calls) == 5
