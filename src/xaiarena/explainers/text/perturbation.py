"""Perturbation explainers for text: leave-one-word-out occlusion, LIME and KernelSHAP over words.

They only run forward passes. A removed word is replaced, piece by piece, by
``[MASK]`` (``removal: mask``, default; positions are kept), ``[PAD]`` or
``[UNK]``, or deleted (``removal: delete``). They read the target class's logit
(``output: logit``, default) or probability. ``perturbations_per_eval`` is the
number of perturbed texts per forward pass, counted over the whole batch.

LIME and KernelSHAP draw their coalitions exactly as the image versions do
(:class:`~xaiarena.explainers.perturbation.LimeExplainer`: Bernoulli(1/2)
word masks, first row all on, exponential kernel on the cosine distance,
weighted ridge; :class:`~xaiarena.explainers.perturbation.KernelShapExplainer`:
Captum's Shapley-kernel size sampling with the full and empty coalitions
weighted 1e6), with one interpretable feature per word, and solve the same
weighted least squares. Each text's draws come from its own generator
(:func:`~xaiarena.explainers.text.base.text_generators`), so a text's map does
not depend on its batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ...ops.validation import COUNT, NON_NEGATIVE, POSITIVE, Interval, OneOf, set_options
from ...registry import EXPLAINERS
from ..perturbation import KernelShapExplainer, LimeExplainer
from .base import OUTPUTS, REMOVAL, TextExplainer, score_rows, text_generators


class _TextPerturbation(TextExplainer):
    family: ClassVar[str] = "perturbation"
    option_constraints: ClassVar[dict] = {
        "removal": REMOVAL,
        "output": OneOf(OUTPUTS),
        "perturbations_per_eval": COUNT,
    }

    def _init_common(self, removal: str, output: str, perturbations_per_eval: int) -> None:
        set_options(
            self, removal=removal, output=output, perturbations_per_eval=perturbations_per_eval
        )

    @torch.no_grad()
    def _scores(
        self, model, inputs, targets, row_sample: torch.Tensor, row_keep: torch.Tensor
    ) -> torch.Tensor:
        """Target scores of the texts ``inputs[row_sample]`` keeping only the words ``row_keep``
        ``(R, L)``."""
        dev = inputs.device

        def make_rows(start, stop):
            idx = row_sample[start:stop].to(dev)
            return inputs[idx].keep_words(row_keep[start:stop].to(dev), self.removal), targets[idx]

        return score_rows(
            model, make_rows, len(row_sample), self.perturbations_per_eval, self.output
        )


@EXPLAINERS.register(
    "text_occlusion",
    description="Leave-one-word-out occlusion: drop of the target logit when one word is removed "
    "(removal mask|pad|unk|delete, default [MASK]); one forward pass per word.",
)
class TextOcclusion(_TextPerturbation):
    """``f(x) - f(x without word i)`` for every word ``i``."""

    name = "text_occlusion"
    cost_knobs: ClassVar[tuple[str, ...]] = ("perturbations_per_eval",)

    def __init__(
        self, removal: str = "mask", output: str = "logit", perturbations_per_eval: int = 128
    ):
        self._init_common(removal, output, perturbations_per_eval)

    def attribute(self, model, inputs, targets, *, generator=None):
        n, L = inputs.shape
        counts = inputs.n_words.cpu()
        row_sample = torch.arange(n).repeat_interleave(counts)
        row_word = (
            torch.cat([torch.arange(int(k)) for k in counts])
            if n
            else torch.zeros(0, dtype=torch.long)
        )
        keep = torch.ones(len(row_sample), L, dtype=torch.bool)
        keep[torch.arange(len(row_sample)), row_word] = False
        full = self._scores(
            model, inputs, targets, torch.arange(n), torch.ones(n, L, dtype=torch.bool)
        )
        drop = self._scores(model, inputs, targets, row_sample, keep)
        out = torch.zeros(n, L, device=inputs.device)
        if len(row_sample):
            rs, rw = row_sample.to(inputs.device), row_word.to(inputs.device)
            out[rs, rw] = full[rs] - drop
        return out


class _WordSurrogate(_TextPerturbation):
    """A weighted linear surrogate over word on/off vectors; a word's score is its coefficient."""

    cost_knobs: ClassVar[tuple[str, ...]] = ("n_samples", "perturbations_per_eval")
    _surrogate: LimeExplainer | KernelShapExplainer

    def attribute(self, model, inputs, targets, *, generator=None):
        n, L = inputs.shape
        s = self.n_samples
        gens = text_generators(inputs, generator)
        dims = inputs.n_words.cpu().tolist()
        draws = [
            self._surrogate.sample(int(d), g) if d > 0 else None
            for d, g in zip(dims, gens, strict=True)
        ]
        keep = torch.ones(n, s, L, dtype=torch.bool)
        for i, dr in enumerate(draws):
            if dr is not None:
                keep[i, :, : dims[i]] = dr[0].bool()
        row_sample = torch.arange(n).repeat_interleave(s)
        y = self._scores(model, inputs, targets, row_sample, keep.view(n * s, L))
        y = y.view(n, s).detach().to("cpu", torch.float64)
        out = torch.zeros(n, L, dtype=torch.float64)
        for i, dr in enumerate(draws):
            if dr is not None:
                z, w = dr
                out[i, : dims[i]] = self._surrogate.solve(z, y[i], w)
        return out.to(inputs.device, torch.float32)


@EXPLAINERS.register(
    "text_lime",
    description="LIME over words (Ribeiro et al. 2016): n_samples=200 random word subsets (removed "
    "words [MASK]ed), exponential kernel on the cosine distance (width 0.25), weighted ridge "
    "(alpha=1).",
)
class TextLime(_WordSurrogate):
    """LIME with one interpretable feature per word (the image LIME's sampling and solver)."""

    name = "text_lime"
    option_constraints: ClassVar[dict] = {
        **_TextPerturbation.option_constraints,
        "n_samples": Interval(int, 2, None),
        "kernel_width": POSITIVE,
        "ridge_alpha": NON_NEGATIVE,
    }

    def __init__(
        self,
        n_samples: int = 200,
        kernel_width: float = 0.25,
        ridge_alpha: float = 1.0,
        removal: str = "mask",
        output: str = "logit",
        perturbations_per_eval: int = 128,
    ):
        set_options(self, n_samples=n_samples, kernel_width=kernel_width, ridge_alpha=ridge_alpha)
        self._init_common(removal, output, perturbations_per_eval)
        self._surrogate = LimeExplainer(
            n_samples=self.n_samples, kernel_width=self.kernel_width, ridge_alpha=self.ridge_alpha
        )


@EXPLAINERS.register(
    "text_kernel_shap",
    description="KernelSHAP over words (Lundberg & Lee 2017; Captum's sampling): full and empty "
    "coalitions plus n_samples-2 coalitions with Shapley-kernel sizes (default 200), removed words "
    "[MASK]ed, weighted least squares; scores sum to f(x) - f(all words removed).",
)
class TextKernelShap(_WordSurrogate):
    """KernelSHAP with one player per word (the image KernelSHAP's sampling and solver)."""

    name = "text_kernel_shap"
    option_constraints: ClassVar[dict] = {
        **_TextPerturbation.option_constraints,
        "n_samples": Interval(int, 2, None),
    }

    def __init__(
        self,
        n_samples: int = 200,
        removal: str = "mask",
        output: str = "logit",
        perturbations_per_eval: int = 128,
    ):
        set_options(self, n_samples=n_samples)
        self._init_common(removal, output, perturbations_per_eval)
        self._surrogate = KernelShapExplainer(n_samples=self.n_samples)
