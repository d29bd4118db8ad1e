"""Validating a raw config mapping into an :class:`~xaiarena.config.schema.ExperimentConfig`.

Every problem of a file is collected and reported together in one
:class:`~xaiarena.errors.ConfigError`, each at its key path with the bad value and the valid
choices: type and range errors from the pydantic models (made readable), and,
on the raw mapping, component names and options checked against the registries, each
explainer and metric built with its options (so that a bad value fails before any data is
loaded), repeated labels, metrics that need masks on datasets without any, CAM explainers
without a layer, the ``dissect:`` section, and with a grid every point.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..dissect.config import dissect_problems
from ..errors import ConfigError, suggest
from ..plugins import config_plugin_problems
from ..postprocess import COUNTS_ZEROS, MOVES_ZERO
from ..registry import DATASETS, EXPLAINERS, METRICS, MODELS, Registry, load_builtins
from .components import ComponentSpec, check_component
from .grid import check_run_size, grid_points
from .safe_yaml import check_size
from .schema import DataConfig, ExperimentConfig, ExplainerSpec, MetricSpec


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _friendly(err: dict[str, Any], raw: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if p not in ("str", "dict[str,any]"))
    path = _loc(loc)
    typ = err["type"]
    if typ == "extra_forbidden":
        parent_loc, key = loc[:-1], loc[-1]
        model = _model_at(parent_loc)
        valid = sorted(model.model_fields) if model else []
        hint = suggest(str(key), valid) if valid else None
        msg = f"unknown key '{key}'"
        if hint:
            msg += f" (did you mean '{hint}'?)"
        if valid:
            msg += f"; valid keys: {', '.join(valid)}"
        return path, msg
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if typ != "missing":
        msg = f"bad value {value!r}: {msg}"
    return path, msg


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):  # X, list[X], X | None
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def _build_problem(reg: Registry, spec: ComponentSpec, path: str) -> tuple[str, str] | None:
    """Build the component with its options (cheap for explainers and metrics) so that a bad *value*
    fails at config time, before any data is loaded; the problem names the option where it can."""
    try:
        reg.create(spec.name, **spec.params)
    except (ValueError, TypeError) as exc:
        msg = str(exc).strip() or type(exc).__name__
        key = next(
            (k for k in spec.params if f"{k}=" in msg or f"'{k}'" in msg or f" {k} " in f" {msg} "),
            None,
        )
        return (
            f"{path}.{key}" if key else path,
            f"bad value{f' {spec.params[key]!r}' if key else ''}: {msg}",
        )
    return None


def _dataset_ground_truth(spec: ComponentSpec) -> tuple[str, ...] | None:
    """What ground truth a registered dataset has (registry meta ``ground_truth``), None if
    undeclared."""
    if spec.name not in DATASETS:
        return None
    gt = DATASETS.entry(spec.name).meta.get("ground_truth")
    return None if gt is None else ((gt,) if isinstance(gt, str) else tuple(gt))


def _component_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Names and parameters of components, checked against the registries (on the raw mapping,
    so they are reported together with type errors elsewhere in the file)."""
    problems: list[tuple[str, str]] = []

    def spec_of(value: Any, cls: type[ComponentSpec] = ComponentSpec) -> ComponentSpec | None:
        try:
            return cls.model_validate(value)
        except ValidationError:
            return None

    data = raw.get("data")
    data_items = (
        [data] if isinstance(data, (str, dict)) else (data if isinstance(data, list) else [])
    )
    data_specs: list[tuple[str, DataConfig]] = []
    for i, item in enumerate(data_items):
        spec = spec_of(item, DataConfig)
        if spec:
            path = f"data.{i}" if isinstance(data, list) else "data"
            check_component(DATASETS, spec, path, problems)
            data_specs.append((path, spec))
    by_key: dict[str, list[str]] = {}
    for path, spec in data_specs:
        by_key.setdefault(spec.key, []).append(path)
    for key, paths in by_key.items():
        if len(paths) > 1:
            problems.append(
                (
                    paths[1],
                    f"{len(paths)} data entries ({', '.join(paths)}) are all named '{key}': their "
                    "caches and results would overwrite each other; give each a distinct 'label' "
                    f"(e.g. label: {key}_1)",
                )
            )
    if (spec := spec_of(raw.get("model"))) is not None:
        check_component(MODELS, spec, "model", problems)
    explainer_keys: list[str] = []
    for group in ("explainers", "metrics"):
        problems += _group_problems(group, raw.get(group) or [], explainer_keys, data_specs)
    return problems


GROUPS: dict[str, tuple[Registry, type[ComponentSpec]]] = {
    "explainers": (EXPLAINERS, ExplainerSpec),
    "metrics": (METRICS, MetricSpec),
}


def _group_problems(
    group: str, items: Any, explainer_keys: list[str], data_specs: list[tuple[str, DataConfig]] = ()
) -> list[tuple[str, str]]:
    """Problems of a config's ``explainers:`` or ``metrics:`` list: names and options checked
    against the registry, then each component built; repeated labels; a metric's ``explainers:``
    naming an explainer not in ``explainer_keys`` (the labels so far; the explainers group appends
    its own); mask-based metrics next to datasets without masks (``data_specs``)."""
    reg, cls = GROUPS[group]
    problems: list[tuple[str, str]] = []
    if not isinstance(items, list):
        return problems  # reported by the model validation

    def spec_of(value: Any) -> ComponentSpec | None:
        try:
            return cls.model_validate(value)
        except ValidationError:
            return None

    seen: set[str] = set()
    for i, item in enumerate(items):
        spec = spec_of(item)
        if spec is None:  # reported by the model validation; keep its name for the cross-references
            if isinstance(item, dict) and group == "explainers":
                explainer_keys.append(str(item.get("label") or item.get("name")))
            continue
        n_before = len(problems)
        check_component(reg, spec, f"{group}.{i}", problems)
        if len(problems) == n_before and spec.name in reg:
            built = _build_problem(reg, spec, f"{group}.{i}")
            if built:
                problems.append(built)
        meta = reg.entry(spec.name).meta if spec.name in reg else {}
        if (
            group == "metrics"
            and "masks" in (meta.get("requires") or ())
            and "image" in meta.get("modality", ())
        ):
            for path, dspec in data_specs:
                gt = _dataset_ground_truth(dspec)
                image = "image" in (DATASETS.entry(dspec.name).meta.get("modality") or "image")
                if gt is not None and image and "masks" not in gt:
                    problems.append(
                        (
                            f"{group}.{i}.name",
                            f"metric '{spec.name}' needs ground-truth masks, but "
                            f"dataset '{dspec.name}' ({path}) has none",
                        )
                    )
        zeros = MOVES_ZERO | COUNTS_ZEROS
        moves_zero = [st for st in getattr(spec, "postprocess", ()) if st in zeros]
        if moves_zero and meta and "image" not in (meta.get("modality") or ("image",)):
            what = "give the padding of text maps (zeros past the last word) a value"
            if moves_zero[0] in COUNTS_ZEROS:
                what = "count the padding of text maps (zeros past the last word)"
            problems.append(
                (
                    f"{group}.{i}.postprocess",
                    f"step '{moves_zero[0]}' would {what}; "
                    "use abs, normalise_by_max or normalise_by_negative",
                )
            )
        if spec.key in seen:
            problems.append(
                (f"{group}.{i}", f"'{spec.key}' appears twice; give one a distinct 'label'")
            )
        seen.add(spec.key)
        if group == "explainers":
            explainer_keys.append(spec.key)
        for name in getattr(spec, "explainers", None) or []:
            if name not in explainer_keys:
                hint = suggest(name, explainer_keys)
                problems.append(
                    (
                        f"{group}.{i}.explainers",
                        f"bad value '{name}': not an explainer of this "
                        f"config{f' (did you mean {hint!r}?)' if hint else ''}; valid: "
                        f"{', '.join(explainer_keys) or '(none)'}",
                    )
                )
    return problems


def validate_components(
    group: str, items: Any, *, explainer_labels: list[str] | None = None
) -> list[ComponentSpec]:
    """A config's ``explainers:`` or ``metrics:`` list, validated on its own (the functional API,
    :func:`xaiarena.evaluate` and :func:`xaiarena.explain`): the same checks as in a config file
    (names, option names, types and values, repeated labels), the same :class:`ConfigError` naming
    ``<group>.<i>.<key>``, the bad value and the valid ones. A bare name or one mapping counts as a
    list of one. ``explainer_labels``: the labels a metric's ``explainers:`` may name."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
    if isinstance(items, (str, dict)):
        items = [items]
    elif isinstance(items, tuple):
        items = list(items)
    if not isinstance(items, list) or not items:
        kind = group[:-1]
        raise ConfigError(
            [
                (
                    group,
                    f"bad value {items!r}: give a non-empty list of {group}, each a {kind} name or "
                    f"a mapping {{name: ..., <option>: ...}} as in a config's '{group}:' list "
                    "(xaiarena list shows them)",
                )
            ]
        )
    problems = _group_problems(group, items, list(explainer_labels or []))
    try:
        specs = TypeAdapter(list[GROUPS[group][1]]).validate_python(items)
    except ValidationError as exc:
        raw = {group: items}
        problems += [_friendly({**e, "loc": (group, *e["loc"])}, raw) for e in exc.errors()]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return specs


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig` or raise ConfigError.

    With a ``grid``, every combination is validated too (problems are named by grid point)."""
    check_size(raw)
    # plugins register names before they are checked (after the built-ins, so that a clash names the
    # plugin)
    problems = config_plugin_problems(raw.get("plugins"), before=load_builtins)
    problems += _component_problems(raw) + dissect_problems(raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_friendly(e, raw) for e in exc.errors()]
        raise ConfigError(problems) from None
    if not cfg.explainers and cfg.dissect is None:
        problems.append(
            (
                "explainers",
                "the config has no explainers and no 'dissect:' section; list at least one "
                "explainer (xaiarena list shows them), or add a 'dissect:' section to label "
                "neurons",
            )
        )
    if not cfg.grid:  # with a grid, every point is checked below (a point may set the layer)
        problems += cam_layer_problems(cfg)
    if problems:
        raise ConfigError(problems)
    check_run_size(cfg)  # before the grid's points are validated one by one
    if cfg.grid:
        for label, point in grid_points(cfg):
            try:
                validate(point)
            except ConfigError as exc:
                problems += [(f"grid[{label}].{p}", m) for p, m in exc.problems]
        if problems:
            raise ConfigError(problems)
    return cfg


def cam_layer_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """CAM explainers (registry meta ``needs_layer``) without a ``layer`` option on a model that
    declares no CAM layer unless told (model meta ``cam_layer_option``: ``torch_module``'s
    ``cam_layer``): a config error naming both, before any data is loaded. xaiarena never guesses
    the layer."""
    if cfg.model.name not in MODELS:
        return []
    option = MODELS.entry(cfg.model.name).meta.get("cam_layer_option")
    if not option or cfg.model.params.get(option) is not None:
        return []
    problems = []
    for i, spec in enumerate(cfg.explainers):
        meta = EXPLAINERS.entry(spec.name).meta if spec.name in EXPLAINERS else {}
        if meta.get("needs_layer") and spec.params.get("layer") is None:
            problems.append(
                (
                    f"explainers.{i}",
                    f"{spec.name} needs a CAM layer, but model "
                    f"'{cfg.model.name}' has no {option}: set model.{option} to the "
                    "dotted name of your module's last convolutional stage (e.g. layer4, "
                    "features.7; xaiarena does not guess: the last nn.Conv2d is often a "
                    "residual branch or a shortcut), or this explainer's layer option "
                    "(net.<name>)",
                )
            )
    return problems
