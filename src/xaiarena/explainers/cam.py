"""The Grad-CAM family, natively in batched torch (pytorch-grad-cam style).

Every CAM computes, at a convolutional layer with activations ``A`` of shape
``(N, K, h, w)``::

    cam = ReLU( sum_k  w_k * A_k )          # (N, h, w)
    map = bilinear_upsample(cam, (H, W))   # align_corners=False, like Captum

and differs only in the weights ``w`` (``(N, K, 1, 1)`` per channel, or
``(N, K, h, w)`` per position). A new CAM is a subclass of :class:`BaseCAM`
that overrides :meth:`BaseCAM.weights`. Maps are not min-max normalised: the
values keep their scale (Grad-CAM's equal Captum's ``LayerGradCam``).

The layer is the one the model declares (:func:`cam_layer_of`: its ``cam_layer()``
method, see :class:`~xaiarena.models.vision.DeclaresCAMLayer`) unless the ``layer``
option names a module by its dotted path (``net.features.6``). A model that declares
none needs the option; nothing is guessed (the last ``nn.Conv2d`` of a ResNet is a
residual branch's or a shortcut's convolution, not the rectified feature maps of the
last stage that Grad-CAM is defined on). The layer's *output* is used. The forward hook
that reads it is removed when the explanation ends, also when it raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..models.vision import DeclaresCAMLayer
from ..ops.validation import COUNT, Null, Satisfies, set_options
from ..registry import EXPLAINERS, suggest
from .base import Explainer
from .model_calls import (
    forward_hook,
    forward_pre_hook,
    forward_scores,
    prepare_rows,
    target_scores,
    upsample,
)

#: the ``layer`` option of the CAMs
LAYER = [
    Satisfies(lambda v: isinstance(v, str), "a module's dotted name (a string)", invalid=[3]),
    Null("the model's declared CAM layer"),
]

#: how many candidate layers an error message lists (the deepest ones)
N_CANDIDATES = 8


def cam_layer_of(
    model: nn.Module, layer: str | None, explainer: str, inputs: torch.Tensor | None = None
) -> tuple[str, nn.Module]:
    """The CAM layer's dotted name and module: ``layer`` if given, else the model's declared one.

    Raises ``ValueError`` naming ``explainer`` and the ``layer`` option when ``layer`` is not a
    module of ``model``, or when ``layer`` is None and the model declares no CAM layer (no
    ``cam_layer()`` method, one that returns None, or one that raises :class:`LookupError`
    with its reason). With
    ``inputs``, those messages list candidate layers: the modules whose output on one input
    is ``(N, K, h, w)`` and that run once per forward pass, deepest last.
    """
    if layer is None:
        why = f"{type(model).__name__} declares no CAM layer (no cam_layer() method)"
        if isinstance(model, DeclaresCAMLayer):
            try:
                layer = model.cam_layer()
            except LookupError as exc:
                why = f"{type(model).__name__} has no default CAM layer: {exc}"
            else:
                if layer is None:
                    why = (
                        f"{type(model).__name__} declares no CAM layer (cam_layer() returned None)"
                    )
        if layer is None:
            raise ValueError(
                f"{explainer}: {why}; set the 'layer' option to the dotted name of a module whose "
                f"output is (N, K, h, w), e.g. the last convolutional stage. "
                f"{_candidates_text(model, inputs)}"
            )
        source = f"the layer {type(model).__name__}.cam_layer() declares"
    else:
        source = "layer"
    try:
        return layer, (model.get_submodule(layer) if layer else model)
    except AttributeError:
        hint = suggest(layer, [n for n, _ in model.named_modules() if n])
        did = f" Did you mean '{hint}'?" if hint else ""
        raise ValueError(
            f"{explainer}: {source} ('{layer}') is not a module of {type(model).__name__}.{did} "
            f"{_candidates_text(model, inputs)}"
        ) from None


def cam_candidates(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Modules whose output on ``inputs[:1]`` is ``(1, K, h, w)`` and that run once, in the order
    they ran."""
    calls: dict[str, int] = {}
    spatial: dict[str, bool] = {}

    def hook_for(name: str):
        def hook(module, args, out):
            calls[name] = calls.get(name, 0) + 1
            spatial[name] = isinstance(out, torch.Tensor) and out.ndim == 4

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for h in handles:
            h.remove()
    return [n for n in calls if calls[n] == 1 and spatial[n]]


def _candidates_text(model: nn.Module, inputs: torch.Tensor | None) -> str:
    names: list[str] | None = None
    if inputs is not None:
        try:
            names = cam_candidates(model, inputs)
        except Exception:  # noqa: BLE001 - a model that fails here fails in the CAM too; list statically
            names = None
    if names is None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        what = "Conv2d layers"
    else:
        what = "Candidates (output (N, K, h, w), run once; deepest last)"
    if len(names) > N_CANDIDATES:
        names = ["..."] + names[-N_CANDIDATES:]
    return f"{what}: {', '.join(names) or '(none)'}"


@dataclass
class CAMContext:
    """What a weighting function may use."""

    model: nn.Module
    inputs: torch.Tensor  # (N, C, H, W) pixel space
    targets: torch.Tensor  # (N,)
    layer: nn.Module
    layer_name: str
    activations: torch.Tensor  # (N, K, h, w), detached
    gradients: (
        torch.Tensor | None
    )  # d score / d activations, (N, K, h, w); None unless needs_gradients
    scores: torch.Tensor  # (N,) target logits of the unperturbed inputs
    recorder: _LayerRecorder = field(repr=False)

    @contextmanager
    def edit_layer(self, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, forward passes replace the layer's output by ``edit(output)``."""
        self.recorder.edit = edit
        try:
            yield
        finally:
            self.recorder.edit = None


class _LayerRecorder:
    """Forward hook that records (and optionally edits) one layer's output."""

    def __init__(self, explainer: str, layer_name: str):
        self.explainer, self.layer_name = explainer, layer_name
        self.output: torch.Tensor | None = None
        self.calls = 0
        self.edit = None  # callable(out) -> out, or None
        self.capture = (
            True  # keep the output; downstream gets a clone (in-place ops cannot touch ours)
        )

    def __call__(self, module: nn.Module, args: object, out: object) -> torch.Tensor | None:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(
                f"{self.explainer}: layer '{self.layer_name}' ran more than once in one forward "
                "pass; choose a layer that runs once (set the 'layer' option)"
            )
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(
                f"{self.explainer}: layer '{self.layer_name}' returned {shape}; CAMs need a "
                "(N, K, h, w) tensor, so set the 'layer' option to a convolutional layer"
            )
        self.output = out
        if self.edit is not None:
            return self.edit(out)
        if self.capture:
            return out.clone()
        return None

    def reset(self, *args: object) -> None:
        """Forget the last output; a forward pre-hook on the model calls it before each pass."""
        self.calls, self.output = 0, None


class BaseCAM(Explainer):
    """Class activation maps: ``ReLU(sum_k w_k A_k)`` at a conv layer, bilinearly upsampled.

    Subclasses override :meth:`weights`. ``needs_gradients`` says whether the
    weights use ``d score / d A`` (one forward and backward pass); the
    gradient-free CAMs (Score-CAM, Ablation-CAM) run their own extra forwards.
    """

    family: ClassVar[str] = "cam"
    needs_layer: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    option_constraints: ClassVar[dict] = {"layer": LAYER}

    def __init__(self, layer: str | None = None):
        set_options(self, layer=layer)

    def weights(self, ctx: CAMContext) -> torch.Tensor:  # pragma: no cover - abstract
        """Channel weights ``(N, K, 1, 1)`` or per-position weights ``(N, K, h, w)``."""
        raise NotImplementedError

    def combine(self, ctx: CAMContext) -> torch.Tensor:
        """The map before its ReLU, ``(N, h, w)``: ``sum_k w_k A_k`` with :meth:`weights`.

        A CAM that is not a weighted sum of the activations (Eigen-CAM) overrides this instead.
        """
        return (self.weights(ctx) * ctx.activations).sum(1)

    def layer_maps(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The CAM at layer resolution, ``(N, h, w)``, after the ReLU."""
        name, layer = cam_layer_of(model, self.layer, self.name, inputs)
        rec = _LayerRecorder(self.name, name)
        with forward_pre_hook(model, rec.reset), forward_hook(layer, rec):
            if self.needs_gradients:
                with torch.enable_grad():
                    x = inputs.detach().requires_grad_(
                        True
                    )  # so that A requires grad in frozen models
                    scores = target_scores(model(x), targets)
                    acts = rec.output
                    assert acts is not None
                    (grads,) = torch.autograd.grad(scores.sum(), acts)
                scores, acts = scores.detach(), acts.detach()
            else:
                with torch.no_grad():
                    scores = target_scores(model(inputs), targets)
                acts, grads = rec.output, None
                assert acts is not None
            rec.capture = False
            ctx = CAMContext(model, inputs, targets, layer, name, acts, grads, scores, rec)
            cam = self.combine(ctx)
        return torch.relu(cam)

    def attribute(self, model, inputs, targets, *, generator=None):
        return upsample(self.layer_maps(model, inputs, targets), inputs.shape[-2:])


@EXPLAINERS.register(
    "gradcam",
    description="Grad-CAM (Selvaraju et al. 2017): ReLU of conv-layer activations weighted by "
    "their spatially averaged gradients; the model's declared CAM layer by default (option layer), "
    "bilinear upsampling.",
)
class GradCAM(BaseCAM):
    """``w_k = mean_ij dS/dA_kij``."""

    name = "gradcam"

    def weights(self, ctx):
        return ctx.gradients.mean(dim=(2, 3), keepdim=True)


@EXPLAINERS.register(
    "gradcam_pp",
    description="Grad-CAM++ (Chattopadhyay et al. 2018): channel weights from positive gradients "
    "with second/third-order pixel coefficients; the model's declared CAM layer by default, "
    "bilinear upsampling.",
)
class GradCAMPlusPlus(BaseCAM):
    """``w_k = sum_ij alpha_kij ReLU(g_kij)``, ``alpha = g^2 / (2 g^2 + sum(A) g^3)``
    (pytorch-grad-cam)."""

    name = "gradcam_pp"

    def weights(self, ctx):
        g, a = ctx.gradients, ctx.activations
        g2 = g.pow(2)
        g3 = g2 * g
        sum_a = a.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(g) * alpha).sum(dim=(2, 3), keepdim=True)


@EXPLAINERS.register(
    "xgradcam",
    description="XGrad-CAM (Fu et al. 2020): channel weights = activation-weighted gradient sums "
    "normalised by the channel's activation sum; the model's declared CAM layer by default, "
    "bilinear upsampling.",
)
class XGradCAM(BaseCAM):
    """``w_k = sum_ij g_kij A_kij / (sum_ij A_kij + eps)``."""

    name = "xgradcam"

    def weights(self, ctx):
        g, a = ctx.gradients, ctx.activations
        return (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + 1e-7)


@EXPLAINERS.register(
    "layercam",
    description="LayerCAM (Jiang et al. 2021): activations weighted position-wise by their "
    "positive gradients; the model's declared CAM layer by default, bilinear upsampling.",
)
class LayerCAM(BaseCAM):
    """``w_kij = ReLU(g_kij)`` (per position)."""

    name = "layercam"

    def weights(self, ctx):
        return torch.relu(ctx.gradients)


@EXPLAINERS.register(
    "hirescam",
    description="HiResCAM (Draelos & Carin 2020): activations times gradients element-wise, summed "
    "over channels (no spatial averaging); the model's declared CAM layer by default, bilinear "
    "upsampling.",
)
class HiResCAM(BaseCAM):
    """``w_kij = g_kij`` (per position)."""

    name = "hirescam"

    def weights(self, ctx):
        return ctx.gradients


@EXPLAINERS.register(
    "eigencam",
    description="Eigen-CAM (Muhammad & Yeasin 2020; pytorch-grad-cam's EigenCAM): the CAM "
    "layer's activations projected on their first principal component (centred per channel, "
    "SVD), signed so the larger magnitude is positive, ReLU, bilinear upsampling; "
    "class-agnostic, 1 forward pass.",
)
class EigenCAM(BaseCAM):
    """``ReLU((A - mean) v_1)``, ``v_1`` the first right singular vector of the centred activations.

    Per sample, the activations are an ``(h*w, K)`` matrix (positions by channels), centred
    per channel, as pytorch-grad-cam's ``get_2d_projection``. An SVD's sign is arbitrary (and
    differs between LAPACK and cuSOLVER), so the projection is negated when its most negative
    value is larger in magnitude than its most positive one (the sign correction of
    pytorch-grad-cam's ``get_2d_projection_with_sign_correction``, Seg-Eigen-CAM's Eq. 13).
    Computed in float64. The map does not depend on the target class.
    """

    name = "eigencam"
    needs_gradients = False

    def combine(self, ctx):
        acts = ctx.activations
        n, k, h, w = acts.shape
        a = torch.nan_to_num(acts.detach().double(), nan=0.0)
        a = a.flatten(2).transpose(1, 2)  # (N, h*w, K): positions by channels
        a = a - a.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(a, full_matrices=False)
        proj = (a @ vh[:, 0, :, None]).squeeze(-1)  # (N, h*w)
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.view(n, h, w).to(acts.dtype)


class _PerturbationCAM(BaseCAM):
    """Gradient-free CAMs: one extra forward pass per (sample, channel), ``batch_size`` per pass."""

    cost_knobs: ClassVar[tuple[str, ...]] = ("batch_size",)
    option_constraints: ClassVar[dict] = {"layer": LAYER, "batch_size": COUNT}

    needs_gradients = False

    def __init__(self, layer: str | None = None, batch_size: int = 64):
        super().__init__(layer)
        set_options(self, batch_size=batch_size)


@EXPLAINERS.register(
    "scorecam",
    description="Score-CAM (Wang et al. 2020): channel weight = softmax probability of the target "
    "when the input is masked by the channel's upsampled, min-max scaled activation; K forward "
    "passes per sample, batch_size masks per pass; the model's declared CAM layer by default.",
)
class ScoreCAM(_PerturbationCAM):
    """``w_k = softmax(f(x * H_k))[target]`` with ``H_k`` = min-max scaled, upsampled ``A_k``.

    Channels whose activation map is constant carry no spatial information and
    get weight 0 without a forward pass (as in the authors' code).
    """

    name = "scorecam"

    def weights(self, ctx):
        acts, x = ctx.activations, ctx.inputs
        n, k = acts.shape[:2]
        flat = acts.flatten(2)
        lo, hi = flat.amin(-1), flat.amax(-1)  # (N, K)
        live = (hi - lo) > 0
        rows = live.flatten().nonzero().squeeze(1)  # (sample, channel) pairs that need a forward
        size = x.shape[-2:]
        flat_acts = acts.flatten(0, 1)  # (N*K, h, w)
        prep = prepare_rows(self.batch_size, x.shape[1:], len(rows))
        buf = torch.empty((prep, *x.shape[1:]), dtype=x.dtype, device=x.device)

        def make_batch(start: int, stop: int):
            r = rows[start:stop]
            m = upsample(flat_acts[r], size)  # (B, H, W)
            lo, hi = torch.aminmax(m.flatten(1), dim=1)
            m = m.sub_(lo.view(-1, 1, 1)).div_((hi - lo).clamp_min(1e-12).view(-1, 1, 1))
            out, sample = buf[: len(r)], (r // k).tolist()
            a = 0
            while a < len(
                r
            ):  # runs of one sample's channels: x_i * masks, broadcast into the buffer
                b = a + 1
                while b < len(r) and sample[b] == sample[a]:
                    b += 1
                torch.mul(x[sample[a]], m[a:b, None], out=out[a:b])
                a = b
            return out, ctx.targets[r // k]

        w = torch.zeros(n * k, dtype=acts.dtype, device=acts.device)
        if len(rows):
            scores = forward_scores(
                ctx.model, len(rows), make_batch, self.batch_size, softmax=True, prepare=prep
            )
            w[rows] = scores.to(w.dtype)
        return w.view(n, k, 1, 1)


@EXPLAINERS.register(
    "ablationcam",
    description="Ablation-CAM (Desai & Ramaswamy 2020): channel weight = relative drop of the "
    "target logit when the channel is zeroed at the layer; the layers before it run once per image "
    "and the rest once per channel (share_upstream, verified), batch_size ablations per pass; the "
    "model's declared CAM layer by default.",
)
class AblationCAM(_PerturbationCAM):
    """``w_k = (y - y_k) / |y|`` with ``y_k`` the target logit when channel ``k`` is set to 0.

    The paper divides by ``y`` (assumed positive); ``|y|`` keeps the map's sign
    meaningful when the logit is negative. All-zero channels get weight 0 (zeroing
    them changes nothing) without a forward pass.

    ``share_upstream`` (default) runs the layers before the target layer once per
    image: the hook replaces the layer's output by its ablated copies, so only the
    rest of the network runs per channel. The result is the same as ``K`` full
    forward passes; each call checks that on a few channels of its first image and
    otherwise (a model whose later layers cannot take the expanded batch, e.g. a skip
    connection that concatenates across the layer) uses full forward passes, with a
    warning.
    """

    name = "ablationcam"
    cost_knobs: ClassVar[tuple[str, ...]] = ("batch_size", "share_upstream")
    #: channels of the first image checked against full forward passes per call
    n_verify: ClassVar[int] = 4

    def __init__(self, layer: str | None = None, batch_size: int = 64, share_upstream: bool = True):
        super().__init__(layer, batch_size)
        self.share_upstream = bool(share_upstream)

    def weights(self, ctx):
        acts = ctx.activations
        n, k = acts.shape[:2]
        live = acts.flatten(2).abs().amax(-1) > 0  # (N, K)
        rows = live.flatten().nonzero().squeeze(1)
        y = ctx.scores
        drop = torch.zeros(n * k, dtype=y.dtype, device=y.device)
        if len(rows):
            ablated = self._shared_upstream(ctx, rows, k) if self.share_upstream else None
            if ablated is None:
                ablated = self._full_passes(ctx, rows, k)
            drop[rows] = y[rows // k] - ablated
        w = drop.view(n, k) / y.abs().clamp_min(1e-6).view(n, 1)
        return w.view(n, k, 1, 1).to(acts.dtype)

    def _full_passes(self, ctx: CAMContext, rows: torch.Tensor, k: int) -> torch.Tensor:
        """One full forward pass per (image, channel), ``batch_size`` per pass."""
        current: dict[str, torch.Tensor] = {}

        def ablate(out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[torch.arange(len(out), device=out.device), current["channel"]] = 0
            return out

        def make_batch(start: int, stop: int):
            r = rows[start:stop]
            i, c = r // k, r % k
            current["channel"] = c
            return ctx.inputs[i], ctx.targets[i]

        with ctx.edit_layer(ablate):
            return forward_scores(ctx.model, len(rows), make_batch, self.batch_size)

    def _shared_upstream(self, ctx: CAMContext, rows: torch.Tensor, k: int) -> torch.Tensor | None:
        """Ablated scores with the layers before the target layer run once per image, or None.

        Images are processed in groups sized so that a group's ablations fill about four
        forward batches; the hook expands the group's layer output to its ablated copies.
        If the rest of the network cannot take that batch (a skip connection across the
        layer), one image per group is tried (broadcasting handles skips then), and
        failing that, full forward passes.
        """
        group = max(1, 4 * self.batch_size // k)
        errors = []
        for g in dict.fromkeys((group, 1)):
            try:
                scores = self._grouped_ablation(ctx, rows, k, g)
            except RuntimeError as err:
                errors.append(str(err).splitlines()[0])
                continue
            if self._verified(ctx, rows, k, scores, g):
                return scores
            errors.append("the shared-upstream scores differ from full forward passes")
        self._fall_back(ctx, "; ".join(dict.fromkeys(errors)))
        return None

    @torch.no_grad()
    def _grouped_ablation(
        self, ctx: CAMContext, rows: torch.Tensor, k: int, group: int
    ) -> torch.Tensor:
        current: dict[str, torch.Tensor] = {}

        def expand(out: torch.Tensor) -> torch.Tensor:
            local, chans = current["local"], current["channels"]
            rep = out[local]  # (R, K, h, w), a copy
            rep[torch.arange(len(chans), device=rep.device), chans] = 0
            return rep

        sample, chan = rows // k, rows % k
        scores = torch.empty(len(rows), dtype=ctx.scores.dtype, device=ctx.scores.device)
        n = len(ctx.inputs)
        with ctx.edit_layer(expand):
            for s0 in range(0, n, group):
                sel = ((sample >= s0) & (sample < s0 + group)).nonzero().squeeze(1)
                if not len(sel):
                    continue
                a, b = int(sel[0]), int(sel[-1]) + 1  # rows are sample-major: a contiguous range
                current["local"], current["channels"] = sample[a:b] - s0, chan[a:b]
                out = ctx.model(ctx.inputs[s0 : s0 + group])
                if out.ndim != 2 or len(out) != b - a:
                    raise RuntimeError(
                        f"the model returned {tuple(out.shape)} for {b - a} ablations"
                    )
                scores[a:b] = out.gather(1, ctx.targets[sample[a:b]].view(-1, 1)).squeeze(1)
        return scores

    def _verified(
        self, ctx: CAMContext, rows: torch.Tensor, k: int, scores: torch.Tensor, group: int
    ) -> bool:
        """A few ablations of the first group's first and last image, against full forward
        passes."""
        sample = rows // k
        first = (sample == sample[0]).nonzero().squeeze(1)[: self.n_verify // 2 or 1]
        last_id = sample[sample < int(sample[0]) + group].max()
        last = (sample == last_id).nonzero().squeeze(1)[: self.n_verify // 2 or 1]
        check = torch.unique(torch.cat([first, last]))
        full = self._full_passes(ctx, rows[check], k)
        tol = 1e-4 * (1.0 + float(full.abs().max()))
        return bool(torch.allclose(scores[check], full, rtol=1e-3, atol=tol))

    def _fall_back(self, ctx: CAMContext, why: str) -> None:
        warnings.warn(
            f"{self.name}: cannot share the layers before '{ctx.layer_name}' across ablations "
            f"({why}); using one full forward pass per channel (set share_upstream=False to skip "
            "this check)",
            RuntimeWarning,
            stacklevel=4,
        )
