"""Attention rollout (Abnar & Zuidema 2020) for transformer text classifiers.

Per layer, the attention maps are fused over heads (``head_fusion``: ``mean``,
default, ``max`` or ``min``), the identity is added for the residual connection
and rows are renormalised: ``A_l = norm(fuse(attn_l) + I)``. The rollout is
``A_L ... A_1``; a token's score is the row of the first token ([CLS]), and word
pieces are aggregated into words (``aggregate``, default ``sum``). The maps do
not depend on the target class. The model must be able to return attention
weights: Hugging Face models are switched to the ``eager`` attention
implementation for the call and switched back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import torch

from ...ops.validation import OneOf, set_options
from ...registry import EXPLAINERS
from .base import AGGREGATE, TextExplainer

HEAD_FUSIONS = ("mean", "max", "min")


@contextmanager
def eager_attention(model):
    """Temporarily use eager attention (SDPA kernels do not return attention weights)."""
    net = getattr(model, "net", model)
    config = getattr(net, "config", None)
    old = getattr(config, "_attn_implementation", None)
    switch = old not in (None, "eager") and hasattr(net, "set_attn_implementation")
    if switch:
        net.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            net.set_attn_implementation(old)


@EXPLAINERS.register(
    "attention_rollout",
    description="Attention rollout (Abnar & Zuidema 2020): product over layers of head-averaged "
    "attention plus identity, row of [CLS], pieces summed into words; target independent, one "
    "forward pass.",
)
class AttentionRollout(TextExplainer):
    """``(A_L ... A_1)[CLS, :]`` aggregated into words."""

    name = "attention_rollout"
    family: ClassVar[str] = "attention"
    option_constraints: ClassVar[dict] = {
        "head_fusion": OneOf(HEAD_FUSIONS),
        "aggregate": AGGREGATE,
    }

    def __init__(self, head_fusion: str = "mean", aggregate: str = "sum"):
        set_options(self, head_fusion=head_fusion, aggregate=aggregate)

    @torch.no_grad()
    def attribute(self, model, inputs, targets, *, generator=None):
        with eager_attention(model):
            out = model(inputs, output_attentions=True)
        atts = getattr(out, "attentions", None)
        if not atts:
            raise RuntimeError(f"{self.name}: the model returned no attention weights")
        att_mask = inputs.attention_mask.bool()
        n, t = att_mask.shape
        eye = torch.eye(t, device=att_mask.device).expand(n, t, t)
        roll = eye.clone()
        for a in atts:  # (N, H, T, T)
            a = a.float()
            fused = (
                a.mean(1)
                if self.head_fusion == "mean"
                else (a.amax(1) if self.head_fusion == "max" else a.amin(1))
            )
            fused = fused * att_mask[:, None, :]  # no attention to padding
            fused = fused + eye
            fused = fused / fused.sum(-1, keepdim=True).clamp_min(1e-12)
            roll = fused @ roll
        return inputs.to_words(roll[:, 0, :], self.aggregate)
