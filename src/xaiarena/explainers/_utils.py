"""Helpers shared by the explainers: option checks, layers and hooks, seeding, baselines.

Seeding (how a sample's map stays independent of its batch)
-----------------------------------------------------------
Randomised explainers draw **one** base seed from the ``torch.Generator`` they
are given per call, then derive each sample's own seed from that base seed and
a hash of the sample's pixels (:func:`sample_generators`). A sample's random
draws therefore depend only on the generator's state and on the sample itself,
never on its position in the batch or on its batch mates, so explaining a batch
gives the same maps as explaining its samples one by one (each call starting
from a generator in the same state). All random numbers are drawn on the CPU
and moved to the inputs' device, so CPU and CUDA runs see the same draws.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import suggest

#: baselines (reference inputs) that IG, GradientSHAP, occlusion, LIME and KernelSHAP accept
Baseline = Literal["black", "white", "mean", "blur", "uniform"]
BASELINES: tuple[str, ...] = Baseline.__args__


# --------------------------------------------------------------------------- option checks


def check_choice(explainer: str, option: str, value: Any, choices: Sequence[str]) -> Any:
    if value not in choices:
        hint = suggest(str(value), list(choices))
        did = f" (did you mean '{hint}'?)" if hint else ""
        raise ValueError(
            f"{explainer}: {option}={value!r} is not valid{did}; choose one of {', '.join(choices)}"
        )
    return value


def check_int(explainer: str, option: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{explainer}: {option}={value!r} is not valid; it must be an integer >= {minimum}")
    return int(value)


def check_float(explainer: str, option: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{explainer}: {option}={value!r} is not valid; it must be a number {rel} {minimum}")
    return float(value)


def check_baselines(explainer: str, option: str, value: Any) -> tuple[str, ...]:
    """A baseline name, or a list of names (a distribution, for GradientSHAP)."""
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{explainer}: {option} is empty; choose from {', '.join(BASELINES)}")
    for v in names:
        check_choice(explainer, option, v, BASELINES)
    return names


# --------------------------------------------------------------------------- layers and hooks


def find_layer(model: nn.Module, layer: str | None, explainer: str) -> tuple[str, nn.Module]:
    """The module named ``layer`` (dotted path), else the layer the model declares through a
    ``cam_layer()`` method (e.g. ``torch_module``'s ``cam_layer`` option), else the model's last
    ``nn.Conv2d``.

    "Last" is in registration order (``model.named_modules()``), which for
    sequential CNNs is the deepest convolution.
    """
    declared = getattr(model, "cam_layer", None)
    if layer is None and callable(declared):
        layer = declared()
    if layer is not None:
        try:
            module = model.get_submodule(layer) if layer else model
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            hint = suggest(layer, names)
            did = f" Did you mean '{hint}'?" if hint else ""
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(
                f"{explainer}: layer='{layer}' is not a module of {type(model).__name__}.{did} "
                f"Conv2d layers: {', '.join(convs) or '(none)'}"
            ) from None
        return layer, module
    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            found = (name, module)
    if found is None:
        some = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(
            f"{explainer}: {type(model).__name__} has no nn.Conv2d layer to explain; set the "
            f"'layer' option to a module's dotted name whose output is (N, K, h, w) "
            f"(e.g. layer='net.features.6'). Modules: {', '.join(some) or '(none)'}"
        )
    return found


@contextmanager
def forward_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """Register ``hook`` as a forward hook for the duration of the block, removed even on error."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def forward_pre_hook(module: nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    """Register ``hook`` as a forward pre-hook for the duration of the block, removed even on error."""
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def target_scores(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``outputs[i, targets[i]]`` as ``(N,)``."""
    if outputs.ndim != 2:
        raise RuntimeError(f"the model must return (N, classes) scores, got shape {tuple(outputs.shape)}")
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


def input_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``d model(x)[target] / dx`` for every row, in chunks of ``batch_size`` rows."""
    grads = torch.empty_like(inputs)
    with torch.enable_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].detach().requires_grad_(True)
            score = target_scores(model(x), targets[start : start + batch_size])
            (g,) = torch.autograd.grad(score.sum(), x)
            grads[start : start + batch_size] = g
    return grads


#: perturbed inputs are built for up to this many elements at once (fewer, larger tensor ops)
PREPARE_ELEMENTS = 2**23


def prepare_rows(batch_size: int, row_shape: Sequence[int], n_rows: int) -> int:
    """How many perturbed rows to build at once: a few forward batches, at most ~32 MB of float32."""
    per_row = max(1, math.prod(row_shape))
    group = max(1, min(4, PREPARE_ELEMENTS // (batch_size * per_row)))
    return max(1, min(n_rows, batch_size * group))


@torch.no_grad()
def forward_scores(
    model: nn.Module,
    n_rows: int,
    make_batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    softmax: bool = False,
    prepare: int | None = None,
) -> torch.Tensor:
    """Score ``n_rows`` perturbed inputs, ``batch_size`` per forward pass.

    ``make_batch(start, stop)`` returns the perturbed inputs of rows
    ``start:stop`` and their target classes; it is called for ``prepare`` rows
    at a time (a multiple of ``batch_size``; default one batch), which are then
    scored ``batch_size`` at a time. The result is ``(n_rows,)``.
    """
    prepare = batch_size if prepare is None else max(batch_size, prepare // batch_size * batch_size)
    out: torch.Tensor | None = None
    for start in range(0, n_rows, prepare):
        stop = min(start + prepare, n_rows)
        xs, ts = make_batch(start, stop)
        for a in range(0, stop - start, batch_size):
            logits = model(xs[a : a + batch_size])
            if softmax:
                logits = logits.softmax(1)
            s = target_scores(logits, ts[a : a + batch_size])
            if out is None:
                out = torch.empty(n_rows, dtype=s.dtype, device=s.device)
            out[start + a : start + a + len(s)] = s
    return out if out is not None else torch.empty(0)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``(N, h, w)`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


# --------------------------------------------------------------------------- seeding


def base_seed(generator: torch.Generator | None) -> int:
    """One draw from ``generator`` (the global RNG when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def sample_seeds(inputs: torch.Tensor, generator: torch.Generator | None) -> list[int]:
    """Per-sample seeds from one generator draw and a hash of each sample's pixels."""
    key = base_seed(generator).to_bytes(8, "little")
    data = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
    return [
        int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest(), "little") >> 1
        for row in data
    ]


def sample_generators(inputs: torch.Tensor, generator: torch.Generator | None) -> list[torch.Generator]:
    """One seeded CPU generator per sample (see the module docstring)."""
    return [torch.Generator().manual_seed(s) for s in sample_seeds(inputs, generator)]


# --------------------------------------------------------------------------- baselines


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with replicate padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    ax = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(ax**2) / (2 * sigma**2))
    k = k / k.sum()
    n, c, h, w = images.shape
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def blur_sigma(inputs: torch.Tensor) -> float:
    """The ``blur`` baseline's sigma: an eighth of the shorter image side (8 px at 64x64)."""
    return max(1.0, min(inputs.shape[-2:]) / 8.0)


def make_baseline(
    kind: str, inputs: torch.Tensor, generators: Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """A reference input per sample, same shape as ``inputs`` (pixel space).

    ``black`` zeros, ``white`` ones, ``mean`` each image's per-channel mean
    colour, ``blur`` a Gaussian blur of the image (sigma = shorter side / 8),
    ``uniform`` U(0, 1) noise drawn from each sample's generator.
    """
    if kind == "black":
        return torch.zeros_like(inputs)
    if kind == "white":
        return torch.ones_like(inputs)
    if kind == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    if kind == "blur":
        return gaussian_blur(inputs, blur_sigma(inputs))
    if kind == "uniform":
        if generators is None:
            raise ValueError("the uniform baseline needs per-sample generators")
        noise = torch.stack([torch.rand(inputs.shape[1:], generator=g) for g in generators])
        return noise.to(inputs.device, inputs.dtype)
    raise ValueError(f"baseline='{kind}' is not valid; choose one of {', '.join(BASELINES)}")
