"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML), with the paper's noisy linear imputation.

A removed pixel does not take a fixed fill (whose shape would leak which pixels were removed,
"class information leakage"): it takes the weighted mean of its eight neighbours, known or
removed, with weight 1/6 for the four direct and 1/12 for the four diagonal neighbours (weights
renormalised at the image border), which is one sparse linear system over the removed pixels,
plus Gaussian noise of standard deviation ``noise`` (0.01 in pixel space). This is the authors'
``NoisyLinearImputer`` (github.com/tleemann/road_evaluation) and Quantus 0.6's
``noisy_linear_imputation``.

All removal masks of one image (every explainer, order and percentage) are stacked into one
block-diagonal system and solved by one sparse LU factorisation (``scipy.sparse.linalg.spsolve``;
very large images are split into several solves of at most :data:`MAX_UNKNOWNS` unknowns); masks
that coincide between explainers are solved and scored once. The noise of a sample, order and
percentage is drawn from the sample's stream and shared by every explainer (common random
numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from ..ops.validation import NON_NEGATIVE, Interval, ListOf, OneOf, set_options
from ..registry import METRICS
from .base import EvalBatch, MetricOutput, OutputSpec
from .core import BATCH_SIZE, SampleRNG, eval_mode, prepare, serial_bookkeeping
from .forward_queue import ForwardQueue
from .perturbation_curves import PerturbationMetric, score_images

#: (row offset, column offset), weight: the paper's neighbourhood (direct 1/6, diagonal 1/12)
NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
#: the neighbours and the pixel itself by flat offset: the column order of a row of the system
_SORTED = sorted([d for d, _ in NEIGHBOUR_WEIGHTS] + [(0, 0)])
#: unknowns per sparse solve: all masks of a small image go into one solve; a large image's masks
#: are split so that the LU factors stay small (its fill-in grows faster than the unknowns)
MAX_UNKNOWNS = 60_000
#: what ROAD reads off the model: the paper's accuracy, or the target class' probability / logit
ROAD_OUTPUTS = ("accuracy", "probability", "logit")
#: the percentages of the paper's experiments (the authors' notebook and ROAR comparison)
PAPER_PERCENTAGES = (10, 20, 30, 40, 50, 70, 90)
#: a percentage of the pixels to remove (all of them cannot be imputed)
PERCENTAGE = Interval(float, 0, 100, closed="neither")


def imputation_system(image: np.ndarray, masks: np.ndarray):
    """The sparse system ``(A (U, U) csc, rhs (U, C))`` of the removed pixels of ``masks``
    (M, H, W), one unknown per removed pixel in ``np.nonzero`` order (one block per mask)."""
    return _system(image, masks, _removed(masks))


def _removed(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.nonzero(masks)`` of (M, H, W) masks, from one flat search (several times faster)."""
    _, h, w = masks.shape
    m, rest = np.divmod(np.flatnonzero(masks), h * w)
    y, x = np.divmod(rest, w)
    return m, y, x


def _system(image: np.ndarray, masks: np.ndarray, removed: tuple[np.ndarray, ...]):
    """:func:`imputation_system` with the removed pixels ``np.nonzero(masks)`` given.

    ``A`` is built in compressed form directly, not from coordinates: the unknowns are numbered in
    row-major pixel order within a mask, so :data:`_SORTED` (the neighbours by flat offset, the
    diagonal in its place) lists each row's entries in increasing column order; and ``A`` is
    symmetric, so its row-compressed arrays are also its column-compressed ones."""
    from scipy.sparse import csc_matrix

    k, h, w = masks.shape
    c = image.shape[0]
    m, y, x = removed
    n = len(m)
    # a one-pixel border of -2 (outside the image) around every mask: -1 = known, i >= 0 =
    # unknown i; flat indices, so that each neighbour is one lookup without bounds checks
    wp = w + 2
    var = np.full((k, h + 2, wp), -2, dtype=np.int64)
    var[:, 1:-1, 1:-1] = -1
    var[m, y + 1, x + 1] = np.arange(n)
    var = var.reshape(-1)
    pixel = (y + 1) * wp + (x + 1)  # flat index in one padded image
    at = m * ((h + 2) * wp) + pixel  # flat index in the padded masks
    padded = np.zeros((c, h + 2, wp), dtype=image.dtype)
    padded[:, 1:-1, 1:-1] = image
    padded = padded.reshape(c, -1)
    cols = np.empty((n, len(_SORTED)), dtype=np.int64)  # < 0: no entry
    vals = np.empty((n, len(_SORTED)))
    rhs = np.zeros((n, c))  # the known neighbours' weighted values
    total = np.zeros(n)  # the weights of the neighbours inside the image
    entries = np.ones(n, dtype=np.int64)  # entries per row: the diagonal, the removed neighbours
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        offset = dy * wp + dx
        nb = var[at + offset]
        total[nb != -2] += weight
        entries += nb >= 0
        cols[:, _SORTED.index((dy, dx))] = nb
        vals[:, _SORTED.index((dy, dx))] = -weight
        known = np.nonzero(nb == -1)[0]
        rhs[known] += weight * padded[:, pixel[known] + offset].T
    diagonal = _SORTED.index((0, 0))
    cols[:, diagonal] = np.arange(n)
    vals[:, diagonal] = total
    # total_i v_i - sum_{removed nb j} w_ij v_j = sum_{known nb k} w_ik x_k: symmetric,
    # positive definite (weakly diagonally dominant, every block touches a known pixel)
    index = np.int32 if n * len(_SORTED) < 2**31 else np.int64  # scipy's choice
    indptr = np.zeros(n + 1, dtype=index)
    np.cumsum(entries, out=indptr[1:])
    entry = np.flatnonzero(cols >= 0)
    a = csc_matrix(
        (vals.ravel().take(entry), cols.ravel().take(entry).astype(index), indptr), shape=(n, n)
    )
    a.has_sorted_indices = True
    return a, rhs


def _solve(image: np.ndarray, masks: np.ndarray, removed: tuple[np.ndarray, ...]) -> np.ndarray:
    """Imputed values (U, C) of the removed pixels ``removed = np.nonzero(masks)`` of ``masks``
    (M, H, W), in that order."""
    from scipy.sparse.linalg import spsolve

    a, rhs = _system(image, masks, removed)
    return np.asarray(spsolve(a, rhs)).reshape(rhs.shape)


def linear_imputation(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation (without its noise) of ``image`` (C, H, W) for every mask of
    ``masks`` (M, H, W) (True = removed): ``(M, C, H, W)``, each removed pixel the weighted mean of
    its neighbours (:data:`NEIGHBOUR_WEIGHTS`). A mask that removes every pixel has no solution."""
    image = np.asarray(image, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if image.ndim != 3 or masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"linear_imputation needs an image (C, H, W) and masks (M, H, W) of its size, got "
            f"{image.shape} and {masks.shape}"
        )
    sizes = masks.reshape(len(masks), -1).sum(1)
    if bool((sizes == masks[0].size).any()) if len(masks) else False:
        raise ValueError(
            "a mask removes every pixel: linear imputation needs at least one known pixel"
        )
    out = np.repeat(image[None], len(masks), axis=0)
    start = 0
    while start < len(masks):  # groups of consecutive masks with at most MAX_UNKNOWNS unknowns
        stop, unknowns = start, 0
        while stop < len(masks) and (stop == start or unknowns + sizes[stop] <= MAX_UNKNOWNS):
            unknowns += sizes[stop]
            stop += 1
        group = masks[start:stop]
        if unknowns:
            m, y, x = removed = _removed(group)
            out[start + m, :, y, x] = _solve(image, group, removed)
        start = stop
    return out


def _distinct_rows(rows: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
    """The distinct rows of the boolean ``rows`` (E, P), each with the indices of the rows equal to
    it, in ``torch.unique(rows, dim=0)``'s (lexicographic) order; without its per-call cost,
    which dominated ROAD's bookkeeping (it runs once per sample, order and percentage)."""
    if len(rows) == 1:
        return [(rows[0], [0])]
    groups: dict[bytes, list[int]] = {}
    for k, key in enumerate(rows.view(np.uint8)):
        groups.setdefault(key.tobytes(), []).append(k)
    return [(rows[who[0]], who) for _, who in sorted(groups.items())]


@METRICS.register(
    "road",
    description="ROAD (Rong et al. 2022): accuracy as the MoRF / LeRF pixels are removed by "
    "noisy linear imputation",
)
class ROAD(PerturbationMetric):
    """Remove the ``p``% most (MoRF) or least (LeRF) relevant pixels, fill them by noisy linear
    imputation, and read the model: per sample, whether it still predicts the label (``output:
    accuracy``, the paper's), or the target class' ``probability`` / ``logit``.

    Outputs ``road_morf`` (lower is better) and ``road_lerf`` (higher is better): the mean of the
    curve over ``percentages`` (default the paper's 10, 20, 30, 40, 50, 70, 90; Quantus 0.6's
    default is 1, 3, ..., 99), and ``road_lerf_minus_morf`` (higher is better). Curves: the value
    at each percentage, x = fraction of pixels removed. MoRF at ``p`` removes ``int(P·p/100)`` of
    the ``P`` pixels (the authors' and Quantus's count); LeRF at ``p`` keeps the
    ``int(P·(100-p)/100)`` most relevant pixels (the authors' LeRF at ``th_p = 1 - p/100``). Ties
    are broken at random.
    """

    name = "road"
    option_constraints: ClassVar[dict] = {
        "percentages": [PERCENTAGE, ListOf(PERCENTAGE, unique=True, increasing=True)],
        "noise": NON_NEGATIVE,
        "output": OneOf(ROAD_OUTPUTS),
        "batch_size": BATCH_SIZE,
    }
    higher_is_better = False
    value_range = (0.0, 1.0)
    requires = ("model", "labels")

    def __init__(
        self,
        percentages: Sequence[float] = PAPER_PERCENTAGES,
        noise: float = 0.01,
        output: str = "accuracy",
        abs: bool = False,
        batch_size: int | None = None,
    ):
        super().__init__("black", "probability", batch_size)
        set_options(self, output=output, percentages=percentages, noise=noise)
        if isinstance(self.percentages, float):
            self.percentages = (self.percentages,)
        self.abs = bool(abs)

    def _bounded(self) -> tuple[float, float]:
        return (-math.inf, math.inf) if self.output == "logit" else (0.0, 1.0)

    def outputs(self) -> list[OutputSpec]:
        lo, hi = self._bounded()
        return [
            OutputSpec("road_morf", False, (lo, hi)),
            OutputSpec("road_lerf", True, (lo, hi)),
            OutputSpec("road_lerf_minus_morf", True, (lo - hi, hi - lo)),
        ]

    def counts(self, npix: int) -> torch.Tensor:
        """(2, P) pixels removed at each percentage: MoRF ``int(P·p/100)``, LeRF
        ``P - int(P·(100-p)/100)``."""
        morf = [int(npix * p / 100) for p in self.percentages]
        lerf = [npix - int(npix * (100 - p) / 100) for p in self.percentages]
        return torch.tensor([morf, lerf], dtype=torch.long)

    @serial_bookkeeping
    def evaluate(
        self, batch: EvalBatch, attributions, *, generator, explainers=None
    ) -> MetricOutput:
        """ROAD's MoRF and LeRF curves and scores of each map: the target output after the most
        (least) relevant ``percentages`` of pixels are imputed by noisy linear imputation.

        Longer than 80 lines because one queue of forward passes is shared by every sample, order,
        percentage and map (masks shared by maps imputed and scored once); splitting the loop
        would pass that bookkeeping around."""
        maps = prepare(batch, attributions)
        if self.abs:
            maps = {k: v.abs() for k, v in maps.items()}
        x = batch.inputs.float()
        n, c, h, w = x.shape
        npix = h * w
        counts = self.counts(npix)
        if bool((counts >= npix).any()):
            bad = self.percentages[int((counts >= npix).any(0).nonzero()[0])]
            raise ValueError(
                f"percentage {bad:g} removes every pixel of a {h}x{w} image; ROAD's imputation "
                "needs a "
                "known pixel (use smaller percentages)"
            )
        n_p = len(self.percentages)
        x_axis = torch.tensor(self.percentages) / 100
        out = MetricOutput(curve_x={"road_morf": x_axis, "road_lerf": x_axis})
        if not maps:
            return out
        rng = SampleRNG.for_batch(batch, generator, self.name)
        targets = batch.targets.to(x.device).long().view(-1)
        labels = batch.labels.to(x.device).long().view(-1)
        read = "probability" if self.output == "accuracy" else self.output
        e = len(maps)
        # (2, E, N, H, W): rank of every pixel, 0 first removed (MoRF: most relevant; LeRF: least)
        morf = self.unit_ranks(maps, rng, tag="morf").to(
            "cpu", torch.int32
        )  # int32: half the memory
        lerf = self.unit_ranks(maps, rng, descending=False, tag="lerf", note=False).to(
            "cpu", torch.int32
        )
        ranks = torch.stack([morf, lerf])
        del morf, lerf
        # queue slot of each (order, explainer, sample, percentage); -1: nothing removed
        slot = np.full((2, e, n, n_p), -1, dtype=np.int64)
        with eval_mode(batch.model) as model:
            base = score_images(model, x, targets, read, self.batch_size)
            queue = ForwardQueue(model, 2 * e * n * n_p, x, read, self.batch_size)
            used = 0
            for i in range(n):
                # (2, P, E, H*W): the removal masks of every order, percentage and explainer
                removed = (ranks[:, :, i].reshape(2, 1, e, -1) < counts.view(2, n_p, 1, 1)).numpy()
                masks, where = [], []
                for o in range(2):
                    for j in range(n_p):
                        if counts[o, j] == 0:
                            continue
                        # masks shared by explainers: imputed and scored once
                        for mask, who in _distinct_rows(removed[o, j]):
                            slot[o, who, i, j] = used + len(masks)
                            masks.append(mask)
                            where.append((o, j))
                if not masks:
                    continue
                stack = np.stack(masks).reshape(-1, h, w)
                imputed = torch.from_numpy(
                    linear_imputation(x[i].detach().cpu().double().numpy(), stack)
                )
                if self.noise:
                    # one noise image per (order, percentage) of the sample, for every explainer
                    z = torch.randn(
                        (2, n_p, c, h, w), generator=rng.generator(i, "noise"), dtype=torch.float64
                    )
                    oj = torch.from_numpy(np.array(where))
                    removed_px = torch.from_numpy(stack).unsqueeze(1)
                    imputed = imputed + self.noise * z[oj[:, 0], oj[:, 1]] * removed_px
                queue.push(
                    imputed.to(device=x.device, dtype=x.dtype),
                    torch.arange(used, used + len(masks)),
                    targets[i].expand(len(masks)),
                )
                used += len(masks)
            queue.close()
        slot = torch.from_numpy(slot).to(x.device)
        none = slot < 0
        idx = slot.clamp_min(0)
        scores = torch.where(none, base.scores.view(1, 1, n, 1), queue.scores[idx])
        preds = torch.where(none, base.preds.view(1, 1, n, 1), queue.preds[idx])
        finite = torch.where(
            none, base.finite.view(1, 1, n, 1), queue.finite[idx]
        ) & base.finite.view(1, 1, n, 1)
        curve = (preds == labels.view(1, 1, n, 1)).float() if self.output == "accuracy" else scores
        fin = finite.all(-1)
        morf, lerf = curve[0].mean(-1), curve[1].mean(-1)
        out.curves["road_morf"] = self.split(curve[0], maps)
        out.curves["road_lerf"] = self.split(curve[1], maps)
        out.scores["road_morf"] = self.split_checked(morf, fin[0], maps, "road_morf")
        out.scores["road_lerf"] = self.split_checked(lerf, fin[1], maps, "road_lerf")
        out.scores["road_lerf_minus_morf"] = self.split_checked(
            lerf - morf, fin[0] & fin[1], maps, "road_lerf_minus_morf"
        )
        return out


__all__ = [
    "NEIGHBOUR_WEIGHTS",
    "PAPER_PERCENTAGES",
    "ROAD",
    "imputation_system",
    "linear_imputation",
]
