"""Text datasets, words and tokenised batches.

Words
-----
A *word* is a maximal run of non-whitespace characters of the original text
(:func:`split_words`, Python's ``str.split()``). Words are the units every text
explainer attributes to and every text metric removes or keeps; they are exact
substrings of the text, so the report shows the original text, and ground-truth
rationales are word masks. The tokenizer sees the words (``is_split_into_words``)
and its fast ``word_ids()`` map each word piece back to its word: the text is
never re-tokenised from decoded tokens.

Batches
-------
:class:`TextBatch` is what text explainers, metrics and DiET receive as
``inputs``: token ids, attention mask, the word index of every token (``-1`` for
[CLS], [SEP] and padding), the words, and a fixed number of word slots ``L``
(``max_words``) so that word-level maps of different batches line up as
``(N, L)`` (slots past a text's last word are padding, zero in every map).
Perturbations never edit token ids by decoding: words are deleted or replaced
by a special token (:meth:`TextBatch.keep_words`), or their embeddings are
blended towards a baseline token's embedding inside the model
(:meth:`TextBatch.with_weights`, used by DiET).

Datasets
--------
``sst2``, ``imdb`` and ``ag_news`` load through Hugging Face ``datasets``: Hub ids
online, ``<data_dir>/<name>/<split>.parquet`` offline (``data_dir`` or
``XAIARENA_DATA_DIR``, as for images). ``planted_sentiment`` is built in and
offline: generated sentences whose label is decided by a few cue words placed
among distractor words, with the cue positions as ground-truth rationales.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..registry import DATASETS
from .base import Count, Task, TextSplit
from .images import checked_labels, resolve_data_dir, sampled_hf_splits

#: how word pieces are aggregated into a word's score
WORD_AGGREGATIONS = ("sum", "mean", "max", "abs_sum", "first")
#: how a removed word is represented: deleted, or replaced by a special token
REMOVALS = ("delete", "mask", "pad", "unk")


def split_words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of non-whitespace characters (``str.split()``)."""
    return str(text).split()


# --------------------------------------------------------------------------- batches


@dataclass
class TextBatch:
    """Tokenised texts with the word index of every token.

    ``input_ids``/``attention_mask``/``word_ids`` are ``(N, T)`` (right padded;
    ``word_ids`` is ``-1`` at special tokens and padding). ``words[i]`` are the
    words of text ``i`` that survived truncation (``n_words[i]`` of them) and
    ``max_words`` (``L``) is the width of word-level maps. ``special_ids`` holds
    the tokenizer's ``pad``/``mask``/``unk`` ids for perturbations.

    Optional overrides, read by :class:`~xaiarena.models.text.TextClassifier`:
    ``embeds`` ``(N, T, D)`` replaces the word-piece embeddings (gradient
    explainers); ``token_weights`` ``(N, T)`` in [0, 1] with ``baseline_ids``
    (``(N, 1)`` or ``(N, T)``) blends each token's embedding towards the
    baseline token's embedding, ``w * E(x) + (1 - w) * E(b)`` (DiET).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: torch.Tensor
    words: list[list[str]]
    n_words: torch.Tensor
    max_words: int
    special_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    embeds: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    baseline_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if (
            self.input_ids.shape != self.attention_mask.shape
            or self.input_ids.shape != self.word_ids.shape
        ):
            raise ValueError(
                "input_ids, attention_mask and word_ids must have the same (N, T) shape"
            )
        if len(self.words) != n or len(self.n_words) != n:
            raise ValueError(
                f"{len(self.words)} word lists / {len(self.n_words)} counts for {n} texts"
            )
        if n and int(self.n_words.max()) > self.max_words:
            raise ValueError(
                f"max_words={self.max_words} is smaller than the longest text "
                f"({int(self.n_words.max())} words)"
            )

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, L)``: the shape of this batch's word-level maps."""
        return (len(self), self.max_words)

    def to(self, device: torch.device | str) -> TextBatch:
        def mv(t):
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            word_ids=self.word_ids.to(device),
            n_words=self.n_words.to(device),
            embeds=mv(self.embeds),
            token_weights=mv(self.token_weights),
            baseline_ids=mv(self.baseline_ids),
        )

    def __getitem__(self, index: Any) -> TextBatch:
        """Rows ``index`` (slice, int sequence, LongTensor or bool tensor); trailing padding columns
        are cut."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
            sel: Any = index
        else:
            t = torch.as_tensor(index)
            if t.dtype == torch.bool:
                t = t.nonzero().flatten()
            rows = t.reshape(-1).tolist()
            sel = t.reshape(-1).to(self.device)

        def take(v):
            return None if v is None else v[sel]

        bid = self.baseline_ids
        out = dataclasses.replace(
            self,
            input_ids=self.input_ids[sel],
            attention_mask=self.attention_mask[sel],
            word_ids=self.word_ids[sel],
            words=[self.words[i] for i in rows],
            n_words=self.n_words[sel],
            embeds=take(self.embeds),
            token_weights=take(self.token_weights),
            baseline_ids=None if bid is None else (bid[sel] if len(bid) == len(self) else bid),
        )
        return out.trim()

    def trim(self) -> TextBatch:
        """Drop trailing columns that are padding in every row (keeps at least one)."""
        if len(self) == 0:
            return self
        t = max(1, int(self.attention_mask.sum(1).max()))
        if t == self.input_ids.shape[1]:
            return self

        def cut(v):
            return None if v is None else v[:, :t]

        return dataclasses.replace(
            self,
            input_ids=self.input_ids[:, :t],
            attention_mask=self.attention_mask[:, :t],
            word_ids=self.word_ids[:, :t],
            embeds=cut(self.embeds),
            token_weights=cut(self.token_weights),
            baseline_ids=self.baseline_ids
            if self.baseline_ids is None or self.baseline_ids.shape[1] == 1
            else self.baseline_ids[:, :t],
        )

    @property
    def word_mask(self) -> torch.Tensor:
        """``(N, L)`` bool: True at real word slots."""
        return torch.arange(self.max_words, device=self.device)[None] < self.n_words[:, None]

    @property
    def special_mask(self) -> torch.Tensor:
        """``(N, T)`` bool: [CLS], [SEP] and other special tokens (attended, but no word)."""
        return (self.attention_mask > 0) & (self.word_ids < 0)

    @property
    def word_token_mask(self) -> torch.Tensor:
        """``(N, T)`` bool: tokens that belong to a word (word pieces)."""
        return (self.attention_mask > 0) & (self.word_ids >= 0)

    def digests(self) -> list[bytes]:
        """A content digest per text (its attended token ids), independent of padding and batch."""
        ids = self.input_ids.detach().cpu()
        lens = self.attention_mask.detach().cpu().sum(1).tolist()
        return [
            hashlib.blake2b(
                ids[i, : lens[i]].numpy().astype(np.int64).tobytes(), digest_size=16
            ).digest()
            for i in range(len(self))
        ]

    # ---------------------------------------------------------------- words <-> tokens
    def to_tokens(self, word_values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Spread ``(N, L)`` word values onto ``(N, T)`` tokens (every piece gets its word's value);
        special tokens and padding get ``fill``. Differentiable in ``word_values``."""
        idx = self.word_ids.clamp_min(0)
        vals = torch.gather(word_values, 1, idx.to(word_values.device))
        inside = self.word_token_mask.to(word_values.device)
        return torch.where(inside, vals, torch.full_like(vals, fill))

    def to_words(self, token_values: torch.Tensor, rule: str = "sum") -> torch.Tensor:
        """Aggregate ``(N, T)`` token values into ``(N, L)`` word values by ``rule``.

        ``sum`` (default) adds a word's pieces, ``abs_sum`` their magnitudes, ``mean``
        averages them, ``max`` takes the largest (signed) value, ``first`` the first
        piece's value. Special tokens and padding are left out; word slots without a
        token (padding, or a word the tokenizer dropped) are 0.
        """
        if rule not in WORD_AGGREGATIONS:
            raise ValueError(
                f"word aggregation '{rule}' is not valid; choose one of "
                f"{', '.join(WORD_AGGREGATIONS)}"
            )
        n, L = len(self), self.max_words
        v = token_values.float()
        dev = v.device
        inside = self.word_token_mask.to(dev)
        slot = torch.where(inside, self.word_ids.to(dev), torch.full_like(self.word_ids.to(dev), L))
        if rule == "abs_sum":
            v = v.abs()
        v = torch.where(inside, v, torch.zeros_like(v))
        if rule in ("sum", "abs_sum", "mean"):
            out = torch.zeros(n, L + 1, device=dev).scatter_add_(1, slot, v)
            if rule == "mean":
                cnt = torch.zeros(n, L + 1, device=dev).scatter_add_(1, slot, inside.float())
                out = out / cnt.clamp_min(1)
        elif rule == "max":
            out = torch.full((n, L + 1), float("-inf"), device=dev)
            out = out.scatter_reduce(
                1, slot, torch.where(inside, v, torch.full_like(v, float("-inf"))), "amax"
            )
            out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
        else:  # first piece: the token whose previous token belongs to another word
            prev = torch.cat([torch.full_like(slot[:, :1], -2), slot[:, :-1]], 1)
            first = inside & (slot != prev)
            out = torch.zeros(n, L + 1, device=dev).scatter_add_(
                1, slot, torch.where(first, v, torch.zeros_like(v))
            )
        return out[:, :L]

    # ---------------------------------------------------------------- perturbations
    def with_embeds(self, embeds: torch.Tensor) -> TextBatch:
        return dataclasses.replace(self, embeds=embeds)

    def with_weights(self, token_weights: torch.Tensor, baseline_ids: torch.Tensor) -> TextBatch:
        """Blend token embeddings towards ``baseline_ids``' embeddings with weights ``(N, T)``."""
        return dataclasses.replace(self, token_weights=token_weights, baseline_ids=baseline_ids)

    def special_id(self, removal: str) -> int:
        key = {"mask": "mask", "pad": "pad", "unk": "unk"}[removal]
        tid = self.special_ids.get(key)
        if tid is None:
            raise ValueError(
                f"the tokenizer has no [{key.upper()}] token; choose another removal "
                f"({', '.join(r for r in REMOVALS if r != removal)})"
            )
        return int(tid)

    def keep_words(self, keep: torch.Tensor, removal: str = "delete") -> TextBatch:
        """The texts with the words where ``keep`` ``(N, L)`` is False removed.

        ``delete`` drops the removed words' pieces (later tokens move up, as if the
        words had not been written); ``mask``/``pad``/``unk`` replace every piece by
        that special token, keeping positions. Special tokens always stay. The
        result keeps this batch's word indexing (``word_ids`` of surviving pieces).
        """
        if removal not in REMOVALS:
            raise ValueError(
                f"removal='{removal}' is not valid; choose one of {', '.join(REMOVALS)}"
            )
        keep = keep.to(self.device).bool()
        removed = self.word_token_mask & ~self.to_tokens(keep.float(), fill=1.0).bool()
        if removal != "delete":
            ids = self.input_ids.masked_fill(removed, self.special_id(removal))
            return dataclasses.replace(self, input_ids=ids, embeds=None)
        stay = (self.attention_mask > 0) & ~removed
        order = torch.argsort((~stay).to(torch.int8), dim=1, stable=True)
        count = stay.sum(1, keepdim=True)
        pos = torch.arange(self.input_ids.shape[1], device=self.device)[None]
        att = (pos < count).to(self.attention_mask.dtype)
        pad = int(self.special_ids.get("pad", 0))
        ids = torch.gather(self.input_ids, 1, order).masked_fill(att == 0, pad)
        wid = torch.gather(self.word_ids, 1, order).masked_fill(att == 0, -1)
        out = dataclasses.replace(
            self,
            input_ids=ids,
            attention_mask=att,
            word_ids=wid,
            embeds=None,
            token_weights=None
            if self.token_weights is None
            else torch.gather(self.token_weights, 1, order),
        )
        return out.trim()


def encode_texts(
    tokenizer: Any, texts: list[str], max_length: int, max_words: int | None = None
) -> TextBatch:
    """Tokenise ``texts`` word by word (fast tokenizer, truncation at ``max_length`` tokens).

    Words whose pieces are all cut by truncation are left out of ``words``; a word
    the tokenizer turns into no piece at all keeps its slot (with a zero score).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs word_ids() "
            "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    words = [split_words(t) for t in texts]
    if not texts:
        ids = torch.zeros(0, 1, dtype=torch.long)
        return TextBatch(
            ids,
            ids.clone(),
            ids.clone() - 1,
            [],
            torch.zeros(0, dtype=torch.long),
            max(1, max_words or 1),
            special_ids(tokenizer),
        )
    enc = tokenizer(
        words,
        is_split_into_words=True,
        truncation=True,
        max_length=int(max_length),
        padding=True,
        return_tensors="pt",
    )
    wid = torch.tensor(
        [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))],
        dtype=torch.long,
    )
    n_words = wid.max(1).values.clamp_min(-1) + 1
    kept = [w[: int(k)] for w, k in zip(words, n_words.tolist(), strict=True)]
    width = max(1, int(n_words.max()) if len(n_words) else 1)
    if max_words is not None:
        if max_words < width:
            raise ValueError(
                f"max_words={max_words} is smaller than the longest text ({width} words)"
            )
        width = int(max_words)
    att = enc["attention_mask"].long()
    return TextBatch(
        enc["input_ids"].long(), att, wid, kept, n_words, width, special_ids(tokenizer)
    )


def special_ids(tokenizer: Any) -> dict[str, int]:
    out = {}
    for key in ("pad", "mask", "unk", "cls", "sep"):
        v = getattr(tokenizer, f"{key}_token_id", None)
        if v is not None:
            out[key] = int(v)
    return out


def rationale_matrix(
    rationales: list[torch.Tensor] | None, n_words: torch.Tensor, width: int
) -> torch.Tensor | None:
    """Word-level rationale masks cut to the words that survived truncation, as ``(N, L)`` bool."""
    if rationales is None:
        return None
    out = torch.zeros(len(rationales), width, dtype=torch.bool)
    for i, (r, k) in enumerate(zip(rationales, n_words.tolist(), strict=True)):
        k = min(int(k), len(r))
        out[i, :k] = r[:k]
    return out


# --------------------------------------------------------------------------- Hub / Parquet datasets


@dataclass(frozen=True)
class TextSpec:
    hub_id: str
    text_col: str
    label_col: str
    num_classes: int
    splits: tuple[str, str] = ("train", "test")
    hub_config: str | None = None
    description: str = ""
    strip_br: bool = False


TEXT_SPECS: dict[str, TextSpec] = {
    "sst2": TextSpec(
        "stanfordnlp/sst2",
        "sentence",
        "label",
        2,
        splits=("train", "validation"),
        description="SST-2: movie-review sentences, negative/positive (test split = GLUE "
        "validation)",
    ),
    "imdb": TextSpec(
        "stanfordnlp/imdb",
        "text",
        "label",
        2,
        strip_br=True,
        description="IMDB: movie reviews, neg/pos (<br /> tags turned into spaces)",
    ),
    "ag_news": TextSpec(
        "fancyzhx/ag_news",
        "text",
        "label",
        4,
        description="AG News: news title + description, World/Sports/Business/Sci-Tech",
    ),
}


def load_text_dataset(
    name: str,
    *,
    seed: int = 0,
    data_dir=None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Task:
    spec = TEXT_SPECS[name]
    parts, class_names = sampled_hf_splits(
        name,
        spec,
        spec.text_col,
        spec.label_col,
        seed=seed,
        data_dir=data_dir,
        n_train=n_train,
        n_test=n_test,
    )
    out = []
    for d, idx, source in parts:
        texts = [str(t) for t in d[spec.text_col]]
        if spec.strip_br:
            texts = [t.replace("<br />", " ").replace("<br/>", " ") for t in texts]
        labels = checked_labels(
            name, d[spec.label_col], spec.num_classes, source, spec.label_col, idx
        )
        out.append(TextSplit(texts, labels, ids=torch.as_tensor(idx)))
    return Task(
        name=name,
        train=out[0],
        test=out[1],
        class_names=class_names,
        modality="text",
        meta={"source": str(resolve_data_dir(data_dir) or spec.hub_id)},
    )


def _register(name: str, spec: TextSpec) -> None:
    def factory(
        seed: int = 0,
        data_dir: str | None = None,
        n_train: Count | None = None,
        n_test: Count | None = None,
    ) -> Task:
        return load_text_dataset(name, seed=seed, data_dir=data_dir, n_train=n_train, n_test=n_test)

    factory.__name__ = name
    factory.__doc__ = (
        f"{spec.description} (Hub: {spec.hub_id}; offline: <data_dir>/{name}/"
        f"{{{','.join(spec.splits)}}}.parquet)."
    )
    DATASETS.register(
        name,
        description=factory.__doc__,
        modality="text",
        num_classes=spec.num_classes,
        has_masks=False,
        ground_truth=(),
    )(factory)


for _name, _spec in TEXT_SPECS.items():
    _register(_name, _spec)


# --------------------------------------------------------------------------- planted_sentiment

POSITIVE_CUES = (
    "excellent",
    "wonderful",
    "superb",
    "delightful",
    "brilliant",
    "fantastic",
    "lovely",
    "enjoyable",
    "charming",
    "great",
    "beautiful",
    "moving",
)
NEGATIVE_CUES = (
    "terrible",
    "awful",
    "dreadful",
    "boring",
    "horrible",
    "poor",
    "bad",
    "dull",
    "painful",
    "mediocre",
    "ugly",
    "tedious",
)
#: words that appear in both classes at the same rate (they carry no label information)
DISTRACTORS = (
    "the",
    "a",
    "film",
    "movie",
    "story",
    "actor",
    "actress",
    "scene",
    "plot",
    "director",
    "camera",
    "script",
    "music",
    "really",
    "quite",
    "very",
    "and",
    "but",
    "with",
    "about",
    "after",
    "before",
    "during",
    "while",
    "city",
    "night",
    "house",
    "car",
    "window",
    "table",
    "yesterday",
    "today",
    "people",
    "friend",
    "family",
    "song",
    "book",
    "chapter",
    "screen",
    "ticket",
    "seat",
    "popcorn",
    "evening",
    "weekend",
    "summer",
    "winter",
    "river",
    "street",
    "train",
    "station",
    "phone",
    "letter",
    "picture",
    "colour",
    "minute",
    "hour",
    "first",
    "last",
    "other",
    "many",
    "some",
    "every",
    "this",
    "that",
    "was",
    "is",
    "seems",
    "felt",
    "looked",
    "became",
    "rather",
    "somewhat",
    "truly",
    "surprisingly",
    "honestly",
    "simply",
    "entirely",
    "almost",
    "ending",
    "beginning",
    "middle",
    "character",
    "dialogue",
    "sound",
    "light",
    "dark",
    "long",
    "short",
    "old",
    "new",
    "big",
    "small",
    "three",
    "two",
    "one",
    "village",
    "ocean",
    "mountain",
    "forest",
    "teacher",
    "doctor",
)


@DATASETS.register(
    "planted_sentiment",
    description="Built-in, offline: generated sentences of distractor words where 1-3 planted cue "
    "words (all positive or all negative) decide the label; ground-truth rationales = the cue "
    "words' positions.",
    modality="text",
    num_classes=2,
    has_masks=True,
    ground_truth=("rationales",),
)
def planted_sentiment(
    seed: int = 0,
    n_train: Count = 2000,
    n_test: Count = 500,
    min_words: Count = 8,
    max_words: Count = 16,
    min_cues: Count = 1,
    max_cues: Count = 3,
) -> Task:
    """Build ``planted_sentiment`` deterministically from ``seed``.

    Each sentence has ``min_words..max_words`` words. ``min_cues..max_cues`` of them
    are cue words, all from the label's list (positive: "excellent", "superb", ...;
    negative: "terrible", "dull", ...) at random positions; the others are drawn from
    a list of distractor words that appear in both classes alike (including
    sentiment-free intensifiers such as "really" or "surprisingly"). Labels are
    balanced in expectation. The rationale of a sentence marks its cue words.
    """
    values = {
        "n_train": n_train,
        "n_test": n_test,
        "min_words": min_words,
        "max_words": max_words,
        "min_cues": min_cues,
        "max_cues": max_cues,
    }
    checks = {
        "n_train": n_train >= 1,
        "n_test": n_test >= 1,
        "min_words": min_words >= 1,
        "max_words": max_words >= min_words,
        "min_cues": min_cues >= 1,
        "max_cues": min_words >= max_cues >= min_cues,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(
            "planted_sentiment: invalid "
            + ", ".join(f"{k}={values[k]!r}" for k in bad)
            + " (need n_train, n_test >= 1 and 1 <= min_cues <= max_cues <= min_words <= max_words)"
        )
    rng = np.random.default_rng(seed)

    def make(n: int, offset: int) -> TextSplit:
        texts, labels, rats = [], [], []
        for _ in range(n):
            y = int(rng.integers(2))
            length = int(rng.integers(min_words, max_words + 1))
            k = int(rng.integers(min_cues, max_cues + 1))
            cues = POSITIVE_CUES if y == 1 else NEGATIVE_CUES
            words = [DISTRACTORS[i] for i in rng.integers(len(DISTRACTORS), size=length)]
            pos = rng.choice(length, size=k, replace=False)
            rat = np.zeros(length, dtype=bool)
            for p in pos:
                words[p] = cues[int(rng.integers(len(cues)))]
                rat[p] = True
            texts.append(" ".join(words))
            labels.append(y)
            rats.append(torch.from_numpy(rat))
        return TextSplit(texts, torch.tensor(labels), rats, torch.arange(offset, offset + n))

    train, test = make(n_train, 0), make(n_test, n_train)
    return Task(
        name="planted_sentiment",
        train=train,
        test=test,
        class_names=["negative", "positive"],
        modality="text",
        meta={"source": "built-in", "seed": seed},
    )
