"""Text data: loaders on the shared Parquet files, planted_sentiment, word alignment of
TextBatch."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.support.paths import SHARED
from xaiarena.data import TextSplit, load_task  # noqa: E402
from xaiarena.data.text import TextBatch, encode_texts, rationale_matrix, split_words  # noqa: E402
from xaiarena.errors import DataError

needs_shared = pytest.mark.skipif(
    not (SHARED / "sst2" / "validation.parquet").exists(),
    reason=f"shared datasets not found under {SHARED}",
)


@pytest.fixture(scope="module")
def tokenizer():
    from xaiarena.models.text import minilm_path

    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(minilm_path()), use_fast=True, local_files_only=True
    )


# --------------------------------------------------------------------------- loaders


@needs_shared
@pytest.mark.parametrize(
    "name,classes,first_split_size",
    [
        ("sst2", ["negative", "positive"], 67349),
        ("imdb", ["neg", "pos"], 2000),
        ("ag_news", ["World", "Sports", "Business", "Sci/Tech"], 6000),
    ],
)
def test_loaders_read_the_shared_parquet_files(name, classes, first_split_size):
    task = load_task(name, seed=0, data_dir=str(SHARED), n_train=40, n_test=12)
    assert task.modality == "text" and task.class_names == classes
    assert len(task.train) == 40 and len(task.test) == 12
    assert all(isinstance(t, str) and t.strip() for t in task.train.texts)
    assert set(task.train.labels.tolist()) <= set(range(len(classes)))
    assert task.train.ids.max() < first_split_size and len(set(task.train.ids.tolist())) == 40
    again = load_task(name, seed=0, data_dir=str(SHARED), n_train=40, n_test=12)
    assert again.train.texts == task.train.texts and torch.equal(again.test.ids, task.test.ids)
    other = load_task(name, seed=1, data_dir=str(SHARED), n_train=40, n_test=12)
    assert other.train.texts != task.train.texts


@needs_shared
def test_loader_takes_the_data_dir_from_the_environment(monkeypatch):
    monkeypatch.setenv("XAIARENA_DATA_DIR", str(SHARED))
    task = load_task("sst2", seed=0, n_train=5, n_test=5)
    assert task.meta["source"] == str(SHARED)
    # the SST-2 test split is GLUE validation: 872 rows
    full = load_task("sst2", seed=0, n_train=5)
    assert len(full.test) == 872


@needs_shared
def test_imdb_line_breaks_become_spaces():
    task = load_task("imdb", seed=0, data_dir=str(SHARED), n_train=300, n_test=5)
    assert not any("<br />" in t for t in task.train.texts)


def test_missing_parquet_is_a_clear_error(tmp_path):
    with pytest.raises(
        DataError, match=r"has no folder 'sst2'.*sst2/<split>\.parquet for splits train, validation"
    ):
        load_task("sst2", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- planted_sentiment


def test_planted_sentiment_is_deterministic_and_its_rationales_mark_the_cues():
    from xaiarena.data.text import NEGATIVE_CUES, POSITIVE_CUES

    a = load_task("planted_sentiment", seed=3, n_train=200, n_test=50)
    b = load_task("planted_sentiment", seed=3, n_train=200, n_test=50)
    assert a.train.texts == b.train.texts and a.modality == "text" and a.has_masks
    assert (
        a.train.texts != load_task("planted_sentiment", seed=4, n_train=200, n_test=50).train.texts
    )
    for text, label, rat in zip(a.train.texts, a.train.labels, a.train.rationales, strict=True):
        words = split_words(text)
        assert len(rat) == len(words) and 1 <= int(rat.sum()) <= 3
        cues = POSITIVE_CUES if label == 1 else NEGATIVE_CUES
        other = NEGATIVE_CUES if label == 1 else POSITIVE_CUES
        assert all(w in cues for w, r in zip(words, rat, strict=True) if r)
        assert not any(w in cues or w in other for w, r in zip(words, rat, strict=True) if not r)
    assert 0.35 < float(a.train.labels.float().mean()) < 0.65
    assert set(a.test.ids.tolist()).isdisjoint(a.train.ids.tolist())


def test_planted_sentiment_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_cues=9"):
        load_task("planted_sentiment", min_words=4, max_words=6, max_cues=9)


def test_text_split_checks_rationale_lengths():
    with pytest.raises(ValueError, match="rationale 0"):
        TextSplit(["two words"], torch.tensor([0]), [torch.tensor([True])])


# --------------------------------------------------------------------------- word alignment


def test_word_pieces_map_to_their_words_and_special_tokens_are_excluded(tokenizer):
    texts = ["unbelievably good <script> movie.", "hi"]
    b = encode_texts(tokenizer, texts, max_length=32)
    assert b.words == [["unbelievably", "good", "<script>", "movie."], ["hi"]]
    assert b.n_words.tolist() == [4, 1] and b.max_words == 4
    pieces = tokenizer.convert_ids_to_tokens(b.input_ids[0])
    assert pieces[0] == "[CLS]" and pieces[int(b.attention_mask[0].sum()) - 1] == "[SEP]"
    # "unbelievably" is split into several pieces, all mapped to word 0
    first = [p for p, w in zip(pieces, b.word_ids[0].tolist(), strict=True) if w == 0]
    assert len(first) >= 3 and "".join(p.removeprefix("##") for p in first) == "unbelievably"
    assert [p for p, w in zip(pieces, b.word_ids[0].tolist(), strict=True) if w == 2] == [
        "<",
        "script",
        ">",
    ]
    # special tokens and padding have no word
    assert b.word_ids[0, 0] == -1 and b.word_ids[1, 0] == -1
    assert (b.word_ids[1][b.attention_mask[1] == 0] == -1).all()
    assert b.special_mask.sum(1).tolist() == [2, 2]
    # aggregation: sum of ones = number of pieces per word; specials (value 100) never leak
    vals = torch.where(
        b.word_token_mask, torch.ones(b.input_ids.shape), torch.full(b.input_ids.shape, 100.0)
    )
    counts = b.to_words(vals)
    assert counts[0].tolist() == [len(first), 1, 3, 2] and counts[1].tolist() == [1, 0, 0, 0]
    assert b.to_words(vals, "mean")[0].tolist() == [1, 1, 1, 1]
    idx = torch.arange(b.input_ids.numel(), dtype=torch.float32).view(b.input_ids.shape)
    assert b.to_words(idx, "first")[0, 0] == 1 and b.to_words(idx, "max")[0, 0] == len(first)


def test_word_values_round_trip_through_tokens(tokenizer):
    b = encode_texts(tokenizer, ["a tokenizer splits extraordinarily long words", "short one"], 32)
    w = torch.randn(b.shape) * b.word_mask
    tok = b.to_tokens(w, fill=7.0)
    assert (tok[b.special_mask] == 7.0).all()
    assert torch.allclose(b.to_words(tok, "mean"), w)


def test_truncation_keeps_only_words_with_pieces(tokenizer):
    text = " ".join(f"word{i}" for i in range(40))
    b = encode_texts(tokenizer, [text], max_length=12)
    assert int(b.attention_mask.sum()) == 12
    assert b.n_words.item() < 40 and b.words[0] == split_words(text)[: b.n_words.item()]
    rat = rationale_matrix([torch.ones(40, dtype=torch.bool)], b.n_words, b.max_words)
    assert rat.shape == b.shape and int(rat.sum()) == b.n_words.item()


def test_keep_words_deletes_or_masks_whole_words(tokenizer):
    b = encode_texts(tokenizer, ["unbelievably good movie", "fine"], 16)
    keep = torch.tensor([[False, True, True], [True, False, False]])
    deleted = b.keep_words(keep, "delete")
    assert (
        tokenizer.decode(deleted.input_ids[0][deleted.attention_mask[0] > 0])
        == "[CLS] good movie [SEP]"
    )
    assert deleted.word_ids[0].tolist()[:4] == [-1, 1, 2, -1]
    masked = b.keep_words(keep, "mask")
    n_pieces = int((b.word_ids[0] == 0).sum())
    assert (masked.input_ids[0] == tokenizer.mask_token_id).sum() == n_pieces
    assert torch.equal(masked.attention_mask, b.attention_mask)
    assert torch.equal(
        b.keep_words(torch.ones(b.shape, dtype=torch.bool), "delete").input_ids, b.input_ids
    )


def test_slicing_trims_padding_and_keeps_word_slots(tokenizer):
    b = encode_texts(tokenizer, ["a much longer text than the other one", "tiny"], 32)
    one = b[1:]
    assert isinstance(one, TextBatch) and one.shape == (1, b.max_words)
    assert one.input_ids.shape[1] == int(b.attention_mask[1].sum())
    assert one.digests() == b.digests()[1:]
    assert b[torch.tensor([1, 1, 0])].words == [["tiny"], ["tiny"], b.words[0]]
