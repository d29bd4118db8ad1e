"""The explainer interface (docs/explainers.md).

An explainer maps a model, a batch of pixel-space inputs ``(N, C, H, W)`` in
[0, 1] and target classes ``(N,)`` to one attribution map per sample,
``(N, H, W)`` float at input resolution. Higher means more important; the sign
is kept.

Subclasses set the class attributes below and implement :meth:`attribute`.
Register them with ``@EXPLAINERS.register("name", description=...)``; the
constructor's keyword arguments are the options a config may set (the config
validator checks names against the signature). What each option accepts is
declared in ``option_constraints`` and checked in the constructor by
:func:`xaiarena.ops.validation.set_options` (one message format for every bad
value); :func:`xaiarena.testing.check_explainer` checks the whole contract.

Learned explainers (DiET) override :meth:`fit`, which the runner calls once with
the training split before any :meth:`explain` call, and report which model
their maps explain through :meth:`explained_model`; :meth:`prepare_set` sees all
inputs of a view before they are explained in batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..errors import ContractError
from ..ops.fill import FILLS, FillName
from ..ops.modes import eval_mode

Reduction = Literal["sum", "abs_sum", "max_abs", "mean"]
REDUCTIONS = ("sum", "abs_sum", "max_abs", "mean")
#: baselines (reference inputs) that IG, GradientSHAP, DeepLIFT, occlusion, LIME and KernelSHAP
#: accept: the fills of :func:`xaiarena.ops.fill.make_fill`, built with ``blur=BASELINE_BLUR``
Baseline = FillName
BASELINES: tuple[str, ...] = FILLS


def reduce_channels(attr: torch.Tensor, rule: str = "sum") -> torch.Tensor:
    """Reduce ``(N, C, H, W)`` attributions to ``(N, H, W)``.

    ``sum`` keeps the sign (default); ``abs_sum`` sums magnitudes; ``max_abs``
    takes the largest magnitude per pixel; ``mean`` averages with sign.
    """
    if attr.ndim == 3:
        return attr
    if rule == "sum":
        return attr.sum(1)
    if rule == "abs_sum":
        return attr.abs().sum(1)
    if rule == "max_abs":
        return attr.abs().amax(1)
    if rule == "mean":
        return attr.mean(1)
    raise ValueError(f"reduction='{rule}' is not valid; choose one of {', '.join(REDUCTIONS)}")


def contract_error(explainer: Any, broke: str) -> ContractError:
    """The error of an explainer (an instance or its registered name) that broke its contract: names
    it, where it comes from (a plugin's module or file, a distribution) and what it broke."""
    from ..registry import EXPLAINERS

    name = explainer if isinstance(explainer, str) else (explainer.name or type(explainer).__name__)
    origin = ""
    try:
        entry = EXPLAINERS.entry(name)
        origin = f" (plugin {entry.origin})" if entry.origin != "builtin" else ""
    except KeyError:  # not registered (used directly): its class is all there is to name
        if not isinstance(explainer, str):
            origin = f" ({type(explainer).__module__}.{type(explainer).__qualname__})"
    return ContractError(f"explainer '{name}'{origin} broke the explainer contract: {broke}")


class Explainer(ABC):
    """Base class of every attribution method."""

    #: registry name (set by subclasses, same as the registered name)
    name: ClassVar[str] = ""
    #: "gradient" | "propagation" | "cam" | "perturbation" | "learned" | "baseline" (text:
    #: "attention")
    family: ClassVar[str] = ""
    #: modalities supported: "image", "text"
    modality: ClassVar[tuple[str, ...]] = ("image",)
    #: whether the method needs a layer (the model's declared CAM layer when not given)
    needs_layer: ClassVar[bool] = False
    #: which model the maps explain: "f_b" (the given model) or "f_s" (DiET's)
    explains: ClassVar[str] = "f_b"
    #: constructor options that set the cost (passes per sample, batch sizes)
    cost_knobs: ClassVar[tuple[str, ...]] = ()
    #: what each option accepts (:mod:`xaiarena.ops.validation`): the constructor checks its
    #: arguments against these, and :func:`xaiarena.testing.check_explainer` tries bad values
    option_constraints: ClassVar[dict[str, Any]] = {}

    def fit(  # noqa: B027 - optional hook, empty by design
        self,
        model: nn.Module,
        task: Any,
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
        cache_dir: Any = None,
    ) -> None:
        """Learn whatever the method needs from training data (default: nothing)."""

    def explained_model(self, model: nn.Module) -> nn.Module:
        """The model whose decisions the maps explain (``model`` unless learned)."""
        return model

    def report(self) -> dict[str, Any]:
        """What a learned explainer reports about its fit (run.json ``learned``); empty
        otherwise."""
        return {}

    def prepare_set(self, model: nn.Module, inputs: Any) -> None:  # noqa: B027
        """Called once with every input about to be explained on ``model``, before the batched
        :meth:`explain` calls (:func:`xaiarena.engine.batching.explain_in_batches`). Default:
        nothing. An explainer whose maps are optimised over a set (DiET's ``authors`` test-time
        procedure) computes them here, so they do not depend on the batch size."""

    @abstractmethod
    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``(N, H, W)`` float attributions for ``inputs`` w.r.t. ``targets``."""

    def explain(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Validated entry point: puts the model in eval mode and checks the output."""
        if inputs.ndim != 4:
            raise ValueError(f"{self.name}: inputs must be (N, C, H, W), got {tuple(inputs.shape)}")
        targets = torch.as_tensor(targets, device=inputs.device).long().reshape(-1)
        if len(targets) != len(inputs):
            raise ValueError(f"{self.name}: {len(targets)} targets for {len(inputs)} inputs")
        with eval_mode(model):
            out = self.attribute(model, inputs, targets, generator=generator)
        expected = (inputs.shape[0], *inputs.shape[2:])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise contract_error(
                self,
                "attribute() must return one map per input at the input's "
                f"resolution, a tensor of shape (N, H, W) = {expected}; it "
                f"returned {got}",
            )
        return out.detach().float()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"
