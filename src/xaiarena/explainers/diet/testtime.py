"""DiET's test-time masks: the two procedures that optimise them (docs/diet.md, "Test time").

The maps of evaluation samples are masks optimised against the frozen ``f_s`` alone, from masks
of ones, by SGD on ``w * ||m||_1 / |m| + ||p_s(x) - p_s(x_m)||_1`` with clamping to [0, 1] after
every step (``w`` = ``test_sparsity_weight``). The per-step update is the same in both
procedures; what differs is everything around it:

``converged`` (the default)
    Every sample is its own problem: its step is ``lr / batch_size`` times its own gradient, its
    background colour at every step is drawn from a generator of its own (seeded by DiET's seed
    and the sample's content), and it stops on its own when, between two consecutive windows,
    the window-mean loss changed by at most ``test_tol`` (relative) or within the noise of the
    background draws, and the window-mean mask by at most ``test_mask_tol`` (relative) or no more
    than between the halves of its window; or at the safety limit ``test_max_steps`` (reported).
    The map is the mean mask of the last window (``test_average``). So a map depends on neither
    the batch nor the other samples explained.

``authors``
    The authors' inference (AI4LIFE-GROUP/DiET, ``inference_distill.py``): the whole set is
    optimised together in shuffled mini-batches of ``batch_size`` (the last one smaller) with the
    batch-mean loss, so each sample's step is ``lr / len(batch)``; one background colour per sample
    and channel at every step; whole epochs until the epoch-mean loss lies strictly within
    ``±test_tol`` (0.2 %) of its value two epochs earlier, with no step limit unless
    ``test_max_steps`` is set. A mask depends on the set it was optimised with.

Step counts scale with the *horizon* ``H = ceil(batch_size * units / (lr * scale * w))`` of a
sample: the steps in which the sparsity gradient alone takes an unused mask unit (an image cell,
a word) from 1 to 0 (``units`` = mask units the sparsity term averages over, ``scale`` = the
masker's ``lr_scale``). The ``converged`` procedure's window is ``test_window`` horizons and
its default safety limit :data:`LIMIT_HORIZONS` horizons, so they follow ``lr``, ``w`` and the
mask size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.modes import frozen
from .core import DietConfig, masker_lr_scale, masker_sparsity, prob_l1

#: the converged procedure's default safety limit, in horizons (``test_max_steps: null``)
LIMIT_HORIZONS = 30
STOP_RULE, STOP_LIMIT = "rule", "limit"


# --------------------------------------------------------------------------- helpers


def sample_seed(seed: int, digest: str) -> int:
    """The seed of one sample's background generator: DiET's seed and the sample's digest."""
    return int(hashlib.sha256(f"{int(seed)}:{digest}".encode()).hexdigest()[:15], 16)


def second_seed(seed: int) -> int:
    """The seed of the run-time seed check (a second, independent optimisation)."""
    return int(hashlib.sha256(f"diet-seed-check:{int(seed)}".encode()).hexdigest()[:8], 16)


def mask_units(masker: Any, inputs: Any, masks: torch.Tensor) -> torch.Tensor:
    """Mask units per sample ``(N,)`` that the sparsity term averages over: ``masker.units(inputs)``
    where the masker defines it (text: each text's words), else the entries of one mask (cells)."""
    fn = getattr(masker, "units", None)
    if fn is not None:
        return fn(inputs).to(masks.device, torch.float64)
    return torch.full(
        (len(masks),), float(masks[0].numel()), dtype=torch.float64, device=masks.device
    )


def horizons(config: DietConfig, masker: Any, inputs: Any, masks: torch.Tensor) -> torch.Tensor:
    """Per-sample horizon ``(N,)`` (long): steps in which the sparsity gradient alone takes an
    mask unit from 1 to 0, ``ceil(batch_size * units / (lr * scale * w))``."""
    w = config.test_sparsity_weight
    if w <= 0:
        raise ValueError(
            f"test_sparsity_weight={w} has no horizon (the steps in which sparsity alone erases "
            "an unused mask unit): use a positive test_sparsity_weight"
        )
    scale = masker_lr_scale(masker, inputs, masks)
    scale = (
        scale.flatten().double()
        if isinstance(scale, torch.Tensor)
        else torch.full((len(masks),), float(scale), dtype=torch.float64)
    )
    units = mask_units(masker, inputs, masks).cpu()
    h = config.batch_size * units / (config.effective_test_lr * scale.cpu() * w)
    h = torch.ceil(
        h * (1 - 1e-6)
    )  # an exact integer stays one, whatever float32 rounding in ``scale``
    return h.clamp_min(1).long()


def spearman_pairs(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Spearman correlation of each pair ``(a[i], b[i])`` of maps (any shape, flattened), ties given
    their average rank (clamped mask values tie often); NaN where a map is constant."""
    from scipy.stats import rankdata

    out = []
    for x, y in zip(a, b, strict=True):
        x, y = x.detach().double().flatten().cpu(), y.detach().double().flatten().cpu()
        rx = torch.from_numpy(rankdata(x.numpy())) - (len(x) + 1) / 2
        ry = torch.from_numpy(rankdata(y.numpy())) - (len(y) + 1) / 2
        den = float(rx.norm() * ry.norm())
        out.append(float((rx * ry).sum()) / den if den > 0 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


class Draws(Protocol):
    """The random draws of the ``authors`` procedure, in the order its loop makes them."""

    def order(self, n: int) -> torch.Tensor:
        """The order of the set's ``n`` samples in one epoch (batches: consecutive slices)."""

    def background(self, n: int) -> torch.Tensor:
        """Background values for the ``n`` samples of one batch (a colour per sample, channel)."""


class SeededDraws:
    """:class:`Draws` from one generator seeded by DiET's seed: each epoch a permutation, then each
    batch's backgrounds (the authors draw both from torch's global generator, shuffling with
    ``DataLoader(shuffle=True)``)."""

    def __init__(self, masker: Any, seed: int, device: torch.device):
        self.masker, self.device = masker, device
        self.gen = torch.Generator().manual_seed(int(seed))

    def order(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen)

    def background(self, n: int) -> torch.Tensor:
        return self.masker.sample_background(n, self.gen, self.device)


# --------------------------------------------------------------------------- entry point


def optimise_test_masks(
    f_s: nn.Module,
    inputs: Any,
    masker: Any,
    config: DietConfig,
    *,
    seed: int = 0,
    sample_seeds: list[int] | None = None,
    draws: Draws | None = None,
    trace: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Test-time masks of ``inputs`` for ``f_s`` by ``config.test_procedure``; nothing here reads
    training masks or training data.

    ``converged``: per sample; ``sample_seeds`` seed each sample's background generator (default:
    ``seed`` and the sample's position, for direct calls; the explainers pass :func:`sample_seed` of
    the sample's digest). ``authors``: ``inputs`` are one set, optimised together in the order
    ``draws`` give (default :class:`SeededDraws` from ``seed``). ``trace(step, idx, loss, masks)``,
    if given, sees every step's per-sample losses (before the update) and masks (after it) of
    the samples ``idx`` (the convergence study).

    Returns the low-resolution masks (CPU, unrounded) and a summary: ``procedure``, per sample
    (CPU tensors) ``steps``, ``limit_hit`` (stopped by the safety limit, not the rule),
    ``loss_change`` and ``mask_change`` (the last relative changes the rule saw; NaN before it
    saw any), ``horizon`` and ``limit`` (None: no limit); ``authors`` adds ``epoch_losses``.
    """
    if config.test_procedure == "authors":
        return _authors(
            f_s, inputs, masker, config, draws or SeededDraws(masker, seed, _device(inputs)), trace
        )
    if sample_seeds is None:
        sample_seeds = [sample_seed(seed, str(i)) for i in range(len(inputs))]
    if len(sample_seeds) != len(inputs):
        raise ValueError(f"{len(sample_seeds)} sample seeds for {len(inputs)} inputs")
    return _converged(f_s, inputs, masker, config, sample_seeds, trace)


def _device(inputs: Any) -> torch.device:
    return inputs.device


def _clean_probs(f_s: nn.Module, inputs: Any, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [F.softmax(f_s(inputs[i : i + chunk]), 1) for i in range(0, len(inputs), chunk)]
        )


def _kept(masker: Any, masks: torch.Tensor, inputs: Any) -> torch.Tensor:
    """Per-sample mean mask value over the sample's own units (the sparsity term without ``w``)."""
    return masker_sparsity(masker, masker.expand(masks), inputs)


def _rel_mask_change(
    masker: Any, new: torch.Tensor, old: torch.Tensor, inputs: Any, units: torch.Tensor
) -> torch.Tensor:
    """``sum |new - old| / units``, relative to the mass the masks keep (``max`` of old and new):
    the mean change of a mask unit as a fraction of the mean kept value. Units outside a sample
    (text padding) never change, so they add nothing to the sum."""
    diff = (new - old).abs().flatten(1).sum(1).double() / units
    mass = torch.maximum(_kept(masker, old, inputs), _kept(masker, new, inputs)).double()
    return torch.where(diff == 0, torch.zeros_like(diff), diff / mass.clamp_min(1e-12))


# --------------------------------------------------------------------------- converged (per sample)


#: the converged rule's noise allowances: the window-mean loss may differ from the previous window's
#: by LOSS_NOISE_Z standard errors of that difference (from the steps' losses), and the window-mean
#: mask by MASK_NOISE_RATIO times the difference between the two halves of the current window (a
#: drift makes the change between windows twice that between halves; noise alone makes it about 0.7
#: times)
LOSS_NOISE_Z, MASK_NOISE_RATIO = 2.0, 1.0


def _converged(f_s, inputs, masker, cfg: DietConfig, sample_seeds: list[int], trace):
    """Per-sample SGD with the converged rule. Each sample's steps are grouped in half-windows
    of ``ceil(test_window * horizon / 2)`` steps; at the end of every half-window from the fourth
    on, the last two half-windows (the current window) are compared with the two before (the
    previous window): the sample stops when the window-mean loss changed by at most ``test_tol``
    (relative) or by at most LOSS_NOISE_Z standard errors, and the window-mean mask by at most
    ``test_mask_tol`` (relative to the mass it keeps) or by at most MASK_NOISE_RATIO times the
    change between the current window's halves. The map is the window-mean mask
    (``test_average``) or the last step's.
    Longer than 80 lines because the stopping rule updates many per-sample state tensors (losses,
    half-window sums, stop steps, maps) in one SGD loop; helpers would pass all of them."""
    device = _device(inputs)
    n = len(inputs)
    masks = masker.init_masks(n).to(device)
    if n == 0:
        return masks.cpu(), _summary(
            cfg,
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.bool),
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            None,
        )
    horizon = horizons(cfg, masker, inputs, masks)
    half = torch.ceil(cfg.test_window * horizon.double() / 2 * (1 - 1e-9)).clamp_min(1).long()
    window = 2 * half
    limit = (
        torch.full_like(horizon, cfg.test_max_steps)
        if cfg.test_max_steps is not None
        else LIMIT_HORIZONS * horizon
    ).clamp_min(1)
    lr = cfg.effective_test_lr / cfg.batch_size * masker_lr_scale(masker, inputs, masks)
    units = mask_units(masker, inputs, masks).cpu()
    gens = [torch.Generator().manual_seed(int(s)) for s in sample_seeds]
    steps = torch.zeros(n, dtype=torch.long)
    limit_hit = torch.zeros(n, dtype=torch.bool)
    loss_change = torch.full((n,), float("nan"), dtype=torch.float64)
    mask_change = torch.full((n,), float("nan"), dtype=torch.float64)
    shape = masks.shape[1:]
    # the current half-window's sums, and the last four complete half-windows (oldest first)
    cur_loss = torch.zeros(n, dtype=torch.float64)
    cur_sq = torch.zeros(n, dtype=torch.float64)
    cur_mask = torch.zeros(n, *shape, dtype=torch.float64)
    halves_loss = torch.zeros(n, 4, dtype=torch.float64)
    halves_sq = torch.zeros(n, 4, dtype=torch.float64)
    halves_mask = torch.zeros(n, 4, *shape, dtype=torch.float64)  # means
    n_halves = torch.zeros(n, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool)
    final = torch.zeros_like(masks)
    chunk = max(cfg.batch_size, 1)
    w = cfg.test_sparsity_weight
    with frozen(f_s, train=False):
        p_clean = _clean_probs(f_s, inputs, chunk)
        t = 0
        while bool(active.any()):
            idx = active.nonzero().flatten()
            bg_all = torch.cat([masker.sample_background(1, gens[i], device) for i in idx.tolist()])
            step_loss = torch.empty(len(idx), dtype=torch.float64)
            for j in range(0, len(idx), chunk):
                sub = idx[j : j + chunk]
                x_sub = inputs[sub.to(device) if isinstance(inputs, torch.Tensor) else sub]
                m = masks[sub].clone().requires_grad_(True)
                m_up = masker.expand(m)
                p_m = F.softmax(f_s(masker.apply(x_sub, m_up, bg_all[j : j + chunk])), 1)
                per_sample = w * masker_sparsity(masker, m_up, x_sub) + prob_l1(p_clean[sub], p_m)
                (grad,) = torch.autograd.grad(per_sample.sum(), m)
                with torch.no_grad():
                    step = lr[sub] if isinstance(lr, torch.Tensor) else lr
                    masks[sub] = (m - step * grad).clamp_(0, 1)
                step_loss[j : j + len(sub)] = per_sample.detach().double().cpu()
            steps[idx] += 1
            if trace is not None:
                trace(t, idx, step_loss, masks[idx].detach())
            cur_loss[idx] += step_loss
            cur_sq[idx] += step_loss**2
            cur_mask[idx] += masks[idx].detach().double().cpu()
            ends = idx[(steps[idx] % half[idx]) == 0]
            if len(ends):
                hl = half[ends].double()
                halves_loss[ends] = torch.cat([halves_loss[ends, 1:], cur_loss[ends, None]], 1)
                halves_sq[ends] = torch.cat([halves_sq[ends, 1:], cur_sq[ends, None]], 1)
                mean_half = cur_mask[ends] / hl.view(-1, *([1] * len(shape)))
                halves_mask[ends] = torch.cat([halves_mask[ends, 1:], mean_half[:, None]], 1)
                n_halves[ends] += 1
                cur_loss[ends], cur_sq[ends], cur_mask[ends] = 0, 0, 0
                e = ends[n_halves[ends] >= 4]
                if len(e):
                    wl = 2 * half[e].double()
                    s1, s0 = (
                        halves_loss[e, 2] + halves_loss[e, 3],
                        halves_loss[e, 0] + halves_loss[e, 1],
                    )
                    q1, q0 = halves_sq[e, 2] + halves_sq[e, 3], halves_sq[e, 0] + halves_sq[e, 1]
                    m1, m0 = s1 / wl, s0 / wl
                    v1 = ((q1 - wl * m1**2) / (wl - 1).clamp_min(1)).clamp_min(0)
                    v0 = ((q0 - wl * m0**2) / (wl - 1).clamp_min(1)).clamp_min(0)
                    d_loss = (m1 - m0).abs()
                    ok_loss = (d_loss <= cfg.test_tol * m0.abs()) | (
                        d_loss <= LOSS_NOISE_Z * ((v1 + v0) / wl).sqrt()
                    )
                    new_mask = (halves_mask[e, 2] + halves_mask[e, 3]) / 2
                    old_mask = (halves_mask[e, 0] + halves_mask[e, 1]) / 2
                    x_e = inputs[e.to(device) if isinstance(inputs, torch.Tensor) else e]
                    rel = _rel_mask_change(
                        masker,
                        new_mask.float().to(device),
                        old_mask.float().to(device),
                        x_e,
                        units[e].to(device),
                    ).cpu()
                    d_mask = (new_mask - old_mask).abs().flatten(1).sum(1) / units[e]
                    d_halves = (halves_mask[e, 3] - halves_mask[e, 2]).abs().flatten(1).sum(
                        1
                    ) / units[e]
                    ok_mask = (rel <= cfg.test_mask_tol) | (d_mask <= MASK_NOISE_RATIO * d_halves)
                    loss_change[e] = d_loss / m0.abs().clamp_min(1e-12)
                    mask_change[e] = rel
                    done = ok_loss & ok_mask
                    active[e[done]] = False
                    final[e[done]] = new_mask[done].to(final.dtype).to(device)
            at_limit = idx[active[idx] & (steps[idx] >= limit[idx])]
            if len(at_limit):
                limit_hit[at_limit] = True
                active[at_limit] = False
                # the mean since the start of the last complete half-window (all steps if none)
                filled = (steps[at_limit] % half[at_limit]).double()
                some = n_halves[at_limit] > 0
                last = halves_mask[at_limit, 3] * torch.where(
                    some, half[at_limit].double(), 0.0
                ).view(-1, *([1] * len(shape)))
                count = filled + torch.where(some, half[at_limit].double(), 0.0)
                final[at_limit] = (
                    ((last + cur_mask[at_limit]) / count.view(-1, *([1] * len(shape))))
                    .to(final.dtype)
                    .to(device)
                )
            t += 1
    out = final if cfg.test_average else masks
    return out.detach().cpu(), _summary(
        cfg, steps, limit_hit, loss_change, mask_change, horizon, window, limit
    )


def _summary(
    cfg, steps, limit_hit, loss_change, mask_change, horizon, window, limit, **extra
) -> dict[str, Any]:
    return {
        "procedure": cfg.test_procedure,
        "steps": steps,
        "limit_hit": limit_hit,
        "loss_change": loss_change.double(),
        "mask_change": mask_change.double(),
        "horizon": horizon,
        "window": window,
        "limit": limit,
        **extra,
    }


# --------------------------------------------------------------------------- authors (one set)


def _authors(f_s, inputs, masker, cfg: DietConfig, draws: Draws, trace):
    """``inference_distill.py``'s ``distill`` with ``-r 1`` (one round, sparsity weight ``w``):
    epochs of shuffled batches, SGD on the batch-mean loss, clamping, the epoch-mean loss (each
    sample's loss before its update, accumulated in float32 as the authors' ``metrics`` tensor) and
    their stopping band. ``test_max_steps`` (epochs; None = none, as theirs) stops it otherwise
    (reported)."""
    device = _device(inputs)
    n = len(inputs)
    masks = masker.init_masks(n).to(device)
    horizon = horizons(cfg, masker, inputs, masks) if n and cfg.test_sparsity_weight > 0 else None
    lr = cfg.effective_test_lr * masker_lr_scale(masker, inputs, masks)
    units = mask_units(masker, inputs, masks)
    chunk = max(cfg.batch_size, 1)
    w = cfg.test_sparsity_weight
    tol = cfg.test_tol
    epoch_losses: list[torch.Tensor] = []
    snapshots: list[torch.Tensor] = []
    stopped_by_rule = False
    loss_change = mask_change = None
    with frozen(f_s, train=False):
        p_clean = _clean_probs(f_s, inputs, chunk)
        epoch = 0
        while n and not stopped_by_rule:
            if cfg.test_max_steps is not None and epoch >= cfg.test_max_steps:
                break
            order = draws.order(n)
            total = torch.zeros((), dtype=torch.float32)
            for start in range(0, n, chunk):
                sub = order[start : start + chunk]
                x_sub = inputs[sub.to(device) if isinstance(inputs, torch.Tensor) else sub]
                bg = draws.background(len(sub))
                m = masks[sub].clone().requires_grad_(True)
                m_up = masker.expand(m)
                p_m = F.softmax(f_s(masker.apply(x_sub, m_up, bg)), 1)
                per_sample = w * masker_sparsity(masker, m_up, x_sub) + prob_l1(p_clean[sub], p_m)
                loss = per_sample.sum() / len(sub)
                (grad,) = torch.autograd.grad(loss, m)
                with torch.no_grad():
                    step = lr[sub] if isinstance(lr, torch.Tensor) else lr
                    masks[sub] = (m - step * grad).clamp_(0, 1)
                total += torch.tensor(float(loss.detach()) * len(sub), dtype=torch.float32)
                if trace is not None:
                    trace(epoch, sub, per_sample.detach().double().cpu(), masks[sub].detach())
            epoch_losses.append(total / n)
            snapshots = (snapshots + [masks.detach().clone()])[-3:]
            epoch += 1
            if len(epoch_losses) >= 3:
                cur, ref = epoch_losses[-1], epoch_losses[-3]
                loss_change = float((cur - ref).abs() / ref.abs().clamp_min(1e-12))
                mask_change = _rel_mask_change(
                    masker, snapshots[-1], snapshots[0], inputs, units
                ).cpu()
                stopped_by_rule = bool((cur > (1 - tol) * ref) & (cur < (1 + tol) * ref))
    steps = torch.full((n,), len(epoch_losses), dtype=torch.long)
    lc = torch.full((n,), float("nan") if loss_change is None else loss_change, dtype=torch.float64)
    mc = (
        mask_change.double()
        if mask_change is not None
        else torch.full((n,), float("nan"), dtype=torch.float64)
    )
    limit = (
        None
        if cfg.test_max_steps is None
        else torch.full((n,), cfg.test_max_steps, dtype=torch.long)
    )
    return masks.detach().cpu(), _summary(
        cfg,
        steps,
        torch.full((n,), n > 0 and not stopped_by_rule, dtype=torch.bool),
        lc,
        mc,
        horizon,
        None,
        limit,
        epoch_losses=[float(v) for v in epoch_losses],
    )
