"""A queue of perturbed images scored by the model in full chunks.

Metrics that build their perturbed images sample by sample (ROAD's imputations, infidelity's
noisy baselines, monotonicity's feature groups) push them here with the slot each result goes
to; the queue runs one forward pass per ``batch_size`` images, whichever samples, explainers or
steps they come from, so the forward passes stay batched however the images were built.
"""

from __future__ import annotations

import torch
from torch import nn

from .core import chunk_size, finite_rows, forward, read_output


class ForwardQueue:
    """Target scores, predicted classes and finiteness of pushed images, written to flat slots.

    ``n_slots`` results are allocated; :meth:`push` queues images with their slot and target
    class, :meth:`close` scores what is left. Call inside ``core.eval_mode``.
    """

    def __init__(
        self,
        model: nn.Module,
        n_slots: int,
        like: torch.Tensor,
        output: str,
        batch_size: int | None = None,
    ):
        self.model, self.output = model, output
        self.bs = chunk_size(like, batch_size)
        device = like.device
        self.scores = torch.full((n_slots,), float("nan"), device=device)
        self.preds = torch.full((n_slots,), -1, dtype=torch.long, device=device)
        self.finite = torch.zeros(n_slots, dtype=torch.bool, device=device)
        self._images: list[torch.Tensor] = []
        self._slots: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._queued = 0

    def push(self, images: torch.Tensor, slots: torch.Tensor, targets: torch.Tensor) -> None:
        """Queue ``images`` (B, C, H, W), results to ``slots`` (B,), scored for ``targets`` (B,)."""
        if not len(images):
            return
        self._images.append(images)
        self._slots.append(slots.to(self.scores.device).reshape(-1))
        self._targets.append(targets.to(self.scores.device).reshape(-1))
        self._queued += len(images)
        while self._queued >= self.bs:
            self._run(self.bs)

    def close(self) -> None:
        """Score every image still queued."""
        while self._queued:
            self._run(min(self.bs, self._queued))

    def _run(self, k: int) -> None:
        images = torch.cat(self._images) if len(self._images) > 1 else self._images[0]
        slots = torch.cat(self._slots) if len(self._slots) > 1 else self._slots[0]
        targets = torch.cat(self._targets) if len(self._targets) > 1 else self._targets[0]
        logits = forward(self.model, images[:k])
        self.scores[slots[:k]] = read_output(logits, targets[:k], self.output)
        self.preds[slots[:k]] = logits.argmax(-1)
        self.finite[slots[:k]] = finite_rows(logits)
        rest = len(images) - k
        self._images = [images[k:]] if rest else []
        self._slots = [slots[k:]] if rest else []
        self._targets = [targets[k:]] if rest else []
        self._queued = rest


__all__ = ["ForwardQueue"]
