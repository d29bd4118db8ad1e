"""Perturbation explainers: occlusion, LIME and KernelSHAP over SLIC superpixels, and
Captum-default LIME over input elements (``captum_lime``).

They only need forward passes, so they are *forward-bound*: building the
perturbed inputs, segmenting and fitting the surrogate cost little next to the
model's forward passes (``benchmarks/explainers.py`` measures it).
``perturbations_per_eval`` is the number of perturbed images per forward pass,
counted over all samples of the batch (unlike Captum's per-sample meaning).

All of them score the target class's logit. The removed part of the image is
replaced by a ``baseline`` (default ``black``; also ``white``, ``mean`` colour,
``blur``, ``uniform`` noise). Their maps are constant over the channels (a window
or superpixel covers every channel), so the default ``reduction`` is ``mean``,
which returns that per-pixel value.

All three run their own batched loop rather than Captum's ``Occlusion``, ``Lime`` and
``KernelShap`` (which build perturbations with more tensor bookkeeping per pass, and,
for LIME/KernelSHAP, evaluate one sample at a time): the perturbed images of all
samples are built a few forward batches at a time in a reused buffer, then LIME and
KernelSHAP solve their weighted least squares in closed form (float64). They
reproduce Captum's results (occlusion exactly, LIME/KernelSHAP given the same
perturbations; see ``tests/unit/explainers/test_explainers_oracles.py``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import numpy as np
import torch

from ..fingerprint import fingerprint_module, fingerprint_tensor
from ..ops.fill import BASELINE_BLUR, make_fill
from ..ops.seeding import sample_generators
from ..ops.validation import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Boolean,
    Interval,
    ListOf,
    Null,
    OneOf,
    set_options,
)
from ..registry import EXPLAINERS
from .base import BASELINES, REDUCTIONS, Baseline, Explainer, Reduction, reduce_channels
from .model_calls import forward_scores, prepare_rows, target_scores

log = logging.getLogger(__name__)


#: a window or stride: one size for both sides, or (height, width)
SIDES = [COUNT, ListOf(COUNT, min_len=2, max_len=2)]


class _PerturbationExplainer(Explainer):
    family: ClassVar[str] = "perturbation"
    option_constraints: ClassVar[dict] = {
        "baseline": OneOf(BASELINES),
        "perturbations_per_eval": COUNT,
        "reduction": OneOf(REDUCTIONS),
    }

    def _init_common(self, baseline: str, perturbations_per_eval: int, reduction: str) -> None:
        set_options(
            self,
            baseline=baseline,
            perturbations_per_eval=perturbations_per_eval,
            reduction=reduction,
        )

    def _baseline(self, inputs: torch.Tensor, generator) -> torch.Tensor:
        gens = sample_generators(inputs, generator) if self.baseline == "uniform" else None
        return make_fill(inputs, self.baseline, generators=gens, blur=BASELINE_BLUR)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Captum's window positions: ``ceil((size - window) / stride) + 1`` starts, the last
    clipped."""
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


@EXPLAINERS.register(
    "occlusion",
    description="Occlusion (Zeiler & Fergus 2014; Captum's Occlusion, batched natively): drop of "
    "the target logit when a window x window patch (default 16, stride 12) is replaced by the "
    "baseline (default black), averaged over the windows covering each pixel; one forward pass per "
    "window.",
)
class OcclusionExplainer(_PerturbationExplainer):
    """Captum's Occlusion (all-channel sliding window, edge windows clipped), in batched torch.

    A pixel's value is the mean, over the windows covering it, of ``f(x) - f(x with the window
    replaced by the baseline)``. Equal to ``captum.attr.Occlusion`` with
    ``sliding_window_shapes=(C, window)``, ``strides=(C, stride)`` (tested); the perturbed
    images of all samples share forward passes.
    """

    name = "occlusion"
    cost_knobs: ClassVar[tuple[str, ...]] = ("window", "stride", "perturbations_per_eval")
    option_constraints: ClassVar[dict] = {
        **_PerturbationExplainer.option_constraints,
        "window": SIDES,
        "stride": SIDES,
    }

    def __init__(
        self,
        window: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 12,
        baseline: Baseline = "black",
        perturbations_per_eval: int = 64,
        reduction: Reduction = "mean",
    ):
        set_options(self, window=window, stride=stride)
        self.window = (self.window, self.window) if isinstance(self.window, int) else self.window
        self.stride = (self.stride, self.stride) if isinstance(self.stride, int) else self.stride
        self._init_common(baseline, perturbations_per_eval, reduction)

    def n_windows(self, height: int, width: int) -> int:
        """Window positions (= forward passes per sample, plus one for the unperturbed input)."""
        (wh, ww), (sh, sw) = self.window, self.stride
        return len(_window_starts(height, wh, sh)) * len(_window_starts(width, ww, sw))

    def window_masks(self, height: int, width: int, device=None) -> torch.Tensor:
        """``(P, H, W)`` 0/1 masks of the window positions."""
        (wh, ww), (sh, sw) = self.window, self.stride
        masks = []
        for y0 in _window_starts(height, wh, sh):
            for x0 in _window_starts(width, ww, sw):
                m = torch.zeros(height, width, device=device)
                m[y0 : y0 + wh, x0 : x0 + ww] = 1.0
                masks.append(m)
        return torch.stack(masks)

    def attribute(self, model, inputs, targets, *, generator=None):
        n, c, h, w = inputs.shape
        if self.window[0] > h or self.window[1] > w:
            raise ValueError(f"{self.name}: window={self.window} is larger than the {h}x{w} input")
        x = inputs.detach()
        base = self._baseline(x, generator)
        delta = base - x
        wmask = self.window_masks(h, w, x.device).to(x.dtype)  # (P, H, W)
        p = len(wmask)
        with torch.no_grad():
            y0 = target_scores(model(x), targets)
        row_targets = targets.repeat_interleave(p)
        prep = prepare_rows(self.perturbations_per_eval, (c, h, w), n * p)
        buf = torch.empty((prep, c, h, w), dtype=x.dtype, device=x.device)

        def make_batch(start: int, stop: int):
            out, r = buf[: stop - start], start
            while r < stop:  # runs of one sample's windows: x_i + (b_i - x_i) * window mask
                i, j0 = divmod(r, p)
                j1 = min(p, j0 + stop - r)
                torch.addcmul(
                    x[i], delta[i], wmask[j0:j1, None], out=out[r - start : r - start + j1 - j0]
                )
                r += j1 - j0
            return out, row_targets[start:stop]

        y = forward_scores(
            model, n * p, make_batch, self.perturbations_per_eval, prepare=prep
        ).view(n, p)
        drop = (y0[:, None] - y).to(x.dtype)  # (N, P)
        total = torch.einsum("np,phw->nhw", drop, wmask)
        attr = total / wmask.sum(0).clamp_min(1.0)
        return reduce_channels(attr[:, None].expand(n, c, h, w), self.reduction)


def slic_segments(images: torch.Tensor, n_segments: int, compactness: float) -> list[np.ndarray]:
    """SLIC superpixels (scikit-image) of pixel-space ``(N, C, H, W)`` images.

    Returns one int64 ``(H, W)`` label map per image with labels ``0..d-1``. RGB
    images are segmented in Lab space (scikit-image's default), others on raw values.
    scikit-image's SLIC releases the GIL, so images are segmented by a pool of
    ``torch.get_num_threads()`` threads (the result does not depend on the pool).
    """
    from skimage.segmentation import slic

    arr = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()

    def one(img: np.ndarray) -> np.ndarray:
        if img.shape[-1] == 1:
            seg = slic(
                img[..., 0],
                n_segments=n_segments,
                compactness=compactness,
                start_label=0,
                channel_axis=None,
            )
        else:
            seg = slic(
                img,
                n_segments=n_segments,
                compactness=compactness,
                start_label=0,
                channel_axis=-1,
                convert2lab=img.shape[-1] == 3,
            )
        _, labels = np.unique(seg, return_inverse=True)
        return labels.reshape(seg.shape).astype(np.int64)

    workers = min(len(arr), torch.get_num_threads())
    if workers <= 1:
        return [one(img) for img in arr]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, arr))


#: forward scores of recent surrogate fits, keyed by everything they depend on (see
#: :meth:`SuperpixelSurrogate._responses_key`); a few entries, a few KB each
_RESPONSES: OrderedDict[str, torch.Tensor] = OrderedDict()
_RESPONSES_MAX = 32
_RESPONSES_LOCK = threading.Lock()


class SuperpixelSurrogate(_PerturbationExplainer):
    """Fit a weighted linear surrogate ``y ~ b + z . beta`` over superpixel on/off vectors ``z``.

    Subclasses define :meth:`sample` (the ``z`` rows and their weights) and
    :meth:`solve`. A pixel's attribution is its superpixel's coefficient.

    Entries that differ only in ``selection_knobs`` (options of :meth:`select`, e.g. LIME's
    ``num_features``) draw the same perturbations from the same seed, so the forward scores
    of one are the forward scores of the other: they are kept for a few calls in this process
    and reused (``lime`` then ``lime_top10`` on the same images costs one set of passes).
    """

    cost_knobs: ClassVar[tuple[str, ...]] = ("n_samples", "n_segments", "perturbations_per_eval")
    selection_knobs: ClassVar[tuple[str, ...]] = ()
    option_constraints: ClassVar[dict] = {
        **_PerturbationExplainer.option_constraints,
        "n_samples": Interval(int, 2, None),
        "n_segments": COUNT,
        "compactness": POSITIVE,
    }

    def __init__(
        self,
        n_samples: int,
        n_segments: int,
        compactness: float,
        baseline: str,
        perturbations_per_eval: int,
        reduction: str,
    ):
        set_options(self, n_samples=n_samples, n_segments=n_segments, compactness=compactness)
        self._init_common(baseline, perturbations_per_eval, reduction)

    def sample(self, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_samples, d)`` 0/1 rows and ``(n_samples,)`` weights (float64, CPU)."""
        raise NotImplementedError

    def solve(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Coefficients ``(d,)`` of the weighted fit (float64, CPU)."""
        raise NotImplementedError

    def segments(self, inputs: torch.Tensor) -> list[np.ndarray]:
        return slic_segments(inputs, self.n_segments, self.compactness)

    def select(self, coef: torch.Tensor) -> torch.Tensor:
        """The per-superpixel values the map shows (all coefficients by default)."""
        return coef

    def _responses_key(self, model, inputs, targets, generator, segs) -> str | None:
        """Everything the forward scores depend on; None (no reuse) without a seeded generator."""
        if generator is None:
            return None
        h = hashlib.blake2b(digest_size=20)
        options = {k: v for k, v in vars(self).items() if k not in self.selection_knobs}
        h.update(f"{type(self).__qualname__}:{sorted(options.items())!r}".encode())
        h.update(generator.get_state().numpy().tobytes())
        # the model's identity and current weights (a copy with other weights gets another key)
        h.update(
            f"{type(model).__qualname__}:{id(model)}:{model.training}:{inputs.device}".encode()
        )
        h.update(fingerprint_module(model).encode())
        h.update(fingerprint_tensor(inputs, targets).encode())
        for seg in segs:
            h.update(np.ascontiguousarray(seg).tobytes())
        h.update(str(torch.is_autocast_enabled()).encode())
        return h.hexdigest()

    def attribute(self, model, inputs, targets, *, generator=None, segments=None):
        n, c, h, w = inputs.shape
        dev = inputs.device
        segs = self.segments(inputs) if segments is None else segments
        key = self._responses_key(model, inputs, targets, generator, segs)
        with _RESPONSES_LOCK:
            known = _RESPONSES.get(key) if key is not None else None
        gens = sample_generators(inputs, generator)
        dims = [int(s.max()) + 1 for s in segs]
        draws = [self.sample(d, g) for d, g in zip(dims, gens, strict=True)]
        s, dmax = self.n_samples, max(dims)
        zpad = torch.zeros(n, s, dmax, dtype=inputs.dtype)
        for i, (z, _) in enumerate(draws):
            zpad[i, :, : z.shape[1]] = z.to(inputs.dtype)
        zpad = zpad.to(dev)
        seg_flat = torch.from_numpy(np.stack(segs)).to(dev).view(n, h * w)
        x = inputs.detach()
        base = self._baseline(x, generator)
        delta = x - base
        row_targets = targets.repeat_interleave(s)
        prep = prepare_rows(self.perturbations_per_eval, (c, h, w), n * s)
        buf = torch.empty((prep, c, h, w), dtype=x.dtype, device=dev)

        def make_batch(start: int, stop: int):
            # rows are sample-major: a chunk covers a few runs of one sample's perturbations,
            # each written into the reused buffer as base + delta * mask (broadcast, no gathers)
            out, r = buf[: stop - start], start
            while r < stop:
                i, j0 = divmod(r, s)
                j1 = min(s, j0 + stop - r)
                mask = zpad[i, j0:j1].index_select(1, seg_flat[i]).view(j1 - j0, 1, h, w)
                torch.addcmul(base[i], delta[i], mask, out=out[r - start : r - start + j1 - j0])
                r += j1 - j0
            return out, row_targets[start:stop]

        if known is not None:
            y = known
        else:
            y = forward_scores(
                model, n * s, make_batch, self.perturbations_per_eval, prepare=prep
            ).view(n, s)
            y = y.detach().to("cpu", torch.float64)
            if key is not None:
                with _RESPONSES_LOCK:
                    _RESPONSES[key] = y
                    while len(_RESPONSES) > _RESPONSES_MAX:
                        _RESPONSES.popitem(last=False)
        maps = []
        for i, (z, wt) in enumerate(draws):
            coef = self.select(self.solve(z, y[i], wt))
            maps.append(coef[torch.from_numpy(segs[i])])
        attr = torch.stack(maps).to(dev, inputs.dtype)
        return reduce_channels(attr[:, None].expand(n, c, h, w), self.reduction)


def _weighted_centered(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
    """Weighted centring (sklearn's ``fit_intercept`` with ``sample_weight``), rows scaled by
    sqrt(w)."""
    wn = w / w.sum()
    zm, ym = wn @ z, wn @ y
    sw = w.sqrt()[:, None]
    return (z - zm) * sw, (y - ym) * sw[:, 0]


@EXPLAINERS.register(
    "lime",
    description="LIME (Ribeiro et al. 2016) over SLIC superpixels (n_segments=50): n_samples=64 "
    "random on/off masks (baseline black), weights exp(-d^2/(2*0.25^2)) of the cosine distance to "
    "the full image, weighted ridge (alpha=1) in closed form; a pixel gets its superpixel's "
    "coefficient. num_features=K keeps only the top K superpixels (positive_only: the K largest "
    "positive ones, else the K largest |coef|).",
)
class LimeExplainer(SuperpixelSurrogate):
    """LIME for images as in ``lime_image``: Bernoulli(1/2) superpixel masks (first row: all on),
    cosine-distance exponential kernel of width ``kernel_width``, ridge penalty ``ridge_alpha``.

    ``num_features=K`` gives lime_image's ``get_image_and_mask(num_features=K,
    positive_only=...)`` selection: only the top ``K`` superpixels keep their coefficient,
    the rest of the map is 0. With ``positive_only`` (default) those are the ``K`` largest
    *positive* coefficients (fewer if fewer are positive); otherwise the ``K`` largest by
    magnitude, sign kept (rank such maps by magnitude, e.g. a metric's ``abs: true``).
    Metrics can then take the map's non-zero support as its mask
    (``agreement_topk_iou`` with ``k: support``).
    """

    name = "lime"
    selection_knobs: ClassVar[tuple[str, ...]] = ("num_features", "positive_only")
    option_constraints: ClassVar[dict] = {
        **SuperpixelSurrogate.option_constraints,
        "kernel_width": POSITIVE,
        "ridge_alpha": NON_NEGATIVE,
        "num_features": [COUNT, Null("every superpixel")],
        "positive_only": Boolean(),
    }

    def __init__(
        self,
        n_samples: int = 64,
        n_segments: int = 50,
        compactness: float = 20.0,
        kernel_width: float = 0.25,
        ridge_alpha: float = 1.0,
        baseline: Baseline = "black",
        perturbations_per_eval: int = 64,
        reduction: Reduction = "mean",
        num_features: int | None = None,
        positive_only: bool = True,
    ):
        super().__init__(
            n_samples, n_segments, compactness, baseline, perturbations_per_eval, reduction
        )
        set_options(
            self,
            kernel_width=kernel_width,
            ridge_alpha=ridge_alpha,
            num_features=num_features,
            positive_only=positive_only,
        )

    def select(self, coef):
        if self.num_features is None:
            return coef
        score = coef if self.positive_only else coef.abs()
        # stable sort: ties go to the lower superpixel index, so the selection is deterministic
        top = torch.sort(score, descending=True, stable=True).indices[: self.num_features]
        if self.positive_only:
            top = top[coef[top] > 0]
        out = torch.zeros_like(coef)
        out[top] = coef[top]
        return out

    def sample(self, d, generator):
        z = (torch.rand(self.n_samples, d, generator=generator) < 0.5).double()
        z[0] = 1.0
        k = z.sum(1)
        dist = 1.0 - (k / d).sqrt()  # cosine distance between z and the all-ones vector
        return z, torch.exp(-(dist**2) / (2 * self.kernel_width**2))

    def solve(self, z, y, w):
        zc, yc = _weighted_centered(z, y, w)
        gram = zc.T @ zc + self.ridge_alpha * torch.eye(z.shape[1], dtype=z.dtype)
        if self.ridge_alpha > 0:
            return torch.linalg.solve(gram, zc.T @ yc)
        return torch.linalg.lstsq(zc, yc[:, None], driver="gelsd").solution[:, 0]


@EXPLAINERS.register(
    "kernel_shap",
    description="KernelSHAP (Lundberg & Lee 2017; Captum's sampling) over SLIC superpixels "
    "(n_segments=50): the full and empty coalitions (weight 1e6) plus n_samples-2 coalitions with "
    "sizes drawn from the Shapley kernel (default n_samples=64, baseline black), weighted least "
    "squares in closed form.",
)
class KernelShapExplainer(SuperpixelSurrogate):
    """Captum's KernelShap scheme: coalition size ``k ~ (d-1) / (k (d-k))``, a uniform subset of
    that size, unit weights; the full and empty coalitions get weight ``1e6`` so the coefficients
    sum to ``f(x) - f(baseline)``. Linear regression with intercept (minimum-norm least squares).
    """

    name = "kernel_shap"
    inf_weight: ClassVar[float] = 1e6

    def __init__(
        self,
        n_samples: int = 64,
        n_segments: int = 50,
        compactness: float = 20.0,
        baseline: Baseline = "black",
        perturbations_per_eval: int = 64,
        reduction: Reduction = "mean",
    ):
        super().__init__(
            n_samples, n_segments, compactness, baseline, perturbations_per_eval, reduction
        )

    def sample(self, d, generator):
        s = self.n_samples
        z = torch.zeros(s, d, dtype=torch.float64)
        z[0] = 1.0
        w = torch.ones(s, dtype=torch.float64)
        w[:2] = self.inf_weight
        if s > 2:
            if d >= 2:
                k = torch.arange(1, d, dtype=torch.float64)
                probs = (d - 1) / (k * (d - k))
                size = torch.multinomial(probs, s - 2, replacement=True, generator=generator) + 1
                ranks = torch.rand(s - 2, d, generator=generator).argsort(1).argsort(1)
                z[2:] = (ranks < size[:, None]).double()
            else:
                z[2:] = (torch.rand(s - 2, d, generator=generator) < 0.5).double()
        return z, w

    def solve(self, z, y, w):
        zc, yc = _weighted_centered(z, y, w)
        # the 1e6 weights make the system stiff; rescale columns before the SVD-based solve
        scale = zc.norm(dim=0).clamp_min(1e-300)
        sol = torch.linalg.lstsq(
            zc / scale, yc[:, None], driver="gelsd", rcond=1e-12 * math.sqrt(len(z))
        ).solution
        return sol[:, 0] / scale


@EXPLAINERS.register(
    "captum_lime",
    description="LIME with Captum's defaults (captum.attr.Lime): every input element its own "
    "feature, n_samples=25 Bernoulli(1/2) on/off draws (off = baseline, default black = 0), "
    "weights exp(-d^2/(2*1.0^2)) of the cosine distance between the image and the perturbed image, "
    "sklearn Lasso(alpha=0.01) with an intercept; the map is the coefficients (summed over "
    "channels).",
)
class CaptumLimeExplainer(_PerturbationExplainer):
    """``captum.attr.Lime`` with its default settings, batched (docs/explainers.md, "captum_lime").

    Captum's defaults (captum 0.9, ``captum/attr/_core/lime.py``): ``Lime.attribute`` draws
    ``n_samples=25`` interpretable vectors ``z ~ Bernoulli(1/2)^d`` with no forced all-on row,
    one feature per input element when no feature mask is given (``features="element"``; d =
    C*H*W), and builds ``z * x + (1 - z) * baseline`` (baselines 0). Each draw is weighted by
    ``exp(-dist^2 / (2 * kernel_width^2))`` (``kernel_width=1.0``) with ``dist = 1 - cos(x,
    x_perturbed)`` over the flattened *model inputs* (``distance="euclidean"``: ``||x -
    x_perturbed||``); the target's output (here its logit) is regressed on ``z`` by
    ``sklearn.linear_model.Lasso(alpha=0.01)`` (intercept, ``sample_weight`` = the weights), all in
    float32 as Captum passes them. The attribution of an element is its feature's coefficient.

    Differences from Captum, none in the result's distribution: draws come from each sample's own
    generator (``sample_generators``: per-sample seeds, so maps do not depend on the batch), and the
    perturbed images of all samples share forward passes. ``features="pixel"`` groups a pixel's
    channels into one feature (d = H*W).
    """

    name = "captum_lime"
    cost_knobs: ClassVar[tuple[str, ...]] = ("n_samples", "perturbations_per_eval")
    FEATURES: ClassVar[tuple[str, ...]] = ("element", "pixel")
    DISTANCES: ClassVar[tuple[str, ...]] = ("cosine", "euclidean")
    option_constraints: ClassVar[dict] = {
        **_PerturbationExplainer.option_constraints,
        "n_samples": COUNT,
        "kernel_width": POSITIVE,
        "distance": OneOf(DISTANCES),
        "alpha": POSITIVE,
        "features": OneOf(FEATURES),
    }

    def __init__(
        self,
        n_samples: int = 25,
        kernel_width: float = 1.0,
        distance: Literal["cosine", "euclidean"] = "cosine",
        alpha: float = 0.01,
        features: Literal["element", "pixel"] = "element",
        baseline: Baseline = "black",
        perturbations_per_eval: int = 64,
        reduction: Reduction = "sum",
    ):
        set_options(
            self,
            n_samples=n_samples,
            kernel_width=kernel_width,
            distance=distance,
            alpha=alpha,
            features=features,
        )
        self._init_common(baseline, perturbations_per_eval, reduction)
        self.n_not_converged = 0  # Lasso fits stopped at sklearn's iteration limit (logged once)

    def n_features(self, c: int, h: int, w: int) -> int:
        return c * h * w if self.features == "element" else h * w

    def sample(self, d: int, generator: torch.Generator) -> torch.Tensor:
        """``(n_samples, d)`` float32 0/1 rows, each element Bernoulli(1/2) (Captum's
        ``default_perturb_func``)."""
        return (torch.rand(self.n_samples, d, generator=generator) < 0.5).float()

    def similarity(self, x: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Captum's ``get_exp_kernel_similarity_function`` for one image ``x`` and its perturbations
        (float32)."""
        xf = x.reshape(1, -1).float()
        pf = perturbed.reshape(len(perturbed), -1).float()
        if self.distance == "cosine":
            dist = 1.0 - torch.nn.functional.cosine_similarity(xf, pf, dim=1)
        else:
            dist = torch.linalg.vector_norm(xf - pf, dim=1)
        return torch.exp(-(dist.double() ** 2) / (2 * self.kernel_width**2)).float()

    def solve(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Lasso coefficients ``(d,)`` as Captum's ``SkLearnLasso(alpha)`` fits them (float32
        inputs)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import Lasso

        model = Lasso(alpha=self.alpha)
        with warnings.catch_warnings(record=True) as caught:
            # Captum's fit (sklearn's default max_iter) often stops short on 25 draws of hundreds of
            # features; one warning per sample would flood the log, so they are counted instead
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(
                z.cpu().float().numpy(),
                y.cpu().float().numpy(),
                sample_weight=w.cpu().float().numpy(),
            )
        if any(issubclass(c.category, ConvergenceWarning) for c in caught):
            self.n_not_converged += 1
            if self.n_not_converged == 1:
                log.info(
                    "captum_lime: the Lasso fit did not converge within sklearn's default "
                    "iterations for some samples (as in Captum); the coefficients are used as "
                    "fitted"
                )
        return torch.from_numpy(np.asarray(model.coef_, dtype=np.float32).reshape(-1))

    def attribute(self, model, inputs, targets, *, generator=None):
        n, c, h, w = inputs.shape
        dev = inputs.device
        d = self.n_features(c, h, w)
        mask_shape = (c, h, w) if self.features == "element" else (1, h, w)
        gens = sample_generators(inputs, generator)
        zs = [self.sample(d, g) for g in gens]
        s = self.n_samples
        x = inputs.detach()
        base = self._baseline(x, generator)
        delta = x - base
        row_targets = targets.repeat_interleave(s)
        sims = torch.empty(n * s, dtype=torch.float32)
        prep = prepare_rows(self.perturbations_per_eval, (c, h, w), n * s)
        buf = torch.empty((prep, c, h, w), dtype=x.dtype, device=dev)

        def make_batch(start: int, stop: int):
            out, r = buf[: stop - start], start
            while r < stop:  # runs of one sample's draws: base + (x - base) * z
                i, j0 = divmod(r, s)
                j1 = min(s, j0 + stop - r)
                mask = zs[i][j0:j1].to(dev, x.dtype).view(j1 - j0, *mask_shape)
                rows = out[r - start : r - start + j1 - j0]
                torch.addcmul(base[i], delta[i], mask, out=rows)
                sims[r : r + j1 - j0] = self.similarity(x[i], rows).cpu()
                r += j1 - j0
            return out, row_targets[start:stop]

        y = forward_scores(
            model, n * s, make_batch, self.perturbations_per_eval, prepare=prep
        ).view(n, s)
        y = y.detach().to("cpu", torch.float32)
        sims = sims.view(n, s)
        coefs = torch.stack([self.solve(zs[i], y[i], sims[i]) for i in range(n)])  # (N, d)
        attr = coefs.view(n, *mask_shape).expand(n, c, h, w).to(dev, inputs.dtype)
        return reduce_channels(attr, self.reduction)
