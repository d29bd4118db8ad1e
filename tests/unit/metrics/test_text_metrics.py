"""Text metrics on hand-made models and maps, with values computed by hand."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xaiarena.data.text import encode_texts  # noqa: E402
from xaiarena.metrics.base import EvalBatch  # noqa: E402
from xaiarena.registry import METRICS  # noqa: E402

TEXT_METRICS = [
    "comprehensiveness",
    "sufficiency",
    "comprehensiveness_target",
    "sufficiency_target",
    "text_topk_overlap",
    "text_spearman",
    "rationale_f1",
    "rationale_iou",
    "rationale_auprc",
    "explained_model_accuracy",
]


@pytest.fixture(scope="module")
def tokenizer():
    from xaiarena.models.text import minilm_path

    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(minilm_path()), use_fast=True, local_files_only=True
    )


class CueModel(nn.Module):
    """Bag of tokens: logit of class 1 = 3 * (count of the token 'great'), class 0 logit = 0."""

    def __init__(self, cue_id: int):
        super().__init__()
        self.cue_id = cue_id
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        hits = ((x.input_ids == self.cue_id) & (x.attention_mask > 0)).sum(1).float()
        return torch.stack([torch.zeros_like(hits), 3 * hits], 1) + self.dummy


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setup(tokenizer):
    texts = ["great movie here now", "the plot was great", "nothing to see"]
    x = encode_texts(tokenizer, texts, 16)
    model = CueModel(tokenizer.convert_tokens_to_ids("great"))
    y = torch.tensor([1, 1, 0])
    return x, model, y


def test_metrics_are_registered_as_text_metrics():
    for name in TEXT_METRICS:
        meta = METRICS.entry(name).meta
        assert meta["modality"] == ("text",) and "category" in meta and "higher_is_better" in meta


P_CUE = 1 / (
    1 + math.exp(-3)
)  # CueModel's probability of class 1 for a text with one cue: softmax([0, 3])[1]


def test_comprehensiveness_and_sufficiency_by_hand(tokenizer):
    """ERASER as DeYoung et al. (2020) define it: the predicted class, floor(q n) words at
    q in {0, 1, 5, 10, 20, 50} %, 1/(|B|+1) = 1/6 of the summed drops."""
    ten = "great " + " ".join(
        f"w{i}" for i in range(9)
    )  # 10 words: floor(q * 10) = 0, 0, 0, 1, 2, 5
    twenty = "great " + " ".join(f"v{i}" for i in range(19))  # 20 words: 0, 0, 1, 2, 4, 10
    x = encode_texts(tokenizer, [ten, twenty], 48)
    model = CueModel(tokenizer.convert_tokens_to_ids("great"))
    y = torch.tensor([1, 1])
    good = (torch.arange(x.max_words) == 0).float().expand(x.shape) * torch.linspace(
        2, 1, x.max_words
    )
    bad = 1 - (torch.arange(x.max_words) == 0).float().expand(x.shape)  # the cue last
    bad = bad * torch.linspace(1, 2, x.max_words)  # no ties among the other words
    maps = {"good": good, "bad": bad}
    batch = EvalBatch(model, x, y, y)
    d = P_CUE - 0.5
    comp = METRICS.create("comprehensiveness").evaluate(batch, maps, generator=_gen())
    c = comp.scores["comprehensiveness"]
    # the cue (ranked first) is removed whenever at least one word is: 3 of 6 levels (10 words), 4
    # of 6 (20)
    torch.testing.assert_close(c["good"], torch.tensor([3 * d / 6, 4 * d / 6]))
    torch.testing.assert_close(c["bad"], torch.zeros(2))  # at most half the words: never the cue
    torch.testing.assert_close(
        comp.curve_x["comprehensiveness"], torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, 0.5])
    )
    torch.testing.assert_close(
        comp.curves["comprehensiveness"]["good"][0], torch.tensor([0, 0, 0, d, d, d])
    )
    suff = METRICS.create("sufficiency").evaluate(batch, maps, generator=_gen())
    s = suff.scores["sufficiency"]
    # keeping the top 0 words keeps nothing (p = 0.5); any kept word is the cue (p = P_CUE, drop 0)
    torch.testing.assert_close(s["good"], torch.tensor([3 * d / 6, 2 * d / 6]))
    torch.testing.assert_close(s["bad"], torch.tensor([d, d]))  # the cue is never kept


def test_eraser_scores_the_predicted_class_not_the_label(tokenizer):
    """A text whose label (0) is not the model's prediction (1): ERASER scores the predicted class,
    the _target variants the class explained (here the label)."""
    ten = "great " + " ".join(f"w{i}" for i in range(9))
    x = encode_texts(tokenizer, [ten], 32)
    model = CueModel(tokenizer.convert_tokens_to_ids("great"))
    label = torch.tensor([0])
    good = {
        "good": (torch.arange(x.max_words) == 0).float().expand(x.shape)
        * torch.linspace(2, 1, x.max_words)
    }
    batch = EvalBatch(model, x, label, label)
    d = P_CUE - 0.5
    c = (
        METRICS.create("comprehensiveness")
        .evaluate(batch, good, generator=_gen())
        .scores["comprehensiveness"]
    )
    torch.testing.assert_close(c["good"], torch.tensor([3 * d / 6]))  # p_1 drops from P_CUE to 0.5
    t = METRICS.create("comprehensiveness_target").evaluate(batch, good, generator=_gen())
    # class 0: p_0 rises from 1 - P_CUE to 0.5 whenever the cue is removed: ceil(q * 10) >= 1 at
    # every q
    torch.testing.assert_close(t.scores["comprehensiveness_target"]["good"], torch.tensor([-d]))
    torch.testing.assert_close(
        t.curve_x["comprehensiveness_target"], torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    )
    st = METRICS.create("sufficiency_target").evaluate(batch, good, generator=_gen())
    torch.testing.assert_close(
        st.scores["sufficiency_target"]["good"], torch.tensor([0.0])
    )  # the cue always kept


def test_eraser_variants_by_hand(setup):
    """The _target variants: the explained class, ceil(q n) words, the plain mean over 10..50 %."""
    x, model, y = setup
    perfect = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0.0, 0, 0, 0]])
    worst = torch.tensor([[0.0, 1, 1, 1], [1.0, 1, 1, 0], [0.0, 0, 0, 0]])
    batch = EvalBatch(model, x, y, y)
    comp = METRICS.create("comprehensiveness_target").evaluate(
        batch, {"good": perfect, "bad": worst}, generator=_gen()
    )
    c = comp.scores["comprehensiveness_target"]
    # texts of 4 words: ceil(q * 4) = 1, 1, 2, 2, 2 words removed; the cue is ranked first -> always
    # removed
    assert torch.allclose(c["good"][:2], torch.full((2,), P_CUE - 0.5), atol=1e-6)
    assert torch.allclose(c["bad"][:2], torch.zeros(2), atol=1e-6)  # never reaches the cue by 50%
    assert comp.curves["comprehensiveness_target"]["good"].shape == (3, 5)
    suff = METRICS.create("sufficiency_target").evaluate(
        batch, {"good": perfect, "bad": worst}, generator=_gen()
    )
    s = suff.scores["sufficiency_target"]
    assert torch.allclose(s["good"][:2], torch.zeros(2), atol=1e-6)
    assert torch.allclose(s["bad"][:2], torch.full((2,), P_CUE - 0.5), atol=1e-6)
    # the third text has no cue: nothing changes whatever is removed
    assert torch.allclose(c["good"][2], torch.tensor(0.0), atol=1e-6)


def test_removal_by_mask_token_gives_the_same_for_a_bag_of_tokens(setup):
    x, model, y = setup
    perfect = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0.0, 0, 0, 0]])
    for name in ("comprehensiveness", "comprehensiveness_target"):
        a = METRICS.create(name, removal="mask").evaluate(
            EvalBatch(model, x, y, y), {"p": perfect}, generator=_gen()
        )
        b = METRICS.create(name).evaluate(
            EvalBatch(model, x, y, y), {"p": perfect}, generator=_gen()
        )
        assert torch.allclose(a.scores[name]["p"], b.scores[name]["p"])


def test_a_constant_map_scores_like_a_random_map_not_like_a_perfect_one(tokenizer, caplog):
    texts = ["w1 w2 w3 w4 w5 w6 w7 great w9 w10"] * 200
    x = encode_texts(tokenizer, texts, 32)
    model = CueModel(tokenizer.convert_tokens_to_ids("great"))
    y = torch.ones(200, dtype=torch.long)
    maps = {
        "constant": torch.ones(x.shape),
        "perfect": (torch.arange(x.max_words) == 7).float().expand(x.shape),
    }
    batch = EvalBatch(
        model, x, y, y, sample_ids=torch.arange(200)
    )  # identical texts: independent ties by id
    d = P_CUE - 0.5
    with caplog.at_level("WARNING", logger="xaiarena.metrics"):
        out = METRICS.create("comprehensiveness").evaluate(batch, maps, generator=_gen())
    assert "explainer 'constant' gives a constant map" in caplog.text
    c = {k: float(v.mean()) for k, v in out.scores["comprehensiveness"].items()}
    # floor(q * 10) = 0, 0, 0, 1, 2, 5 words removed: the cue with probability k / 10
    assert c["perfect"] == pytest.approx(3 * d / 6, abs=1e-6)
    assert c["constant"] == pytest.approx((0.1 + 0.2 + 0.5) / 6 * d, abs=0.02)
    out = METRICS.create("comprehensiveness_target").evaluate(batch, maps, generator=_gen())
    c = {k: float(v.mean()) for k, v in out.scores["comprehensiveness_target"].items()}
    # ceil(q * 10) = 1..5 words: mean over k of k/10 = 0.3
    assert c["perfect"] == pytest.approx(d, abs=1e-6)
    assert c["constant"] == pytest.approx(0.3 * d, abs=0.04)


def test_rationale_overlap_by_hand(setup):
    x, model, y = setup
    truth = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    m = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.5, 0.4, 0.3, 0.9], [1.0, 0.2, 0.3, 0.0]])
    batch = EvalBatch(model, x, y, y, masks=truth)
    f1 = (
        METRICS.create("rationale_f1")
        .evaluate(batch, {"m": m}, generator=_gen())
        .scores["rationale_f1"]["m"]
    )
    iou = (
        METRICS.create("rationale_iou")
        .evaluate(batch, {"m": m}, generator=_gen())
        .scores["rationale_iou"]["m"]
    )
    ap = (
        METRICS.create("rationale_auprc")
        .evaluate(batch, {"m": m}, generator=_gen())
        .scores["rationale_auprc"]["m"]
    )
    # text 1: top-1 = word 0 = truth; text 2: top-2 = {3, 0} vs truth {1, 3}
    assert torch.allclose(f1[:2], torch.tensor([1.0, 0.5])) and torch.isnan(
        f1[2]
    )  # no rationale: NaN
    assert torch.allclose(iou[:2], torch.tensor([1.0, 1 / 3]))
    # ranking of text 2: 3 (hit), 0, 1 (hit), 2 -> AP = (1/1 + 2/3) / 2
    assert torch.allclose(ap[:2], torch.tensor([1.0, (1 + 2 / 3) / 2]))
    f1_k3 = (
        METRICS.create("rationale_f1", k=3)
        .evaluate(batch, {"m": m}, generator=_gen())
        .scores["rationale_f1"]["m"]
    )
    assert torch.allclose(f1_k3[:2], torch.tensor([2 * 1 / (3 + 1), 2 * 2 / (3 + 2)]))


def test_rationale_metrics_skip_datasets_without_rationales(setup, caplog):
    x, model, y = setup
    out = METRICS.create("rationale_f1").evaluate(
        EvalBatch(model, x, y, y), {"m": torch.zeros(x.shape)}, generator=_gen()
    )
    assert out.scores == {} and "no ground-truth rationales" in caplog.text


def test_topk_overlap_for_several_k_and_spearman(setup):
    x, model, y = setup
    a = torch.tensor([[4.0, 3, 2, 1], [4.0, 3, 2, 1], [3.0, 2, 1, 0]])
    b = torch.tensor([[4.0, 1, 2, 3], [1.0, 2, 3, 4], [3.0, 2, 1, 0]])
    batch = EvalBatch(model, x, y, y)
    m = METRICS.create("text_topk_overlap", k=[1, 2, 0.5])
    assert [o.name for o in m.outputs()] == [
        "text_topk_overlap@1",
        "text_topk_overlap@2",
        "text_topk_overlap@0.5",
    ]
    out = m.evaluate(batch, {"a": a, "b": b}, generator=_gen()).scores
    assert torch.allclose(out["text_topk_overlap@1"]["a~b"], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(out["text_topk_overlap@2"]["a~b"], torch.tensor([0.5, 0.0, 1.0]))
    # 0.5 of 4 words = 2 words, of 3 words = round(1.5) = 2
    assert torch.allclose(out["text_topk_overlap@0.5"]["a~b"], torch.tensor([0.5, 0.0, 1.0]))
    rho = METRICS.create("text_spearman").evaluate(batch, {"a": a, "b": b}, generator=_gen())
    r = rho.scores["text_spearman"]["a~b"]
    assert r[1] == pytest.approx(-1.0) and r[2] == pytest.approx(1.0)
    assert r[0] == pytest.approx(0.2)  # ranks (0,1,2,3) vs (0,3,2,1): 1 - 6*8/(4*15)
    ref = METRICS.create("text_topk_overlap", k=1, reference="b").evaluate(
        batch, {"a": a, "b": b}, generator=_gen()
    )
    assert list(ref.scores["text_topk_overlap@1"]) == ["b~a"]


def test_explained_model_accuracy(setup):
    x, model, y = setup
    out = METRICS.create("explained_model_accuracy").evaluate(
        EvalBatch(model, x, y, torch.tensor([1, 0, 0])),
        {"a": torch.zeros(x.shape)},
        generator=_gen(),
    )
    assert out.scores["explained_model_accuracy"]["a"].tolist() == [1.0, 0.0, 1.0]


def test_shape_and_option_errors(setup):
    x, model, y = setup
    with pytest.raises(ValueError, match=r"expected \(N, L\)"):
        METRICS.create("sufficiency").evaluate(
            EvalBatch(model, x, y, y), {"a": torch.zeros(3, 9)}, generator=_gen()
        )
    with pytest.raises(ValueError, match="fractions"):
        METRICS.create("comprehensiveness_target", fractions=[0.0, 2.0])
    with pytest.raises(ValueError, match="removal='drop'"):
        METRICS.create("comprehensiveness", removal="drop")
    with pytest.raises(
        ValueError, match=r"k=\[1, 0\] is not valid; .*\(0 is not an integer >= 1 or a fr"
    ):
        METRICS.create("text_topk_overlap", k=[1, 0])
    with pytest.raises(ValueError, match="TextBatch"):
        METRICS.create("sufficiency").evaluate(
            EvalBatch(model, torch.zeros(3, 1, 4, 4), y, y),
            {"a": torch.zeros(3, 4)},
            generator=_gen(),
        )
