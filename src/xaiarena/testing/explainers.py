"""``check_explainer``: the contract every explainer keeps, checked on one explainer."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..explainers.base import Explainer
from ..registry import EXPLAINERS
from . import fixtures as fx
from .options import check_bad_values, check_defaults
from .report import CheckReport

#: the explainer families
FAMILIES = ("gradient", "propagation", "cam", "perturbation", "learned", "baseline", "attention")
MODALITIES = ("image", "text")


def _resolve(explainer: str | type) -> tuple[str, type, Any]:
    """``(name, class, registry entry or None)`` of a registered name or an Explainer class."""
    if isinstance(explainer, str):
        entry = EXPLAINERS.entry(explainer)
        return entry.name, entry.factory, entry
    entry = next((e for e in EXPLAINERS if e.factory is explainer), None)
    return (
        (entry.name if entry else getattr(explainer, "name", "") or explainer.__name__),
        explainer,
        entry,
    )


def _metadata(name: str, cls: type, entry: Any) -> None:
    assert isinstance(cls, type) and issubclass(cls, Explainer), (
        f"{cls!r} is not a subclass of xaiarena.explainers.Explainer"
    )
    assert entry is not None, "not registered (@EXPLAINERS.register(name, description=...))"
    assert cls.name == entry.name, (
        f"class attribute name={cls.name!r} differs from the registered name '{entry.name}'"
    )
    assert cls.family in FAMILIES, f"family={cls.family!r}; one of {', '.join(FAMILIES)}"
    modality = tuple(cls.modality)
    assert modality and set(modality) <= set(MODALITIES), (
        f"modality={cls.modality!r}; a tuple of {MODALITIES}"
    )
    assert isinstance(cls.needs_layer, bool), f"needs_layer={cls.needs_layer!r} must be a bool"
    assert cls.explains in ("f_b", "f_s"), (
        f"explains={cls.explains!r}; 'f_b' (the given model) or 'f_s'"
    )
    assert (cls.explains == "f_s") == (cls.family == "learned"), (
        "a learned explainer (family 'learned') explains its own model f_s; the others explain f_b"
    )
    for key in ("family", "modality", "needs_layer", "explains"):
        assert key in entry.meta, f"registry metadata lacks '{key}' (xaiarena list --json shows it)"
    assert len(entry.description) >= 40, (
        f"description {entry.description!r} is what `xaiarena list` shows: say what the method "
        "computes "
        "(at least 40 characters)"
    )
    params = EXPLAINERS.entry(entry.name).parameters()
    for knob in getattr(cls, "cost_knobs", ()):
        assert knob in params, f"cost knob {knob} is not a constructor option"
    if cls.needs_layer:
        assert "layer" in params, "needs_layer=True but the constructor takes no 'layer' option"


def _hooks(model: nn.Module) -> dict[str, int]:
    """How many hooks each module (and torch, globally) holds, by where they are."""
    held = {}
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            if len(getattr(m, attr, {})):
                held[f"{name or '<root>'}.{attr}"] = len(getattr(m, attr))
    from torch.nn.modules import module as mod

    for attr in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if len(getattr(mod, attr, {})):
            held[attr] = len(getattr(mod, attr))
    return held


def _hooks_added(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Hooks ``after`` holds beyond ``before`` (a library's own persistent hooks, installed once
    by the first call, e.g. transformers' output capture, are in both)."""
    return [f"{k} (+{n - before.get(k, 0)})" for k, n in after.items() if n > before.get(k, 0)]


class _Boom(nn.Module):
    """Runs the wrapped model, then raises: every hook registered before the forward has fired."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def cam_layer(self) -> str | None:
        layer = self.inner.cam_layer() if hasattr(self.inner, "cam_layer") else None
        return None if layer is None else f"inner.{layer}"

    def forward(self, *args, **kwargs):
        self.inner(*args, **kwargs)
        raise RuntimeError("boom (xaiarena.testing)")


def _rows(x: Any, idx: list[int]) -> Any:
    return x[torch.tensor(idx)]


#: maps smaller than this are compared as if their largest value were this (float rounding of a
#: tiny model's outputs is absolute, not relative)
MIN_SCALE = 1e-3


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    assert a.shape == b.shape, f"{what}: maps of shape {tuple(a.shape)}, expected {tuple(b.shape)}"
    scale = max(float(b.abs().max()) if b.numel() else 0.0, MIN_SCALE)
    diff = float((a - b).abs().max()) / scale if a.numel() else 0.0
    assert diff <= atol, f"{what}: maps differ by {diff:.3g} of their largest value (atol {atol})"


def check_explainer(
    explainer: str | type,
    options: Mapping[str, Any] | None = None,
    *,
    model: nn.Module | None = None,
    inputs: Any = None,
    targets: Any = None,
    task: Any = None,
    atol: float = 1e-4,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that an explainer keeps the contract every built-in keeps.

    ``explainer``: its registered name or its class; ``options``: constructor options (cheap
    settings). ``model``, ``inputs`` (a float image batch ``(N, C, H, W)`` in [0, 1], or a
    :class:`~xaiarena.data.text.TextBatch`) and ``targets``: what to explain (default: the tiny
    models and inputs of :mod:`xaiarena.testing.fixtures` for the explainer's modality, N >= 4);
    ``task``: the training data of a learned explainer (default: a small task labelled by
    ``model``);
    ``atol``: how far maps of the same sample may differ between batchings, relative to the
    largest map value (at least :data:`MIN_SCALE`: float rounding).

    Checks: **metadata** (registered under its ``name``, ``family``, ``modality``,
    ``needs_layer``, ``explains``, an informative description, cost knobs and ``layer`` among the
    options); **options** (every option has a default; every number or name option declares its
    constraint in ``option_constraints``, which accepts the default; values a constraint refuses
    raise :class:`~xaiarena.ops.validation.OptionError` in the one format); **shape** (``explain``
    returns finite float32 maps ``(N, H, W)``, ``(N, L)`` for texts); **determinism** (the same
    maps from a generator in the same state); **batch size** (the batch's maps equal the maps of
    its samples explained one by one); **batch mates** (a sample's map does not change with the
    other samples of its batch, nor with their order); **untouched** (inputs, weights and every
    submodule's mode unchanged, no hook of its own left behind, also when the model raises). Every
    batch
    starts from a generator in the same state and ``prepare_set`` sees the whole set first, as in
    a run. A learned explainer is fitted first (and must not change the given model).

    Returns a :class:`~xaiarena.testing.report.CheckReport`; raises
    :class:`~xaiarena.testing.report.ConformanceError` listing every failed check unless
    ``raise_on_failure=False``.

    Longer than 80 lines because it is the kit's ordered list of checks on one built explainer, its
    model and its maps, listed in this docstring.
    """
    name, cls, entry = _resolve(explainer)
    options = dict(options or {})
    report = CheckReport("explainer", name)
    report.run("metadata", lambda: _metadata(name, cls, entry))
    report.run("option defaults", lambda: check_defaults(cls, name))
    report.run("bad options refused", lambda: check_bad_values(cls, cls, name, options))
    ex = report.run("builds", lambda: cls(**options))
    if ex is None:
        return report.raise_if_failed() if raise_on_failure else report

    modality = "image" if "image" in tuple(cls.modality) else "text"
    if model is None:
        model = fx.tiny_image_model() if modality == "image" else fx.tiny_text_model()
    if inputs is None:
        inputs, default_targets = (
            fx.tiny_images(4) if modality == "image" else fx.tiny_texts(model, 6)
        )
        targets = default_targets if targets is None else targets
    targets = torch.as_tensor(targets).long().reshape(-1)
    n = len(inputs)
    assert n >= 3, "check_explainer needs at least 3 inputs"

    if cls.family == "learned":
        if task is None:
            task = fx.tiny_image_task(model) if modality == "image" else fx.tiny_text_task()

        def fit() -> nn.Module:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            ex.fit(model, task, device=torch.device("cpu"), generator=fx.gen(0))
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), f"fit() changed the given model's weights ({k})"
            return ex.explained_model(model)

        explained = report.run("fit", fit)
        if explained is None:
            return report.raise_if_failed() if raise_on_failure else report
    else:
        explained = model

    # a second set with other batch mates: the first sample with new companions
    if modality == "image":
        others, other_t = fx.tiny_images(n, seed=999)
    else:
        others, other_t = _rows(inputs, list(range(n))[::-1]), targets.flip(0)

    def explain(x, t) -> torch.Tensor:
        return ex.explain(explained, x, t, generator=fx.gen(7))

    def prepared() -> None:
        if modality == "image":
            ex.prepare_set(explained, torch.cat([inputs, others]))
        else:
            ex.prepare_set(explained, inputs)

    report.run("prepare_set", prepared)
    full = report.run("shape", lambda: _shape(explain(inputs, targets), inputs, modality))
    if full is None:
        return report.raise_if_failed() if raise_on_failure else report
    report.run("determinism", lambda: _same(explain(inputs, targets), full, "a second call"))
    report.run(
        "batch size",
        lambda: _close(
            torch.cat([explain(_rows(inputs, [i]), targets[i : i + 1]) for i in range(n)]),
            full,
            atol,
            "one sample at a time vs the whole batch",
        ),
    )

    def mates() -> None:
        perm = list(range(n))[::-1]
        back = torch.argsort(torch.tensor(perm))
        _close(
            explain(_rows(inputs, perm), targets[perm])[back],
            full,
            atol,
            "the batch in reverse order",
        )
        if modality == "image":
            mixed = torch.cat([inputs[:1], others[1:]])
            t = torch.cat([targets[:1], other_t[1:]])
            _close(
                explain(mixed, t)[:1], full[:1], atol, "the first sample among other batch mates"
            )

    report.run("batch mates", mates)
    report.run("untouched", lambda: _untouched(ex, explained, inputs, targets))
    if modality == "image" and cls.family != "learned":
        report.run(
            "hooks released on error", lambda: _hooks_on_error(ex, explained, inputs, targets)
        )
    return report.raise_if_failed() if raise_on_failure else report


def _shape(maps: torch.Tensor, inputs: Any, modality: str) -> torch.Tensor:
    expected = (len(inputs), *inputs.shape[2:]) if modality == "image" else tuple(inputs.shape)
    assert isinstance(maps, torch.Tensor), (
        f"explain() returned a {type(maps).__name__}, not a tensor"
    )
    assert tuple(maps.shape) == expected, f"maps of shape {tuple(maps.shape)}; expected {expected}"
    assert maps.dtype == torch.float32, f"maps of dtype {maps.dtype}; expected float32"
    assert bool(torch.isfinite(maps).all()), "maps hold NaN or infinite values"
    return maps


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.equal(a, b), f"{what} with a generator in the same state gave other maps"


def _untouched(ex: Explainer, model: nn.Module, inputs: Any, targets: torch.Tensor) -> None:
    if isinstance(inputs, torch.Tensor):
        x0 = inputs.clone()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    subs = [m for m in model.modules() if m is not model]
    if subs:
        subs[
            -1
        ].eval()  # a submodule kept in eval mode inside a training model (a frozen BatchNorm)
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = _hooks(model)
    try:
        ex.explain(model, inputs, targets, generator=fx.gen(7))
        after = {n: m.training for n, m in model.named_modules()}
    finally:
        for m, flag in flags:
            m.training = flag
    assert after == modes, "explain() must restore every submodule's own train/eval mode"
    if isinstance(inputs, torch.Tensor):
        assert torch.equal(inputs, x0) and not inputs.requires_grad, "explain() changed its inputs"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state0[k]), f"explain() changed the model's weights or buffers ({k})"
    added = _hooks_added(hooks, _hooks(model))
    assert not added, f"hooks left behind: {', '.join(added)}"


def _hooks_on_error(
    ex: Explainer, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> None:
    boom = _Boom(copy.deepcopy(model)).eval()
    hooks = _hooks(boom)
    try:
        ex.explain(boom, inputs, targets, generator=fx.gen(7))
    except RuntimeError as exc:
        assert "boom" in str(exc), f"the model's error was replaced by another: {exc}"
    added = _hooks_added(hooks, _hooks(boom))
    assert not added, f"hooks left behind after the model raised: {', '.join(added)}"
