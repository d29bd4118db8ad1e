"""DiET for image classifiers: low-resolution pixel masks and the ``diet`` explainer."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.modes import frozen
from ...ops.validation import COUNT, NON_NEGATIVE, POSITIVE, ListOf, Null, OneOf, validate_options
from ...registry import EXPLAINERS
from ..base import Explainer
from .core import (
    AUTHORS_SPARSITY_WEIGHT,
    CONVERGED_MASK_TOL,
    SETTING_CONSTRAINTS,
    DietConfig,
    check_settings,
    faithfulness_report,
    fingerprint_tensor,
    mask_l0,
    mask_sparsity,
)
from .mixin import DietFitMixin
from .testtime import optimise_test_masks

BACKGROUNDS = ("normal", "uniform", "constant")
#: the background colour the authors' code hard-codes (inference_distill.py, update_mask: an
#: ImageNet-like RGB mean, every image being read as RGB); for grey images the mean of the three
AUTHORS_BACKGROUND = (0.527, 0.447, 0.403)
#: the image ``diet``'s default test-time sparsity weight with the ``converged`` procedure
CONVERGED_SPARSITY_WEIGHT = 8.0


def _per_channel(
    value: float | Sequence[float] | None, default: Sequence[float], channels: int, name: str
) -> torch.Tensor:
    vals = (
        list(default)
        if value is None
        else ([float(value)] if isinstance(value, (int, float)) else [float(v) for v in value])
    )
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(
            f"{name} has {len(vals)} values; the images have {channels} channels (give 1 or "
            f"{channels})"
        )
    return torch.tensor(vals, dtype=torch.float32)


class ImageMasker:
    """Masks of size ``ceil(H / f) x ceil(W / f)``, bilinearly upsampled to ``H x W``.

    A masked image is ``m * x + (1 - m) * b`` in pixel space, where ``b`` is one
    colour per sample and channel drawn from the background distribution:

    * ``normal``: ``N(mean_c, std_c)`` clamped to [0, 1] (the paper's choice, with
      the dataset's channel statistics by default);
    * ``uniform``: ``U(0, 1)`` per channel;
    * ``constant``: ``mean_c`` (no randomness).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        upsample_factor: int = 4,
        background: str = "normal",
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        lr_cells: float | None = None,
    ):
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if int(upsample_factor) < 1:
            raise ValueError(f"upsample_factor={upsample_factor} must be >= 1")
        if background not in BACKGROUNDS:
            raise ValueError(
                f"background='{background}' is not valid; choose one of {', '.join(BACKGROUNDS)}"
            )
        self.channels, self.height, self.width = (int(v) for v in input_shape)
        self.factor = int(upsample_factor)
        self.mask_hw = (math.ceil(self.height / self.factor), math.ceil(self.width / self.factor))
        self.background = background
        self.mean = _per_channel(mean, [0.5], self.channels, "background_mean")
        self.std = _per_channel(std, [0.25], self.channels, "background_std")
        if (self.std < 0).any():
            raise ValueError("background_std must be >= 0")
        _check_lr_cells(lr_cells)
        self.lr_cells = None if lr_cells is None else float(lr_cells)

    @property
    def n_cells(self) -> int:
        return self.mask_hw[0] * self.mask_hw[1]

    def lr_scale(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """``n_cells / lr_cells`` for every image (``None``: no ``lr_cells``, or the masks have
        exactly ``lr_cells`` cells). Both terms of a cell's gradient scale with ``1 / n_cells``
        (the sparsity term is a mean over the image, a cell's pixels are ``H W / n_cells``), so
        this gives a cell the same step at every mask size."""
        if self.lr_cells is None or self.n_cells == self.lr_cells:
            return None
        return torch.full((len(inputs),), self.n_cells / self.lr_cells)

    def init_masks(self, n: int) -> torch.Tensor:
        return torch.ones(n, 1, *self.mask_hw)

    def expand(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[-2:] == (self.height, self.width):
            return masks
        return F.interpolate(
            masks, size=(self.height, self.width), mode="bilinear", align_corners=False
        )

    def sample_background(
        self, n: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        c = self.channels
        if self.background == "normal":
            bg = (self.mean + self.std * torch.randn(n, c, generator=generator)).clamp_(0, 1)
        elif self.background == "uniform":
            bg = torch.rand(n, c, generator=generator)
        else:
            bg = self.mean.expand(n, c).clone()
        return bg.view(n, c, 1, 1).to(device)

    def apply(
        self, inputs: torch.Tensor, expanded_masks: torch.Tensor, background: torch.Tensor
    ) -> torch.Tensor:
        return expanded_masks * inputs + (1 - expanded_masks) * background

    def describe(self) -> dict[str, Any]:
        out = {
            "kind": "image",
            "input_shape": [self.channels, self.height, self.width],
            "upsample_factor": self.factor,
            "background": self.background,
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
        }
        if self.lr_cells is not None and self.n_cells != self.lr_cells:  # else: the rates as given
            out["lr_cells"] = self.lr_cells
        return out


def _check_lr_cells(lr_cells: float | None) -> None:
    ok = lr_cells is None or (
        isinstance(lr_cells, (int, float)) and math.isfinite(lr_cells) and lr_cells > 0
    )
    if not ok:
        raise ValueError(
            f"diet: lr_cells={lr_cells!r} must be > 0 (or null: the learning rates as given)"
        )


def authors_background(channels: int) -> list[float]:
    """The authors' background colour for images of ``channels`` channels (RGB; grey: the mean)."""
    if channels == 3:
        return list(AUTHORS_BACKGROUND)
    if channels == 1:
        return [sum(AUTHORS_BACKGROUND) / 3]
    raise ValueError(
        f"diet: the authors' background colour is RGB; images with {channels} channels "
        "need an explicit test_background_mean"
    )


def _digests(inputs: torch.Tensor) -> list[str]:
    flat = inputs.detach().float().cpu().contiguous().flatten(1)
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in flat]


@torch.no_grad()
def _predict(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    masks: torch.Tensor | None = None,
    masker: ImageMasker | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predicted classes of uint8 images, optionally masked (low-res ``masks`` + ``masker``)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div_(255.0)
        if masks is not None and masker is not None:
            m_up = masker.expand(masks[i : i + batch_size].to(device))
            x = masker.apply(x, m_up, masker.sample_background(len(x), generator, device))
        out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@EXPLAINERS.register(
    "diet",
    description="DiET, distractor erasure tuning (Bhalla et al. 2023): learns f_s and sparse masks "
    "robust to erasing the rest; maps are test-time masks for f_s",
)
class DiET(DietFitMixin, Explainer):
    """Distractor Erasure Tuning for image classifiers (Bhalla, Srinivas & Lakkaraju, NeurIPS 2023).

    :meth:`fit` trains ``f_s`` (a copy of the given model ``f_b``, which is never
    modified) jointly with one mask per training sample (``n_train`` of them,
    drawn by seed; ``None`` = all). The maps returned by :meth:`attribute` are the
    *unrounded* test-time masks optimised against the frozen ``f_s``, bilinearly
    upsampled to input size, in [0, 1]; they explain ``f_s``
    (:meth:`explained_model`), and do not depend on ``targets`` (DiET's masks
    preserve the whole output distribution of ``f_s``, not one class score).

    Options: ``upsample_factor`` (mask resolution = input / factor), ``rounds`` (R),
    ``n_train``, ``batch_size``, ``mask_lr`` (SGD on the batch-mean loss),
    ``model_lr`` (Adam), ``mask_tol``/``model_tol`` and ``mask_max_epochs``/
    ``model_max_epochs`` (convergence per phase), ``background`` (``normal``,
    ``uniform``, ``constant``) with ``background_mean``/``background_std``
    (default: the dataset's channel statistics), ``lr_cells`` (``mask_lr`` and ``test_lr``
    are the rates of a mask of ``lr_cells`` cells; masks of ``n`` cells use ``rate * n /
    lr_cells``, so a cell takes the same step at every mask size; ``None``: as given),
    ``batchnorm`` (``frozen``: f_s's BatchNorm layers keep f_b's running statistics in the
    model phase, so masked inputs are normalised in training as at evaluation; ``batch``: the
    authors' code, train-mode BatchNorm; no effect on models without BatchNorm), ``seed``
    (default: drawn from the generator given to :meth:`fit`).

    Test time: ``test_procedure`` (``converged``: per sample, until the window-mean loss and
    mask stop changing, see :mod:`~xaiarena.explainers.diet.testtime`; ``authors``: the
    authors' ``inference_distill.py``, the evaluation set optimised together until its epoch loss
    is within 0.2 % of two epochs earlier, no step limit), ``test_lr`` (``None`` = ``mask_lr``),
    ``test_sparsity_weight`` (``None``: 8 for ``converged``, the authors' 1 for ``authors``),
    ``test_background_mean`` (``None``: ``background_mean`` for ``converged``, the authors'
    hard-coded colour for ``authors``), ``test_background_std`` (``None`` = ``background_std``),
    ``test_tol``/``test_mask_tol``/``test_window`` (the ``converged`` rule; ``test_tol`` is
    the authors' band with ``authors``), ``test_average`` (``converged``: the map is the mean
    mask of the last window, not the last step's), ``test_max_steps`` (safety limit; ``None``: 30
    horizons for ``converged``, none for ``authors``) and ``test_seed_check`` (evaluation samples
    re-optimised with a second seed; the report gives the median per-sample Spearman of the
    two seeds' maps). Defaults are sized for hard_mnist (64x64) on 2 CPU cores and were chosen
    on training-split images (``benchmarks/tune_diet.py``, ``benchmarks/diet_test_time.py``);
    see docs/diet.md.

    Explaining a model other than the fitted ``f_s`` (``attribute(model=...)``, e.g. the
    randomised copies of the randomisation test) optimises test-time masks against that
    model, uncached; explaining ``f_s`` serves cached masks.
    """

    name = "diet"
    family = "learned"
    modality = ("image",)
    needs_layer = False
    explains = "f_s"
    option_constraints: ClassVar[dict] = {
        **SETTING_CONSTRAINTS,
        "upsample_factor": COUNT,
        "n_train": [COUNT, Null("the whole training split")],
        "background": OneOf(BACKGROUNDS),
        "lr_cells": [POSITIVE, Null("the learning rates as given")],
        "test_background_mean": [NON_NEGATIVE, ListOf(NON_NEGATIVE), Null("see the docstring")],
        "test_background_std": [NON_NEGATIVE, ListOf(NON_NEGATIVE), Null("as in training")],
    }

    def __init__(
        self,
        upsample_factor: int = 2,
        rounds: int = 3,
        n_train: int | None = 1000,
        batch_size: int = 64,
        mask_lr: float = 16000.0,
        model_lr: float = 1e-4,
        mask_tol: float = 0.005,
        model_tol: float = 0.01,
        mask_max_epochs: int = 6,
        model_max_epochs: int = 3,
        background: str = "normal",
        background_mean: float | list[float] | None = None,
        background_std: float | list[float] | None = None,
        lr_cells: float | None = 1024,
        test_procedure: str = "converged",
        test_lr: float | None = 125.0,
        test_sparsity_weight: float | None = None,
        test_background_mean: float | list[float] | None = None,
        test_background_std: float | list[float] | None = 0.05,
        test_tol: float | None = None,
        test_mask_tol: float = CONVERGED_MASK_TOL,
        test_window: float = 0.5,
        test_average: bool = True,
        test_max_steps: int | None = None,
        test_seed_check: int = 8,
        batchnorm: str = "frozen",
        seed: int | None = None,
    ):
        checked = validate_options(self.name, self.option_constraints, locals())
        check_settings(self.name, locals())
        if test_sparsity_weight is None:
            test_sparsity_weight = (
                AUTHORS_SPARSITY_WEIGHT
                if test_procedure == "authors"
                else CONVERGED_SPARSITY_WEIGHT
            )
        self.config = DietConfig.from_options(locals())
        self.upsample_factor = checked["upsample_factor"]
        self.n_train = checked["n_train"]
        self.background = background
        self.background_mean = background_mean
        self.background_std = background_std
        self.lr_cells = checked["lr_cells"]
        self.test_background_mean = test_background_mean
        self.test_background_std = test_background_std
        self.seed = seed
        self.test_masker: ImageMasker | None = None
        self._reset_fit_state()  # set by fit()

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: nn.Module,
        task: Any,
        *,
        device: torch.device,
        generator: torch.Generator | None = None,
        cache_dir: Any = None,
    ) -> None:
        """Train ``f_s`` and the training masks on ``task.train``; report faithfulness on
        ``task.test``."""
        if getattr(task, "modality", "image") != "image":
            raise ValueError(f"diet (image) cannot explain a '{task.modality}' task")
        device = torch.device(device)
        train = task.train
        index = self._start_fit(len(train), generator, cache_dir)
        images, labels = train.images[index], train.labels[index].long()
        mean = getattr(task, "mean", None) if self.background_mean is None else self.background_mean
        std = getattr(task, "std", None) if self.background_std is None else self.background_std
        self.masker = ImageMasker(
            task.input_shape, self.upsample_factor, self.background, mean, std, self.lr_cells
        )
        test_std = self.masker.std if self.test_background_std is None else self.test_background_std
        test_mean = self.test_background_mean
        if test_mean is None:
            authors = self.config.test_procedure == "authors"
            test_mean = authors_background(self.masker.channels) if authors else self.masker.mean
        self.test_masker = ImageMasker(
            task.input_shape,
            self.upsample_factor,
            self.background,
            test_mean,
            test_std,
            self.lr_cells,
        )

        def get_batch(idx: torch.Tensor) -> torch.Tensor:
            return images[idx].to(device).float().div_(255.0)

        self._fit_with_trainer(
            model,
            get_batch,
            labels,
            index,
            fingerprint_tensor(images, labels),
            device,
            lambda: self._faithfulness(model, task, images, labels, device),
        )

    def _faithfulness(
        self,
        f_b: nn.Module,
        task: Any,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
    ) -> dict[str, Any]:
        """The paper's model-faithfulness numbers (f_s vs f_b)."""
        assert self.f_s is not None and self.masker is not None and self.train_masks is not None
        with frozen(f_b), frozen(self.f_s):
            test = task.test
            fb_test = _predict(f_b, test.images, device)
            fs_test = _predict(self.f_s, test.images, device)
            fb_train = _predict(f_b, images, device)
            gen = torch.Generator().manual_seed(self._seed + 1)
            fs_masked = _predict(
                self.f_s, images, device, masks=self.train_masks, masker=self.masker, generator=gen
            )
        y_test = test.labels.long()
        up = torch.cat(
            [
                self.masker.expand(self.train_masks[i : i + 512])
                for i in range(0, len(self.train_masks), 512)
            ]
        )
        return faithfulness_report(
            fs_test=fs_test,
            fb_test=fb_test,
            y_test=y_test,
            fs_masked=fs_masked,
            fb_train=fb_train,
            y_train=labels,
            mask_l0=mask_l0(up),
            mask_l1=mask_sparsity(up),
            phases=len(self.history),
            seed=self._seed,
            mask_shape=list(self.masker.mask_hw),
        )

    # ------------------------------------------------------------------ explain
    def _test_settings(self) -> dict[str, Any]:
        return {"test_masker": self.test_masker.describe()} if self.test_masker is not None else {}

    def _digests(self, inputs: torch.Tensor) -> list[str]:
        return _digests(inputs)

    def _optimise(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        positions: list[int],
        seed: int,
        sample_seeds: list[int],
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        assert self.test_masker is not None
        x = inputs[torch.tensor(positions)].to(_device_of(model, inputs.device)).float()
        masks, summary = optimise_test_masks(
            model, x, self.test_masker, self.config, seed=seed, sample_seeds=sample_seeds
        )
        return list(masks), summary

    def _check_maps(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        assert self.masker is not None
        return [self.masker.expand(m[None].float())[0, 0] for m in masks]

    def test_masks(self, inputs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Low-resolution, unrounded test-time masks ``(N, 1, h, w)`` (CPU) for pixel-space
        ``inputs``, optimised against ``model`` (default ``f_s``: cached; any other model:
        uncached)."""
        self._fitted()
        assert self.masker is not None
        if tuple(inputs.shape[1:]) != (self.masker.channels, self.masker.height, self.masker.width):
            raise ValueError(
                "diet was fitted on inputs of shape "
                f"{(self.masker.channels, self.masker.height, self.masker.width)}, got "
                f"{tuple(inputs.shape[1:])}"
            )
        if len(inputs) == 0:
            return self.masker.init_masks(0)
        return torch.stack(self.test_masks_for(model, inputs))

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Upsampled test-time masks ``(N, H, W)`` in [0, 1] for ``model`` (``f_s``: cached; another
        model, e.g. a randomised copy: optimised against it, uncached); ``targets`` unused."""
        masks = self.test_masks(inputs, model)
        assert self.masker is not None
        return self.masker.expand(masks.float())[:, 0].to(inputs.device)

    def __repr__(self) -> str:
        return (
            f"DiET(upsample_factor={self.upsample_factor}, rounds={self.config.rounds}, "
            f"n_train={self.n_train})"
        )


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else default
