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
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ...files import atomic_save_torch, atomic_write_text, load_torch
from ...fingerprint import fingerprint_module, fingerprint_tensor  # noqa: F401 - re-exported
from ...ops.modes import eval_mode, frozen
from ...ops.seeding import base_seed
from ...ops.validation import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Interval,
    Null,
    OneOf,
    option_error,
    validate_options,
)
from ...progress import progress

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
    return [
        {
            "round": k,
            "sparsity_weight": sparsity_weight(k, rounds),
            "rounding_offset": rounding_offset(k, rounds),
        }
        for k in range(rounds)
    ]


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
        sparsity = (
            mask_sparsity(expanded_masks)
            if expanded_masks is not None
            else torch.zeros_like(distill)
        )
    return {
        "loss": weight * sparsity + distill + robust,
        "sparsity": sparsity,
        "distill": distill,
        "robust": robust,
    }


def has_converged(losses: list[float], tol: float) -> bool:
    """True when the last loss differs from the one two epochs earlier by at most ``tol``
    (relative)."""
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

    def sample_background(
        self, n: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Background values for ``n`` samples, broadcastable against the inputs."""

    def apply(
        self, inputs: torch.Tensor, expanded_masks: torch.Tensor, background: torch.Tensor
    ) -> torch.Tensor:
        """The masked inputs ``m * x + (1 - m) * background``."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings (part of the cache key)."""

    # Optional: ``sparsity(expanded_masks, inputs) -> (N,)`` and
    # ``l0(expanded_masks, inputs) -> (N,)`` replace mask_sparsity/mask_l0 when some mask entries
    # are not part of a sample (text padding); ``lr_scale(inputs) -> (N,) | None`` multiplies each
    # sample's mask learning rate (text: by length, so that every word's step is the same for short
    # and long texts).


# --------------------------------------------------------------------------- configuration


_INT_FIELDS = frozenset(
    {
        "rounds",
        "batch_size",
        "mask_max_epochs",
        "model_max_epochs",
        "test_max_steps",
        "test_seed_check",
    }
)
_STR_FIELDS = frozenset({"batchnorm", "test_procedure"})
_BOOL_FIELDS = frozenset({"test_average"})
# How f_s's BatchNorm layers run in the model phase. "frozen": in eval mode (f_b's running
# statistics, never updated; the affine weights still train), so f_s normalises clean and masked
# inputs in training exactly as when it is evaluated. "batch": in train mode, as the authors'
# code (batch statistics; running statistics updated by the clean and the masked forward pass in
# turn, so at evaluation time masked inputs are normalised with statistics of a clean/masked mix).
BATCHNORM_MODES = ("frozen", "batch")
#: test-time procedures (explainers/diet/testtime.py): "converged" (per sample, windowed stopping
#: rule, safety limit) and "authors" (the authors' inference_distill.py, one set, epochs)
TEST_PROCEDURES = ("converged", "authors")
#: what each setting of :class:`DietConfig` accepts (the ``diet`` and ``text_diet`` options of
#: the same names; :mod:`xaiarena.ops.validation`)
SETTING_CONSTRAINTS: dict[str, Any] = {
    "rounds": COUNT,
    "batch_size": COUNT,
    "mask_lr": POSITIVE,
    "model_lr": POSITIVE,
    "mask_tol": NON_NEGATIVE,
    "model_tol": NON_NEGATIVE,
    "mask_max_epochs": COUNT,
    "model_max_epochs": Interval(int, 0, None),
    "test_procedure": OneOf(TEST_PROCEDURES),
    "test_lr": [POSITIVE, Null("mask_lr")],
    "test_sparsity_weight": [NON_NEGATIVE, Null("the procedure's default")],
    "test_tol": [NON_NEGATIVE, Null("the procedure's default")],
    "test_mask_tol": NON_NEGATIVE,
    "test_window": POSITIVE,
    "test_max_steps": [COUNT, Null("30 horizons (converged), no limit (authors)")],
    "test_seed_check": Interval(int, 0, None),
    "batchnorm": OneOf(BATCHNORM_MODES),
}


def check_settings(component: str, options: dict[str, Any]) -> None:
    """Check DiET's settings in ``options`` (:data:`SETTING_CONSTRAINTS`, then the one rule that
    ties two of them) for the explainer or config named ``component``; OptionError otherwise."""
    validate_options(component, SETTING_CONSTRAINTS, options)
    converged = options.get("test_procedure", "converged") == "converged"
    if converged and options.get("test_sparsity_weight") == 0:
        raise option_error(
            component,
            "test_sparsity_weight",
            options["test_sparsity_weight"],
            "a number > 0 for the converged test procedure",
            detail="its window and safety limit are counted in horizons, the steps "
            "in which sparsity alone erases an unused mask unit",
        )


#: the authors' stopping band: epoch loss strictly within +-0.2 % of its value two epochs earlier
#: (inference_distill.py, distill(): ``mask_loss > 0.998 * prev_prev_loss and ... < 1.002 * ...``)
AUTHORS_TOL = 0.002
#: the authors' test-time sparsity weight (inference_distill.py: one round, ``-r 1``, weight 1)
AUTHORS_SPARSITY_WEIGHT = 1.0
#: the converged procedure's default tolerances (relative change of the window-mean loss and of the
#: window-mean mask between two consecutive windows; chosen in benchmarks/diet_test_time.py on
#: training-split images, benchmarks/results/diet_convergence.md)
CONVERGED_TOL, CONVERGED_MASK_TOL = 0.02, 0.1


@dataclass(frozen=True)
class DietConfig:
    """Optimisation settings of DiET (modality independent).

    ``mask_lr`` is the SGD learning rate on the batch-mean mask loss, so each
    sample's mask moves by ``mask_lr / batch_size`` times its own gradient per
    step (times the masker's per-sample ``lr_scale``, where it has one);
    test-time optimisation uses the same per-sample step with ``test_lr``.

    Test time (:mod:`xaiarena.explainers.diet.testtime`): ``test_procedure``
    (``converged`` or ``authors``), ``test_sparsity_weight`` (``w``),
    ``test_tol`` (``None``: :data:`CONVERGED_TOL`, or the authors' 0.2 % band),
    ``test_mask_tol`` and ``test_window`` (in horizons; ``converged`` only),
    ``test_max_steps`` (safety limit: steps for ``converged``, ``None`` = 30
    horizons; epochs for ``authors``, ``None`` = no limit, as the authors) and
    ``test_seed_check`` (samples re-optimised with a second seed; 0 = off).
    """

    rounds: int = 3
    batch_size: int = 64
    mask_lr: float = 16000.0
    model_lr: float = 1e-4
    mask_tol: float = 0.005
    model_tol: float = 0.01
    mask_max_epochs: int = 6
    model_max_epochs: int = 3
    test_procedure: str = "converged"
    test_lr: float | None = 1000.0
    test_sparsity_weight: float = 1.0
    test_tol: float | None = None
    test_mask_tol: float = CONVERGED_MASK_TOL
    test_window: float = 0.5
    test_average: bool = True
    test_max_steps: int | None = None
    test_seed_check: int = 8
    batchnorm: str = "frozen"

    def __post_init__(self) -> None:
        if self.test_tol is None:
            tol = AUTHORS_TOL if self.test_procedure == "authors" else CONVERGED_TOL
            object.__setattr__(self, "test_tol", tol)
        check_settings("DietConfig", asdict(self))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DietConfig:
        """The config from an explainer's options (e.g. its ``locals()``): the keys that are
        fields, cast to int, float or str (None kept); other keys are ignored."""
        values = {}
        for f in fields(cls):
            if f.name in options:
                v = options[f.name]
                if v is None:
                    values[f.name] = None
                elif f.name in _STR_FIELDS:
                    values[f.name] = str(v)
                elif f.name in _BOOL_FIELDS:
                    values[f.name] = bool(v)
                else:
                    values[f.name] = int(v) if f.name in _INT_FIELDS else float(v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fit_dict(self) -> dict[str, Any]:
        """The settings that affect training (the fit's cache key): everything but ``test_*``."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("test_")}

    def test_dict(self) -> dict[str, Any]:
        """Every setting the test-time optimisation reads (part of the test-mask cache key):
        the ``test_*`` fields but ``test_seed_check`` (it changes no mask), the effective test
        learning rate and ``batch_size`` (the per-sample step is ``lr / batch_size``)."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if k.startswith("test_") and k != "test_seed_check"
        }
        out.update(effective_test_lr=self.effective_test_lr, batch_size=self.batch_size)
        return out

    @property
    def effective_test_lr(self) -> float:
        return self.test_lr if self.test_lr is not None else self.mask_lr


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


@torch.no_grad()
def predict_proba(
    model: nn.Module, get_batch: BatchFn, n: int, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Softmax outputs ``(n, K)`` (on ``device``) of ``model`` in eval mode over all samples."""
    with eval_mode(model):
        out = [
            F.softmax(model(get_batch(torch.arange(i, min(i + batch_size, n)))), 1)
            for i in range(0, n, batch_size)
        ]
    return torch.cat(out).to(device)


def faithfulness_report(
    *,
    fs_test: torch.Tensor,
    fb_test: torch.Tensor,
    y_test: torch.Tensor,
    fs_masked: torch.Tensor,
    fb_train: torch.Tensor,
    y_train: torch.Tensor,
    mask_l0: torch.Tensor,
    mask_l1: torch.Tensor,
    phases: int,
    seed: int,
    **extra: Any,
) -> dict[str, Any]:
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
    def fit(
        self,
        f_b: nn.Module,
        get_batch: BatchFn,
        n: int,
        labels: torch.Tensor | None = None,
        data_key: str = "",
    ) -> DietResult:
        """Learn ``f_s`` and ``n`` training masks. ``f_b`` is only read, never modified.

        ``get_batch(idx)`` returns the training inputs for the sample indices ``idx``
        on the device; ``labels`` (optional) only feed the accuracy columns of the
        history. ``data_key`` identifies the training data in the cache key.

        Longer than 80 lines because DiET's rounds share the optimisers, masks, cache key and
        history in one loop; helpers would pass all of them.
        """
        cfg = self.config
        if n < 1:
            raise ValueError("DiET needs at least one training sample")
        start = time.perf_counter()
        meta = {
            "format": FORMAT_VERSION,
            "config": cfg.fit_dict(),
            "masker": self.masker.describe(),
            "f_b": fingerprint_module(f_b),
            "data": data_key,
            "n": int(n),
            "seed": self.seed,
        }
        state = self._load_state(meta)
        if state is not None and state["next_phase"] >= len(phases(cfg.rounds)):
            f_s = copy.deepcopy(f_b).to(self.device)
            f_s.load_state_dict(state["f_s"])
            f_s.eval()
            return DietResult(
                f_s,
                state["masks"],
                state["history"],
                state["next_phase"],
                True,
                time.perf_counter() - start,
            )

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
                rec = {
                    "offset": offset,
                    "kept_before": float(before.mean()),
                    "kept_after": float(masks.mean()),
                    "changed": float((before != masks).float().mean()),
                }
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
        return [order[i : i + bs] for i in range(0, n, bs)]

    def _mask_phase(self, f_s, masks, get_batch, p_fb, labels, gen, k) -> dict[str, Any]:
        cfg = self.config
        n = len(masks)
        w = sparsity_weight(k, cfg.rounds)
        epochs: list[dict[str, float]] = []
        losses: list[float] = []
        with frozen(f_s, train=False):
            # f_s is fixed during the mask phase, so its clean predictions are computed once
            p_fs = predict_proba(f_s, get_batch, n, 4 * cfg.batch_size, self.device)
            bar = progress(
                range(cfg.mask_max_epochs),
                desc=f"DiET masks (round {k + 1}/{cfg.rounds})",
                disable=not self.show_progress,
            )
            for _ in bar:
                acc = _Accumulator()
                for idx in self._batches(n, gen):
                    x = get_batch(idx)
                    m = masks[idx].to(self.device).requires_grad_(True)
                    m_up = self.masker.expand(m)
                    bg = self.masker.sample_background(len(idx), gen, self.device)
                    p_m = F.softmax(f_s(self.masker.apply(x, m_up, bg)), 1)
                    terms = diet_terms(
                        p_fb[idx],
                        p_fs[idx],
                        p_m,
                        m_up,
                        w,
                        sparsity=masker_sparsity(self.masker, m_up, x),
                    )
                    loss = terms["loss"].mean()
                    (grad,) = torch.autograd.grad(loss, m)
                    with torch.no_grad():
                        lr = cfg.mask_lr * masker_lr_scale(self.masker, x, m)
                        masks[idx] = (m - lr * grad).clamp_(0, 1).cpu()
                    acc.add(
                        terms,
                        p_fb[idx],
                        p_m,
                        None if labels is None else labels[idx],
                        masker_l0(self.masker, m_up.detach(), x),
                    )
                rec = acc.result()
                epochs.append(rec)
                losses.append(rec["loss"])
                if has_converged(losses, cfg.mask_tol):
                    break
        return {
            "sparsity_weight": w,
            "epochs": epochs,
            "converged": has_converged(losses, cfg.mask_tol),
        }

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
        bar = progress(
            range(cfg.model_max_epochs),
            desc=f"DiET f_s (round {k + 1}/{cfg.rounds})",
            disable=not self.show_progress,
        )
        # a private global RNG stream for layers such as dropout, so resuming is exact
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(base_seed(gen))
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
                    acc.add(
                        terms,
                        p_fb[idx],
                        p_m.detach(),
                        None if labels is None else labels[idx],
                        masker_l0(self.masker, m_up, x),
                    )
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
            atomic_save_torch(
                obj.clone() if isinstance(obj, torch.Tensor) else obj, self.cache_dir / name
            )

    def _checkpoint(self, f_s, opt, gen, masks, history, next_phase: int) -> None:
        if self.cache_dir is None:
            return
        state = {
            "format": FORMAT_VERSION,
            "next_phase": next_phase,
            "f_s": _cpu_state(f_s),
            "opt": _cpu_tree(opt.state_dict()),
            "rng": gen.get_state(),
            "masks": masks.clone(),
        }
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
            self._say(
                f"DiET: {self.cache_dir} holds a run with other settings, model or data; starting "
                "afresh"
            )
            return None
        try:
            state = load_torch(state_path)
            history = json.loads(hist_path.read_text())
        except Exception as exc:  # truncated or tampered: recompute rather than fail every re-run
            self._say(
                f"DiET: checkpoint in {self.cache_dir} is unreadable ({type(exc).__name__}); "
                "starting afresh"
            )
            return None
        if (
            not isinstance(state, dict)
            or not isinstance(history, list)
            or state.get("format") != FORMAT_VERSION
            or len(history) != state.get("next_phase")
        ):
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
