"""Shared machinery of the built-in metrics: option constraints, ranking with random
tie-breaking, fill values, batched forward passes and similarity functions.

Everything here is torch-native and batched over samples; nothing loops over
pixels in Python.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Literal, get_args

import torch
from torch import nn

from .. import postprocess as _postprocess
from ..ops.fill import FILL_BLUR, FILLS, make_fill
from ..ops.modes import eval_mode as _eval_mode
from ..ops.prediction import predict_in_batches
from ..ops.seeding import base_seed
from ..ops.validation import COUNT, FINITE, Boolean, Null, OneOf
from .base import EvalBatch

logger = logging.getLogger("xaiarena.metrics")

#: what a perturbation metric reads off the model for the target class
OUTPUTS = ("probability", "logit")
#: similarity functions between two per-sample vectors
SIMILARITIES = ("pearson", "spearman")

#: input elements per forward chunk when ``batch_size`` is not given (about 0.8 MB of float32;
#: at least 32 images). Measured on 2 CPU cores: 256 MNIST digits per pass ran the 28x28 LeNet
#: 25% faster than 1,337 (bigger chunks spill the activations out of cache); 32 hard_mnist
#: images the 64x64 LeNet faster than 64 or more.
DEFAULT_CHUNK_ELEMENTS = 200_000


# --------------------------------------------------------------------------- option constraints


#: a fill option: a named fill or a constant pixel value
FILL = [OneOf(FILLS), FINITE]
#: a metric's ``batch_size``: items per forward pass (None: chunks of ``DEFAULT_CHUNK_ELEMENTS``)
BATCH_SIZE = [COUNT, Null("chunks of about 200,000 input elements")]


def prepare(batch: EvalBatch, attributions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check every map is ``(N, H, W)`` like the inputs and return float copies on their device."""
    if batch.inputs.ndim != 4:
        raise ValueError(f"batch.inputs must be (N, C, H, W), got {tuple(batch.inputs.shape)}")
    n, _, h, w = batch.inputs.shape
    out = {}
    for name, a in attributions.items():
        a = torch.as_tensor(a)
        if tuple(a.shape) != (n, h, w):
            raise ValueError(
                f"attributions['{name}'] has shape {tuple(a.shape)}; expected (N, H, W) = "
                f"{(n, h, w)}"
            )
        a = a.detach().to(device=batch.inputs.device, dtype=torch.float32)
        bad = ~torch.isfinite(a).flatten(1).all(1)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"attributions['{name}'] contain NaN or inf at sample(s) {idx[:10]}; "
                "metrics need finite maps"
            )
        out[name] = a
    return out


def require_masks(batch: EvalBatch, metric: str) -> torch.Tensor:
    if batch.masks is None:
        raise ValueError(f"metric '{metric}' needs ground-truth masks, but batch.masks is None")
    n, _, h, w = batch.inputs.shape
    if tuple(batch.masks.shape) != (n, h, w):
        raise ValueError(f"batch.masks has shape {tuple(batch.masks.shape)}; expected {(n, h, w)}")
    return batch.masks.to(device=batch.inputs.device).bool()


def nan_where(
    values: torch.Tensor, bad: torch.Tensor, metric: str, reason: str, explainer: str | None = None
) -> torch.Tensor:
    """Set ``values[bad]`` to NaN and log why (NaN only with a logged reason)."""
    if bool(bad.any()):
        who = f" for explainer '{explainer}'" if explainer else ""
        idx = torch.nonzero(bad).flatten().tolist()
        logger.warning("%s: NaN%s at %d sample(s) %s: %s", metric, who, len(idx), idx[:10], reason)
        values = values.masked_fill(bad, float("nan"))
    return values


# --------------------------------------------------------------------------- randomness
#
# Per-sample random streams. A metric draws ONE base seed from the generator it is given
# (the runner gives every batch of a metric a freshly seeded generator in the same state)
# and addresses every random number by (base seed, sample key, path): the sample key is the
# sample's ``sample_id`` (or, when the batch has none, a hash of its content: pixels, or
# the token ids of a text) and the path names the draw ("fill", ("ties", explainer, "morf"),
# ("noise", draw index), ...). Each address seeds its own CPU generator, so a sample's draws
# do not depend on which samples share its batch, on the batch size, on how draws are
# chunked, or on which other explainers are scored in the same call. Draws that do not
# depend on the explainer (noise, random subsets, random orders, uniform fills) use paths
# without an explainer name and are therefore shared by every explainer (common random
# numbers); tie-breaking paths carry the explainer's name. All draws happen on the CPU and
# are moved to the data's device, so CPU and CUDA runs see the same numbers.


def _digest(key: bytes, *parts: object) -> int:
    """A 63-bit integer from ``key`` and ``parts`` (blake2b; stable across runs and platforms)."""
    msg = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(msg, digest_size=8, key=key).digest(), "little") >> 1


def sample_keys(batch: EvalBatch) -> list[bytes]:
    """The identity of every sample of ``batch``: its ``sample_id``, else a hash of its content
    (the pixels of an image, the attended token ids of a text)."""
    from ..data.text import TextBatch  # a lazy import: data.text does not need the metrics

    n = len(batch)
    if batch.sample_ids is not None:
        ids = torch.as_tensor(batch.sample_ids).reshape(-1).tolist()
        if len(ids) != n:
            raise ValueError(f"batch.sample_ids has {len(ids)} entries for {n} samples")
        return [b"id:" + str(i).encode() for i in ids]
    if isinstance(batch.inputs, TextBatch):
        return [b"text:" + d for d in batch.inputs.digests()]
    data = batch.inputs.detach().to("cpu", torch.float32).contiguous().reshape(n, -1).numpy()
    return [b"pixels:" + hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in data]


class SampleRNG:
    """Random numbers addressed by (base seed, sample, path); see the section comment above.

    ``rand(shape, *path)`` gives every sample its own ``shape`` of U(0, 1) numbers for that
    path, the same whatever else is in the batch. Build one per ``evaluate`` call with
    :meth:`for_batch`.
    """

    def __init__(self, base_seed: int, keys: Sequence[bytes], device: torch.device | str = "cpu"):
        self.base_seed = int(base_seed)
        self.device = torch.device(device)  # where re-explanation generators live
        base = self.base_seed.to_bytes(8, "little")
        self._keys = [_digest(base, k.hex()).to_bytes(8, "little") for k in keys]

    @classmethod
    def for_batch(
        cls, batch: EvalBatch, generator: torch.Generator | None, metric: str = "metric"
    ) -> SampleRNG:
        """One draw from ``generator`` and the batch's sample keys."""
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                f"metric '{metric}' draws random numbers and needs generator=torch.Generator(), "
                f"got {type(generator).__name__}"
            )
        return cls(base_seed(generator), sample_keys(batch), generator.device)

    def __len__(self) -> int:
        return len(self._keys)

    def seed(self, i: int, *path: object) -> int:
        """The 63-bit seed of sample ``i``'s stream for ``path``."""
        return _digest(self._keys[i], *path)

    def generator(self, i: int, *path: object) -> torch.Generator:
        """A CPU generator for sample ``i`` and ``path``, fresh on every call."""
        return torch.Generator().manual_seed(self.seed(i, *path))

    def rand(
        self, shape: Sequence[int], *path: object, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """``(N, *shape)``: row ``i`` is U(0, 1) from sample ``i``'s stream for ``path``."""
        shape = tuple(int(s) for s in shape)
        if not self._keys:
            return torch.empty(0, *shape, device=device)
        return torch.stack(
            [torch.rand(shape, generator=self.generator(i, *path)) for i in range(len(self))]
        ).to(device)

    def rand_items(
        self,
        rows: Sequence[int],
        index: Sequence[int],
        shape: Sequence[int],
        *path: object,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """``(M, *shape)``: item ``m`` from sample ``rows[m]``'s stream for ``(*path, index[m])``.

        For draws whose grouping into calls varies (noise draws re-explained in chunks): each
        (sample, index) has its own stream, so how the items are chunked does not matter.
        """
        shape = tuple(int(s) for s in shape)
        out = [
            torch.rand(shape, generator=self.generator(int(r), *path, int(j)))
            for r, j in zip(rows, index, strict=True)
        ]
        return torch.stack(out).to(device) if out else torch.empty(0, *shape, device=device)

    def rand_ragged(
        self, lengths: Sequence[int], width: int, *path: object, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """``(N, width)``: sample ``i`` gets ``lengths[i]`` numbers from its stream (its own length,
        e.g. its number of words), zeros after them."""
        out = torch.zeros(len(self), int(width))
        for i, n in enumerate(lengths):
            if n:
                out[i, : int(n)] = torch.rand(int(n), generator=self.generator(i, *path))
        return out.to(device)

    def explainer_generator(self, name: str) -> torch.Generator:
        """A fresh generator for re-explaining with explainer ``name``: it depends only on the base
        seed and the name (explainers derive each sample's randomness from it and the sample's
        content, so re-explained maps do not depend on batching)."""
        return explainer_generator(self.base_seed, name, self.device)


def explainer_generator(
    base_seed: int, name: str, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A generator that depends only on ``base_seed`` and the explainer's ``name``."""
    g = torch.Generator(device=device)
    g.manual_seed(_digest(int(base_seed).to_bytes(8, "little"), "explainer", name))
    return g


def tie_break_keys(scores: torch.Tensor, u: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """float64 sort keys for ``scores`` (as float32) with ties broken by the uniforms ``u`` (same
    shape).

    Each value gets a random offset in ``[0, 0.245 ulp)`` of its float32 spacing:
    distinct float32 values keep their order (the offset is below half the gap
    to any neighbour), equal values are ordered by their independent uniform
    offsets. One sort of these keys replaces "random permutation, then stable
    sort". With ``descending=False`` the keys are negated, so that sorting the
    keys in descending order always puts the first feature of the order first.
    """
    v = scores.float().double()
    _, e = torch.frexp(v)
    e = torch.where(
        v == 0, torch.full_like(e, -125), e
    )  # frexp(0) has exponent 0; use the subnormal spacing
    ulp = torch.ldexp(torch.ones_like(v), (e - 24).clamp_min(-149))
    keys = v + 0.245 * ulp * u.to(v.device).double()
    return keys if descending else -keys


def rank_order(scores: torch.Tensor, u: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Indices that sort each row of ``scores`` (N, P), ties broken by the uniforms ``u``."""
    return tie_break_keys(scores, u, descending).argsort(dim=-1, descending=True)


def rank_positions(scores: torch.Tensor, u: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Rank of every feature of ``scores`` (N, P): 0 is the first in the order (ties by ``u``)."""
    order = rank_order(scores, u, descending)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def topk_mask(scores: torch.Tensor, k: torch.Tensor | int, u: torch.Tensor) -> torch.Tensor:
    """Boolean (N, P) mask of the ``k`` highest-scoring features per row (``k`` scalar or (N,)),
    ties by ``u``."""
    n, p = scores.shape
    k = torch.as_tensor(k, device=scores.device).reshape(-1).expand(n)
    kmax = int(k.max()) if n else 0
    mask = torch.zeros(n, p, dtype=torch.bool, device=scores.device)
    if kmax == 0:
        return mask
    idx = tie_break_keys(scores, u).topk(kmax, dim=-1).indices
    keep = torch.arange(kmax, device=scores.device).view(1, -1) < k.view(-1, 1)
    return mask.scatter_(1, idx, keep)


def top1(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of each row's maximum (N,), a tied maximum picked by ``u``."""
    return tie_break_keys(scores, u).argmax(dim=-1)


def note_constant_maps(metric: str, explainer: str, scores: torch.Tensor) -> None:
    """Log a note for rows of ``scores`` (N, P) whose finite values are all equal (an all-zero map):
    the metric then ranks their features by random tie-breaking alone."""
    if scores.numel() == 0:
        return
    s = scores.detach().float()
    finite = torch.isfinite(s)
    hi = torch.where(finite, s, torch.full_like(s, -math.inf)).amax(1)
    lo = torch.where(finite, s, torch.full_like(s, math.inf)).amin(1)
    flat = (hi == lo) & (finite.sum(1) > 1)
    if bool(flat.any()):
        idx = torch.nonzero(flat).flatten().tolist()
        logger.warning(
            "%s: explainer '%s' gives a constant map (e.g. all zeros) at %d sample(s) %s: its "
            "ranking is random tie-breaking, so it scores like a random map",
            metric,
            explainer,
            len(idx),
            idx[:10],
        )


# --------------------------------------------------------------------------- threads


_OUTER_THREADS: list[int] = []


def cpu_oversubscribed() -> bool:
    """Whether the machine is busier than its cores (1-minute load average above 1.5 per core).

    ``XAIARENA_SERIAL_BOOKKEEPING=1`` / ``0`` forces the answer.
    """
    forced = os.environ.get("XAIARENA_SERIAL_BOOKKEEPING")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return False
    return load > 1.5 * (os.cpu_count() or 1)


def serial_bookkeeping(fn):
    """Run a metric's bookkeeping (masks, sorting, statistics) on one CPU thread when the
    machine is oversubscribed (:func:`cpu_oversubscribed`).

    These ops are small and memory-bound; on a shared CPU each intra-op parallel region can
    wait milliseconds for a descheduled worker (measured on 2 busy cores: a 200k-element
    subtraction took 10 ms with 2 threads, 0.05 ms with one). On a quiet machine all threads
    are faster (FaithfulnessCorrelation, 51,456 perturbed digits: 9.6 s against 10.3 s
    serial). Model forward passes and explainer calls made through :func:`full_threads`
    always use every thread the process has.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        _OUTER_THREADS.append(n)
        if n > 1 and cpu_oversubscribed():
            torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            _OUTER_THREADS.pop()
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)

    return wrapper


@contextmanager
def full_threads() -> Iterator[None]:
    """Inside :func:`serial_bookkeeping`: give model and explainer calls all threads back."""
    outer = _OUTER_THREADS[-1] if _OUTER_THREADS else torch.get_num_threads()
    inner = torch.get_num_threads()
    if outer != inner:
        torch.set_num_threads(outer)
    try:
        yield
    finally:
        if outer != inner:
            torch.set_num_threads(inner)


# --------------------------------------------------------------------------- fills


def fill_image(
    x: torch.Tensor, fill: str | float, rng: SampleRNG, blur_sigma: float = 5.0
) -> torch.Tensor:
    """The image ``(N, C, H, W)`` that perturbed pixels take (:func:`xaiarena.ops.fill.make_fill`):
    ``uniform`` noise from each sample's stream for ("fill",) (so every explainer sees the same
    noise), ``blur`` with ``blur_sigma`` and reflect padding
    (:data:`~xaiarena.ops.fill.FILL_BLUR`)."""
    gens = [rng.generator(i, "fill") for i in range(len(rng))] if fill == "uniform" else None
    return make_fill(x, fill, generators=gens, blur=replace(FILL_BLUR, sigma=blur_sigma))


# --------------------------------------------------------------------------- model calls


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; every submodule's training flag is restored
    as it was (not just the top-level one: a model may hold frozen submodules in eval mode)."""
    with _eval_mode(model), torch.inference_mode():
        yield model


def chunk_size(x: torch.Tensor, batch_size: int | None) -> int:
    if batch_size is not None:
        return batch_size
    per_item = max(1, x[0].numel())
    return max(32, DEFAULT_CHUNK_ELEMENTS // per_item)


def read_output(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """Target-class probability or logit from ``logits`` (B, K)."""
    if output == "probability":
        return logits.float().softmax(-1).gather(1, targets.view(-1, 1)).squeeze(1)
    return logits.float().gather(1, targets.view(-1, 1)).squeeze(1)


#: the logged reason of a NaN caused by the model's own output
NONFINITE_OUTPUT = "the model's output is not finite (NaN or inf logits)"


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: whether every logit of a row is finite."""
    return (
        torch.isfinite(logits.float()).all(-1)
        if logits.ndim > 1
        else torch.isfinite(logits.float())
    )


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with all the process' threads (see :func:`serial_bookkeeping`)."""
    with full_threads():
        return model(x)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for ``x`` in chunks (call inside :func:`eval_mode`), each with all the process'
    threads (:func:`forward`)."""
    return predict_in_batches(
        functools.partial(forward, model),
        x,
        chunk_size(x, batch_size),
        empty=lambda: x.new_zeros(0, 0),
    )


# --------------------------------------------------------------------------- statistics


#: the values a metric's ``normalise`` option takes besides true/false (true = normalise_by_max):
#: the normalisations of :mod:`xaiarena.postprocess`, per sample and ``_over_set``
NORMALISE_RULES = tuple(k for k in _postprocess.STEPS if k not in ("abs", "minmax"))
#: the type of a metric's ``normalise`` option (the config's type check reads it)
Normalise = (
    bool
    | Literal[
        "normalise_by_max",
        "normalise_by_negative",
        "normalise_by_average_second_moment_estimate",
        "normalise_by_max_over_set",
        "normalise_by_negative_over_set",
        "normalise_by_average_second_moment_estimate_over_set",
    ]
)
assert get_args(get_args(Normalise)[1]) == NORMALISE_RULES


#: a metric's ``normalise`` option (see :func:`normalise_rule`)
NORMALISE = [
    Boolean("true (normalise_by_max) or false"),
    OneOf(NORMALISE_RULES),
    Null("no normalisation"),
]


def normalise_rule(value: object) -> str | None:
    """The rule of a valid ``normalise`` option (:data:`NORMALISE`): False or None -> None (no
    normalisation), True -> ``normalise_by_max`` (per-sample division by the largest magnitude),
    or a rule of :data:`NORMALISE_RULES` (``normalise_by_negative``: Quantus's, positive values /
    max, negative values / |min|; ``normalise_by_average_second_moment_estimate``: divide by the
    root mean square; each per sample, or with ``_over_set`` one scale for all maps of the call,
    as Quantus's default axes)."""
    if value is False or value is None:
        return None
    if value is True:
        return "normalise_by_max"
    return str(value)


def normalise_maps(a: torch.Tensor, rule: str | None) -> torch.Tensor:
    """Apply a :func:`normalise_rule` rule to maps ``(N, ...)`` (None: unchanged): per sample,
    or for an ``_over_set`` rule with one scale for all ``N`` maps."""
    if rule is None:
        return a
    return _postprocess.STEPS[rule](a)


def normalise_max_abs(a: torch.Tensor) -> torch.Tensor:
    """Divide every map (N, ...) by its largest magnitude (all-zero maps are left as they are)."""
    m = a.abs().flatten(1).amax(1).view(-1, *([1] * (a.ndim - 1)))
    return a / torch.where(m == 0, torch.ones_like(m), m)


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``curve`` (..., S) with the x axis scaled to [0, 1].

    Equals Quantus' ``calculate_auc`` (trapezoid, dx=1) divided by ``S - 1``.
    """
    s = curve.shape[-1]
    if s == 1:
        return curve[..., 0]
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * (s - 1))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (N, R) tensors, in float64; NaN where a row is constant."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    r = (a * b).sum(-1) / den
    return r.masked_fill(den == 0, float("nan")).clamp(-1, 1).float()


def spearman(a: torch.Tensor, b: torch.Tensor, ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation: Pearson of ranks, ties broken by the uniforms
    ``ua``/``ub``."""
    return pearson(rank_positions(a, ua).double(), rank_positions(b, ub).double())


def similarity(
    kind: str,
    a: torch.Tensor,
    b: torch.Tensor,
    ua: torch.Tensor | None = None,
    ub: torch.Tensor | None = None,
) -> torch.Tensor:
    """``pearson`` or ``spearman`` (which needs the tie-breaking uniforms ``ua``, ``ub``)."""
    if kind == "pearson":
        return pearson(a, b)
    if ua is None or ub is None:
        raise ValueError("spearman similarity needs tie-breaking uniforms for both inputs")
    return spearman(a, b, ua, ub)
