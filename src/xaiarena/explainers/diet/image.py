"""DiET for image classifiers: low-resolution pixel masks and the ``diet`` explainer."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import EXPLAINERS
from ..base import Explainer
from .core import (
    DietConfig,
    DietFitMixin,
    faithfulness_report,
    fingerprint_tensor,
    frozen,
    mask_l0,
    mask_sparsity,
    optimise_test_masks,
)

BACKGROUNDS = ("normal", "uniform", "constant")


def _per_channel(value: float | Sequence[float] | None, default: Sequence[float], channels: int, name: str) -> torch.Tensor:
    vals = list(default) if value is None else ([float(value)] if isinstance(value, (int, float)) else [float(v) for v in value])
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"{name} has {len(vals)} values; the images have {channels} channels (give 1 or {channels})")
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

    def __init__(self, input_shape: Sequence[int], upsample_factor: int = 4, background: str = "normal",
                 mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None):
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if int(upsample_factor) < 1:
            raise ValueError(f"upsample_factor={upsample_factor} must be >= 1")
        if background not in BACKGROUNDS:
            raise ValueError(f"background='{background}' is not valid; choose one of {', '.join(BACKGROUNDS)}")
        self.channels, self.height, self.width = (int(v) for v in input_shape)
        self.factor = int(upsample_factor)
        self.mask_hw = (math.ceil(self.height / self.factor), math.ceil(self.width / self.factor))
        self.background = background
        self.mean = _per_channel(mean, [0.5], self.channels, "background_mean")
        self.std = _per_channel(std, [0.25], self.channels, "background_std")
        if (self.std < 0).any():
            raise ValueError("background_std must be >= 0")

    def init_masks(self, n: int) -> torch.Tensor:
        return torch.ones(n, 1, *self.mask_hw)

    def expand(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[-2:] == (self.height, self.width):
            return masks
        return F.interpolate(masks, size=(self.height, self.width), mode="bilinear", align_corners=False)

    def sample_background(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        c = self.channels
        if self.background == "normal":
            bg = (self.mean + self.std * torch.randn(n, c, generator=generator)).clamp_(0, 1)
        elif self.background == "uniform":
            bg = torch.rand(n, c, generator=generator)
        else:
            bg = self.mean.expand(n, c).clone()
        return bg.view(n, c, 1, 1).to(device)

    def apply(self, inputs: torch.Tensor, expanded_masks: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        return expanded_masks * inputs + (1 - expanded_masks) * background

    def describe(self) -> dict[str, Any]:
        return {"kind": "image", "input_shape": [self.channels, self.height, self.width], "upsample_factor": self.factor,
                "background": self.background, "mean": [round(float(v), 6) for v in self.mean],
                "std": [round(float(v), 6) for v in self.std]}


def _digests(inputs: torch.Tensor) -> list[str]:
    flat = inputs.detach().float().cpu().contiguous().flatten(1)
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in flat]


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256,
             masks: torch.Tensor | None = None, masker: ImageMasker | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Predicted classes of uint8 images, optionally masked (low-res ``masks`` + ``masker``)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float().div_(255.0)
        if masks is not None and masker is not None:
            m_up = masker.expand(masks[i:i + batch_size].to(device))
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
    (default: the dataset's channel statistics), ``test_background_std`` (the
    background std at test time; ``None`` = ``background_std``), ``test_lr``
    (``None`` = ``mask_lr``), ``test_sparsity_weight``, ``test_tol``,
    ``test_max_steps`` (``None`` = the horizon of :meth:`DietConfig.test_horizon`),
    ``batchnorm`` (``frozen``: f_s's BatchNorm layers keep f_b's running statistics in the
    model phase, so masked inputs are normalised in training as at evaluation; ``batch``: the
    authors' code, train-mode BatchNorm; no effect on models without BatchNorm),
    and ``seed`` (default: drawn from the generator given to :meth:`fit`). Defaults
    are sized for hard_mnist (64x64) in ~5 minutes on 2 CPU cores and were chosen on
    training-split images (``benchmarks/tune_diet.py``); see docs/diet.md.

    Explaining a model other than the fitted ``f_s`` (``attribute(model=...)``, e.g. the
    randomised copies of the randomisation test) optimises test-time masks against that
    model, uncached; explaining ``f_s`` serves cached masks.
    """

    name = "diet"
    family = "learned"
    modality = ("image",)
    needs_layer = False
    explains = "f_s"

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
        test_background_std: float | list[float] | None = 0.05,
        test_lr: float | None = 125.0,
        test_sparsity_weight: float = 8.0,
        test_tol: float = 0.002,
        test_max_steps: int | None = None,
        batchnorm: str = "frozen",
        seed: int | None = None,
    ):
        if background not in BACKGROUNDS:
            raise ValueError(f"background='{background}' is not valid; choose one of {', '.join(BACKGROUNDS)}")
        if int(upsample_factor) < 1:
            raise ValueError(f"upsample_factor={upsample_factor} must be >= 1")
        if n_train is not None and int(n_train) < 1:
            raise ValueError(f"n_train={n_train} must be >= 1 (or null for the whole training split)")
        if test_background_std is not None and not all(
                math.isfinite(v) and v >= 0 for v in
                ([test_background_std] if isinstance(test_background_std, (int, float)) else test_background_std)):
            raise ValueError(f"test_background_std={test_background_std!r} must be >= 0 (or null: background_std)")
        self.config = DietConfig.from_options(locals())
        self.upsample_factor = int(upsample_factor)
        self.n_train = None if n_train is None else int(n_train)
        self.background = background
        self.background_mean = background_mean
        self.background_std = background_std
        self.test_background_std = test_background_std
        self.seed = seed
        self.test_masker: ImageMasker | None = None
        self._reset_fit_state()  # set by fit()

    # ------------------------------------------------------------------ fit
    def fit(self, model: nn.Module, task: Any, *, device: torch.device, generator: torch.Generator | None = None,
            cache_dir: Any = None) -> None:
        """Train ``f_s`` and the training masks on ``task.train``; report faithfulness on ``task.test``."""
        if getattr(task, "modality", "image") != "image":
            raise ValueError(f"diet (image) cannot explain a '{task.modality}' task")
        device = torch.device(device)
        train = task.train
        index = self._start_fit(len(train), generator, cache_dir)
        images, labels = train.images[index], train.labels[index].long()
        mean = getattr(task, "mean", None) if self.background_mean is None else self.background_mean
        std = getattr(task, "std", None) if self.background_std is None else self.background_std
        self.masker = ImageMasker(task.input_shape, self.upsample_factor, self.background, mean, std)
        test_std = self.masker.std if self.test_background_std is None else self.test_background_std
        self.test_masker = ImageMasker(task.input_shape, self.upsample_factor, self.background, self.masker.mean,
                                       test_std)

        def get_batch(idx: torch.Tensor) -> torch.Tensor:
            return images[idx].to(device).float().div_(255.0)

        self._fit_with_trainer(model, get_batch, labels, index, fingerprint_tensor(images, labels), device,
                               lambda: self._faithfulness(model, task, images, labels, device))

    def _faithfulness(self, f_b: nn.Module, task: Any, images: torch.Tensor, labels: torch.Tensor,
                      device: torch.device) -> dict[str, Any]:
        """The paper's model-faithfulness numbers (f_s vs f_b)."""
        assert self.f_s is not None and self.masker is not None and self.train_masks is not None
        with frozen(f_b), frozen(self.f_s):
            test = task.test
            fb_test = _predict(f_b, test.images, device)
            fs_test = _predict(self.f_s, test.images, device)
            fb_train = _predict(f_b, images, device)
            gen = torch.Generator().manual_seed(self._seed + 1)
            fs_masked = _predict(self.f_s, images, device, masks=self.train_masks, masker=self.masker, generator=gen)
        y_test = test.labels.long()
        up = torch.cat([self.masker.expand(self.train_masks[i:i + 512]) for i in range(0, len(self.train_masks), 512)])
        return faithfulness_report(
            fs_test=fs_test, fb_test=fb_test, y_test=y_test, fs_masked=fs_masked, fb_train=fb_train,
            y_train=labels, mask_l0=mask_l0(up), mask_l1=mask_sparsity(up), phases=len(self.history),
            seed=self._seed, mask_shape=list(self.masker.mask_hw))

    # ------------------------------------------------------------------ explain
    def _test_settings(self) -> dict[str, Any]:
        return {"test_masker": self.test_masker.describe()} if self.test_masker is not None else {}

    def test_masks(self, inputs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Low-resolution, unrounded test-time masks ``(N, 1, h, w)`` (CPU) for pixel-space ``inputs``,
        optimised against ``model`` (default ``f_s``: cached; any other model: uncached)."""
        f_s = self._fitted()
        assert self.masker is not None and self.test_masker is not None
        if tuple(inputs.shape[1:]) != (self.masker.channels, self.masker.height, self.masker.width):
            raise ValueError(f"diet was fitted on inputs of shape {(self.masker.channels, self.masker.height, self.masker.width)}, "
                             f"got {tuple(inputs.shape[1:])}")
        if len(inputs) == 0:
            return self.masker.init_masks(0)
        if not self._explains_f_s(model):
            x = inputs.to(_device_of(model, inputs.device)).float()
            return optimise_test_masks(model, x, self.test_masker, self.config, seed=self._seed)[0]

        def compute(todo: list[int]) -> tuple[list[torch.Tensor], dict[str, Any]]:
            x = inputs[torch.tensor(todo)].to(_device_of(f_s, inputs.device)).float()
            masks, summary = optimise_test_masks(f_s, x, self.test_masker, self.config, seed=self._seed)
            return list(masks), summary

        return torch.stack(self._cached_test_masks(_digests(inputs), compute))

    def attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Upsampled test-time masks ``(N, H, W)`` in [0, 1] for ``model`` (``f_s``: cached; another
        model, e.g. a randomised copy: optimised against it, uncached); ``targets`` unused."""
        masks = self.test_masks(inputs, model)
        assert self.masker is not None
        return self.masker.expand(masks.float())[:, 0].to(inputs.device)

    def __repr__(self) -> str:
        return f"DiET(upsample_factor={self.upsample_factor}, rounds={self.config.rounds}, n_train={self.n_train})"


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else default
