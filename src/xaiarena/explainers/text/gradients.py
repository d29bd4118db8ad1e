"""Gradient explainers for text, on the input embedding layer (Captum).

They differentiate the target logit with respect to the word-piece embeddings
(the output of ``model.embeddings()``, before position embeddings and layer
norm), reduce the embedding dimension to one value per token, and aggregate
tokens into words (``aggregate``, ``sum`` by default):

=============================  ==================  ==========================================
method                         per token           cost per text (forward+backward passes)
=============================  ==================  ==========================================
text_saliency                  L2 norm of grad     1
text_input_x_gradient          sum of e * grad     1
text_integrated_gradients      sum of IG           n_steps (16)
=============================  ==================  ==========================================

Integrated Gradients integrates from a baseline in which every word piece's
embedding is replaced by the embedding of ``[PAD]`` (default), ``[MASK]``,
``[UNK]`` or the zero vector; [CLS], [SEP] and padding keep their own
embeddings, so only the words move and the word scores sum to
``f(x) - f(baseline)`` up to the quadrature error (``sum`` aggregation).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from ...ops.validation import COUNT, Null, OneOf, set_options
from ...registry import EXPLAINERS
from ..gradients import IG_METHODS
from .base import AGGREGATE, TextExplainer

IG_BASELINES = ("pad", "mask", "unk", "zero")
EMBEDDING_REDUCTIONS = ("sum", "l2", "abs_sum")


def reduce_embedding(attr: torch.Tensor, rule: str) -> torch.Tensor:
    """``(N, T, D)`` -> ``(N, T)``: ``sum`` (signed), ``l2`` (norm) or ``abs_sum``."""
    if rule == "sum":
        return attr.sum(-1)
    if rule == "l2":
        return attr.norm(dim=-1)
    if rule == "abs_sum":
        return attr.abs().sum(-1)
    raise ValueError(
        f"embedding reduction '{rule}' is not valid; choose one of "
        f"{', '.join(EMBEDDING_REDUCTIONS)}"
    )


class _TextGradient(TextExplainer):
    family: ClassVar[str] = "gradient"
    default_reduction: ClassVar[str] = "sum"
    option_constraints: ClassVar[dict] = {
        "aggregate": AGGREGATE,
        "embedding_reduction": [OneOf(EMBEDDING_REDUCTIONS), Null("the explainer's default")],
    }

    def _init_common(self, aggregate: str, embedding_reduction: str | None) -> None:
        set_options(self, aggregate=aggregate, embedding_reduction=embedding_reduction)
        if self.embedding_reduction is None:
            self.embedding_reduction = self.default_reduction

    @staticmethod
    def _embeds(model, inputs) -> torch.Tensor:
        with torch.no_grad():
            return model.embed(inputs.input_ids).detach()

    def _words(self, inputs, token_attr: torch.Tensor) -> torch.Tensor:
        return inputs.to_words(
            reduce_embedding(token_attr, self.embedding_reduction), self.aggregate
        )


@EXPLAINERS.register(
    "text_saliency",
    description="Saliency for text (Simonyan et al. 2014; Li et al. 2016): L2 norm of the target "
    "logit's gradient w.r.t. each word piece's embedding, pieces summed into words; 1 backward "
    "pass.",
)
class TextSaliency(_TextGradient):
    """``||d logit / d e_t||_2`` per token (option ``embedding_reduction``), then ``aggregate``."""

    name = "text_saliency"
    default_reduction = "l2"

    def __init__(self, aggregate: str = "sum", embedding_reduction: str | None = None):
        self._init_common(aggregate, embedding_reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        emb = self._embeds(model, inputs).requires_grad_(True)
        grad = Saliency(model.forward_embeds).attribute(
            emb, target=targets, abs=False, additional_forward_args=(inputs.attention_mask,)
        )
        if self.embedding_reduction == "sum":
            grad = grad.abs()  # the sum of a gradient's signed entries has no meaning as saliency
        return self._words(inputs, grad)


@EXPLAINERS.register(
    "text_input_x_gradient",
    description="Input x Gradient for text (Shrikumar et al. 2016): word-piece embedding times the "
    "target logit's gradient, summed over the embedding and over a word's pieces; 1 backward pass.",
)
class TextInputXGradient(_TextGradient):
    """``sum_d e_td * d logit / d e_td`` per token (signed), then ``aggregate``."""

    name = "text_input_x_gradient"

    def __init__(self, aggregate: str = "sum", embedding_reduction: str | None = None):
        self._init_common(aggregate, embedding_reduction)

    def attribute(self, model, inputs, targets, *, generator=None):
        emb = self._embeds(model, inputs).requires_grad_(True)
        attr = InputXGradient(model.forward_embeds).attribute(
            emb, target=targets, additional_forward_args=(inputs.attention_mask,)
        )
        return self._words(inputs, attr)


@EXPLAINERS.register(
    "text_integrated_gradients",
    description="Integrated Gradients on the embedding layer (Sundararajan et al. 2017, Captum): "
    "word pieces integrated from a [PAD] (default), [MASK], [UNK] or zero embedding baseline, "
    "n_steps=16 Gauss-Legendre steps, summed over the embedding and a word's pieces (scores sum to "
    "f(x) - f(baseline)).",
)
class TextIntegratedGradients(_TextGradient):
    """Captum's IntegratedGradients over the word-piece embeddings; special tokens stay fixed."""

    name = "text_integrated_gradients"
    cost_knobs: ClassVar[tuple[str, ...]] = ("n_steps", "internal_batch_size")
    option_constraints: ClassVar[dict] = {
        **_TextGradient.option_constraints,
        "n_steps": COUNT,
        "baseline": OneOf(IG_BASELINES),
        "method": OneOf(IG_METHODS),
        "internal_batch_size": COUNT,
    }

    def __init__(
        self,
        n_steps: int = 16,
        baseline: str = "pad",
        method: str = "gausslegendre",
        internal_batch_size: int = 64,
        aggregate: str = "sum",
        embedding_reduction: str | None = None,
    ):
        set_options(
            self,
            n_steps=n_steps,
            baseline=baseline,
            method=method,
            internal_batch_size=internal_batch_size,
        )
        self._init_common(aggregate, embedding_reduction)

    def baseline_embeds(self, model, inputs, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings of the baseline text: word pieces replaced, special tokens and padding
        kept."""
        if self.baseline == "zero":
            repl = torch.zeros_like(emb)
        else:
            with torch.no_grad():
                tid = inputs.special_id(self.baseline)
                repl = model.embed(torch.full_like(inputs.input_ids, tid)).detach()
        words = inputs.word_token_mask.unsqueeze(-1)
        return torch.where(words, repl, emb)

    def attribute(
        self, model, inputs, targets, *, generator=None, return_convergence_delta: bool = False
    ):
        emb = self._embeds(model, inputs)
        base = self.baseline_embeds(model, inputs, emb)
        ig = IntegratedGradients(model.forward_embeds)
        out = ig.attribute(
            emb.clone().requires_grad_(True),
            baselines=base,
            target=targets,
            additional_forward_args=(inputs.attention_mask,),
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=max(self.internal_batch_size, len(inputs)),
            return_convergence_delta=return_convergence_delta,
        )
        if return_convergence_delta:
            attr, delta = out
            return self._words(inputs, attr), delta
        return self._words(inputs, out)
