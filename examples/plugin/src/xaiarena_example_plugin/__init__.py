"""An example xaiarena plugin: the VarGrad explainer and the top_mass metric.

Importing this module registers both (``xaiarena`` imports it through the entry point
declared in ``pyproject.toml``, or through a config's ``plugins: [xaiarena_example_plugin]``).
A plugin uses only xaiarena's public interfaces: the registries, ``Explainer`` and
``Metric``, per-sample random streams (:mod:`xaiarena.ops.seeding`) and declared option
constraints (:mod:`xaiarena.ops.validation`). ``tests/test_example_plugin.py`` runs xaiarena's
conformance kit (:mod:`xaiarena.testing`) on both.
"""

from __future__ import annotations

import logging

import torch

from xaiarena.explainers import Explainer
from xaiarena.metrics import EvalBatch, Metric, MetricOutput
from xaiarena.ops.seeding import sample_generators
from xaiarena.ops.validation import FRACTION, POSITIVE, Interval, set_options
from xaiarena.registry import EXPLAINERS, METRICS

__all__ = ["TopMass", "VarGrad"]

log = logging.getLogger(__name__)


@EXPLAINERS.register(
    "vargrad",
    description="VarGrad (Adebayo et al. 2018): variance of the target logit's input gradient over "
    "n_samples copies with N(0, stdevs) pixel noise, channels summed",
)
class VarGrad(Explainer):
    """Per-pixel variance of ``d logit_target / d x`` over noisy copies of ``x``.

    Each sample's noise comes from its own generator (``sample_generators``: one draw from the
    ``generator`` xaiarena passes, seeded per run, and a hash of the sample), drawn on the CPU: a
    sample's map does not depend on its batch mates or the batch size, a run is reproducible,
    and CPU and GPU runs see the same draws.
    """

    name = "vargrad"
    family = "gradient"
    modality = ("image",)
    cost_knobs = ("n_samples",)
    option_constraints = {"n_samples": Interval(int, 2, None), "stdevs": POSITIVE}

    def __init__(self, n_samples: int = 8, stdevs: float = 0.15):
        set_options(self, n_samples=n_samples, stdevs=stdevs)

    def attribute(self, model, inputs, targets, *, generator=None):
        # (N, n_samples, C, H, W): every sample's draws from its own stream
        noise = torch.stack(
            [
                torch.randn((self.n_samples, *inputs.shape[1:]), generator=g)
                for g in sample_generators(inputs, generator)
            ]
        )
        noise = noise.to(inputs.device, inputs.dtype) * self.stdevs
        grads = []
        for s in range(self.n_samples):
            x = (inputs + noise[:, s]).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(x)
                picked = logits.gather(1, targets.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(picked, x)
            grads.append(grad)
        return torch.stack(grads).var(0, unbiased=True).sum(1)


@METRICS.register(
    "top_mass",
    description="Share of the attribution magnitude in the top `fraction` of pixels (default 10%); "
    "1 = all of it",
)
class TopMass(Metric):
    """``sum of the largest k |a| / sum |a|`` with ``k = ceil(fraction * H * W)``: how concentrated
    a map is. Needs no model calls. Higher is more concentrated."""

    name = "top_mass"
    category = "complexity"
    higher_is_better = True
    modality = ("image",)
    value_range = (0.0, 1.0)
    requires = ()
    option_constraints = {"fraction": FRACTION}

    def __init__(self, fraction: float = 0.1):
        set_options(self, fraction=fraction)

    def evaluate(
        self, batch: EvalBatch, attributions, *, generator=None, explainers=None
    ) -> MetricOutput:
        scores = {}
        for key, a in attributions.items():
            m = a.detach().abs().flatten(1).double()
            k = max(1, int(torch.ceil(torch.tensor(self.fraction * m.shape[1])).item()))
            total = m.sum(1)
            top = m.topk(k, dim=1).values.sum(1)
            if bool((total == 0).any()):
                log.warning(
                    "top_mass: %d all-zero map(s) of '%s' scored NaN", int((total == 0).sum()), key
                )
            scores[key] = torch.where(total > 0, top / total.clamp_min(1e-300), torch.nan).float()
        return MetricOutput(scores={self.name: scores})
