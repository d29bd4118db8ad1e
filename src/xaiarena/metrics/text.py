"""Metrics for text explanations: ERASER faithfulness, agreement, rationale overlap, accuracy.

All of them take an :class:`~xaiarena.metrics.base.EvalBatch` whose ``inputs`` is a
:class:`~xaiarena.data.text.TextBatch` and word-level maps ``(N, L)`` (slots past a
text's last word are ignored), and declare ``modality = ("text",)``.

Ranking words by attribution breaks ties at random (each text's own stream for
("ties", explainer), as for images; see ``core.SampleRNG``): a constant map
scores like a random one (with a logged note). Maps are ranked by their signed
value unless ``abs: true`` (higher = more important for the target class, the
attribution contract).

* ``comprehensiveness`` / ``sufficiency`` (DeYoung et al. 2020, ERASER, as the paper
  defines them): for the class ``j`` the model *predicts* on the full text, the drop
  ``p_j(x) - p_j(x')`` when the top ``floor(q n)`` words are removed (comprehensiveness,
  higher is better) or when only they are kept (sufficiency, lower is better), as AOPC
  over the bins ``B = {1, 5, 10, 20, 50} %`` plus ``q = 0``:
  ``1 / (|B| + 1) * sum_{q in {0} + B} drop(q)``. Removed words are deleted
  (``removal: delete``, as in ERASER) or replaced by ``[MASK]``/``[PAD]``/``[UNK]``.
* ``comprehensiveness_target`` / ``sufficiency_target``: xaiarena's earlier variant, the
  drop of the *explained* (target) class, ``ceil(q n)`` words, the plain mean over
  ``fractions`` (default 10, 20, ..., 50 %).
* ``text_topk_overlap`` (several ``k`` at once) and ``text_spearman``: agreement
  between two explainers' word rankings (key ``"<a>~<b>"``).
* ``rationale_f1`` / ``rationale_iou`` / ``rationale_auprc``: agreement of the
  top-``k`` words (``k`` = the text's number of rationale words by default) or of
  the whole ranking with ground-truth rationales (``planted_sentiment``); on a
  dataset without rationales they give no rows (and log why).
* ``explained_model_accuracy``: whether the model an explainer explains (``f_b``,
  or DiET's ``f_s``) predicts the true class (its mean is the accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from ..data.text import REMOVALS, TextBatch
from ..ops.pairs import explainer_pairs, has_pairs, pair_key
from ..ops.validation import COUNT, Interval, ListOf, Null, OneOf, set_options, validate_options
from ..registry import METRICS
from .agreement import REFERENCE
from .base import EvalBatch, Metric, MetricOutput, OutputSpec
from .core import (
    NONFINITE_OUTPUT,
    SampleRNG,
    eval_mode,
    finite_rows,
    logger,
    nan_where,
    note_constant_maps,
    rank_positions,
    serial_bookkeeping,
)

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
#: ERASER's AOPC bins (DeYoung et al. 2020, Sec. 4.2; the official scorer's default
#: ``--aopc_thresholds``)
ERASER_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)


# --------------------------------------------------------------------------- helpers


def text_inputs(batch: EvalBatch, metric: str) -> TextBatch:
    if not isinstance(batch.inputs, TextBatch):
        raise ValueError(
            f"metric '{metric}' scores text explanations; batch.inputs must be a TextBatch, "
            f"got {type(batch.inputs).__name__}"
        )
    return batch.inputs


def prepare_text(
    batch: EvalBatch, attributions: dict[str, torch.Tensor], metric: str
) -> dict[str, torch.Tensor]:
    """Check every map is ``(N, L)`` like the batch and finite on real words; float copies on its
    device."""
    x = text_inputs(batch, metric)
    wm = x.word_mask
    out = {}
    for name, a in attributions.items():
        a = torch.as_tensor(a)
        if tuple(a.shape) != x.shape:
            raise ValueError(
                f"attributions['{name}'] has shape {tuple(a.shape)}; expected (N, L) = {x.shape}"
            )
        a = a.detach().to(device=x.device, dtype=torch.float32)
        bad = (~torch.isfinite(a) & wm).any(1)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"attributions['{name}'] contain NaN or inf at sample(s) {idx[:10]}; "
                "metrics need finite maps"
            )
        out[name] = torch.where(wm, a, torch.zeros_like(a))
    return out


def word_ranks(
    scores: torch.Tensor,
    x: TextBatch,
    rng: SampleRNG,
    explainer: str,
    absolute: bool = False,
    metric: str | None = None,
) -> torch.Tensor:
    """Rank of every word slot (0 = most important); padding slots rank last. Ties are broken by
    each text's stream for ("ties", ``explainer``), one number per word of the text (so the
    draws do not depend on the batch's width). With ``metric`` a constant map gets a logged note."""
    s = scores.abs() if absolute else scores
    s = torch.where(x.word_mask, s, torch.full_like(s, float("-inf")))
    if metric is not None:
        note_constant_maps(metric, explainer, s)
    u = rng.rand_ragged(x.n_words.tolist(), x.max_words, "ties", explainer, device=s.device)
    return rank_positions(s, u)


#: a ``k``: a word count, or a fraction of a text's words
WORDS_K = [COUNT, Interval(float, 0, 1, closed="neither", noun="a fraction of the words")]


def _k_words(k: int | float, n_words: torch.Tensor) -> torch.Tensor:
    """Per-text word count for ``k`` (an int is capped at the text's length; a fraction rounds, at
    least 1)."""
    if isinstance(k, float):
        return torch.clamp(torch.round(k * n_words.float()).long(), min=1).minimum(n_words)
    return torch.clamp(n_words, max=int(k))


#: a level of the ERASER variants: a fraction of the words
WORDS_FRACTION = Interval(float, 0, 1, closed="right", noun="a fraction of the words")


def ceil_words(q: float, n_words: torch.Tensor) -> torch.Tensor:
    """``ceil(q n)`` words per text, robust to float error (0.3 * 10 -> 3)."""
    return torch.tensor(
        [math.ceil(round(q * n, 9)) for n in n_words.tolist()],
        dtype=torch.long,
        device=n_words.device,
    )


def floor_words(q: float, n_words: torch.Tensor) -> torch.Tensor:
    """``floor(q n)`` words per text (ERASER's "top q" tokens: ``int(q * len(doc))`` in the official
    code), robust to float error (0.1 * 30 -> 3)."""
    return torch.tensor(
        [math.floor(round(q * n, 9)) for n in n_words.tolist()],
        dtype=torch.long,
        device=n_words.device,
    )


class _TextMetric(Metric):
    modality = ("text",)


# --------------------------------------------------------------------------- ERASER


class _Eraser(_TextMetric):
    """ERASER comprehensiveness / sufficiency as DeYoung et al. (2020) define them.

    ``j`` is the class the model predicts on the full text. For each level ``q`` of
    ``{0} + B``, ``B = {0.01, 0.05, 0.1, 0.2, 0.5}``, the top ``floor(q n)`` words of a text of
    ``n`` words (ERASER's "top q of the tokens"; the official code takes ``int(q * len(doc))``)
    are removed (comprehensiveness) or kept alone (sufficiency), and the score is the paper's
    AOPC ``1 / (|B| + 1) * sum_{k=0}^{|B|} [p_j(x) - p_j(x_k)]``. The ``k = 0`` term is the 0 %
    level: nothing removed (a drop of 0) for comprehensiveness, nothing kept (the text with
    every word removed) for sufficiency. The official scorer (``rationale_benchmark/metrics.py``,
    ``_instances_aopc``) averages the |B| bin terms only; the paper's score is |B| / (|B| + 1)
    times it for comprehensiveness. Curve: the drop at every level, x = q.
    """

    option_constraints: ClassVar[dict] = {"removal": OneOf(REMOVALS), "batch_size": COUNT}

    category = "faithfulness"
    value_range = (-1.0, 1.0)
    requires = ("model",)
    keep_top: bool = False  # sufficiency keeps the top words, comprehensiveness removes them
    predicted_class: bool = True  # the variants score the explained (target) class

    def __init__(self, removal: str = "delete", abs: bool = False, batch_size: int = 128):
        set_options(self, removal=removal)
        self.abs = bool(abs)
        set_options(self, batch_size=batch_size)

    # ------------------------------------------------------------- the definition
    def levels(self) -> tuple[float, ...]:
        """The levels ``q`` of the curve."""
        return (0.0, *ERASER_BINS)

    def word_counts(self, n_words: torch.Tensor) -> torch.Tensor:
        """(N, Q) words removed / kept at every level."""
        return torch.stack([floor_words(q, n_words) for q in self.levels()], 1)

    def aggregate(self, drops: torch.Tensor) -> torch.Tensor:
        """The score from the (N, Q) drops: the paper's 1 / (|B| + 1) over the k = 0..|B| terms."""
        return drops.sum(1) / len(self.levels())

    def classes(self, batch: EvalBatch, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1) if self.predicted_class else batch.targets.to(logits.device).long()

    # ------------------------------------------------------------- the computation
    @torch.no_grad()
    def _logits(self, model, x: TextBatch, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, len(rows), self.batch_size):
            r = rows[s : s + self.batch_size]
            out.append(model(x[r].keep_words(keep[s : s + self.batch_size], self.removal)).float())
        return torch.cat(out) if out else torch.empty(0, 0, device=x.device)

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps = prepare_text(batch, attributions, self.name)
        x = text_inputs(batch, self.name)
        n, L = x.shape
        dev = x.device
        wm = x.word_mask
        all_rows = torch.arange(n, device=dev)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        k = self.word_counts(x.n_words)  # (N, Q)
        q = k.shape[1]
        scores, curves = {}, {}
        with eval_mode(batch.model) as model:
            logits = self._logits(model, x, all_rows, wm)
            cls = self.classes(batch, logits).view(-1, 1)
            p_full = logits.softmax(-1).gather(1, cls).squeeze(1)
            # no word left: shared by every explainer (comprehensiveness at k = n, sufficiency at k
            # = 0)
            logits0 = self._logits(model, x, all_rows, torch.zeros_like(wm))
            p_none = logits0.softmax(-1).gather(1, cls).squeeze(1)
            fin_full, fin_none = finite_rows(logits), finite_rows(logits0)
            nw = x.n_words.view(-1, 1)
            everything, nothing = k >= nw, k <= 0
            if self.keep_top:
                everything, nothing = nothing, everything  # "keep the top 0" removes every word
            mixed = ~(everything | nothing)
            rows = all_rows.view(-1, 1).expand(n, q)[mixed]
            for name, a in maps.items():
                ranks = word_ranks(a, x, rng, name, self.abs, metric=self.name)
                top = ranks[:, None, :] < k[:, :, None]  # (N, Q, L)
                keep = (top if self.keep_top else ~top) & wm[:, None, :]
                p = torch.where(nothing, p_full[:, None], p_none[:, None])
                fin = torch.where(nothing, fin_full[:, None], fin_none[:, None])
                if len(rows):
                    lg = self._logits(model, x, rows, keep[mixed])
                    p[mixed] = lg.softmax(-1).gather(1, cls[rows]).squeeze(1)
                    fin[mixed] = finite_rows(lg)
                drop = p_full[:, None] - p
                ok = fin.all(1) & fin_full
                v = nan_where(self.aggregate(drop), ~ok, self.name, NONFINITE_OUTPUT, name)
                scores[name] = nan_where(
                    v, (x.n_words == 0) & ok, self.name, "the text has no words", name
                )
                curves[name] = drop
        x_axis = torch.tensor(self.levels())
        return MetricOutput(
            scores={self.name: scores}, curves={self.name: curves}, curve_x={self.name: x_axis}
        )


@METRICS.register(
    "comprehensiveness",
    description="ERASER comprehensiveness (DeYoung et al. 2020): drop of the predicted class's "
    "probability when the top 1, 5, 10, 20, 50% of the words are deleted, AOPC with the paper's "
    "1/(|B|+1); higher is better",
)
class Comprehensiveness(_Eraser):
    """``1/6 sum_{q in 0, 1, 5, 10, 20, 50 %} p_j(x) - p_j(x without its top floor(q n) words)``."""

    name = "comprehensiveness"
    higher_is_better = True


@METRICS.register(
    "sufficiency",
    description="ERASER sufficiency (DeYoung et al. 2020): drop of the predicted class's "
    "probability when only the top 1, 5, 10, 20, 50% of the words are kept, AOPC with the paper's "
    "1/(|B|+1); lower is better",
)
class Sufficiency(_Eraser):
    """``1/6 sum_{q in 0, 1, 5, 10, 20, 50 %} p_j(x) - p_j(only the top floor(q n) words of x)``."""

    name = "sufficiency"
    higher_is_better = False
    keep_top = True


class _EraserTarget(_Eraser):
    """The variant xaiarena reported before following the paper: the explained (target) class,
    ``ceil(q n)`` words (at least one), the plain mean over ``fractions`` (no 0 % term)."""

    predicted_class = False
    option_constraints: ClassVar[dict] = {
        **_Eraser.option_constraints,
        "fractions": [WORDS_FRACTION, ListOf(WORDS_FRACTION)],
    }

    def __init__(
        self,
        fractions: float | list[float] = DEFAULT_FRACTIONS,
        removal: str = "delete",
        abs: bool = False,
        batch_size: int = 128,
    ):
        super().__init__(removal, abs, batch_size)
        set_options(self, fractions=fractions)
        if isinstance(self.fractions, float):
            self.fractions = (self.fractions,)

    def levels(self) -> tuple[float, ...]:
        return self.fractions

    def word_counts(self, n_words: torch.Tensor) -> torch.Tensor:
        return torch.stack([ceil_words(f, n_words) for f in self.fractions], 1)

    def aggregate(self, drops: torch.Tensor) -> torch.Tensor:
        return drops.mean(1)


@METRICS.register(
    "comprehensiveness_target",
    description="Variant of ERASER comprehensiveness: drop of the explained (target) class's "
    "probability when the top ceil(q n) words are deleted, plain mean over q = 10..50%; higher is "
    "better",
)
class ComprehensivenessTarget(_EraserTarget):
    """``mean_q p_t(x) - p_t(x without its top ceil(q n) words)``, ``t`` the class explained."""

    name = "comprehensiveness_target"
    higher_is_better = True


@METRICS.register(
    "sufficiency_target",
    description="Variant of ERASER sufficiency: drop of the explained (target) class's probability "
    "when only the top ceil(q n) words are kept, plain mean over q = 10..50%; lower is better",
)
class SufficiencyTarget(_EraserTarget):
    """``mean_q p_t(x) - p_t(only the top ceil(q n) words of x)``, ``t`` the class explained."""

    name = "sufficiency_target"
    higher_is_better = False
    keep_top = True


# --------------------------------------------------------------------------- agreement


class _TextAgreement(_TextMetric):
    category = "agreement"
    higher_is_better = True
    requires = ()
    option_constraints: ClassVar[dict] = {"reference": REFERENCE}

    def __init__(self, reference: str | None, abs: bool):
        set_options(self, reference=reference)
        self.abs = bool(abs)

    def applies_to(self, explainers: list[str]) -> bool:
        return has_pairs(explainers, self.reference)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        return explainer_pairs(names, self.reference, self.name)

    def _ranks(self, batch, attributions, generator):
        maps = prepare_text(batch, attributions, self.name)
        x = text_inputs(batch, self.name)
        pairs = self.pairs(list(maps))
        if not pairs:
            logger.warning("%s: fewer than two explainers, no pair to compare", self.name)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        ranks = {k: word_ranks(v, x, rng, k, self.abs, metric=self.name) for k, v in maps.items()}
        return x, pairs, ranks


@METRICS.register(
    "text_topk_overlap",
    description="Agreement: share of top-k words two explainers have in common, for several k at "
    "once (default 1, 3, 5 words; outputs text_topk_overlap@k, key '<a>~<b>')",
)
class TextTopKOverlap(_TextAgreement):
    """``|top_k(a) ∩ top_k(b)| / k`` per text (``k`` capped at the text's length; a fraction of its
    words when given as a float), one output per ``k``."""

    name = "text_topk_overlap"
    option_constraints: ClassVar[dict] = {
        **_TextAgreement.option_constraints,
        "k": [*WORDS_K, ListOf(WORDS_K)],
    }
    value_range = (0.0, 1.0)

    def __init__(
        self,
        k: int | float | list[int | float] = (1, 3, 5),
        reference: str | None = None,
        abs: bool = False,
    ):
        super().__init__(reference, abs)
        ks = validate_options(self.name, self.option_constraints, {"k": k})["k"]
        self.ks = list(ks) if isinstance(ks, tuple) else [ks]

    def _out(self, k) -> str:
        return f"{self.name}@{k}"

    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec(self._out(k), True, (0.0, 1.0)) for k in self.ks]

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        x, pairs, ranks = self._ranks(batch, attributions, generator)
        scores: dict[str, dict[str, torch.Tensor]] = {}
        for k in self.ks:
            kk = _k_words(k, x.n_words)[:, None]
            per = {}
            for a, b in pairs:
                inter = ((ranks[a] < kk) & (ranks[b] < kk)).sum(1).float()
                v = inter / kk[:, 0].clamp_min(1)
                per[pair_key(a, b)] = nan_where(
                    v, x.n_words == 0, self.name, "the text has no words"
                )
            scores[self._out(k)] = per
        return MetricOutput(scores=scores)


@METRICS.register(
    "text_spearman",
    description="Agreement: Spearman rank correlation of two explainers' word scores over a text's "
    "words (ties at random; key '<a>~<b>')",
)
class TextSpearman(_TextAgreement):
    """Pearson correlation of the two word rankings, over each text's own words. NaN (logged)
    for texts with fewer than two words."""

    name = "text_spearman"
    value_range = (-1.0, 1.0)

    def __init__(self, reference: str | None = None, abs: bool = False):
        super().__init__(reference, abs)

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        x, pairs, ranks = self._ranks(batch, attributions, generator)
        wm = x.word_mask
        n_words = x.n_words.float()
        out = {}
        for a, b in pairs:
            ra, rb = ranks[a].double(), ranks[b].double()
            # ranks of real words are 0..n-1 in both maps; centre them over the text's own words
            mean = ((n_words - 1) / 2).double()[:, None]
            da = torch.where(wm, ra - mean, torch.zeros_like(ra))
            db = torch.where(wm, rb - mean, torch.zeros_like(rb))
            den = da.norm(dim=1) * db.norm(dim=1)
            r = ((da * db).sum(1) / den).float().clamp(-1, 1)
            out[pair_key(a, b)] = nan_where(
                r, x.n_words < 2, self.name, "a text with fewer than two words"
            )
        return MetricOutput(scores={self.name: out})


# --------------------------------------------------------------------------- rationales


class _Rationale(_TextMetric):
    category = "localisation"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ("masks",)
    option_constraints: ClassVar[dict] = {"k": [*WORDS_K, Null("the rationale's own size")]}

    def __init__(self, k: int | float | None = None, abs: bool = False):
        set_options(self, k=k)
        self.abs = bool(abs)

    def _truth(self, batch: EvalBatch, x: TextBatch) -> torch.Tensor:
        m = torch.as_tensor(batch.masks).to(x.device).bool()
        if tuple(m.shape) != x.shape:
            raise ValueError(f"batch.masks has shape {tuple(m.shape)}; expected (N, L) = {x.shape}")
        return m & x.word_mask

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        maps = prepare_text(batch, attributions, self.name)
        x = text_inputs(batch, self.name)
        if (
            batch.masks is None
        ):  # e.g. SST-2 next to planted_sentiment in one config: no rows, a logged reason
            logger.warning(
                "%s: skipped, the dataset has no ground-truth rationales (planted_sentiment has)",
                self.name,
            )
            return MetricOutput()
        truth = self._truth(batch, x)
        n_pos = truth.sum(1)
        k = n_pos if self.k is None else _k_words(self.k, x.n_words)
        rng = SampleRNG.for_batch(batch, generator, self.name)
        out = {}
        for name, a in maps.items():
            ranks = word_ranks(a, x, rng, name, self.abs, metric=self.name)
            v = self.score(ranks, truth, k[:, None], x)
            out[name] = nan_where(v, n_pos == 0, self.name, "the text has no rationale word", name)
        return MetricOutput(scores={self.name: out})

    def score(self, ranks, truth, k, x) -> torch.Tensor:
        raise NotImplementedError


@METRICS.register(
    "rationale_f1",
    description="Localisation: token-level F1 of an explainer's top-k words against the "
    "ground-truth rationale (k = the text's number of rationale words unless set)",
)
class RationaleF1(_Rationale):
    """F1 of ``top_k(map)`` against the rationale words (equals precision and recall when ``k`` is
    the rationale's size, the default)."""

    name = "rationale_f1"

    def score(self, ranks, truth, k, x):
        pred = (ranks < k) & x.word_mask
        tp = (pred & truth).sum(1).float()
        return 2 * tp / (pred.sum(1) + truth.sum(1)).clamp_min(1).float()


@METRICS.register(
    "rationale_iou",
    description="Localisation: IoU of an explainer's top-k words with the ground-truth rationale "
    "(k = the text's number of rationale words unless set)",
)
class RationaleIoU(_Rationale):
    """``|top_k(map) ∩ rationale| / |top_k(map) ∪ rationale|``."""

    name = "rationale_iou"

    def score(self, ranks, truth, k, x):
        pred = (ranks < k) & x.word_mask
        return (pred & truth).sum(1).float() / (pred | truth).sum(1).clamp_min(1).float()


@METRICS.register(
    "rationale_auprc",
    description="Localisation: average precision of the word ranking against the ground-truth "
    "rationale (threshold free; ties at random)",
)
class RationaleAUPRC(_Rationale):
    """Average precision: mean over rationale words of the precision at their rank (ERASER's AUPRC
    for soft scores)."""

    name = "rationale_auprc"
    option_constraints: ClassVar[dict] = {}  # no k: the whole ranking

    def __init__(self, abs: bool = False):
        super().__init__(None, abs)

    def score(self, ranks, truth, k, x):
        order = ranks.argsort(1)  # word slots by rank
        hits = torch.gather(truth, 1, order).float()
        precision = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1, device=hits.device)
        return (precision * hits).sum(1) / truth.sum(1).clamp_min(1).float()


# --------------------------------------------------------------------------- models


@METRICS.register(
    "explained_model_accuracy",
    description="Sanity: whether the model an explainer explains (f_b, or DiET's f_s) predicts the "
    "true class of each evaluation text; the mean is its accuracy",
)
class ExplainedModelAccuracy(_TextMetric):
    """1 where ``argmax model(x) == label``, else 0, for the model each explainer's maps explain
    (NaN, logged, where the model's output is not finite). It describes the model, not the map,
    so it never ranks explainers (``ranked=False``)."""

    name = "explained_model_accuracy"
    category = "sanity"
    higher_is_better = True
    value_range = (0.0, 1.0)
    requires = ("model", "labels")

    def outputs(self) -> list[OutputSpec]:
        return [
            OutputSpec(
                self.name,
                True,
                self.value_range,
                ranked=False,
                unranked_reason="describes the explained model, not the map: equal for every "
                "explainer of one model",
            )
        ]

    @serial_bookkeeping
    def evaluate(self, batch, attributions, *, generator, explainers=None) -> MetricOutput:
        x = text_inputs(batch, self.name)
        with eval_mode(batch.model) as model:
            logits = model(x)
        correct = (logits.argmax(1) == batch.labels.to(logits.device)).float()
        ok = finite_rows(logits)
        return MetricOutput(
            scores={
                self.name: {
                    k: nan_where(correct.clone(), ~ok, self.name, NONFINITE_OUTPUT, k)
                    for k in attributions
                }
            }
        )


__all__: Sequence[str] = [
    "Comprehensiveness",
    "Sufficiency",
    "ComprehensivenessTarget",
    "SufficiencyTarget",
    "TextTopKOverlap",
    "TextSpearman",
    "RationaleF1",
    "RationaleIoU",
    "RationaleAUPRC",
    "ExplainedModelAccuracy",
    "prepare_text",
    "word_ranks",
]
