"""DiET's algorithm, independent of the input modality.

Distractor Erasure Tuning (Bhalla, Srinivas & Lakkaraju, NeurIPS 2023) learns,
for a trained model ``f_b``, a model ``f_s`` (initialised as a copy of ``f_b``)
together with one mask per training sample such that

* ``f_s`` agrees with ``f_b`` on clean inputs, and
* ``f_s`` gives the same output on an input and on its masked version, where the
  masked-out features are replaced by random "background" values,

while the masks are as sparse as possible. Mask and model are optimised in
alternating phases, with the masks pushed towards {0, 1} by a rounding schedule::

    for k in 0 .. R-1:
        mask phase   SGD on the masks, f_s fixed:
                     w_k * ||m||_1 / |m| + ||p_b(x) - p_s(x)||_1 + ||p_s(x) - p_s(x_m)||_1
        rounding     m <- round(m + o_k)
        model phase  Adam on f_s, masks fixed: ||p_b(x) - p_s(x)||_1 + ||p_s(x) - p_s(x_m)||_1

with ``w_k = 1 - 0.9 k / R`` and ``o_k = 0.4 - 0.4 k / R`` (``p`` = softmax). Each
phase runs whole epochs until the epoch loss changes by less than a relative
tolerance against the loss two epochs earlier, or an epoch cap is reached.
For evaluation samples the masks are optimised at test time against the frozen
``f_s`` only (sparsity + ``||p_s(x) - p_s(x_m)||_1``), see :func:`optimise_test_masks`.

Everything that depends on the modality lives in a :class:`Masker`: the shape of
the (low resolution) masks, how they are expanded to the input's resolution, how
a masked input is built and what the background is. The image version is
:class:`xaiarena.explainers.diet.image.ImageMasker`; a text version supplies a
masker over token positions.

:class:`DietTrainer` checkpoints atomically after every phase (in ``cache_dir``)
and resumes from the last finished phase; resumed and uninterrupted runs give
the same result on the same machine and thread count.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ...fingerprint import fingerprint_module, fingerprint_tensor  # noqa: F401 - re-exported
from ...utils import atomic_save_torch, atomic_write_text, eval_mode, load_torch, progress

#: ``get_batch(index) -> inputs`` on the training device, for a 1-D LongTensor of sample indices
BatchFn = Callable[[torch.Tensor], torch.Tensor]

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
META_FILE = "meta.json"
F_S_FILE = "f_s.pt"
MASKS_FILE = "train_masks.pt"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- schedule


def sparsity_weight(k: int, rounds: int) -> float:
    """Weight of the sparsity term in round ``k`` of ``rounds``: ``1 - 0.9 k / R``."""
    _check_round(k, rounds)
    return 1.0 - 0.9 * k / rounds


def rounding_offset(k: int, rounds: int) -> float:
    """Offset added before rounding the masks after round ``k``: ``0.4 - 0.4 k / R``."""
    _check_round(k, rounds)
    return 0.4 - 0.4 * k / rounds


def round_masks(masks: torch.Tensor, offset: float) -> torch.Tensor:
    """``round(m + offset)`` clamped to {0, 1}: entries >= ``0.5 - offset`` become 1.

    Uses a ``>=`` comparison rather than ``torch.round`` (which rounds halves to
    even), so the threshold is exact and documented.
    """
    return (masks + offset >= 0.5).to(masks.dtype)


def schedule(rounds: int) -> list[dict[str, float]]:
    """The whole schedule: one entry per round with its sparsity weight and rounding offset."""
    return [{"round": k, "sparsity_weight": sparsity_weight(k, rounds), "rounding_offset": rounding_offset(k, rounds)}
            for k in range(rounds)]


def _check_round(k: int, rounds: int) -> None:
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    if not 0 <= k < rounds:
        raise ValueError(f"round index {k} is outside 0..{rounds - 1}")


def phases(rounds: int) -> list[tuple[str, int]]:
    """The phase sequence ``[("mask", 0), ("round", 0), ("model", 0), ("mask", 1), ...]``."""
    return [(kind, k) for k in range(rounds) for kind in ("mask", "round", "model")]


# --------------------------------------------------------------------------- losses


def prob_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 distance between two batches of probability vectors ``(N, K)`` -> ``(N,)``."""
    return (p - q).abs().flatten(1).sum(1)


def mask_sparsity(expanded_masks: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||m||_1 / (number of mask entries)`` of input-resolution masks ``(N, ...)``.

    For images this is ``||m||_1 / (H W)``, the fraction of the input kept.
    """
    return expanded_masks.abs().flatten(1).mean(1)


def mask_l0(expanded_masks: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of non-zero mask entries (``||m||_0 / (H W)``)."""
    return (expanded_masks != 0).flatten(1).float().mean(1)


def masker_sparsity(masker: Any, expanded_masks: torch.Tensor, inputs: Any) -> torch.Tensor:
    """``masker.sparsity(expanded_masks, inputs)`` where the masker defines it (text: the mean over
    each text's own words, not over padding slots), else :func:`mask_sparsity`."""
    fn = getattr(masker, "sparsity", None)
    return fn(expanded_masks, inputs) if fn is not None else mask_sparsity(expanded_masks)


def masker_lr_scale(masker: Any, inputs: Any, like: torch.Tensor) -> torch.Tensor | float:
    """Per-sample factors on the mask learning rate, shaped to broadcast against the masks
    ``like`` (``(N, ...)``): ``masker.lr_scale(inputs)`` where the masker defines it and
    returns one, else ``1.0``."""
    fn = getattr(masker, "lr_scale", None)
    scale = fn(inputs) if fn is not None else None
    if scale is None:
        return 1.0
    return scale.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def masker_l0(masker: Any, expanded_masks: torch.Tensor, inputs: Any) -> torch.Tensor:
    """``masker.l0(expanded_masks, inputs)`` where the masker defines it, else :func:`mask_l0`."""
    fn = getattr(masker, "l0", None)
    return fn(expanded_masks, inputs) if fn is not None else mask_l0(expanded_masks)


def diet_terms(
    p_fb: torch.Tensor,
    p_fs: torch.Tensor,
    p_fs_masked: torch.Tensor,
    expanded_masks: torch.Tensor | None = None,
    weight: float = 0.0,
    sparsity: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """DiET's loss terms, per sample.

    ``distill = ||p_b(x) - p_s(x)||_1``, ``robust = ||p_s(x) - p_s(x_m)||_1``,
    ``sparsity = ||m||_1 / |m|`` (zero when no masks are given) and
    ``loss = weight * sparsity + distill + robust``. The optimised objective is the
    mean of ``loss`` over the batch. A precomputed per-sample ``sparsity`` replaces
    ``mask_sparsity(expanded_masks)`` (see :func:`masker_sparsity`).
    """
    distill = prob_l1(p_fb, p_fs)
    robust = prob_l1(p_fs, p_fs_masked)
    if sparsity is None:
        sparsity = mask_sparsity(expanded_masks) if expanded_masks is not None else torch.zeros_like(distill)
    return {"loss": weight * sparsity + distill + robust, "sparsity": sparsity, "distill": distill, "robust": robust}


def has_converged(losses: list[float], tol: float) -> bool:
    """True when the last loss differs from the one two epochs earlier by at most ``tol`` (relative)."""
    if len(losses) < 3:
        return False
    ref = losses[-3]
    return abs(losses[-1] - ref) <= tol * max(abs(ref), 1e-12)


# --------------------------------------------------------------------------- masker interface


class Masker(Protocol):
    """What DiET needs to know about a modality."""

    def init_masks(self, n: int) -> torch.Tensor:
        """``n`` low-resolution masks of ones (CPU float tensor, first dim ``n``)."""

    def expand(self, masks: torch.Tensor) -> torch.Tensor:
        """Low-resolution masks -> input-resolution masks (differentiable), entries in [0, 1]."""

    def sample_background(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Background values for ``n`` samples, broadcastable against the inputs."""

    def apply(self, inputs: torch.Tensor, expanded_masks: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """The masked inputs ``m * x + (1 - m) * background``."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (part of the cache key)."""

    # Optional: ``sparsity(expanded_masks, inputs) -> (N,)`` and ``l0(expanded_masks, inputs) -> (N,)``
    # replace mask_sparsity/mask_l0 when some mask entries are not part of a sample (text padding);
    # ``lr_scale(inputs) -> (N,) | None`` multiplies each sample's mask learning rate (text: by
    # length, so that every word's step is the same for short and long texts).


# --------------------------------------------------------------------------- configuration


_INT_FIELDS = frozenset({"rounds", "batch_size", "mask_max_epochs", "model_max_epochs", "test_max_steps"})
_STR_FIELDS = frozenset({"batchnorm"})
# How f_s's BatchNorm layers run in the model phase. "frozen": in eval mode (f_b's running
# statistics, never updated; the affine weights still train), so f_s normalises clean and masked
# inputs in training exactly as when it is evaluated. "batch": in train mode, as the authors'
# code (batch statistics; running statistics updated by the clean and the masked forward pass in
# turn, so at evaluation time masked inputs are normalised with statistics of a clean/masked mix).
BATCHNORM_MODES = ("frozen", "batch")


@dataclass(frozen=True)
class DietConfig:
    """Optimisation settings of DiET (modality independent).

    ``mask_lr`` is the SGD learning rate on the batch-mean mask loss, so each
    sample's mask moves by ``mask_lr / batch_size`` times its own gradient per
    step (times the masker's per-sample ``lr_scale``, where it has one);
    test-time optimisation uses the same per-sample step (see
    :func:`optimise_test_masks`).
    """

    rounds: int = 3
    batch_size: int = 64
    mask_lr: float = 16000.0
    model_lr: float = 1e-4
    mask_tol: float = 0.005
    model_tol: float = 0.01
    mask_max_epochs: int = 6
    model_max_epochs: int = 3
    test_lr: float | None = 1000.0
    test_sparsity_weight: float = 1.0
    test_tol: float = 0.002
    test_max_steps: int | None = None
    batchnorm: str = "frozen"

    def __post_init__(self) -> None:
        checks = {
            "rounds": self.rounds >= 1, "batch_size": self.batch_size >= 1, "mask_lr": self.mask_lr > 0,
            "model_lr": self.model_lr > 0, "mask_tol": self.mask_tol >= 0, "model_tol": self.model_tol >= 0,
            "mask_max_epochs": self.mask_max_epochs >= 1, "model_max_epochs": self.model_max_epochs >= 0,
            "test_lr": self.test_lr is None or self.test_lr > 0,
            "test_sparsity_weight": self.test_sparsity_weight >= 0, "test_tol": self.test_tol >= 0,
            "test_max_steps": self.test_max_steps is None or self.test_max_steps >= 1,
            "batchnorm": self.batchnorm in BATCHNORM_MODES,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid DiET settings: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                             + (f" (batchnorm: one of {', '.join(BATCHNORM_MODES)})" if "batchnorm" in bad else ""))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DietConfig:
        """The config from an explainer's options (e.g. its ``locals()``): the keys that are
        fields, cast to int or float (None kept); other keys are ignored."""
        values = {}
        for f in fields(cls):
            if f.name in options:
                v = options[f.name]
                if f.name in _STR_FIELDS:
                    values[f.name] = str(v)
                else:
                    values[f.name] = None if v is None else (int(v) if f.name in _INT_FIELDS else float(v))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fit_dict(self) -> dict[str, Any]:
        """The settings that affect training (the fit's cache key): everything but ``test_*``."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("test_")}

    def test_dict(self) -> dict[str, Any]:
        """Every setting the test-time optimisation reads (part of the test-mask cache key):
        the ``test_*`` fields, the effective test learning rate and ``batch_size`` (the
        per-sample step is ``lr / batch_size``, and the default horizon depends on it)."""
        out = {k: v for k, v in asdict(self).items() if k.startswith("test_")}
        out.update(effective_test_lr=self.effective_test_lr, batch_size=self.batch_size)
        return out

    @property
    def effective_test_lr(self) -> float:
        return self.test_lr if self.test_lr is not None else self.mask_lr

    def test_horizon(self, n_cells: int) -> int:
        """Test-time step cap: ``test_max_steps``, or by default the number of steps in which
        the sparsity gradient alone takes a mask cell from 1 to 0.

        A cell's share of ``||m||_1 / |m|`` is ``1 / n_cells``, so each step lowers an
        unused cell by ``lr * w / (batch_size * n_cells)``; the horizon is the inverse.
        """
        if self.test_max_steps is not None:
            return self.test_max_steps
        if self.test_sparsity_weight == 0:
            raise ValueError("test_sparsity_weight=0 needs an explicit test_max_steps")
        return max(3, math.ceil(self.batch_size * n_cells / (self.effective_test_lr * self.test_sparsity_weight)))


@dataclass
class DietResult:
    """What :meth:`DietTrainer.fit` returns."""

    f_s: nn.Module
    masks: torch.Tensor  # final (rounded) low-resolution training masks, CPU
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0  # number of phases loaded from a checkpoint
    cache_hit: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------- helpers


@contextmanager
def frozen(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter and the train/eval mode."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with eval_mode(model):  # restores every submodule's own flag on exit
            model.train(train)
            yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)


@torch.no_grad()
def predict_proba(model: nn.Module, get_batch: BatchFn, n: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """Softmax outputs ``(n, K)`` (on ``device``) of ``model`` in eval mode over all samples."""
    with eval_mode(model):
        out = [F.softmax(model(get_batch(torch.arange(i, min(i + batch_size, n)))), 1)
               for i in range(0, n, batch_size)]
    return torch.cat(out).to(device)


def faithfulness_report(*, fs_test: torch.Tensor, fb_test: torch.Tensor, y_test: torch.Tensor,
                        fs_masked: torch.Tensor, fb_train: torch.Tensor, y_train: torch.Tensor,
                        mask_l0: torch.Tensor, mask_l1: torch.Tensor, phases: int, seed: int,
                        **extra: Any) -> dict[str, Any]:
    """The paper's model-faithfulness numbers (f_s vs f_b), the same keys for every modality:
    test agreement and accuracies, accuracy and agreement on the masked training inputs, and the
    training masks' L0/L1 size (fraction of the input kept). ``extra`` adds modality details."""

    def mean(t: torch.Tensor) -> float:
        return round(float(t.float().mean()), 6) if len(t) else float("nan")

    return {
        "explains": "f_s",
        "test_agreement_fs_fb": mean(fs_test == fb_test),
        "test_accuracy_fs": mean(fs_test == y_test),
        "test_accuracy_fb": mean(fb_test == y_test),
        "train_masked_accuracy_fs": mean(fs_masked == y_train),
        "train_masked_agreement_fs_fb": mean(fs_masked == fb_train),
        "train_mask_l0_fraction": mean(mask_l0),
        "train_mask_l1_fraction": mean(mask_l1),
        "n_train": len(y_train),
        "n_test": len(y_test),
        **extra,
        "phases": phases,
        "seed": seed,
    }


def _sub_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


# --------------------------------------------------------------------------- trainer


class DietTrainer:
    """Runs DiET's phase loop with per-phase checkpoints in ``cache_dir`` (optional).

    Artefacts written to ``cache_dir``:

    * ``meta.json`` - cache key (settings, fingerprints of ``f_b`` and data, seed);
    * ``state.pt`` - resume state after the last finished phase (``f_s``, masks,
      Adam state, RNG state, phase index);
    * ``history.json`` - one record per finished phase with per-epoch metrics;
    * ``masks_round{k}_before_rounding.pt`` / ``masks_round{k}_after_rounding.pt``;
    * ``f_s_round{k}.pt`` after each model phase, and ``f_s.pt`` / ``train_masks.pt``
      when everything is done.

    All ``.pt`` files load with ``torch.load(..., weights_only=True)``.
    """

    def __init__(
        self,
        masker: Masker,
        config: DietConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ):
        self.masker = masker
        self.config = config
        self.device = torch.device(device)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.show_progress = show_progress

    # ---------------------------------------------------------------- public
    def fit(self, f_b: nn.Module, get_batch: BatchFn, n: int, labels: torch.Tensor | None = None,
            data_key: str = "") -> DietResult:
        """Learn ``f_s`` and ``n`` training masks. ``f_b`` is only read, never modified.

        ``get_batch(idx)`` returns the training inputs for the sample indices ``idx``
        on the device; ``labels`` (optional) only feed the accuracy columns of the
        history. ``data_key`` identifies the training data in the cache key.
        """
        cfg = self.config
        if n < 1:
            raise ValueError("DiET needs at least one training sample")
        start = time.perf_counter()
        meta = {
            "format": FORMAT_VERSION, "config": cfg.fit_dict(), "masker": self.masker.describe(),
            "f_b": fingerprint_module(f_b), "data": data_key, "n": int(n), "seed": self.seed,
        }
        state = self._load_state(meta)
        if state is not None and state["next_phase"] >= len(phases(cfg.rounds)):
            f_s = copy.deepcopy(f_b).to(self.device)
            f_s.load_state_dict(state["f_s"])
            f_s.eval()
            return DietResult(f_s, state["masks"], state["history"], state["next_phase"], True,
                              time.perf_counter() - start)

        f_s = copy.deepcopy(f_b).to(self.device)
        f_s.eval()
        for p in f_s.parameters():  # f_s is trained in full, whatever f_b's flags say
            p.requires_grad_(True)
        opt = torch.optim.Adam(f_s.parameters(), lr=cfg.model_lr)
        gen = torch.Generator().manual_seed(self.seed)
        masks = self.masker.init_masks(n)
        history: list[dict[str, Any]] = []
        first = 0
        if state is not None:
            f_s.load_state_dict(state["f_s"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["rng"])
            masks, history, first = state["masks"], state["history"], state["next_phase"]
            self._say(f"DiET: resuming after phase {first} of {len(phases(cfg.rounds))}")

        with frozen(f_b):  # f_b: eval mode, no parameter gradients; restored afterwards
            p_fb = predict_proba(f_b, get_batch, n, 4 * cfg.batch_size, self.device)
        labels_d = labels.to(self.device) if labels is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.cache_dir / META_FILE, json.dumps(meta, indent=2))

        plan = phases(cfg.rounds)
        for i in range(first, len(plan)):
            kind, k = plan[i]
            t0 = time.perf_counter()
            if kind == "mask":
                rec = self._mask_phase(f_s, masks, get_batch, p_fb, labels_d, gen, k)
                self._artefact(masks, f"masks_round{k}_before_rounding.pt")
            elif kind == "round":
                offset = rounding_offset(k, cfg.rounds)
                before = masks.clone()
                masks.copy_(round_masks(masks, offset))
                rec = {"offset": offset, "kept_before": float(before.mean()), "kept_after": float(masks.mean()),
                       "changed": float((before != masks).float().mean())}
                self._artefact(masks, f"masks_round{k}_after_rounding.pt")
            else:
                rec = self._model_phase(f_s, opt, masks, get_batch, p_fb, labels_d, gen, k)
                self._artefact(_cpu_state(f_s), f"f_s_round{k}.pt")
            rec = {"phase": kind, "round": k, "seconds": round(time.perf_counter() - t0, 3), **rec}
            history.append(rec)
            self._checkpoint(f_s, opt, gen, masks, history, i + 1)
        f_s.eval()
        self._artefact(_cpu_state(f_s), F_S_FILE)
        self._artefact(masks, MASKS_FILE)
        return DietResult(f_s, masks, history, first, False, time.perf_counter() - start)

    # ---------------------------------------------------------------- phases
    def _batches(self, n: int, gen: torch.Generator) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=gen)
        bs = self.config.batch_size
        return [order[i:i + bs] for i in range(0, n, bs)]

    def _mask_phase(self, f_s, masks, get_batch, p_fb, labels, gen, k) -> dict[str, Any]:
        cfg = self.config
        n = len(masks)
        w = sparsity_weight(k, cfg.rounds)
        epochs: list[dict[str, float]] = []
        losses: list[float] = []
        with frozen(f_s, train=False):
            # f_s is fixed during the mask phase, so its clean predictions are computed once
            p_fs = predict_proba(f_s, get_batch, n, 4 * cfg.batch_size, self.device)
            bar = progress(range(cfg.mask_max_epochs), desc=f"DiET masks (round {k + 1}/{cfg.rounds})",
                           disable=not self.show_progress)
            for _ in bar:
                acc = _Accumulator()
                for idx in self._batches(n, gen):
                    x = get_batch(idx)
                    m = masks[idx].to(self.device).requires_grad_(True)
                    m_up = self.masker.expand(m)
                    bg = self.masker.sample_background(len(idx), gen, self.device)
                    p_m = F.softmax(f_s(self.masker.apply(x, m_up, bg)), 1)
                    terms = diet_terms(p_fb[idx], p_fs[idx], p_m, m_up, w,
                                       sparsity=masker_sparsity(self.masker, m_up, x))
                    loss = terms["loss"].mean()
                    (grad,) = torch.autograd.grad(loss, m)
                    with torch.no_grad():
                        lr = cfg.mask_lr * masker_lr_scale(self.masker, x, m)
                        masks[idx] = (m - lr * grad).clamp_(0, 1).cpu()
                    acc.add(terms, p_fb[idx], p_m, None if labels is None else labels[idx], masker_l0(self.masker, m_up.detach(), x))
                rec = acc.result()
                epochs.append(rec)
                losses.append(rec["loss"])
                if has_converged(losses, cfg.mask_tol):
                    break
        return {"sparsity_weight": w, "epochs": epochs, "converged": has_converged(losses, cfg.mask_tol)}

    def _model_phase(self, f_s, opt, masks, get_batch, p_fb, labels, gen, k) -> dict[str, Any]:
        cfg = self.config
        n = len(masks)
        epochs: list[dict[str, float]] = []
        losses: list[float] = []
        f_s.train()
        if cfg.batchnorm == "frozen":
            for mod in f_s.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        bar = progress(range(cfg.model_max_epochs), desc=f"DiET f_s (round {k + 1}/{cfg.rounds})",
                       disable=not self.show_progress)
        # a private global RNG stream for layers such as dropout, so resuming is exact
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sub_seed(gen))
            for _ in bar:
                acc = _Accumulator()
                for idx in self._batches(n, gen):
                    x = get_batch(idx)
                    with torch.no_grad():
                        m_up = self.masker.expand(masks[idx].to(self.device))
                    bg = self.masker.sample_background(len(idx), gen, self.device)
                    p_s = F.softmax(f_s(x), 1)
                    p_m = F.softmax(f_s(self.masker.apply(x, m_up, bg)), 1)
                    terms = diet_terms(p_fb[idx], p_s, p_m)
                    opt.zero_grad(set_to_none=True)
                    terms["loss"].mean().backward()
                    opt.step()
                    acc.add(terms, p_fb[idx], p_m.detach(), None if labels is None else labels[idx], masker_l0(self.masker, m_up, x))
                rec = acc.result()
                epochs.append(rec)
                losses.append(rec["loss"])
                if has_converged(losses, cfg.model_tol):
                    break
        f_s.eval()
        return {"epochs": epochs, "converged": has_converged(losses, cfg.model_tol)}

    # ---------------------------------------------------------------- persistence
    def _say(self, msg: str) -> None:
        if self.show_progress:
            progress.write(msg)

    def _artefact(self, obj: Any, name: str) -> None:
        if self.cache_dir is not None:
            atomic_save_torch(obj.clone() if isinstance(obj, torch.Tensor) else obj, self.cache_dir / name)

    def _checkpoint(self, f_s, opt, gen, masks, history, next_phase: int) -> None:
        if self.cache_dir is None:
            return
        state = {"format": FORMAT_VERSION, "next_phase": next_phase, "f_s": _cpu_state(f_s),
                 "opt": _cpu_tree(opt.state_dict()), "rng": gen.get_state(), "masks": masks.clone()}
        atomic_save_torch(state, self.cache_dir / STATE_FILE)
        atomic_write_text(self.cache_dir / HISTORY_FILE, json.dumps(history, indent=2))

    def _load_state(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        if self.cache_dir is None:
            return None
        state_path, meta_path = self.cache_dir / STATE_FILE, self.cache_dir / META_FILE
        hist_path = self.cache_dir / HISTORY_FILE
        if not (state_path.exists() and meta_path.exists() and hist_path.exists()):
            return None
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(meta)):
            self._say(f"DiET: {self.cache_dir} holds a run with other settings, model or data; starting afresh")
            return None
        try:
            state = load_torch(state_path)
            history = json.loads(hist_path.read_text())
        except Exception as exc:  # truncated or tampered: recompute rather than fail every re-run
            self._say(f"DiET: checkpoint in {self.cache_dir} is unreadable ({type(exc).__name__}); starting afresh")
            return None
        if (not isinstance(state, dict) or not isinstance(history, list) or state.get("format") != FORMAT_VERSION
                or len(history) != state.get("next_phase")):
            self._say(f"DiET: checkpoint in {self.cache_dir} is inconsistent; starting afresh")
            return None
        state["history"] = history
        return state


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _cpu_tree(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_tree(v) for v in obj)
    return obj


class _Accumulator:
    """Sample-weighted epoch means of the loss terms and agreement/accuracy on masked inputs."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, terms, p_fb, p_masked, labels, l0) -> None:
        vals = {k: v.detach() for k, v in terms.items()}
        vals["masked_agreement"] = (p_masked.argmax(1) == p_fb.argmax(1)).float()
        if labels is not None:
            vals["masked_accuracy"] = (p_masked.argmax(1) == labels).float()
        vals["l0"] = l0
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.sum())
        self.n += len(p_fb)

    def result(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


# --------------------------------------------------------------------------- test time


def optimise_test_masks(
    f_s: nn.Module,
    inputs: torch.Tensor,
    masker: Masker,
    config: DietConfig,
    *,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Masks for evaluation samples, optimised against the frozen ``f_s`` only.

    Minimises ``w * ||m||_1 / |m| + ||p_s(x) - p_s(x_m)||_1`` per sample (``w`` =
    ``config.test_sparsity_weight``) by SGD from masks of ones, clamping to [0, 1]
    after each step. Nothing here reads training masks or training data.

    The masks of different samples are independent problems, and they are solved
    independently: each sample's step is ``lr / batch_size`` times its own
    gradient (the step a batch-mean loss gives in training; ``lr`` is
    ``config.test_lr`` or ``config.mask_lr``, times the masker's ``lr_scale`` of the
    sample where it has one), each sample stops on its own when
    its loss changes by at most ``test_tol`` (relative) against two steps earlier
    or after ``test_max_steps`` steps, and the background at step ``t`` is the
    ``t``-th draw of a generator seeded by ``seed``, shared by all samples. So a
    sample's mask does not depend on which other samples are in the batch.

    Returns the low-resolution masks (CPU, unrounded) and a summary dict: ``horizon``
    (the step cap), ``steps_mean``, ``converged`` (fraction of samples stopped by the
    ``test_tol`` rule; the others ran into the horizon) and, per sample (CPU tensors),
    ``steps`` and ``converged_mask``.
    """
    cfg = config
    step = cfg.effective_test_lr / cfg.batch_size
    device = inputs.device
    n = len(inputs)
    masks = masker.init_masks(n).to(device)
    horizon = cfg.test_horizon(masks[0].numel())
    gen = torch.Generator().manual_seed(int(seed))
    active = torch.ones(n, dtype=torch.bool, device=device)
    losses = torch.full((horizon, n), float("nan"), device=device)
    steps_taken = torch.zeros(n, dtype=torch.long, device=device)
    chunk = max(cfg.batch_size, 1)
    with frozen(f_s, train=False):
        with torch.no_grad():
            p_clean = torch.cat([F.softmax(f_s(inputs[i:i + chunk]), 1) for i in range(0, n, chunk)])
        for t in range(horizon):
            bg1 = masker.sample_background(1, gen, device)
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            for j in range(0, len(idx), chunk):
                sub = idx[j:j + chunk]
                m = masks[sub].clone().requires_grad_(True)
                m_up = masker.expand(m)
                bg = bg1.expand(len(sub), *bg1.shape[1:])
                x_sub = inputs[sub]
                p_m = F.softmax(f_s(masker.apply(x_sub, m_up, bg)), 1)
                per_sample = cfg.test_sparsity_weight * masker_sparsity(masker, m_up, x_sub) + prob_l1(p_clean[sub], p_m)
                (grad,) = torch.autograd.grad(per_sample.sum(), m)
                with torch.no_grad():
                    masks[sub] = (m - step * masker_lr_scale(masker, x_sub, m) * grad).clamp_(0, 1)
                    losses[t, sub] = per_sample.detach()
            steps_taken[idx] += 1
            if t >= 2 and cfg.test_tol > 0:
                ref = losses[t - 2, idx]
                done = (losses[t, idx] - ref).abs() <= cfg.test_tol * ref.abs().clamp_min(1e-12)
                active[idx[done]] = False
    summary = {"horizon": horizon, "steps_mean": float(steps_taken.float().mean()) if n else 0.0,
               "converged": float((~active).float().mean()) if n else 0.0,
               "steps": steps_taken.cpu(), "converged_mask": (~active).cpu()}
    return masks.detach().cpu(), summary


# --------------------------------------------------------------------------- explainer plumbing

TEST_MASKS_FILE = "test_masks.pt"
REPORT_FILE = "report.json"
TEST_MASKS_FORMAT = 2


@dataclass
class _TestMask:
    """A cached test-time mask and how its optimisation ended."""

    mask: torch.Tensor
    steps: int
    converged: bool  # stopped by the test_tol rule (else it ran into the horizon)
    horizon: int


class DietFitMixin:
    """What the image ``diet`` and ``text_diet`` explainers share around :class:`DietTrainer`:
    the fitted state, the seed and training-subset rules, the cached faithfulness report and
    the cache of test-time masks.

    Test-time masks for ``f_s`` are cached under a key made of every test-time setting
    (:meth:`DietConfig.test_dict`, the subclass's :meth:`_test_settings`, e.g. the
    background used at test time), the fingerprint of ``f_s``, DiET's seed and a digest of
    the input; changing any of them recomputes. Masks for any other model (e.g. the
    randomised copies of the randomisation test) are optimised against that model and never
    cached.

    A subclass sets ``name``, ``config``, ``n_train`` and ``seed``, implements
    ``_faithfulness(f_b, ...)`` and ``_test_settings()``; it calls :meth:`_reset_fit_state`
    in ``__init__`` and :meth:`_fit_with_trainer` in ``fit``.
    """

    name: str
    config: DietConfig
    n_train: int | None
    seed: int | None

    def _reset_fit_state(self) -> None:
        self.f_s: nn.Module | None = None
        self.masker: Any = None
        self.train_masks: torch.Tensor | None = None
        self.train_index: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.fit_report: dict[str, Any] = {}
        self.cache_dir: Path | None = None
        self._seed = 0
        self._fs_fingerprint = ""
        self._test_cache: dict[str, _TestMask] = {}

    def _start_fit(self, n_all: int, generator: torch.Generator | None, cache_dir: Any) -> torch.Tensor:
        """Fix the fit seed (``seed``, else one draw from ``generator``, else 0) and the cache
        folder; return the sorted indices of the ``n_train`` training samples drawn by that seed."""
        if self.seed is not None:
            self._seed = int(self.seed)
        elif generator is not None:
            self._seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        else:
            self._seed = 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.n_train is None or self.n_train >= n_all:
            return torch.arange(n_all)
        perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(self._seed))
        return perm[: self.n_train].sort().values

    def _fit_with_trainer(self, model: nn.Module, get_batch: BatchFn, labels: torch.Tensor, index: torch.Tensor,
                          data_key: str, device: torch.device, faithfulness: Callable[[], dict[str, Any]]) -> None:
        """Train (or resume, or load) ``f_s`` and the training masks, then the faithfulness
        report (cached beside them) and any test-time masks cached by an earlier run."""
        trainer = DietTrainer(self.masker, self.config, device=device, seed=self._seed, cache_dir=self.cache_dir)
        result = trainer.fit(model, get_batch, len(index), labels, data_key=data_key)
        self.f_s, self.train_masks, self.history, self.train_index = result.f_s, result.masks, result.history, index
        for p in self.f_s.parameters():  # f_s is final: explainers and metrics only need input gradients
            p.requires_grad_(False)
        self._fs_fingerprint = fingerprint_module(self.f_s)

        report_path = self.cache_dir / REPORT_FILE if self.cache_dir is not None else None
        if result.cache_hit and report_path is not None and report_path.exists():
            self.fit_report = json.loads(report_path.read_text())
        else:
            start = time.perf_counter()
            self.fit_report = faithfulness()
            self.fit_report["fit_seconds"] = round(result.seconds, 3)
            self.fit_report["report_seconds"] = round(time.perf_counter() - start, 3)
            if report_path is not None:
                atomic_write_text(report_path, json.dumps(self.fit_report, indent=2))
        self.fit_report["cache_hit"] = result.cache_hit
        self.fit_report["resumed_from_phase"] = result.resumed_from
        self._test_cache = {}
        if self.cache_dir is not None and (self.cache_dir / TEST_MASKS_FILE).exists():
            saved = load_torch(self.cache_dir / TEST_MASKS_FILE)
            if isinstance(saved, dict) and saved.get("format") == TEST_MASKS_FORMAT:
                self._test_cache = {
                    k: _TestMask(m, int(s), bool(c), int(h))
                    for k, m, s, c, h in zip(saved["keys"], saved["masks"], saved["steps"].tolist(),
                                             saved["converged"].tolist(), saved["horizon"].tolist(), strict=True)}
        self._update_test_stats()

    # ---------------------------------------------------------------- test-time masks
    def _test_settings(self) -> dict[str, Any]:
        """Test-time settings of the modality (e.g. the background used at test time)."""
        return {}

    def _test_key(self) -> str:
        """Digest of everything a test-time mask for ``f_s`` depends on besides its input."""
        key = {"format": TEST_MASKS_FORMAT, "config": self.config.test_dict(), "modality": self._test_settings(),
               "f_s": self._fs_fingerprint, "seed": self._seed}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]

    def _cached_test_masks(self, digests: list[str],
                           compute: Callable[[list[int]], tuple[list[torch.Tensor], dict[str, Any]]]
                           ) -> list[torch.Tensor]:
        """Masks for ``f_s`` of the inputs with these ``digests``: from the cache, or from
        ``compute(positions)`` (per-sample masks and :func:`optimise_test_masks`'s summary)
        for those not cached under the current test settings."""
        tkey = self._test_key()
        keys = [f"{tkey}:{d}" for d in digests]
        todo = [i for i, k in enumerate(keys) if k not in self._test_cache]
        if todo:
            masks, summary = compute(todo)
            steps, conv = summary["steps"].tolist(), summary["converged_mask"].tolist()
            for j, i in enumerate(todo):
                self._test_cache[keys[i]] = _TestMask(masks[j], int(steps[j]), bool(conv[j]), int(summary["horizon"]))
            self._save_test_masks()
            self._update_test_stats()
        return [self._test_cache[k].mask for k in keys]

    def _explains_f_s(self, model: nn.Module | None) -> bool:
        """Whether a call to explain ``model`` is a call for ``f_s`` (served from the cache)."""
        return model is None or model is self._fitted()

    def _update_test_stats(self) -> None:
        """Put how the test-time optimisation ended into the report (in place, so a report
        dict handed out before the evaluation masks were computed shows them too)."""
        prefix = self._test_key() + ":"
        entries = [e for k, e in self._test_cache.items() if k.startswith(prefix)]
        for k in ("test_converged_fraction", "test_time"):
            self.fit_report.pop(k, None)
        if not entries:
            return
        n = len(entries)
        conv = sum(e.converged for e in entries) / n
        horizons = sorted({e.horizon for e in entries})
        self.fit_report["test_converged_fraction"] = conv
        self.fit_report["test_time"] = {
            "n_masks": n, "converged_fraction": conv, "stopped_at_horizon_fraction": 1.0 - conv,
            "steps_mean": sum(e.steps for e in entries) / n,
            "horizon": horizons[0] if len(horizons) == 1 else horizons,
            "settings": self.config.test_dict() | self._test_settings(),
        }

    def _save_test_masks(self) -> None:
        if self.cache_dir is None:
            return
        keys = list(self._test_cache)
        entries = [self._test_cache[k] for k in keys]
        atomic_save_torch({"format": TEST_MASKS_FORMAT, "keys": keys, "masks": [e.mask for e in entries],
                           "steps": torch.tensor([e.steps for e in entries], dtype=torch.long),
                           "converged": torch.tensor([e.converged for e in entries], dtype=torch.bool),
                           "horizon": torch.tensor([e.horizon for e in entries], dtype=torch.long)},
                          self.cache_dir / TEST_MASKS_FILE)

    def report(self) -> dict[str, Any]:
        """Model-faithfulness report of the last ``fit`` (empty before).

        The dict is live: ``test_converged_fraction`` and ``test_time`` (how the test-time
        optimisation of the masks served for ``f_s`` ended: converged by ``test_tol`` or
        stopped at the horizon) are added and updated as masks are computed."""
        return self.fit_report

    def explained_model(self, model: nn.Module) -> nn.Module:
        return self._fitted()

    def _fitted(self) -> nn.Module:
        if self.f_s is None or self.masker is None:
            raise RuntimeError(f"{self.name} must be fitted first: call fit(model, task, device=...) before explaining")
        return self.f_s
