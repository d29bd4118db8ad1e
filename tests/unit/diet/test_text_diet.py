"""DiET for text: word masks through the shared DiET core."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xaiarena.data import load_task  # noqa: E402
from xaiarena.explainers.diet import optimise_test_masks  # noqa: E402
from xaiarena.explainers.diet.core import DietConfig, DietTrainer, fingerprint_module  # noqa: E402
from xaiarena.explainers.diet.text import TextDiET, TextMasker  # noqa: E402
from xaiarena.files import load_torch  # noqa: E402
from xaiarena.registry import EXPLAINERS  # noqa: E402

QUICK = {
    "n_train": 120,
    "rounds": 1,
    "mask_max_epochs": 2,
    "model_max_epochs": 1,
    "test_max_steps": 6,
    "batch_size": 32,
    "seed": 0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted(planted, tmp_path_factory):
    task, model = planted
    before = fingerprint_module(model)
    diet = TextDiET(**QUICK)
    cache = tmp_path_factory.mktemp("text_diet")
    diet.fit(model, task, device=torch.device("cpu"), cache_dir=cache)
    return diet, before, cache


def test_masker_masks_words_not_special_tokens(planted):
    _, model = planted
    x = model.encode(["unbelievably wonderful film", "dull"])
    masker = TextMasker(x.max_words, "mask")
    m = torch.tensor([[0.0, 1.0, 0.5], [0.25, 1.0, 1.0]])
    masked = masker.apply(
        x, masker.expand(m), masker.sample_background(2, torch.Generator(), x.device)
    )
    w = masked.token_weights
    assert (w[x.special_mask] == 1).all() and (w[x.attention_mask == 0] == 1).all()
    assert (w[0][x.word_ids[0] == 0] == 0).all() and (w[0][x.word_ids[0] == 2] == 0.5).all()
    assert (masked.baseline_ids == model.tokenizer.mask_token_id).all()
    # sparsity and l0 count only each text's own words (padding slots of the short text are ignored)
    assert torch.allclose(masker.sparsity(m, x), torch.tensor([1.5 / 3, 0.25]))
    assert torch.allclose(masker.l0(m, x), torch.tensor([2 / 3, 1.0]))
    # a fully kept text gives the model's output; a fully masked one differs
    with torch.no_grad():
        same = model(masker.apply(x, torch.ones(2, 3), None))
        assert torch.allclose(same, model(x), atol=1e-5)


def test_fit_never_modifies_f_b_and_reports_faithfulness(planted, fitted):
    task, model = planted
    diet, before, _ = fitted
    assert fingerprint_module(model) == before
    f_s = diet.explained_model(model)
    assert f_s is not model and fingerprint_module(f_s) != before
    rep = diet.report()
    for key in (
        "test_agreement_fs_fb",
        "test_accuracy_fs",
        "test_accuracy_fb",
        "train_masked_accuracy_fs",
        "train_mask_l0_fraction",
    ):
        assert 0.0 <= rep[key] <= 1.0, key
    assert (
        rep["explains"] == "f_s"
        and rep["n_train"] == QUICK["n_train"]
        and rep["mask_unit"] == "word"
    )
    assert diet.train_masks.shape[0] == QUICK["n_train"]
    assert [h["phase"] for h in diet.history] == ["mask", "round", "model"]


def test_test_masks_are_word_maps_in_unit_interval_and_cached(planted, fitted):
    task, model = planted
    diet, _, cache = fitted
    x = model.encode(task.test.texts[:10])
    y = task.test.labels[:10]
    a = diet.explain(diet.explained_model(model), x, y)
    assert a.shape == x.shape and (a >= 0).all() and (a <= 1).all() and (a[~x.word_mask] == 0).all()
    assert (cache / "test_masks.pt").exists()
    # a text's mask does not depend on the batch it came in (recomputed without the cache)
    saved = dict(diet._test_cache)
    diet._test_cache.clear()
    part = diet.explain(diet.explained_model(model), x[3:5], y[3:5])
    assert torch.allclose(part, a[3:5], atol=1e-4)
    diet._test_cache.update(saved)
    fresh = TextDiET(**QUICK)
    fresh.fit(model, task, device=torch.device("cpu"), cache_dir=cache)
    assert fresh.report()["cache_hit"]
    assert torch.equal(fresh.train_masks, diet.train_masks)
    assert torch.allclose(fresh.explain(fresh.explained_model(model), x, y), a)


def test_registration_and_errors(planted):
    entry = EXPLAINERS.entry("text_diet")
    assert entry.meta["family"] == "learned" and entry.meta["explains"] == "f_s"
    assert entry.meta["modality"] == ("text",)
    with pytest.raises(ValueError, match="baseline='black'"):
        TextDiET(baseline="black")
    with pytest.raises(
        ValueError, match=r"text_diet: lr_words=0 is not valid; it must be a number > 0"
    ):
        TextDiET(lr_words=0)
    with pytest.raises(RuntimeError, match="fitted first"):
        TextDiET().explained_model(planted[1])
    image_task = load_task("hard_mnist", n_train=20, n_test=10)
    with pytest.raises(ValueError, match="use 'diet' for images"):
        TextDiET().fit(planted[1], image_task, device=torch.device("cpu"))


def _randomised(model, seed: int = 1):
    import copy

    rnd = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in rnd.modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
    return rnd


def test_f_s_is_served_from_the_cache_a_randomised_copy_is_reoptimised(
    planted, fitted, monkeypatch
):
    """Issue 12.4 for text: explaining f_s hits the cache; explaining another model (the randomised
    copies of the randomisation test) optimises masks against that model, and caches nothing."""
    import xaiarena.explainers.diet.text as text_mod

    task, model = planted
    diet, _, cache = fitted
    f_s = diet.explained_model(model)
    x, y = model.encode(task.test.texts[:8]), task.test.labels[:8]
    maps = diet.explain(f_s, x, y)
    calls = {"n": 0}
    original = text_mod.optimise_test_masks

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(text_mod, "optimise_test_masks", counted)
    assert torch.equal(diet.explain(f_s, x, y), maps) and calls["n"] == 0  # cache hit
    keys, saved = set(diet._test_cache), (cache / "test_masks.pt").read_bytes()
    rnd = _randomised(f_s)
    maps_rnd = diet.explain(rnd, x, y)
    assert calls["n"] == 1 and (maps_rnd - maps).abs().amax() > 0.05  # masks of another model
    assert (maps_rnd[~x.word_mask] == 0).all()
    assert set(diet._test_cache) == keys and (cache / "test_masks.pt").read_bytes() == saved
    assert torch.equal(diet.explain(f_s, x, y), maps) and calls["n"] == 1


@pytest.mark.parametrize(
    "setting",
    [
        {"test_lr": 150.0},
        {"test_max_steps": 3},
        {"test_sparsity_weight": 3.0},
        {"test_window": 0.25, "test_tol": 1.0, "test_mask_tol": 10.0},
        {"test_procedure": "authors"},
        {"baseline": "pad"},
        {"lr_words": 3.0},
    ],
)
def test_test_time_settings_are_part_of_the_text_mask_cache_key(planted, fitted, setting):
    """Issue 12.5 for text: another test-time setting on the same cache folder reuses the fit but
    never the cached test masks (issue 23: the procedure and the converged rule's settings too)."""
    task, model = planted
    diet, _, cache = fitted
    x, y = model.encode(task.test.texts[:6]), task.test.labels[:6]
    maps = diet.explain(diet.explained_model(model), x, y)
    other = TextDiET(**{**QUICK, **setting})
    other.fit(model, task, device=torch.device("cpu"), cache_dir=cache)
    assert other.report()["cache_hit"] is not ({"baseline", "lr_words"} & set(setting))
    got = other.explain(other.explained_model(model), x, y)
    assert not torch.allclose(got, maps)
    other._test_cache.clear()  # what it served is what it computes afresh
    assert torch.allclose(other.explain(other.explained_model(model), x, y), got, atol=1e-5)


class _Constant(torch.nn.Module):
    """A text classifier whose output ignores its input: only DiET's sparsity term moves a mask."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, batch):
        return self.logits.expand(len(batch), 2)


@pytest.mark.parametrize("lr_words", [None, 3.0])
def test_lr_words_gives_every_word_the_same_step_in_training_and_at_test_time(
    planted, tmp_path, lr_words
):
    """The sparsity gradient of a word is w / n_words; with lr_words a text's rate is lr * n /
    lr_words, so one step lowers every word of every text by lr * w / (batch * lr_words). Without
    it, a word of a long text moves n_short / n_long as far as a word of a short one."""
    _, model = planted
    x = model.encode(["wonderful", "a really long and rather dull film about many people"])
    n = x.n_words.float()
    assert n[1] > 3 * n[0]
    cfg = DietConfig(
        rounds=1,
        batch_size=2,
        mask_lr=2.0,
        test_lr=2.0,
        mask_max_epochs=1,
        model_max_epochs=1,
        test_max_steps=1,
        test_tol=0.0,
    )
    expected = 2.0 / 2 / (n if lr_words is None else torch.full_like(n, lr_words))
    masker = TextMasker(x.max_words, "mask", lr_words)
    assert masker.describe().get("lr_words") == lr_words

    def steps(masks):
        return [1 - masks[i, : int(n[i])] for i in range(2)]

    test_masks, _ = optimise_test_masks(_Constant(), x, masker, cfg)
    DietTrainer(masker, cfg, cache_dir=tmp_path, show_progress=False).fit(
        _Constant(), lambda idx: x[idx], 2
    )
    train_masks = load_torch(tmp_path / "masks_round0_before_rounding.pt")
    for masks in (test_masks, train_masks):
        for step, want in zip(steps(masks), expected, strict=True):
            assert torch.allclose(step, torch.full_like(step, float(want)), atol=1e-6)


@pytest.mark.parametrize("lr_words", [None, 3.0])
def test_converged_procedure_counts_its_window_in_each_texts_horizon(planted, lr_words):
    """A text's horizon (steps in which sparsity alone erases an unused word) is batch * n_words /
    (lr * scale * w): its length without lr_words, lr_words with it; the converged rule compares two
    windows of two half-windows of ceil(test_window * horizon / 2) steps, so with loose tolerances a
    text stops after exactly two windows."""
    from xaiarena.explainers.diet.testtime import horizons

    _, model = planted
    x = model.encode(["wonderful", "a really long and rather dull film about many people"])
    cfg = DietConfig(batch_size=2, test_lr=2.0, test_tol=10.0, test_mask_tol=10.0, test_window=1.0)
    masker = TextMasker(x.max_words, "mask", lr_words)
    h = horizons(cfg, masker, x, masker.init_masks(2))
    want = x.n_words.tolist() if lr_words is None else [3, 3]
    assert h.tolist() == want
    _, summary = optimise_test_masks(_Constant(), x, masker, cfg)
    windows = [2 * math.ceil(v / 2) for v in want]
    assert summary["window"].tolist() == windows
    assert summary["steps"].tolist() == [2 * v for v in windows] and not summary["limit_hit"].any()


def test_text_report_shows_steps_stop_reasons_and_the_seed_check(planted, fitted):
    task, model = planted
    diet, _, _ = fitted
    x = model.encode(task.test.texts[:10])
    diet.prepare_set(diet.explained_model(model), x)  # as the runner's explain stage
    rep = diet.report()
    t = rep["test_time"]
    assert t["procedure"] == "converged" and t["n_masks"] >= 10
    assert t["stopped_by_rule"] + t["stopped_at_limit"] == t["n_masks"]
    assert rep["test_steps_mean"] == t["steps_mean"] <= QUICK["test_max_steps"]
    assert rep["test_seed_check"]["n_samples"] == 8 and -1 <= rep["test_seed_agreement"] <= 1
