"""Text explainers: interface, word alignment, oracles, determinism and recovery of planted cues."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xaiarena.metrics.base import EvalBatch  # noqa: E402
from xaiarena.registry import EXPLAINERS, METRICS  # noqa: E402

TEXT_EXPLAINERS = [
    "text_random",
    "text_saliency",
    "text_input_x_gradient",
    "text_integrated_gradients",
    "text_occlusion",
    "text_lime",
    "text_kernel_shap",
    "attention_rollout",
]
FAST = {
    "text_lime": {"n_samples": 40},
    "text_kernel_shap": {"n_samples": 40},
    "text_integrated_gradients": {"n_steps": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(planted):
    task, model = planted
    idx = torch.arange(24)
    texts = [task.test.texts[i] for i in idx]
    return model.encode(texts), task.test.labels[idx]


@pytest.mark.parametrize("name", TEXT_EXPLAINERS)
def test_word_maps_have_the_contract_shape_and_are_reproducible(planted, batch, name):
    _, model = planted
    x, y = batch
    e = EXPLAINERS.create(name, **FAST.get(name, {}))
    assert EXPLAINERS.entry(name).meta["modality"] == ("text",)
    a = e.explain(model, x, y, generator=torch.Generator().manual_seed(1))
    assert a.shape == (len(x), x.max_words) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a[~x.word_mask] == 0).all()
    assert (a[x.word_mask] != 0).any()
    b = e.explain(model, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name",
    ["text_random", "text_lime", "text_kernel_shap", "text_occlusion", "text_integrated_gradients"],
)
def test_a_texts_map_does_not_depend_on_its_batch(planted, batch, name):
    _, model = planted
    x, y = batch
    e = EXPLAINERS.create(name, **FAST.get(name, {}))
    full = e.explain(model, x, y, generator=torch.Generator().manual_seed(5))
    parts = torch.cat(
        [
            e.explain(model, x[i : i + 7], y[i : i + 7], generator=torch.Generator().manual_seed(5))
            for i in range(0, len(x), 7)
        ]
    )
    assert torch.allclose(full, parts, atol=1e-4)


def test_occlusion_is_leave_one_word_out(planted, batch):
    _, model = planted
    x, y = batch[0][:3], batch[1][:3]
    a = EXPLAINERS.create("text_occlusion", removal="delete").explain(model, x, y)
    with torch.no_grad():
        full = model(x).gather(1, y[:, None])[:, 0]
        for i in range(3):
            for w in range(int(x.n_words[i])):
                keep = x.word_mask.clone()
                keep[:, w] = False
                drop = model(x[[i]].keep_words(keep[[i]], "delete")).gather(1, y[[i], None])[0, 0]
                assert torch.isclose(a[i, w], full[i] - drop, atol=1e-5)


def test_integrated_gradients_matches_captum_layer_ig_on_the_embedding_layer(planted, batch):
    from captum.attr import LayerIntegratedGradients

    _, model = planted
    x, y = batch[0][:6], batch[1][:6]
    ours = EXPLAINERS.create("text_integrated_gradients", n_steps=20, baseline="mask").explain(
        model, x, y
    )
    base_ids = torch.where(
        x.word_token_mask, torch.full_like(x.input_ids, x.special_ids["mask"]), x.input_ids
    )
    lig = LayerIntegratedGradients(lambda ids, att: model(ids, att), model.embeddings())
    ref = lig.attribute(
        x.input_ids,
        baselines=base_ids,
        target=y,
        additional_forward_args=(x.attention_mask,),
        n_steps=20,
    ).sum(-1)
    assert torch.allclose(ours, x.to_words(ref), atol=1e-4, rtol=1e-3)


def test_kernel_shap_scores_sum_to_the_full_minus_empty_output(planted, batch):
    _, model = planted
    x, y = batch[0][:5], batch[1][:5]
    a = EXPLAINERS.create("text_kernel_shap", n_samples=60, removal="mask").explain(model, x, y)
    with torch.no_grad():
        full = model(x).gather(1, y[:, None])[:, 0]
        empty = model(x.keep_words(torch.zeros(x.shape, dtype=torch.bool), "mask")).gather(
            1, y[:, None]
        )[:, 0]
    assert torch.allclose(a.sum(1), full - empty, atol=1e-2)


def test_saliency_aggregates_word_pieces_by_the_chosen_rule(planted):
    _, model = planted
    x = model.encode(["unbelievably wonderful film", "dreadful"])
    y = torch.tensor([1, 0])
    summed = EXPLAINERS.create("text_saliency").explain(model, x, y)
    first = EXPLAINERS.create("text_saliency", aggregate="first").explain(model, x, y)
    n_pieces = int((x.word_ids[0] == 0).sum())
    assert n_pieces > 1
    assert summed[0, 0] > first[0, 0] > 0  # several positive pieces sum to more than the first one
    assert torch.isclose(summed[0, 1], first[0, 1])  # a one-piece word is the same either way


def test_attention_rollout_rows_are_a_distribution_over_tokens(planted, batch):
    _, model = planted
    x, y = batch
    before = model.net.config._attn_implementation
    a = EXPLAINERS.create("attention_rollout").explain(model, x, y)
    assert (a >= 0).all() and (a.sum(1) <= 1 + 1e-5).all()
    assert model.net.config._attn_implementation == before  # eager only for the call


@pytest.mark.parametrize(
    "name", ["text_integrated_gradients", "text_saliency", "text_occlusion", "attention_rollout"]
)
def test_recovers_planted_cues_better_than_random(planted, name):
    task, model = planted
    idx = torch.arange(60)
    x = model.encode([task.test.texts[i] for i in idx])
    y = task.test.labels[idx]
    from xaiarena.data.text import rationale_matrix

    truth = rationale_matrix([task.test.rationales[i] for i in idx], x.n_words, x.max_words)
    maps = {
        k: EXPLAINERS.create(k, **FAST.get(k, {})).explain(
            model, x, y, generator=torch.Generator().manual_seed(0)
        )
        for k in (name, "text_random")
    }
    out = METRICS.create("rationale_f1").evaluate(
        EvalBatch(model, x, y, y, truth), maps, generator=torch.Generator().manual_seed(0)
    )
    f1 = {k: float(v.nanmean()) for k, v in out.scores["rationale_f1"].items()}
    assert f1[name] > f1["text_random"] + 0.2, f1


def test_bad_inputs_and_options_are_clear_errors(planted, batch):
    _, model = planted
    with pytest.raises(ValueError, match="TextBatch"):
        EXPLAINERS.create("text_saliency").explain(
            model, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
        )
    with pytest.raises(ValueError, match="aggregate='median'.*sum"):
        EXPLAINERS.create("text_saliency", aggregate="median")
    with pytest.raises(ValueError, match="removal='blank'.*delete, mask, pad, unk"):
        EXPLAINERS.create("text_occlusion", removal="blank")
    with pytest.raises(ValueError, match="baseline='black'.*pad, mask, unk, zero"):
        EXPLAINERS.create("text_integrated_gradients", baseline="black")
    with pytest.raises(ValueError, match="2 targets for 24"):
        EXPLAINERS.create("text_random").explain(model, batch[0], torch.tensor([0, 1]))
