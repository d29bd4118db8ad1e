"""The text explainer interface.

A text explainer maps a model, a :class:`~xaiarena.data.text.TextBatch` (token
ids, attention mask, the word index of every token, the words) and target
classes ``(N,)`` to one score per *word*: a float tensor ``(N, L)`` where ``L``
is the batch's ``max_words``; slots past a text's last word are 0. Higher
means more important for the target class; the sign is kept.

Scores computed per word piece (gradients, attention) are aggregated into words
through the fast tokenizer's word ids (:meth:`TextBatch.to_words`; option
``aggregate``, ``sum`` by default). [CLS], [SEP] and padding never receive a
score. Perturbation methods remove whole words (:meth:`TextBatch.keep_words`).

The model is a :class:`~xaiarena.models.text.TextClassifier` (or anything with
its interface: ``model(batch)`` -> logits, ``model.embed(ids)``,
``model.forward_embeds(embeds, attention_mask)``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...data.text import REMOVALS, WORD_AGGREGATIONS, TextBatch
from ...ops.modes import eval_mode
from ...ops.seeding import keyed_seeds
from ...ops.validation import OneOf
from ..base import Explainer, contract_error

#: what perturbation explainers read off the model for the target class
OUTPUTS = ("logit", "probability")


class TextExplainer(Explainer):
    """Base class of the text explainers: validates inputs and outputs (``(N, L)`` word scores)."""

    modality: ClassVar[tuple[str, ...]] = ("text",)

    def explain(
        self,
        model: nn.Module,
        inputs: TextBatch,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Validated entry point: eval mode, ``(N, L)`` output with zeros past each text's last
        word."""
        if not isinstance(inputs, TextBatch):
            raise ValueError(
                f"{self.name}: text explainers take a TextBatch (model.encode(texts)), "
                f"got {type(inputs).__name__}"
            )
        targets = torch.as_tensor(targets, device=inputs.device).long().reshape(-1)
        if len(targets) != len(inputs):
            raise ValueError(f"{self.name}: {len(targets)} targets for {len(inputs)} texts")
        with eval_mode(model):
            out = self.attribute(model, inputs, targets, generator=generator)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != inputs.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise contract_error(
                self,
                "attribute() must return one score per word, a tensor of "
                f"shape (N, L) = {inputs.shape}; it returned {got}",
            )
        out = out.detach().float()
        return torch.where(inputs.word_mask.to(out.device), out, torch.zeros_like(out))


#: the ``aggregate`` option: how word pieces' scores make a word's
AGGREGATE = OneOf(WORD_AGGREGATIONS)
#: the ``removal`` option: how a removed word is removed
REMOVAL = OneOf(REMOVALS)


def text_generators(batch: TextBatch, generator: torch.Generator | None) -> list[torch.Generator]:
    """One CPU generator per text from one draw of ``generator`` and the text's token ids,
    so a text's random draws do not depend on its batch (as for images)."""
    return [torch.Generator().manual_seed(s) for s in keyed_seeds(batch.digests(), generator)]


@torch.no_grad()
def score_rows(
    model: nn.Module, make_rows, n_rows: int, batch_size: int, output: str = "logit"
) -> torch.Tensor:
    """Target scores of ``n_rows`` perturbed texts, ``batch_size`` per forward pass.

    ``make_rows(start, stop)`` returns the perturbed :class:`TextBatch` of those
    rows and their targets. Returns ``(n_rows,)`` float32.
    """
    out = None
    for start in range(0, n_rows, batch_size):
        stop = min(start + batch_size, n_rows)
        rows, t = make_rows(start, stop)
        logits = model(rows).float()
        if output == "probability":
            logits = logits.softmax(-1)
        s = logits.gather(1, t.view(-1, 1)).squeeze(1)
        if out is None:
            out = torch.empty(n_rows, device=s.device)
        out[start:stop] = s
    return out if out is not None else torch.empty(0)
