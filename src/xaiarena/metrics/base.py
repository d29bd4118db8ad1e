"""The metric interface (docs/metrics.md).

A metric scores the attribution maps of *all* explainers of a comparison for one
batch of evaluation samples in one call, so that perturbations which do not
depend on the attribution (random subsets, noise draws, random-baseline curves)
are drawn once per sample and their model outputs shared by every explainer
(common random numbers, and fewer forward passes).

Each metric declares ``name``, ``category``, ``higher_is_better``, ``modality``,
``value_range`` and what it ``requires`` ("model", "masks", "explainer" for
re-explanation, "labels"). Per-sample outputs are ``(N,)`` float tensors; NaN
only with a logged reason.

A metric with several outputs whose directions differ (keep vs remove, MoRF vs
LeRF, foreground vs background) describes each in :meth:`Metric.outputs`; the
class attributes describe its primary output. What each option accepts is declared in
``option_constraints`` (:mod:`xaiarena.ops.validation`);
:func:`xaiarena.testing.check_metric` checks the whole contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

#: ``explain(inputs, targets, generator=...) -> (N, H, W)`` for one explainer
ExplainFn = Callable[..., torch.Tensor]

CATEGORIES = ("faithfulness", "robustness", "complexity", "localisation", "agreement", "sanity")


@dataclass
class SamplePool:
    """The whole evaluation set a batch is a slice of (every batch of one run sees the same pool):
    metrics that combine a sample with other samples (``focus``'s mosaics) draw them from here, so
    that a sample's score does not depend on which samples share its batch."""

    inputs: torch.Tensor  # (P, C, H, W) pixels in [0, 1] (any device)
    labels: torch.Tensor  # (P,) true classes
    sample_ids: torch.Tensor  # (P,) distinct identities

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class EvalBatch:
    """The evaluation samples a metric sees (pixel-space inputs in [0, 1])."""

    model: nn.Module
    inputs: torch.Tensor  # (N, C, H, W)
    targets: torch.Tensor  # (N,) class explained
    labels: torch.Tensor  # (N,) true class
    masks: torch.Tensor | None = None  # (N, H, W) bool ground truth
    sample_ids: torch.Tensor | None = None  # (N,) identities: key each sample's random streams
    pool: SamplePool | None = None  # the evaluation set the batch comes from (see SamplePool)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class MetricOutput:
    """``scores[output_name][explainer] -> (N,)``; ``curves[output_name][explainer] -> (N, S)``.

    Most metrics have one output named like the metric; a metric with several
    (e.g. pixel perturbation at several keep levels) names each one.
    """

    scores: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    curve_x: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSpec:
    """Metadata of one per-sample output of a metric.

    ``ranked``: whether the output may rank explainers (summaries, paired tests, "clear
    wins"). An output is ranked only if a constant map cannot score better than a random
    map on it (audited for every output by ``tests/unit/metrics/test_metrics_audit.py``; see
    docs/metrics.md). A descriptive output (``ranked=False``) is reported but never ranked;
    ``unranked_reason`` says why.
    """

    name: str
    higher_is_better: bool
    value_range: tuple[float, float] = (float("-inf"), float("inf"))
    ranked: bool = True
    unranked_reason: str = ""

    def __post_init__(self) -> None:
        if not self.ranked and not self.unranked_reason:
            raise ValueError(f"output '{self.name}' is not ranked; give unranked_reason")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready metadata (run.json, ``xaiarena list --json``)."""
        out: dict[str, object] = {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "value_range": [float(v) for v in self.value_range],
            "ranked": self.ranked,
        }
        if not self.ranked:
            out["unranked_reason"] = self.unranked_reason
        return out


class _DefaultOutputs:
    """Class-level ``default_outputs``: the outputs of a metric built with its default options, as
    dicts (what the registry records for ``xaiarena list --json``)."""

    def __get__(self, obj: object, cls: type) -> list[dict[str, object]]:
        try:
            return [o.as_dict() for o in cls().outputs()]
        except TypeError:  # an abstract base class
            return []


class Metric(ABC):
    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    modality: ClassVar[tuple[str, ...]] = ("image",)
    value_range: ClassVar[tuple[float, float]] = (float("-inf"), float("inf"))
    requires: ClassVar[tuple[str, ...]] = ("model",)
    #: the outputs with the default options, with ``ranked`` (registry metadata)
    default_outputs: ClassVar[list[dict[str, object]]] = _DefaultOutputs()  # type: ignore[assignment]
    #: what each option accepts (:mod:`xaiarena.ops.validation`): the constructor checks its
    #: arguments against these, and :func:`xaiarena.testing.check_metric` tries bad values
    option_constraints: ClassVar[dict[str, object]] = {}

    def outputs(self) -> list[OutputSpec]:
        """Every per-sample output with its direction and range (default: one, the metric's)."""
        return [OutputSpec(self.name, self.higher_is_better, self.value_range)]

    @property
    def needs_whole_set(self) -> bool:
        """Whether a sample's score depends on the other samples of the call: a ``normalise``
        rule ``..._over_set`` (one scale for every map of the call, Quantus's default axes).
        The runner then gives the metric the whole evaluation set in one call, so that scores
        do not depend on ``evaluation.batch_size``."""
        from ..postprocess import over_set

        return over_set(getattr(self, "normalise", None))

    def applies_to(self, explainers: list[str]) -> bool:
        """Whether the metric has anything to score for these explainers (maps of one explained
        model). Agreement metrics need two explainers, or their ``reference`` among them."""
        return bool(explainers)

    def ranked_outputs(self) -> list[str]:
        """Names of the outputs that may rank explainers."""
        return [o.name for o in self.outputs() if o.ranked]

    def output_names(self) -> list[str]:
        """Names of the per-sample outputs, the keys of ``MetricOutput.scores``."""
        return [o.name for o in self.outputs()]

    def output_spec(self, output_name: str) -> OutputSpec:
        """Direction and range of one output (for summaries and plots)."""
        for o in self.outputs():
            if o.name == output_name:
                return o
        raise KeyError(
            f"metric '{self.name}' has no output '{output_name}'; outputs: "
            f"{', '.join(self.output_names())}"
        )

    @abstractmethod
    def evaluate(
        self,
        batch: EvalBatch,
        attributions: dict[str, torch.Tensor],
        *,
        generator: torch.Generator,
        explainers: dict[str, ExplainFn] | None = None,
    ) -> MetricOutput:
        """Score every explainer's ``(N, H, W)`` map on ``batch``.

        ``generator``: a metric draws one base seed from it and addresses every random number
        by (base seed, sample id, what is drawn) (``core.SampleRNG``): scores depend only on
        the generator's state, each sample's ``sample_ids`` entry (else its content), the
        explainer's name and the maps, never on the batch's other samples, its size or the
        other explainers (except where :attr:`needs_whole_set`: then the batch is the set).
        Give every batch of one metric a generator in the same state.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
