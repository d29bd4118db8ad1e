"""DiET: losses, schedule, f_b untouched, test-time masks, checkpoint/resume (tiny settings)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.paths import ROOT
from xaiarena.data.base import ImageSplit, Task
from xaiarena.explainers.diet import DiET, DietConfig, DietTrainer, ImageMasker, optimise_test_masks
from xaiarena.explainers.diet.core import (
    diet_terms,
    has_converged,
    mask_l0,
    mask_sparsity,
    phases,
    prob_l1,
    round_masks,
    rounding_offset,
    sparsity_weight,
)
from xaiarena.explainers.diet.image import _digests
from xaiarena.explainers.diet.testtime import horizons, sample_seed

# rates as given (lr_cells None): at these 16 cells the test-time horizon is
# ceil(16 * 16 / (12 * 8)) = 3 steps
TINY = dict(
    upsample_factor=4,
    rounds=2,
    n_train=48,
    batch_size=16,
    mask_lr=500.0,
    mask_max_epochs=3,
    model_max_epochs=2,
    lr_cells=None,
    test_lr=12.0,
    test_max_steps=12,
    seed=3,
)


pytestmark = pytest.mark.usefixtures("one_thread")


class Quadrant(nn.Module):
    """A classifier that only looks at the top-left quadrant of a 3x16x16 image."""

    def __init__(self, classes: int = 4, scale: float = 5.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(3 * 8 * 8, classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(classes, 3 * 8 * 8, generator=g) / 8)
            self.lin.bias.zero_()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.lin(x[:, :, :8, :8].flatten(1) - 0.5)


def _random_task(
    n_train: int = 64, n_test: int = 16, size: int = 16, classes: int = 4, seed: int = 0
) -> Task:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> ImageSplit:
        return ImageSplit(
            torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g),
        )

    return Task(
        "random",
        split(n_train),
        split(n_test),
        [str(c) for c in range(classes)],
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),
    )


@pytest.fixture()
def quadrant_task():
    task = _random_task()
    model = Quadrant()
    # label = the model's own prediction, so accuracies are meaningful
    for split in (task.train, task.test):
        with torch.no_grad():
            split.labels = model(split.float_images()).argmax(1)
    return task, model


def _fit(model, task, cache_dir=None, **over) -> DiET:
    diet = DiET(**{**TINY, **over})
    diet.fit(
        model,
        task,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        cache_dir=cache_dir,
    )
    return diet


def _reference_masks(diet: DiET, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The masks DiET's test-time procedure gives ``x`` for ``model``, computed directly (no cache,
    no explainer): per sample with generators seeded by content (``converged``), or ``x`` as one set
    in the canonical order of its digests (``authors``)."""
    digests = _digests(x)
    if diet.config.test_procedure == "authors":
        order = torch.tensor(sorted(range(len(x)), key=lambda i: digests[i]))
        masks, _ = optimise_test_masks(
            model, x[order], diet.test_masker, diet.config, seed=diet._seed
        )
        out = torch.empty_like(masks)
        out[order] = masks
        return out
    seeds = [sample_seed(diet._seed, d) for d in digests]
    return optimise_test_masks(
        model, x, diet.test_masker, diet.config, seed=diet._seed, sample_seeds=seeds
    )[0]


# --------------------------------------------------------------------------- losses and schedule


def test_loss_terms_on_hand_made_tensors():
    p_fb = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    p_fs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    p_m = torch.tensor([[0.5, 0.0, 0.5], [0.6, 0.2, 0.2]])
    m_up = torch.zeros(2, 1, 2, 2)
    m_up[0, 0, 0, 0] = 1.0  # sample 0 keeps 1 of 4 pixels
    m_up[1] = 0.5  # sample 1 keeps half of every pixel
    t = diet_terms(p_fb, p_fs, p_m, m_up, weight=0.5)
    assert torch.allclose(t["distill"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(t["robust"], torch.tensor([1.0, 0.4 + 0.1 + 0.3]))
    assert torch.allclose(t["sparsity"], torch.tensor([0.25, 0.5]))
    assert torch.allclose(t["loss"], torch.tensor([0.5 * 0.25 + 1.0 + 1.0, 0.5 * 0.5 + 0.0 + 0.8]))
    # the model-phase loss has no sparsity term
    t2 = diet_terms(p_fb, p_fs, p_m)
    assert torch.allclose(t2["loss"], t2["distill"] + t2["robust"])
    assert torch.allclose(prob_l1(p_fb, p_fb), torch.zeros(2))
    assert torch.allclose(mask_l0(m_up), torch.tensor([0.25, 1.0]))
    assert torch.allclose(mask_sparsity(torch.ones(3, 1, 4, 4)), torch.ones(3))


def test_schedule_weights_and_offsets():
    R = 5
    assert [round(sparsity_weight(k, R), 6) for k in range(R)] == [1.0, 0.82, 0.64, 0.46, 0.28]
    assert [round(rounding_offset(k, R), 6) for k in range(R)] == [0.4, 0.32, 0.24, 0.16, 0.08]
    assert sparsity_weight(0, 3) == 1.0 and abs(sparsity_weight(2, 3) - 0.4) < 1e-12
    assert phases(2) == [
        ("mask", 0),
        ("round", 0),
        ("model", 0),
        ("mask", 1),
        ("round", 1),
        ("model", 1),
    ]
    for bad in ((5, 5), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            sparsity_weight(*bad)


def test_rounding_thresholds():
    m = torch.tensor([0.0, 0.09, 0.1, 0.3, 0.42, 0.5, 0.9, 1.0])
    # offset 0.4 keeps everything >= 0.1; offset 0.08 keeps everything >= 0.42
    assert round_masks(m, 0.4).tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert round_masks(m, 0.08).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert round_masks(m, 0.0).tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_convergence_rule():
    assert not has_converged([1.0, 1.0], 0.01)  # needs the loss two epochs earlier
    assert has_converged([1.0, 0.5, 0.995], 0.01)
    assert not has_converged([1.0, 0.999, 0.97], 0.01)
    assert has_converged([2.0, 3.0, 2.0], 0.0)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mask_lr"):
        DietConfig(mask_lr=0)
    with pytest.raises(ValueError, match="background"):
        DiET(background="plaid")
    with pytest.raises(ValueError, match="n_train"):
        DiET(n_train=0)


# --------------------------------------------------------------------------- image masker


def test_image_masker_masks_and_backgrounds():
    masker = ImageMasker(
        (3, 16, 12), upsample_factor=4, background="normal", mean=[0.2, 0.5, 0.8], std=0.3
    )
    masks = masker.init_masks(5)
    assert masks.shape == (5, 1, 4, 3)
    up = masker.expand(masks)
    assert up.shape == (5, 1, 16, 12) and torch.all(up == 1)
    x = torch.rand(5, 3, 16, 12)
    gen = torch.Generator().manual_seed(0)
    bg = masker.sample_background(5, gen, torch.device("cpu"))
    assert bg.shape == (5, 3, 1, 1) and bg.min() >= 0 and bg.max() <= 1
    assert torch.equal(masker.apply(x, up, bg), x)  # ones keep the input exactly
    erased = masker.apply(x, torch.zeros_like(up), bg)
    assert torch.allclose(erased, bg.expand_as(x))  # zeros give the background colour
    big = masker.sample_background(4000, gen, torch.device("cpu")).view(4000, 3)
    assert torch.allclose(
        big.mean(0), torch.tensor([0.2, 0.5, 0.8]), atol=0.05
    )  # roughly (clamping shifts it)
    const = ImageMasker((3, 8, 8), background="constant", mean=0.3)
    assert torch.allclose(
        const.sample_background(2, gen, torch.device("cpu")), torch.full((2, 3, 1, 1), 0.3)
    )
    with pytest.raises(ValueError, match="channels"):
        ImageMasker((3, 8, 8), mean=[0.1, 0.2])


# --------------------------------------------------------------------------- algorithm behaviour


def test_test_masks_keep_what_the_model_uses(quadrant_task):
    """For a model that only reads the top-left quadrant, test masks erase the rest."""
    task, model = quadrant_task
    cfg = DietConfig(
        batch_size=16, test_lr=500.0, test_max_steps=25, test_window=100.0
    )  # rule never compares
    masker = ImageMasker((3, 16, 16), upsample_factor=2, mean=task.mean, std=task.std)
    x = task.test.float_images()
    masks, summary = optimise_test_masks(model, x, masker, cfg, seed=0)
    assert masks.shape == (len(x), 1, 8, 8) and masks.min() >= 0 and masks.max() <= 1
    assert (
        summary["steps"].tolist() == [25] * len(x) and summary["limit_hit"].all()
    )  # the rule never held
    inside = masks[:, 0, :3, :3].mean()  # cells whose upsampled pixels lie inside the quadrant
    outside = masks[:, 0, 5:, :].mean()
    assert outside < 0.05, outside
    assert inside > outside + 0.3, (inside, outside)  # a sparse subset of the quadrant suffices


def test_horizon_erases_unused_cells_and_does_not_depend_on_the_mask_size(quadrant_task):
    """The horizon is the number of steps in which sparsity alone takes an unused cell from 1 to 0;
    with ``lr_cells`` (the image default, 1024) it is the same at every mask size (issue 23: no
    silent 13-step optimisation at 14x14-16x16 cells)."""
    task, model = quadrant_task
    cfg = DietConfig(batch_size=64, test_lr=125.0, test_sparsity_weight=8.0)
    for shape, factor in (((3, 64, 64), 2), ((3, 32, 32), 2), ((1, 28, 28), 2), ((3, 64, 64), 4)):
        masker = ImageMasker(shape, upsample_factor=factor, lr_cells=1024)
        x = torch.rand(2, *shape)
        assert horizons(cfg, masker, x, masker.init_masks(2)).tolist() == [
            66,
            66,
        ]  # ceil(64 * 1024 / 1000)
    plain = ImageMasker(
        (3, 32, 32), upsample_factor=2
    )  # lr_cells None: the rate as given, 256 cells
    assert horizons(cfg, plain, torch.rand(1, 3, 32, 32), plain.init_masks(1)).tolist() == [17]
    with pytest.raises(ValueError, match="test_sparsity_weight=0"):
        DietConfig(test_sparsity_weight=0.0)
    cfg = DietConfig(
        batch_size=16,
        test_lr=200.0,
        test_sparsity_weight=1.0,
        test_window=100.0,
        test_average=False,
    )
    masker = ImageMasker((3, 16, 16), upsample_factor=2, mean=task.mean, std=task.std)
    x = task.test.float_images()
    horizon = int(horizons(cfg, masker, x, masker.init_masks(1))[0])
    assert horizon == 6  # 16 * 64 / 200 = 5.12
    masks, summary = optimise_test_masks(
        model, x, masker, replace(cfg, test_max_steps=horizon), seed=0
    )
    assert summary["steps"].tolist() == [horizon] * len(x)
    assert torch.all(masks[:, 0, 5:, :] == 0)  # cells the model never reads are erased ...
    short, _ = optimise_test_masks(
        model, x, masker, replace(cfg, test_max_steps=horizon - 2), seed=0
    )
    assert torch.all(short[:, 0, 5:, 1:-1] > 0)  # ... and not earlier


def test_lr_cells_gives_a_cell_the_same_step_at_every_mask_size():
    """mask_lr and test_lr are the rates of a 1024-cell mask: at n cells the masker's lr_scale is
    n / 1024 in training and at test time, and the fit's cache key records it only where it changes
    something."""
    big, small = (
        ImageMasker((3, 64, 64), 2, lr_cells=1024),
        ImageMasker((3, 32, 32), 2, lr_cells=1024),
    )
    assert big.lr_scale(torch.rand(2, 3, 64, 64)) is None and "lr_cells" not in big.describe()
    assert torch.equal(small.lr_scale(torch.rand(2, 3, 32, 32)), torch.full((2,), 256 / 1024))
    assert small.describe()["lr_cells"] == 1024
    with pytest.raises(ValueError, match="lr_cells=0"):
        DiET(lr_cells=0)


def test_fit_training_masks_and_report(quadrant_task, tmp_path):
    task, model = quadrant_task
    diet = _fit(model, task, tmp_path, upsample_factor=2, rounds=2, mask_max_epochs=8, n_train=None)
    masks = diet.train_masks
    assert masks.shape == (len(task.train), 1, 8, 8)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}  # rounded after the last mask phase
    assert masks[:, 0, :3, :3].mean() > masks[:, 0, 5:, :].mean() + 0.5
    rep = diet.report()
    for key in (
        "test_agreement_fs_fb",
        "test_accuracy_fs",
        "test_accuracy_fb",
        "train_masked_accuracy_fs",
        "train_mask_l0_fraction",
    ):
        assert 0.0 <= rep[key] <= 1.0, key
    assert rep["explains"] == "f_s" and rep["n_train"] == len(task.train)
    assert rep["train_mask_l0_fraction"] < 1.0
    json.dumps(rep)  # goes into run.json
    # every faithfulness number the fit reports has a label in the HTML report
    from xaiarena.report.html import _DIET_COUNTS, _DIET_LABELS

    diet.prepare_set(
        diet.f_s, task.test.float_images()
    )  # as the runner's explain stage: the seed check too
    diet.explain(diet.f_s, task.test.float_images(), task.test.labels)
    assert (
        0.0 <= rep["test_stopped_at_limit_fraction"] <= 1.0
    )  # how the test-time optimisation ended
    assert -1.0 <= rep["test_seed_agreement"] <= 1.0 and rep["test_seed_check"]["n_samples"] == 8
    numbers = {
        k
        for k, v in rep.items()
        if k.startswith(("test_", "train_")) and isinstance(v, (int, float))
    }
    labelled = set(_DIET_LABELS) | set(_DIET_COUNTS)
    assert numbers and numbers <= labelled, numbers - labelled


def test_f_b_is_never_modified(tmp_path):
    from xaiarena.data import load_task
    from xaiarena.models import build_model

    small_task = load_task("hard_mnist", seed=0, n_train=96, n_test=16)
    torch.manual_seed(0)
    f_b = build_model("lenet", small_task, channels=(4, 8), hidden=(16,))
    f_b.train()  # the mode must be restored as well
    f_b.net.classifier[-1].weight.requires_grad_(False)  # and per-parameter flags
    before = {k: v.clone() for k, v in f_b.state_dict().items()}
    flags = [p.requires_grad for p in f_b.parameters()]
    diet = _fit(f_b, small_task, tmp_path, model_lr=1e-2)
    f_s = diet.explained_model(f_b)
    assert f_s is not f_b
    after = f_b.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in f_b.parameters()] == flags and f_b.training
    # the test is not vacuous: f_s did move away from f_b
    assert any(not torch.equal(before[k], v) for k, v in f_s.state_dict().items())
    x = small_task.test.float_images(torch.arange(4))
    maps = diet.explain(f_s, x, torch.zeros(4, dtype=torch.long))
    assert maps.shape == (4, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert all(torch.equal(before[k], v) for k, v in f_b.state_dict().items())


@pytest.mark.parametrize("batchnorm", ["frozen", "batch"])
def test_batchnorm_model_f_b_buffers_untouched(tmp_path, batchnorm):
    """A ResNet's BatchNorm running statistics belong to f_b too: f_s's training must not move them.
    ``frozen`` (default) keeps f_s's running statistics at f_b's; ``batch`` (the authors' code)
    updates them."""
    from xaiarena.models import build_model

    task = _random_task(n_train=48, n_test=8)
    torch.manual_seed(0)
    f_b = build_model("resnet", task, depth=8, width=4).eval()
    before = {k: v.clone() for k, v in f_b.state_dict().items()}
    diet = _fit(f_b, task, tmp_path, rounds=1, batchnorm=batchnorm)
    assert all(torch.equal(before[k], v) for k, v in f_b.state_dict().items())
    after = diet.f_s.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    moved = [k for k in stats if not torch.equal(before[k], after[k])]
    assert stats and (moved == [] if batchnorm == "frozen" else moved)
    weights = [k for k in before if k.endswith(".weight")]
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # f_s did train either way
    assert diet.explain(diet.f_s, task.test.float_images(), task.test.labels).shape == (8, 16, 16)


class _BnDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.1)
        self.lin = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x):
        return self.lin(self.drop(self.bn(x).flatten(1)))


@pytest.mark.parametrize("batchnorm", ["frozen", "batch"])
def test_model_phase_runs_batchnorm_as_asked_and_dropout_in_train_mode(batchnorm, monkeypatch):
    task = _random_task(n_train=32, n_test=8)
    f_b = _BnDropout().eval()
    modes: dict[str, set[bool]] = {"bn": set(), "drop": set()}
    in_model_phase = [False]
    model_phase = DietTrainer._model_phase

    def spied_model_phase(self, *args, **kwargs):
        in_model_phase[0] = True
        try:
            return model_phase(self, *args, **kwargs)
        finally:
            in_model_phase[0] = False

    def spy(name):
        def hook(mod, args):
            if in_model_phase[0]:
                modes[name].add(mod.training)

        return hook

    monkeypatch.setattr(DietTrainer, "_model_phase", spied_model_phase)
    f_b.bn.register_forward_pre_hook(spy("bn"))
    f_b.drop.register_forward_pre_hook(spy("drop"))
    _fit(
        f_b, task, rounds=1, model_max_epochs=1, batchnorm=batchnorm
    )  # f_s is a deep copy: hooks come along
    assert modes["drop"] == {True}  # dropout trains in the model phase either way
    assert modes["bn"] == {batchnorm == "batch"}


def test_batchnorm_option_is_checked():
    with pytest.raises(ValueError, match="batchnorm='running'.*frozen, batch"):
        DiET(batchnorm="running")


# --------------------------------------------------------------------------- test-time masks


def test_test_masks_depend_only_on_f_s_and_inputs(quadrant_task, tmp_path):
    task, model = quadrant_task
    diet = _fit(model, task, tmp_path / "a")
    f_s = diet.explained_model(model)
    x = task.test.float_images()
    y = task.test.labels
    maps = diet.explain(f_s, x, y)
    # no target dependence
    assert torch.equal(maps, diet.explain(f_s, x, (y + 1) % 4))
    # the same maps from f_s, the inputs and the settings alone (no training masks, no training
    # data)
    assert torch.equal(diet.masker.expand(_reference_masks(diet, f_s, x))[:, 0], maps)
    # scrambling the training masks and training data afterwards changes nothing
    diet.train_masks = torch.rand_like(diet.train_masks)
    task.train.images.zero_()
    diet._test_cache.clear()
    assert torch.equal(diet.explain(f_s, x, y), maps)
    # a sample's map does not depend on the other samples in its batch
    parts = torch.cat([diet.explain(f_s, x[i : i + 3], y[i : i + 3]) for i in range(0, len(x), 3)])
    diet._test_cache.clear()
    parts_fresh = torch.cat(
        [diet.explain(f_s, x[i : i + 5], y[i : i + 5]) for i in range(0, len(x), 5)]
    )
    assert torch.allclose(parts, maps, atol=1e-5) and torch.allclose(parts_fresh, maps, atol=1e-5)
    # nor on the order of the samples
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    diet._test_cache.clear()
    assert torch.allclose(diet.explain(f_s, x[perm], y[perm]), maps[perm], atol=1e-5)
    # saved for the run
    saved = torch.load(tmp_path / "a" / "test_masks.pt", weights_only=True)
    assert len(saved["masks"]) >= len(x)


def _count_optimisations(monkeypatch) -> dict[str, int]:
    """Count the test-time optimisations the image DiET runs (calls of optimise_test_masks)."""
    import xaiarena.explainers.diet.image as image_mod

    calls = {"n": 0, "samples": 0}
    original = image_mod.optimise_test_masks

    def counted(model, inputs, *args, **kwargs):
        calls["n"] += 1
        calls["samples"] += len(inputs)
        return original(model, inputs, *args, **kwargs)

    monkeypatch.setattr(image_mod, "optimise_test_masks", counted)
    return calls


def _randomised(model: nn.Module, seed: int = 1) -> nn.Module:
    import copy

    rnd = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in rnd.modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
    return rnd


def test_explaining_f_s_is_cached_another_model_is_reoptimised_uncached(
    quadrant_task, tmp_path, monkeypatch
):
    """Issue 12.4: maps for f_s come from the cache; for any other model (a randomised copy of f_s,
    f_b) DiET optimises test-time masks against that model and caches nothing."""
    task, model = quadrant_task
    diet = _fit(model, task, tmp_path)
    f_s = diet.explained_model(model)
    x, y = task.test.float_images(), task.test.labels
    calls = _count_optimisations(monkeypatch)
    maps = diet.explain(f_s, x, y)
    assert calls == {"n": 1, "samples": len(x)}
    assert (
        torch.equal(diet.explain(f_s, x, y), maps) and calls["n"] == 1
    )  # cache hit, nothing recomputed
    cached = dict(diet._test_cache)
    saved = (tmp_path / "test_masks.pt").read_bytes()

    rnd = _randomised(f_s)
    maps_rnd = diet.explain(rnd, x, y)
    assert calls == {"n": 2, "samples": 2 * len(x)}  # re-optimised against the randomised copy
    assert (maps_rnd - maps).abs().amax() > 0.1
    expected = _reference_masks(diet, rnd, x)
    assert torch.allclose(
        maps_rnd, diet.masker.expand(expected)[:, 0]
    )  # masks for that model, same settings
    assert (
        diet.explain(rnd, x, y).equal(maps_rnd) and calls["n"] == 3
    )  # again: not served from a cache
    assert diet._test_cache.keys() == cached.keys()
    assert (tmp_path / "test_masks.pt").read_bytes() == saved  # no cache write
    # explaining f_b (a different model too) re-optimises against f_b, and f_s is still served from
    # the cache
    diet.explain(model, x, y)
    assert calls["n"] == 4
    assert torch.equal(diet.explain(f_s, x, y), maps) and calls["n"] == 4
    # the default model of test_masks is f_s
    assert torch.equal(diet.masker.expand(diet.test_masks(x))[:, 0], maps) and calls["n"] == 4


def test_mprt_over_diet_scores_below_one(quadrant_task, tmp_path):
    """Issue 12.4: the randomisation test re-explains a randomised copy of f_s; DiET's maps
    change."""
    from xaiarena.metrics import EvalBatch
    from xaiarena.registry import METRICS

    task, model = quadrant_task
    diet = _fit(model, task, tmp_path)
    f_s = diet.explained_model(model)
    x, y = task.test.float_images(), task.test.labels
    maps = diet.explain(f_s, x, y)

    def fn(inputs, targets, generator=None, model=f_s):  # what the runner hands to mprt
        return diet.explain(model, inputs, targets, generator=generator)

    batch = EvalBatch(model=f_s, inputs=x, targets=y, labels=y)
    out = METRICS.create("mprt").evaluate(
        batch, {"diet": maps}, generator=torch.Generator().manual_seed(0), explainers={"diet": fn}
    )
    s = out.scores["mprt"]["diet"]
    assert s.mean() < 0.9, s


@pytest.mark.integration
def test_mprt_over_diet_through_the_runner(tmp_path):
    """Issue 12.4 end to end: a run with DiET and mprt gives a similarity below 1, and run.json's
    ``diet`` block reports how the test-time optimisation ended (issue 12.3)."""
    import xaiarena

    cfg = {
        "name": "t",
        "seed": 0,
        "data": {"name": "hard_mnist", "n_train": 300, "n_test": 40},
        "model": {"name": "lenet", "channels": [4, 8, 8]},
        "training": {"epochs": 1},
        "evaluation": {"n_samples": 12, "batch_size": 6},
        "explainers": [
            {
                "name": "diet",
                **{k: v for k, v in TINY.items() if k != "seed"},
                "upsample_factor": 8,
                # a gentle test-time step: with a large one and the default sparsity weight the
                # steps collapse every mask to ~0, and a constant map rightly scores 1
                "n_train": 32,
                "rounds": 1,
                "test_lr": 20.0,
                "test_sparsity_weight": 1.0,
                "test_max_steps": 6,
                "test_seed_check": 4,
            }
        ],
        "metrics": [{"name": "mprt", "n_layers": 2}],
    }
    res = xaiarena.run(cfg, out=tmp_path / "run", show_progress=False)
    mprt = res.per_sample[(res.per_sample.metric == "mprt") & (res.per_sample.explainer == "diet")]
    assert len(mprt) == 12 and mprt.value.mean() < 0.9, mprt.value.describe()
    diet = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]["hard_mnist"][
        "learned"
    ]["diet"]
    assert (
        diet["test_time"]["n_masks"] == 12
    )  # the evaluation samples; the randomised copies are not counted
    # the horizon (16 * 64 / 20 = 52 steps) is far beyond the 6-step safety limit: every mask stops
    # there, and the report says so
    assert diet["test_time"]["horizon"] == 52 and diet["test_time"]["steps_max"] == 6
    assert (
        diet["test_stopped_at_limit_fraction"] == 1.0
        and diet["test_time"]["stopped_at_limit"] == 12
    )
    assert diet["test_seed_check"]["n_samples"] == 4  # the explain stage ran the seed check


@pytest.mark.parametrize(
    "setting",
    [
        {"test_lr": 200.0},
        {"test_max_steps": 3},
        {"test_sparsity_weight": 3.0},
        {"test_tol": 10.0, "test_mask_tol": 10.0},
        {"test_window": 1.0},
        {"test_average": False},
        {"test_background_std": 0.2},
        {"test_background_mean": 0.2},
        {"test_procedure": "authors"},
        {"batch_size": 8},
        {"lr_cells": 64},
    ],
)
def test_every_test_time_setting_is_part_of_the_mask_cache_key(
    quadrant_task, tmp_path, setting, monkeypatch
):
    """Issue 12.5: test-time masks cached under one setting are never served under another, neither
    through a new explainer on the same cache folder (the fit is reused) nor by changing the config
    of a fitted one (issue 23: the procedure and its new settings too)."""
    task, model = quadrant_task
    x, y = task.test.float_images(), task.test.labels
    old = _fit(model, task, tmp_path)
    maps = old.explain(old.f_s, x, y)
    calls = _count_optimisations(monkeypatch)
    new = _fit(model, task, tmp_path, **setting)
    fit_setting = bool(
        {"batch_size", "lr_cells"} & set(setting)
    )  # lr_cells: the training step changes too
    assert new.report()["cache_hit"] is not fit_setting  # test_* settings reuse the fit
    new_maps = new.explain(new.f_s, x, y)
    assert calls["n"] == 1  # recomputed, not read from the cached test masks
    assert torch.allclose(new_maps, new.masker.expand(_reference_masks(new, new.f_s, x))[:, 0])
    assert not torch.allclose(new_maps, maps)
    # the same through the Python API on a fitted explainer: change the config, masks are recomputed
    # (not the masker's settings, nor the procedure, whose defaults of w and the background differ)
    if not fit_setting and not {
        "test_background_std",
        "test_background_mean",
        "test_procedure",
    } & set(setting):
        old.config = replace(old.config, **setting)
        assert torch.allclose(old.explain(old.f_s, x, y), new_maps) and calls["n"] == 2
    # and the old setting's masks are still served from the cache
    back = _fit(model, task, tmp_path)
    assert torch.equal(back.explain(back.f_s, x, y), maps)


def test_test_background_std_option(quadrant_task):
    task, model = quadrant_task
    official = _fit(
        model, task
    )  # default: the official inference code's 0.05 (pixel space, per channel)
    assert torch.allclose(official.test_masker.std, torch.full((3,), 0.05))
    assert torch.equal(
        official.test_masker.mean, official.masker.mean
    )  # the mean is the training one
    assert torch.allclose(
        official.masker.std, torch.tensor(task.std)
    )  # training: the data set's std
    same = _fit(model, task, test_background_std=None)  # null: as in training
    assert torch.equal(same.test_masker.std, same.masker.std)
    assert torch.allclose(
        _fit(model, task, test_background_std=[0.1, 0.2, 0.3]).test_masker.std,
        torch.tensor([0.1, 0.2, 0.3]),
    )
    with pytest.raises(ValueError, match="test_background_std"):
        DiET(test_background_std=-0.1)
    # the authors' procedure defaults to their hard-coded colour and sparsity weight; both stay
    # options
    authors = _fit(model, task, test_procedure="authors")
    assert torch.allclose(authors.test_masker.mean, torch.tensor([0.527, 0.447, 0.403]))
    assert authors.config.test_sparsity_weight == 1.0 and authors.config.test_tol == 0.002
    assert authors.config.test_max_steps == TINY["test_max_steps"]  # given: a limit in epochs
    ours = _fit(
        model, task, test_procedure="authors", test_background_mean=0.3, test_sparsity_weight=4.0
    )
    assert (
        torch.allclose(ours.test_masker.mean, torch.full((3,), 0.3))
        and ours.config.test_sparsity_weight == 4.0
    )
    assert DiET().config.test_sparsity_weight == 8.0  # converged: ours
    with pytest.raises(ValueError, match="test_procedure='paper'.*converged, authors"):
        DiET(test_procedure="paper")


def test_report_counts_steps_and_masks_stopped_by_the_rule_or_the_limit(quadrant_task, tmp_path):
    task, model = quadrant_task
    x, y = task.test.float_images(), task.test.labels
    never = _fit(
        model, task, tmp_path / "a", test_window=100.0
    )  # the rule never compares two windows
    rep = never.report()
    assert "test_time" not in rep  # nothing explained yet
    never.explain(never.f_s, x, y)
    t = rep["test_time"]  # the dict handed out before is updated in place
    assert t["n_masks"] == len(x) and t["procedure"] == "converged"
    assert rep["test_stopped_at_limit_fraction"] == 1.0 and t["stopped_at_limit"] == len(x)
    assert rep["test_steps_mean"] == t["steps_max"] == TINY["test_max_steps"]
    assert t["final_loss_change"] is None  # the rule never compared two windows
    always = _fit(model, task, tmp_path / "b", test_tol=10.0, test_mask_tol=10.0)
    always.explain(always.f_s, x, y)
    t = always.report()["test_time"]  # window: two half-windows of ceil(0.5 * 3 / 2) = 1 step
    assert (
        t["horizon"] == 3
        and t["window"] == 2
        and always.report()["test_stopped_at_limit_fraction"] == 0.0
    )
    assert t["steps_max"] == t["steps_min"] == 2 * t["window"] == 4  # the rule compares two windows
    assert (
        t["final_loss_change"]["median"] >= 0
        and t["final_mask_change"]["max"] >= t["final_mask_change"]["median"]
    )
    assert (
        always.report()["test_final_mask_change"] == t["final_mask_change"]["median"]
    )  # on the report's card
    # a cached fit reports the cached masks' numbers before any explain call
    again = _fit(model, task, tmp_path / "a", test_window=100.0)
    assert (
        again.report()["test_time"]["n_masks"] == len(x)
        and again.report()["test_stopped_at_limit_fraction"] == 1
    )
    # randomised copies do not count
    again.explain(_randomised(again.f_s), x, y)
    assert again.report()["test_time"]["n_masks"] == len(x)


def test_authors_masks_come_from_the_evaluation_set_whatever_the_batches(quadrant_task, tmp_path):
    """The authors' rule stops on the whole set's loss, so a mask depends on the set it is optimised
    with. The runner hands DiET the view's evaluation set first (prepare_set): the maps are then
    those of that set whatever evaluation.batch_size and the order, and not those of each batch as a
    set."""
    task, model = quadrant_task
    diet = _fit(model, task, tmp_path, test_procedure="authors", test_max_steps=None, test_lr=40.0)
    f_s = diet.explained_model(model)
    x, y = task.test.float_images(), task.test.labels
    want = diet.masker.expand(_reference_masks(diet, f_s, x))[:, 0]
    diet.prepare_set(f_s, x)
    assert diet.report()["test_time"]["epochs"] == [diet.report()["test_time"]["steps_min"]]
    for bs in (3, 5, 16):
        got = torch.cat(
            [diet.explain(f_s, x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
        )
        assert torch.allclose(got, want, atol=1e-5)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    fresh = _fit(model, task, None, test_procedure="authors", test_max_steps=None, test_lr=40.0)
    fresh.prepare_set(f_s := fresh.explained_model(model), x[perm])
    assert torch.allclose(fresh.explain(f_s, x[perm], y[perm]), want[perm], atol=1e-5)
    # a batch outside the registered set is its own set: other masks
    alone = _fit(model, task, None, test_procedure="authors", test_max_steps=None, test_lr=40.0)
    part = alone.explain(alone.explained_model(model), x[:5], y[:5])
    assert not torch.allclose(part, want[:5], atol=1e-3)


def test_seed_check_measures_how_much_the_maps_depend_on_the_seed(quadrant_task, tmp_path):
    """prepare_set re-optimises the first test_seed_check samples (by digest) with a second seed and
    reports the median per-sample Spearman correlation of the two seeds' maps; cached with the
    masks."""
    from xaiarena.explainers.diet.testtime import second_seed, spearman_pairs

    task, model = quadrant_task
    x = task.test.float_images()
    diet = _fit(model, task, tmp_path, test_seed_check=5)
    diet.prepare_set(diet.f_s, x)
    check = diet.report()["test_seed_check"]
    assert check["n_samples"] == 5 and check["second_seed"] == second_seed(diet._seed)
    first = sorted(range(len(x)), key=lambda i: _digests(x)[i])[:5]
    a = diet.masker.expand(diet.test_masks(x[first]))[:, 0]
    other = DiET(**{**TINY, "seed": check["second_seed"]})
    other.f_s, other.masker, other.test_masker, other.config = (
        diet.f_s,
        diet.masker,
        diet.test_masker,
        diet.config,
    )
    other._seed = check["second_seed"]
    b = diet.masker.expand(_reference_masks(other, diet.f_s, x[first]))[:, 0]
    rho = spearman_pairs(list(a), list(b))
    assert torch.allclose(torch.tensor(check["spearman"], dtype=torch.float64), rho, atol=1e-3)
    assert abs(diet.report()["test_seed_agreement"] - float(rho.median())) < 1e-3
    assert float(rho.median()) < 0.999  # the seeds do differ
    again = _fit(model, task, tmp_path, test_seed_check=5)  # served from the cache folder
    assert again.report()["test_seed_check"] == check
    off = _fit(model, task, None, test_seed_check=0)
    off.prepare_set(off.f_s, x)
    assert "test_seed_check" not in off.report()


def test_explain_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="fit"):
        DiET().explain(nn.Identity(), torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- checkpoints and resume


def _same_result(a: DiET, b: DiET) -> None:
    sa, sb = a.f_s.state_dict(), b.f_s.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.train_masks, b.train_masks)
    strip = [{k: v for k, v in rec.items() if k != "seconds"} for rec in a.history]
    assert strip == [{k: v for k, v in rec.items() if k != "seconds"} for rec in b.history]


def test_resume_after_interruption_matches_uninterrupted_run(quadrant_task, tmp_path, monkeypatch):
    task, model = quadrant_task
    full = _fit(model, task, tmp_path / "full")

    calls = {"n": 0}
    original = DietTrainer._model_phase

    def crash_in_second_model_phase(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DietTrainer, "_model_phase", crash_in_second_model_phase)
    with pytest.raises(KeyboardInterrupt):
        _fit(model, task, tmp_path / "resumed")
    monkeypatch.setattr(DietTrainer, "_model_phase", original)
    done = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [(r["phase"], r["round"]) for r in done] == phases(2)[
        :5
    ]  # mask, round, model, mask, round

    resumed = _fit(model, task, tmp_path / "resumed")
    assert resumed.report()["resumed_from_phase"] == 5 and not resumed.report()["cache_hit"]
    _same_result(full, resumed)

    # a finished fit is loaded, not recomputed
    again = _fit(model, task, tmp_path / "resumed")
    assert again.report()["cache_hit"]
    _same_result(full, again)

    # test-time settings do not touch the fit: still a cache hit
    test_only = _fit(model, task, tmp_path / "resumed", test_sparsity_weight=2.0, test_max_steps=3)
    assert test_only.report()["cache_hit"]
    _same_result(full, test_only)

    # other settings in the same folder start afresh instead of resuming
    other = _fit(model, task, tmp_path / "resumed", mask_lr=100.0)
    assert not other.report()["cache_hit"] and other.report()["resumed_from_phase"] == 0


@pytest.mark.parametrize("damage", ["truncate_state", "garbage_history"])
def test_damaged_fit_checkpoint_is_recomputed(quadrant_task, tmp_path, damage):
    """Issue 17.6: a truncated or tampered DiET checkpoint is discarded with a log line and the fit
    recomputed to the same result, instead of failing every re-run."""
    task, model = quadrant_task
    full = _fit(model, task, tmp_path / "full")
    if damage == "truncate_state":
        p = tmp_path / "full" / "state.pt"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    else:
        (tmp_path / "full" / "history.json").write_text("{not json")
    again = _fit(model, task, tmp_path / "full")
    assert not again.report()["cache_hit"]
    _same_result(full, again)


def test_artefacts_load_with_weights_only(quadrant_task, tmp_path):
    task, model = quadrant_task
    diet = _fit(model, task, tmp_path)
    diet.explain(
        diet.f_s, task.test.float_images(torch.arange(2)), torch.zeros(2, dtype=torch.long)
    )
    names = {p.name for p in tmp_path.iterdir()}
    expected = {
        "meta.json",
        "history.json",
        "state.pt",
        "f_s.pt",
        "train_masks.pt",
        "report.json",
        "test_masks.pt",
    }
    expected |= {f"masks_round{k}_{w}_rounding.pt" for k in range(2) for w in ("before", "after")}
    expected |= {f"f_s_round{k}.pt" for k in range(2)}
    assert expected <= names, expected - names
    for name in names:
        if name.endswith(".pt"):
            torch.load(tmp_path / name, weights_only=True)
    f_s = Quadrant()
    f_s.load_state_dict(torch.load(tmp_path / "f_s.pt", weights_only=True))
    assert all(torch.equal(v, diet.f_s.state_dict()[k]) for k, v in f_s.state_dict().items())
    before = torch.load(tmp_path / "masks_round0_before_rounding.pt", weights_only=True)
    after = torch.load(tmp_path / "masks_round0_after_rounding.pt", weights_only=True)
    assert torch.equal(after, round_masks(before, rounding_offset(0, 2)))
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["phase"] for r in history] == [p for p, _ in phases(2)]
    assert all(1 <= len(r["epochs"]) <= 3 for r in history if r["phase"] == "mask")


def test_phase_epoch_caps(quadrant_task):
    task, model = quadrant_task
    diet = _fit(
        model, task, None, mask_tol=0.0, model_tol=0.0, mask_max_epochs=2, model_max_epochs=1
    )
    assert [len(r.get("epochs", [])) for r in diet.history] == [2, 0, 1, 2, 0, 1]


# --------------------------------------------------------------------------- registry and config


def test_registered_as_learned_explainer():
    from xaiarena.registry import EXPLAINERS

    entry = EXPLAINERS.entry("diet")
    assert entry.meta["family"] == "learned" and entry.meta["explains"] == "f_s"
    params = entry.parameters()
    for key in ("upsample_factor", "rounds", "n_train", "mask_lr", "background", "test_max_steps"):
        assert key in params


def test_shipped_config_is_valid():

    from xaiarena.config import load_config
    from xaiarena.registry import EXPLAINERS, METRICS

    path = ROOT / "configs" / "diet_hard_mnist.yaml"
    missing = [n for n in ("gradcam", "integrated_gradients", "smoothgrad") if n not in EXPLAINERS]
    missing += [n for n in ("topk_iou",) if n not in METRICS]
    if missing:
        pytest.skip(f"not registered yet: {', '.join(missing)}")
    cfg = load_config(path)
    assert [e.name for e in cfg.explainers][0] == "diet"
    assert cfg.data[0].name == "hard_mnist" and cfg.model.name == "lenet"


# --------------------------------------------------------------------------- the authors' procedure


class _TinyCNN(nn.Module):
    """A small convolutional f_s for the port test (fixed random weights, sharp enough outputs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.lin = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        h = F.avg_pool2d(torch.relu(self.conv(x - 0.5)), 4)
        return 4.0 * self.lin(h.flatten(1))


def _authors_inference(
    model, images, lr, bs, ups, simp_weight, orders, backgrounds, max_epochs=200
):
    """Our port of the authors' test-time loop, written from AI4LIFE-GROUP/DiET's
    ``inference_distill.py`` (``main``, ``distill`` with ``-r 1``, ``update_mask``): one SGD
    optimiser on a ``(N, 1, H/ups, W/ups)`` mask of ones, shuffled mini-batches (here the injected
    ``orders``), a background colour per sample and channel per batch (here the injected
    ``backgrounds``),
    ``torch.nn.Upsample(scale_factor=ups, mode='bilinear')``, a loss summed over the batch with
    ``vector_norm(..., 1)`` and divided by the batch's length, clamping of the whole mask after each
    step, the epoch loss accumulated in a float32 tensor, and their stopping test against the loss
    two epochs earlier. Returns the final masks and the number of epochs run."""
    n, _, h, w = images.shape
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    mask = torch.ones((n, 1, h // ups, w // ups)).requires_grad_(True)
    mask_opt = torch.optim.SGD([mask], lr=lr)
    sm = nn.Softmax(dim=1)
    upsample = nn.Upsample(scale_factor=ups, mode="bilinear")
    prev_loss, prev_prev_loss = float("inf"), float("inf")
    converged, epoch = False, 0
    while not converged:
        assert epoch < max_epochs, "the port did not stop"
        metrics = torch.zeros((4,))
        num_samples = 0
        order = orders[epoch]
        for b, start in enumerate(range(0, n, bs)):
            idx = order[start : start + bs]
            batch_D_d, batch_mask = images[idx], upsample(mask[idx])
            avg_val = backgrounds[epoch][b]
            pred_fs_d = sm(model(batch_D_d))
            pred_fs_s = sm(model((batch_mask * batch_D_d) + (1 - batch_mask) * avg_val))
            t2 = torch.linalg.vector_norm(pred_fs_d - pred_fs_s, 1)
            sim_heur = torch.linalg.vector_norm(batch_mask, 1) / (h * w)
            loss = (simp_weight * sim_heur + t2) / len(batch_D_d)
            mask_opt.zero_grad()
            loss.backward()
            mask_opt.step()
            with torch.no_grad():
                mask.copy_(mask.clamp(max=1, min=0))
            metrics += torch.Tensor([loss.item() * len(batch_D_d), sim_heur.item(), t2.item(), 0.0])
            num_samples += len(idx)
        metrics /= num_samples
        mask_loss = metrics[0]
        converged = bool(
            (mask_loss > 0.998 * prev_prev_loss) and (mask_loss < 1.002 * prev_prev_loss)
        )
        prev_prev_loss = prev_loss
        prev_loss = mask_loss
        epoch += 1
    return mask.detach(), epoch


class _Injected:
    """Fixed draws for both implementations: one permutation per epoch, one background per batch."""

    def __init__(self, orders, backgrounds):
        self.orders, self.backgrounds = orders, [bg for epoch in backgrounds for bg in epoch]
        self.n_orders = self.n_backgrounds = 0

    def order(self, n):
        out = self.orders[self.n_orders]
        assert len(out) == n
        self.n_orders += 1
        return out

    def background(self, n):
        out = self.backgrounds[self.n_backgrounds]
        assert len(out) == n
        self.n_backgrounds += 1
        return out


@pytest.mark.parametrize("lr", [150.0, 400.0])
def test_authors_procedure_matches_a_port_of_the_authors_code(lr):
    """Issue 23: ``test_procedure: authors`` is the authors' inference exactly: on the same f_s,
    images and (injected) shuffles and background draws, the same masks and the same stopping
    epoch."""
    g = torch.Generator().manual_seed(0)
    n, bs, epochs = 20, 8, 200  # 8 + 8 + 4: the last batch is smaller, its samples step lr / 4
    images = torch.rand(n, 3, 16, 16, generator=g)
    mean, std = torch.tensor([0.527, 0.447, 0.403]), torch.tensor([0.05, 0.05, 0.05])
    orders = [torch.randperm(n, generator=g) for _ in range(epochs)]
    backgrounds = [
        [
            (mean + std * torch.randn(len(range(s, min(s + bs, n))), 3, generator=g))
            .clamp(0, 1)
            .view(-1, 3, 1, 1)
            for s in range(0, n, bs)
        ]
        for _ in range(epochs)
    ]
    f_s = _TinyCNN()
    want, want_epochs = _authors_inference(f_s, images, lr, bs, 2, 1.0, orders, backgrounds)

    masker = ImageMasker((3, 16, 16), upsample_factor=2, mean=mean.tolist(), std=0.05)
    cfg = DietConfig(batch_size=bs, test_procedure="authors", test_lr=lr)
    assert cfg.test_sparsity_weight == 1.0 and cfg.test_tol == 0.002 and cfg.test_max_steps is None
    draws = _Injected(orders, backgrounds)
    got, summary = optimise_test_masks(f_s, images, masker, cfg, draws=draws)
    assert want_epochs > 3  # the test is not vacuous: several epochs before the rule holds
    assert summary["steps"].tolist() == [want_epochs] * n and not summary["limit_hit"].any()
    assert draws.n_orders == want_epochs
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (want < 0.99).any()  # the masks did move
    # the loss change it reports is the last one the rule tested
    losses = summary["epoch_losses"]
    assert abs(summary["loss_change"][0] - abs(losses[-1] - losses[-3]) / losses[-3]) < 1e-6


class _ConstantImage(nn.Module):
    """An image classifier whose output ignores its input: only the sparsity term moves a mask."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x):
        return self.logits.expand(len(x), 3)


@pytest.mark.parametrize("average", [True, False])
def test_converged_map_is_the_mean_of_the_last_window(average):
    """With sparsity alone every cell falls by s = lr * w / (batch * cells) per step. The converged
    procedure's map is a mean of its last steps' masks (iterate averaging), or the last step's
    mask."""
    masker = ImageMasker((3, 8, 8), upsample_factor=2)  # 16 cells
    cfg = DietConfig(
        batch_size=4,
        test_lr=2.0,
        test_sparsity_weight=1.0,
        test_window=0.25,
        test_max_steps=10,
        test_average=average,
    )  # 10 steps: fewer than the four half-windows the rule compares
    x = torch.rand(3, 3, 8, 8)
    h = int(horizons(cfg, masker, x, masker.init_masks(1))[0])
    assert h == 32  # ceil(4 * 16 / 2)
    masks, summary = optimise_test_masks(_ConstantImage(), x, masker, cfg)
    s, window, steps = 1 / 32, 8, 10  # window: two halves of ceil(0.25 * 32 / 2) = 4 steps
    assert summary["window"].tolist() == [window] * 3 and summary["limit_hit"].all()
    # at the limit: the mean since the start of the last complete half-window, steps 5 to 10
    want = 1 - s * 7.5 if average else 1 - s * steps
    assert torch.allclose(masks, torch.full_like(masks, want), atol=1e-5), (
        masks.flatten()[0],
        want,
    )


@pytest.mark.integration
@pytest.mark.parametrize("procedure", ["authors", "converged"])
def test_maps_do_not_depend_on_the_evaluation_batch_size_through_the_runner(tmp_path, procedure):
    """Issue 23 end to end: the explain stage hands DiET the whole evaluation set first, so even the
    authors' set-level procedure gives the same maps whatever evaluation.batch_size; run.json
    reports the procedure, its steps and stop reasons."""
    import xaiarena

    diet = {
        "name": "diet",
        **{k: v for k, v in TINY.items() if k != "seed"},
        "upsample_factor": 8,
        "n_train": 32,
        "rounds": 1,
        "test_procedure": procedure,
        "test_lr": 20.0,
        "test_max_steps": None if procedure == "authors" else 40,
        "test_seed_check": 3,
    }
    cfg = {
        "name": "t",
        "seed": 0,
        "data": {"name": "hard_mnist", "n_train": 300, "n_test": 40},
        "model": {"name": "lenet", "channels": [4, 8, 8]},
        "training": {"epochs": 1},
        "evaluation": {"n_samples": 12},
        "explainers": [diet],
        "metrics": ["sparseness"],
    }
    runs = [
        xaiarena.run(
            cfg,
            out=tmp_path / f"bs{bs}",
            overrides={"evaluation.batch_size": bs},
            show_progress=False,
        )
        for bs in (5, 12)
    ]
    key = ["explained_model", "explainer", "metric", "sample_id"]
    a, b = (r.per_sample.sort_values(key).reset_index(drop=True) for r in runs)
    pd_testing = pytest.importorskip("pandas").testing
    pd_testing.assert_frame_equal(a, b)
    info = json.loads((tmp_path / "bs5" / "run.json").read_text())["datasets"]["hard_mnist"][
        "learned"
    ]["diet"]
    t = info["test_time"]
    assert (
        t["procedure"] == procedure
        and t["n_masks"] == 12
        and t["stopped_by_rule"] + t["stopped_at_limit"] == 12
    )
    assert info["test_seed_check"]["n_samples"] == 3
    if procedure == "authors":
        assert (
            len(t["epochs"]) == 1 and t["stopped_at_limit"] == 0
        )  # one set, one stopping epoch, no limit
