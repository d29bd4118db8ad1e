"""The example plugin: its components register, behave, and run through xaiarena."""

from __future__ import annotations

import pytest
import torch
import xaiarena_example_plugin as plugin
from torch import nn

from xaiarena.metrics import EvalBatch
from xaiarena.registry import EXPLAINERS, METRICS

ORIGINS = {
    "xaiarena-example-plugin",
    "xaiarena_example_plugin",
}  # installed (entry point) or imported by name


def test_components_are_registered_with_their_origin():
    assert EXPLAINERS.entry("vargrad").factory is plugin.VarGrad
    assert METRICS.entry("top_mass").factory is plugin.TopMass
    assert (
        EXPLAINERS.entry("vargrad").origin in ORIGINS
        and METRICS.entry("top_mass").origin in ORIGINS
    )
    assert METRICS.entry("top_mass").meta["category"] == "complexity"


def test_vargrad_is_seeded_and_zero_for_a_linear_model():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 5, 5)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
    vg = plugin.VarGrad(n_samples=4)
    a = vg.explain(conv, x, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    b = vg.explain(conv, x, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 5, 5) and torch.equal(a, b) and (a >= 0).all() and a.sum() > 0
    linear = nn.Sequential(
        nn.Flatten(), nn.Linear(50, 4)
    )  # the gradient does not depend on the input
    z = vg.explain(linear, x, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(z, torch.zeros_like(z), atol=1e-10)


def test_vargrad_noise_does_not_depend_on_batch_mates():
    torch.manual_seed(0)
    x = torch.rand(4, 2, 5, 5)
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
    vg, t = plugin.VarGrad(n_samples=4), torch.tensor([0, 1, 2, 3])
    full = vg.explain(conv, x, t, generator=torch.Generator().manual_seed(1))
    alone = vg.explain(conv, x[2:3], t[2:3], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(alone[0], full[2])


def test_components_pass_xaiarenas_conformance_kit():
    from xaiarena.testing import check_explainer, check_metric

    check_explainer(plugin.VarGrad, {"n_samples": 3})
    check_metric(plugin.TopMass)


def test_top_mass_values():
    maps = torch.zeros(2, 10, 10)
    maps[0, 3, 4] = 5.0  # all mass on one pixel
    maps[1] = 1.0  # uniform: the top 10% hold 10%
    batch = EvalBatch(
        model=nn.Identity(),
        inputs=torch.zeros(2, 1, 10, 10),
        targets=torch.zeros(2, dtype=torch.long),
        labels=torch.zeros(2, dtype=torch.long),
    )
    out = plugin.TopMass(fraction=0.1).evaluate(batch, {"m": maps}, generator=torch.Generator())
    assert out.scores["top_mass"]["m"].tolist() == pytest.approx([1.0, 0.1])


@pytest.mark.integration
def test_runs_in_a_config(tmp_path):
    import xaiarena

    cfg = {
        "name": "plugin_example",
        "plugins": ["xaiarena_example_plugin"],
        "data": {"name": "hard_mnist", "n_train": 300, "n_test": 40},
        "model": {"name": "lenet", "channels": [4, 8, 8]},
        "training": {"epochs": 1},
        "evaluation": {"n_samples": 6},
        "explainers": [{"name": "vargrad", "n_samples": 3}, "saliency"],
        "metrics": ["top_mass", "sparseness"],
    }
    res = xaiarena.run(cfg, out=tmp_path / "run", show_progress=False)
    s = res.summary.set_index(["explainer", "metric"])["mean"]
    assert 0 < s[("vargrad", "top_mass")] <= 1 and 0 < s[("saliency", "top_mass")] <= 1
