"""``check_metric``: the contract every metric keeps, checked on one metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..metrics.base import CATEGORIES, EvalBatch, Metric, MetricOutput, OutputSpec
from ..ops.pairs import PAIR_SEPARATOR, is_pair
from ..registry import METRICS
from . import fixtures as fx
from .options import check_bad_values, check_defaults
from .report import CheckReport

#: what a metric may require
REQUIREMENTS = ("model", "masks", "explainer", "labels")


def _resolve(metric: str | type) -> tuple[str, type, Any]:
    if isinstance(metric, str):
        entry = METRICS.entry(metric)
        return entry.name, entry.factory, entry
    entry = next((e for e in METRICS if e.factory is metric), None)
    return (entry.name if entry else getattr(metric, "name", "") or metric.__name__), metric, entry


def _metadata(cls: type, entry: Any, instance: Metric | None) -> None:
    assert isinstance(cls, type) and issubclass(cls, Metric), (
        f"{cls!r} is not a subclass of xaiarena.metrics.Metric"
    )
    assert entry is not None, "not registered (@METRICS.register(name, description=...))"
    assert cls.name == entry.name, (
        f"class attribute name={cls.name!r} differs from the registered name '{entry.name}'"
    )
    assert cls.category in CATEGORIES, f"category={cls.category!r}; one of {', '.join(CATEGORIES)}"
    assert isinstance(cls.higher_is_better, bool), (
        f"higher_is_better={cls.higher_is_better!r} must be a bool"
    )
    modality = tuple(cls.modality)
    assert modality and set(modality) <= {"image", "text"}, (
        f"modality={cls.modality!r}; a tuple of image, text"
    )
    lo, hi = cls.value_range
    assert lo <= hi, f"value_range={cls.value_range!r} must be (low, high)"
    assert set(cls.requires) <= set(REQUIREMENTS), (
        f"requires={cls.requires!r}; a subset of {REQUIREMENTS}"
    )
    for key in (
        "category",
        "higher_is_better",
        "modality",
        "value_range",
        "requires",
        "default_outputs",
    ):
        assert key in entry.meta, f"registry metadata lacks '{key}' (xaiarena list --json shows it)"
    assert entry.meta["default_outputs"], (
        "no default_outputs: outputs() fails with the default options"
    )
    assert len(entry.description) >= 30, (
        f"description {entry.description!r} is what `xaiarena list` shows: say what the metric "
        "measures"
    )
    if instance is not None:
        outs = instance.outputs()
        assert outs and all(isinstance(o, OutputSpec) for o in outs), (
            "outputs() must return OutputSpec's"
        )
        names = [o.name for o in outs]
        assert len(set(names)) == len(names), f"output names repeat: {names}"


def _pair_free(key: str) -> str:
    """Agreement keys as unordered pairs ("a~b" == "b~a")."""
    return PAIR_SEPARATOR.join(sorted(key.split(PAIR_SEPARATOR))) if is_pair(key) else key


def _flat(out: MetricOutput, idx: Any = None) -> dict[tuple[str, str, str], torch.Tensor]:
    res = {}
    for kind, table in (("score", out.scores), ("curve", out.curves)):
        for o, per in table.items():
            for k, v in per.items():
                res[(kind, o, _pair_free(k))] = v if idx is None else v[idx]
    return res


def _assert_same(a: dict, b: dict, what: str, keys: Any = None, exact: bool = False) -> None:
    keys = list(a) if keys is None else list(keys)
    missing = [k for k in keys if k not in b]
    assert not missing, f"{what}: outputs missing: {missing[:3]}"
    for k in keys:
        x, y = a[k], b[k]
        assert x.shape == y.shape, (
            f"{what}: {k} has shape {tuple(y.shape)}, expected {tuple(x.shape)}"
        )
        if exact:
            ok = torch.equal(x.nan_to_num(123.0), y.nan_to_num(123.0)) and torch.equal(
                x.isnan(), y.isnan()
            )
            assert ok, f"{what}: {k} differs"
        else:
            try:
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, equal_nan=True)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {k} differs: {str(exc).splitlines()[0]}") from None


def _shape(
    metric: Metric, out: MetricOutput, batch: EvalBatch, maps: Mapping[str, torch.Tensor]
) -> None:
    assert isinstance(out, MetricOutput), (
        f"evaluate() returned a {type(out).__name__}, not a MetricOutput"
    )
    n = len(batch)
    expected = metric.output_names()
    assert sorted(out.scores) == sorted(expected), (
        f"scores for {sorted(out.scores)}; outputs() says {expected}"
    )
    labels = set(maps)
    for o, per in out.scores.items():
        assert per, f"output {o}: no explainer scored"
        spec = metric.output_spec(o)
        lo, hi = spec.value_range
        for k, v in per.items():
            parts = k.split(PAIR_SEPARATOR) if is_pair(k) else [k]
            assert set(parts) <= labels, (
                f"output {o}: key {k!r} is not an explainer label (or a pair of them)"
            )
            assert isinstance(v, torch.Tensor) and tuple(v.shape) == (n,), (
                f"{o}[{k!r}]: expected a tensor of shape ({n},), got "
                f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
            )
            assert v.is_floating_point(), f"{o}[{k!r}]: dtype {v.dtype}; expected a float tensor"
            finite = v[torch.isfinite(v)].double()
            tol = 1e-5 * max(
                1.0, abs(lo) if math.isfinite(lo) else 1.0, abs(hi) if math.isfinite(hi) else 1.0
            )
            assert bool((finite >= lo - tol).all() and (finite <= hi + tol).all()), (
                f"{o}[{k!r}]: values in [{float(finite.min()):.4g}, {float(finite.max()):.4g}] "
                "outside the "
                f"declared value_range ({lo}, {hi})"
            )
    for o, per in out.curves.items():
        for k, v in per.items():
            assert isinstance(v, torch.Tensor) and v.ndim == 2 and len(v) == n, (
                f"curve {o}[{k!r}]: expected (N, S) with N = {n}"
            )
            if o in out.curve_x:
                assert len(out.curve_x[o]) == v.shape[1], (
                    f"curve {o}: curve_x has {len(out.curve_x[o])} points"
                )


def check_metric(
    metric: str | type,
    options: Mapping[str, Any] | None = None,
    *,
    batch: EvalBatch | None = None,
    maps: Mapping[str, torch.Tensor] | None = None,
    explainers: Mapping[str, Callable[..., torch.Tensor]] | None = None,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that a metric keeps the contract every built-in keeps.

    ``metric``: its registered name or its class; ``options``: constructor options (cheap
    settings). ``batch`` (an :class:`~xaiarena.metrics.EvalBatch` of at least 6 samples with
    ``sample_ids``), ``maps`` (``{label: (N, H, W)}``; texts ``(N, L)``) and ``explainers``
    (``{label: explain(inputs, targets, generator=None, model=...)}``, for metrics that
    re-explain): what to score (default: the tiny batches of :mod:`xaiarena.testing.fixtures` and
    maps of four explainers, a constant one among them).

    Checks: **metadata** (registered under its ``name``, ``category``, ``higher_is_better``,
    ``modality``, ``value_range``, ``requires``, default outputs, an informative description);
    **options** (every option has a default; every number or name option declares its constraint
    in ``option_constraints``, which accepts the default; values a constraint refuses raise
    :class:`~xaiarena.ops.validation.OptionError` in the one format); **shape** (a score ``(N,)``
    per output of ``outputs()`` and per explainer or pair, finite values within the output's
    ``value_range``, curves ``(N, S)``); **determinism** (the same scores from a generator in the
    same state); **batch size and batch mates** (the scores of the samples split over two
    batches, of the batch in another order, with the explainers in another order and with another
    explainer added equal the scores of the whole batch, each call starting from a generator in the
    same state). A metric whose options make a sample's score depend on the whole set
    (``needs_whole_set``) skips the batch checks.

    Returns a :class:`~xaiarena.testing.report.CheckReport`; raises
    :class:`~xaiarena.testing.report.ConformanceError` listing every failed check unless
    ``raise_on_failure=False``.

    Longer than 80 lines because it is the kit's ordered list of checks on one built metric, its
    inputs and its scores, listed in this docstring.
    """
    name, cls, entry = _resolve(metric)
    options = dict(options or {})
    report = CheckReport("metric", name)
    m = report.run("builds", lambda: cls(**options))
    report.run("metadata", lambda: _metadata(cls, entry, m))
    report.run("option defaults", lambda: check_defaults(cls, name))
    report.run("bad options refused", lambda: check_bad_values(cls, cls, name, options))
    if m is None:
        return report.raise_if_failed() if raise_on_failure else report

    modality = "image" if "image" in tuple(cls.modality) else "text"
    if batch is None:
        batch, default_maps, default_fns = fx.metric_setup(modality)
        maps = default_maps if maps is None else maps
        explainers = default_fns if explainers is None else explainers
    assert maps, "check_metric needs maps"
    n = len(batch)
    assert n >= 6, "check_metric needs a batch of at least 6 samples"

    def run(b: EvalBatch, mp: Mapping[str, torch.Tensor], seed: int = 0) -> MetricOutput:
        fns = None if explainers is None else {k: explainers[k] for k in mp if k in explainers}
        return m.evaluate(b, dict(mp), generator=fx.gen(seed), explainers=fns)

    out = report.run("evaluates", lambda: run(batch, maps))
    if out is None:
        return report.raise_if_failed() if raise_on_failure else report
    report.run("shape", lambda: _shape(m, out, batch, maps))
    full = _flat(out)
    report.run(
        "determinism",
        lambda: _assert_same(full, _flat(run(batch, maps)), "a second call", exact=True),
    )
    if m.needs_whole_set:
        report.skip(
            "batch size", "needs_whole_set: a sample's score depends on the whole set by design"
        )
        report.skip(
            "batch mates", "needs_whole_set: a sample's score depends on the whole set by design"
        )
        return report.raise_if_failed() if raise_on_failure else report

    def split() -> None:
        cut = n // 2 - 1
        parts = [
            _flat(run(fx.subset(batch, idx), {k: v[idx] for k, v in maps.items()}))
            for idx in (list(range(cut)), list(range(cut, n)))
        ]
        _assert_same(
            full,
            {k: torch.cat([parts[0][k], parts[1][k]]) for k in full},
            f"the samples split in two batches ({cut} + {n - cut})",
        )

    def mates() -> None:
        perm = torch.randperm(n, generator=fx.gen(11))
        back = torch.argsort(perm)
        _assert_same(
            full,
            _flat(run(fx.subset(batch, perm), {k: v[perm] for k, v in maps.items()}), back),
            "the batch in another order",
        )
        _assert_same(
            full, _flat(run(batch, dict(reversed(list(maps.items()))))), "the explainers reversed"
        )
        extra_map = torch.rand(next(iter(maps.values())).shape, generator=fx.gen(5))
        nonlocal explainers
        saved = explainers
        if explainers is not None:
            explainers = {**explainers, "xaiarena_testing_extra": fx.hashed_random_fn()}
        try:
            extra = _flat(run(batch, {"xaiarena_testing_extra": extra_map, **maps}))
        finally:
            explainers = saved
        _assert_same(full, extra, "another explainer added", keys=full.keys())

    report.run("batch size", split)
    report.run("batch mates", mates)
    return report.raise_if_failed() if raise_on_failure else report
