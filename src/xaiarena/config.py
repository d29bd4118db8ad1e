"""The experiment configuration: pydantic models, YAML loading, ``--set`` overrides.

One YAML file describes an experiment. Every key is validated: an unknown key, a
value of the wrong type, or an unregistered dataset/model/explainer/metric name
raises :class:`~xaiarena.errors.ConfigError` whose message names the key path,
the bad value and the valid choices (the CLI exits with code 2).

Components (dataset, model, explainers, metrics) are written either as a bare
name or as a mapping with ``name``, an optional ``label`` and the component's
own keyword parameters next to it::

    explainers:
      - gradcam
      - name: integrated_gradients
        n_steps: 32
      - {name: integrated_gradients, label: ig_black, baseline: black}
"""

from __future__ import annotations

import copy
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .cache import stable_hash  # noqa: F401  (re-exported: config hashes)
from .errors import ConfigError, UnknownNameError
from .registry import DATASETS, EXPLAINERS, METRICS, MODELS, Registry, suggest

DEFAULT_CONFIG_NAME = "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: labels and names become file and folder names in the run directory: a plain file name
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")
MAX_NAME = 64


def check_safe_name(value: str, what: str) -> str:
    """``value`` if it is a plain, short file name (no path separators, no ``..``); else ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} is {len(value)} characters long; at most {MAX_NAME} (it names files in "
                         "the run directory)")
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} may only use letters, digits and _ . + = - (not starting with . or -, "
                         "no '..'): it names files in the run directory")
    return value


class ComponentSpec(_Strict):
    """A registered component by name, with its keyword parameters."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _safe_label(cls, value: str | None) -> str | None:
        return None if value is None else check_safe_name(value, "label")

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict):
            value = dict(value)
            # the spec's own fields (name, label, and a subclass's extras); every other key is a
            # keyword parameter of the component
            known = {k: value.pop(k) for k in list(value) if k in cls.model_fields and k != "params"}
            params = dict(value.pop("params", None) or {})
            params.update(value)
            known["params"] = params
            return known
        return value

    @property
    def key(self) -> str:
        """The name results are reported under (``label`` if given)."""
        return self.label or self.name

    def hash_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}


class DataConfig(ComponentSpec):
    """Dataset by registered name. ``data_dir`` holds ``<dataset>/<split>.parquet``."""

    data_dir: str | None = None


class MetricSpec(ComponentSpec):
    """A metric; ``explainers`` restricts it to some explainers (by label), e.g. to keep
    re-explaining robustness metrics away from expensive perturbation methods."""

    explainers: list[str] | None = None


class TrainingConfig(_Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, le=1)
    scheduler: Literal["none", "cosine"] = "cosine"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    early_stop_patience: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1)


class EvaluationConfig(_Strict):
    n_samples: int = Field(256, ge=1)
    only_correct: bool = False
    # "auto": sized from free GPU memory on CUDA (runner.auto_batch_size), 64 on CPU
    batch_size: int | Literal["auto"] = 64
    target: Literal["label", "prediction"] = "label"
    # with a learned explainer (DiET), the other explainers also explain its model f_s, so that
    # maps of the same model can be compared (results column explained_model: f_b or f_s)
    also_explain_f_s: bool = True

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a batch size; valid: an integer >= 1, or 'auto'")
        return value


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # bfloat16 autocast for forward passes on CUDA (training, explaining, metrics); no-op on CPU
    output: str | None = None
    # modules (or .py files) that register third-party components; imported before validation
    plugins: list[str] = Field(default_factory=list)
    data: list[DataConfig]
    model: ComponentSpec
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    explainers: list[ComponentSpec] = Field(default_factory=list)
    metrics: list[MetricSpec] = Field(default_factory=list)

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value

    @field_validator("name")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        return check_safe_name(value, "name")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
        if not ok:
            raise ValueError(f"'{value}' is not a device; valid: auto, cpu, cuda, cuda:N")
        if value.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"'{value}' was asked for but CUDA is not available on this machine (torch "
                                 f"{torch.__version__}); use device: auto or cpu")
            if ":" in value and int(value[5:]) >= torch.cuda.device_count():
                raise ValueError(f"'{value}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return value

    @field_validator("explainers")
    @classmethod
    def _some_explainers(cls, value: list) -> list:
        if not value:
            raise ValueError("the config has no explainers; list at least one (xaiarena list shows them)")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- hashing




# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    return Path(str(resources.files("xaiarena") / "configs" / DEFAULT_CONFIG_NAME))


def load_raw(path: str | Path | None) -> dict[str, Any]:
    path = default_config_path() if path is None else Path(path)
    if not path.exists():
        raise ConfigError([("", f"config file '{path}' does not exist")])
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))[:8]
        raise ConfigError([("", f"'{path}' is a folder, not a config file"
                            + (f"; YAML files in it: {', '.join(yamls)}" if yamls else ""))])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"'{path}' is not valid YAML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read '{path}': {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([("", f"'{path}' must hold a mapping at the top level")])
    return raw


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config.

    Integer path segments index lists (``explainers.0.n_steps=16``). A component
    written as a bare string is expanded to a mapping when a sub-key is set.
    """
    raw = copy.deepcopy(raw)
    items: list[tuple[str, Any]]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError([(ov, "an override must look like key.path=value")])
            key, _, val = ov.partition("=")
            items.append((key.strip(), _parse_scalar(val)))
    for key, val in items:
        parts = key.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: i + 1], next_is_index=parts[i + 1].isdigit())
        last = parts[-1]
        if not isinstance(node, (dict, list)):
            parent = ".".join(parts[:-1])
            raise ConfigError([(key, f"cannot set '{last}' inside '{parent}', whose value {node!r} is not a "
                                     "mapping or a list")])
        if isinstance(node, list):
            idx = _index(node, last, parts)
            node[idx] = val
        else:
            node[last] = val
    return raw


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError([(".".join(parts), f"index '{part}' out of range (list has {len(node)} items)")])
    return int(part)


def _descend(node: Any, part: str, parts: list[str], next_is_index: bool) -> Any:
    if isinstance(node, list):
        idx = _index(node, part, parts)
        if isinstance(node[idx], str):  # bare component name -> mapping
            node[idx] = {"name": node[idx]}
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError([(".".join(parts), f"cannot set a key inside the value {node!r}")])
    child = node.get(part)
    if child is None:
        child = [] if next_is_index else {}
        node[part] = child
    elif isinstance(child, str) and not next_is_index:
        child = {"name": child}
        node[part] = child
    return child


# --------------------------------------------------------------------------- validation


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
        for cand in (TrainingConfig, EvaluationConfig, DataConfig, MetricSpec, ComponentSpec):
            if ann is cand or cand in getattr(ann, "__args__", ()):
                model = cand
                break
        else:
            return None
    return model


def _type_hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks, names are still checked
        return {}


def _check_component(reg: Registry, spec: ComponentSpec, path: str, problems: list) -> None:
    try:
        entry = reg.entry(spec.name)
    except UnknownNameError as exc:
        problems.append((f"{path}.name", f"bad value '{spec.name}': {exc.message}"))
        return
    if entry.accepts_any_kwargs():
        return
    valid = entry.parameters()
    hints = _type_hints(entry.factory)
    for key, value in spec.params.items():
        if key in valid and key in hints:
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=False)
            except ValidationError as exc:
                err = exc.errors()[0]
                problems.append((f"{path}.{key}", f"bad value {value!r}: {err['msg']}"))
        if key not in valid:
            hint = suggest(key, list(valid))
            msg = f"unknown parameter '{key}' for {reg.kind[:-1]} '{spec.name}'"
            if hint:
                msg += f" (did you mean '{hint}'?)"
            msg += f"; valid: {', '.join(valid) or '(none)'}"
            problems.append((f"{path}.{key}", msg))


def _build_problem(reg: Registry, spec: ComponentSpec, path: str) -> tuple[str, str] | None:
    """Build the component with its options (cheap for explainers and metrics) so that a bad *value*
    fails at config time, before any data is loaded; the problem names the option where it can."""
    try:
        reg.create(spec.name, **spec.params)
    except (ValueError, TypeError) as exc:
        msg = str(exc).strip() or type(exc).__name__
        key = next((k for k in spec.params if f"{k}=" in msg or f"'{k}'" in msg or f" {k} " in f" {msg} "), None)
        return (f"{path}.{key}" if key else path, f"bad value{f' {spec.params[key]!r}' if key else ''}: {msg}")
    return None


def _dataset_ground_truth(spec: ComponentSpec) -> tuple[str, ...] | None:
    """What ground truth a registered dataset has (registry meta ``ground_truth``), None if undeclared."""
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
    data_items = [data] if isinstance(data, (str, dict)) else (data if isinstance(data, list) else [])
    data_specs: list[tuple[str, DataConfig]] = []
    for i, item in enumerate(data_items):
        spec = spec_of(item, DataConfig)
        if spec:
            path = f"data.{i}" if isinstance(data, list) else "data"
            _check_component(DATASETS, spec, path, problems)
            data_specs.append((path, spec))
    by_key: dict[str, list[str]] = {}
    for path, spec in data_specs:
        by_key.setdefault(spec.key, []).append(path)
    for key, paths in by_key.items():
        if len(paths) > 1:
            problems.append((paths[1], f"{len(paths)} data entries ({', '.join(paths)}) are all named '{key}': their "
                             "caches and results would overwrite each other; give each a distinct 'label' "
                             f"(e.g. label: {key}_1)"))
    if (spec := spec_of(raw.get("model"))) is not None:
        _check_component(MODELS, spec, "model", problems)
    explainer_keys: list[str] = []
    for group, reg, cls in (("explainers", EXPLAINERS, ComponentSpec), ("metrics", METRICS, MetricSpec)):
        items = raw.get(group) or []
        if not isinstance(items, list):
            continue
        seen: set[str] = set()
        for i, item in enumerate(items):
            spec = spec_of(item, cls)
            if spec is None:  # reported by the model validation; keep its name for the cross-references
                if isinstance(item, dict) and group == "explainers":
                    explainer_keys.append(str(item.get("label") or item.get("name")))
                continue
            n_before = len(problems)
            _check_component(reg, spec, f"{group}.{i}", problems)
            if len(problems) == n_before and spec.name in reg:
                built = _build_problem(reg, spec, f"{group}.{i}")
                if built:
                    problems.append(built)
            if group == "metrics" and spec.name in reg and "masks" in (reg.entry(spec.name).meta.get("requires") or ()):
                for path, dspec in data_specs:
                    gt = _dataset_ground_truth(dspec)
                    if gt is not None and "masks" not in gt:
                        problems.append((f"{group}.{i}.name", f"metric '{spec.name}' needs ground-truth masks, but "
                                         f"dataset '{dspec.name}' ({path}) has none"))
            if spec.key in seen:
                problems.append((f"{group}.{i}", f"'{spec.key}' appears twice; give one a distinct 'label'"))
            seen.add(spec.key)
            if group == "explainers":
                explainer_keys.append(spec.key)
            for name in getattr(spec, "explainers", None) or []:
                if name not in explainer_keys:
                    hint = suggest(name, explainer_keys)
                    problems.append((f"{group}.{i}.explainers", f"bad value '{name}': not an explainer of this "
                                     f"config{f' (did you mean {hint!r}?)' if hint else ''}; valid: "
                                     f"{', '.join(explainer_keys) or '(none)'}"))
    return problems


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig` or raise ConfigError."""
    from .plugins import config_plugin_problems

    problems = config_plugin_problems(raw.get("plugins"))  # plugins register names before they are checked
    problems += _component_problems(raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_friendly(e, raw) for e in exc.errors()]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (the built-in default when ``path`` is None) and validate it."""
    if isinstance(path, ExperimentConfig):
        raw = path.to_dict()
    elif isinstance(path, dict):
        raw = copy.deepcopy(path)
    else:
        raw = load_raw(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw)
