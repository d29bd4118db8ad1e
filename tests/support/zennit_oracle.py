"""zennit's LRP on cases a test wrote, in a subprocess: ``python zennit_oracle.py WHEEL IN OUT``.

zennit is imported from its wheel (a zip on ``sys.path``), never installed: installed, it
breaks ``import quantus`` here. ``zennit/__init__`` imports ``zennit.torchvision``, which
imports ``torchvision.models.resnet`` for two class names only; a stub stands in for it.

Each case holds a network (an xaiarena ``LeNet`` or ``ResNet``: its constructor keywords and
state dict), the network's input ``z`` (already normalised), the targets and a composite.
zennit propagates from the target logit (``grad_outputs`` = one-hot times the logit) and the
relevance at ``z`` is written back.
"""

from __future__ import annotations

import sys
import types


def _stub_torchvision() -> None:
    tv, models, resnet = (
        types.ModuleType(n)
        for n in ("torchvision", "torchvision.models", "torchvision.models.resnet")
    )
    resnet.BasicBlock = type("BasicBlock", (), {})
    resnet.Bottleneck = type("Bottleneck", (), {})
    tv.models, models.resnet = models, resnet
    sys.modules.update(
        {"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet}
    )


def _block_canonizer():
    """zennit's ResNet canonizer for xaiarena's BasicBlock: the residual addition as a ``Sum``."""
    import torch
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.canonizer_sum(torch.stack([self.shortcut(x), out], dim=-1)))

    def attributes(name, module):
        if type(module).__name__ == "BasicBlock":
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


def _composite(name: str, opts: dict, canonizers: list):
    import torch
    from zennit import composites as zc
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    eps, stab = opts["epsilon"], opts["stabilizer"]
    if name == "epsilon":
        layer_map = zc.layer_map_base(stab) + [
            (Convolution, Epsilon(eps)),
            (torch.nn.Linear, Epsilon(eps)),
        ]
        return zc.LayerMapComposite(layer_map, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(
            opts["low"],
            opts["high"],
            epsilon=eps,
            gamma=opts["gamma"],
            stabilizer=stab,
            canonizers=canonizers,
        )
    cls = {
        "epsilon_plus": zc.EpsilonPlus,
        "epsilon_plus_flat": zc.EpsilonPlusFlat,
        "epsilon_alpha_beta": zc.EpsilonAlpha2Beta1,
        "epsilon_alpha_beta_flat": zc.EpsilonAlpha2Beta1Flat,
    }[name]
    return cls(epsilon=eps, stabilizer=stab, canonizers=canonizers)


def main(wheel: str, src: str, dst: str) -> None:
    sys.path.insert(0, wheel)
    _stub_torchvision()
    import torch
    import zennit
    from zennit.canonizers import SequentialMergeBatchNorm

    from xaiarena.models.vision import LeNet, ResNet

    assert zennit.__file__.startswith(wheel), zennit.__file__
    results = []
    for case in torch.load(src, weights_only=False):
        net = (LeNet if case["arch"] == "lenet" else ResNet)(**case["kwargs"])
        net.load_state_dict(case["state"])
        net.eval()
        canonizers = [SequentialMergeBatchNorm()] + (
            [_block_canonizer()] if case["arch"] == "resnet" else []
        )
        composite = _composite(case["composite"], case["opts"], canonizers)
        z = case["z"].clone().requires_grad_(True)
        with composite.context(net) as modified:
            out = modified(z)
            onehot = torch.zeros_like(out).scatter_(1, case["targets"][:, None], 1.0)
            (rel,) = torch.autograd.grad(out, z, onehot * out)
        results.append(rel.detach())
    torch.save({"zennit": zennit.__file__, "relevance": results}, dst)


if __name__ == "__main__":
    main(*sys.argv[1:4])
