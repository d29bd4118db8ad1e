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

from .engine.cache import stable_hash  # noqa: F401  (re-exported: config hashes)
from .errors import ConfigError, UnknownNameError
from .postprocess import COUNTS_ZEROS, MOVES_ZERO
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
        if isinstance(value, ComponentSpec) and not isinstance(value, cls):  # e.g. a plain spec as an ExplainerSpec
            value = value.model_dump()
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


class ExplainerSpec(ComponentSpec):
    """An explainer; ``postprocess`` lists steps applied to its maps, in order, after explaining
    (``abs``, ``normalise_by_max``, ``normalise_by_negative``, ...; per sample, or ``..._over_set``
    over the evaluation set; see :mod:`xaiarena.postprocess`). Empty (default): the maps as the
    explainer returns them. ``reexplain_postprocess``: the steps of the maps a metric re-explains
    (robustness metrics' noisy copies, ``mprt``'s randomised models); default (None): the same as
    ``postprocess``. It must be given when ``postprocess`` normalises over the set (re-explanations
    come in chunks, not as the set), and may not itself hold an ``_over_set`` step; ``[]`` gives
    the explainer's raw maps, as Quantus's ``explain_func``."""

    postprocess: list[str] = Field(default_factory=list)
    reexplain_postprocess: list[str] | None = None

    @field_validator("postprocess", "reexplain_postprocess", mode="before")
    @classmethod
    def _steps(cls, value: Any, info: Any) -> Any:
        from . import postprocess

        if value is None:
            return [] if info.field_name == "postprocess" else None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{info.field_name} must be a list of steps; valid steps: "
                             f"{', '.join(postprocess.STEPS)}")
        steps = postprocess.check(list(value))
        if info.field_name == "reexplain_postprocess":
            bad = [st for st in steps if postprocess.over_set(st)]
            if bad:
                per_sample = bad[0].removesuffix(postprocess.SET_SUFFIX)
                raise ValueError(f"step '{bad[0]}' normalises over the evaluation set, but "
                                 "re-explained maps come in chunks of noisy copies; use a "
                                 f"per-sample step ('{per_sample}') or none ([])")
        return steps

    @model_validator(mode="after")
    def _reexplain_given(self) -> ExplainerSpec:
        from . import postprocess

        bad = [st for st in self.postprocess if postprocess.over_set(st)]
        if bad and self.reexplain_postprocess is None:
            raise ValueError(f"postprocess step '{bad[0]}' normalises over the evaluation set, "
                             "which re-explained maps (robustness metrics, mprt) are not: give "
                             "reexplain_postprocess, e.g. [] (the explainer's raw maps, as "
                             "Quantus's explain_func) or per-sample steps")
        return self

    @property
    def reexplain_steps(self) -> list[str]:
        """The post-processing steps of re-explained maps."""
        given = self.reexplain_postprocess
        return list(self.postprocess if given is None else given)

    def hash_dict(self) -> dict[str, Any]:
        out = super().hash_dict()
        if self.reexplain_postprocess is not None:  # re-explanations change robustness scores
            out["reexplain_postprocess"] = list(self.reexplain_postprocess)
        return out


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
    # "auto": sized from free GPU memory on CUDA (engine.batching.auto_batch_size), 64 on CPU
    batch_size: int | Literal["auto"] = 64
    # the class each map explains: the true label, the model's prediction, or one fixed class for every
    # sample (a class index, or a class name of the model's label space, e.g. "airliner")
    target: Literal["label", "prediction"] | int | str = "label"
    # with a learned explainer (DiET), the other explainers also explain its model f_s, so that
    # maps of the same model can be compared (results column explained_model: f_b or f_s)
    also_explain_f_s: bool = True
    # a learned explainer's maps (computed on its f_s) are also scored on f_b, the model the
    # user cares about, as the f_b rows "<label>@f_s" (docs/architecture.md, "Views")
    score_learned_on_f_b: bool = True
    # metric meta-evaluation (docs/meta.md): results/meta.csv and the report's "Which metrics
    # can you trust here?"; its perturbation tests re-explain and re-score meta_samples samples
    # per view, meta_perturbations draws of each of four perturbations
    meta: bool = False
    meta_samples: int = Field(16, ge=2)
    meta_perturbations: int = Field(1, ge=1)

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a switch; valid: true, false")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a batch size; valid: an integer >= 1, or 'auto'")
        return value


class RayConfig(_Strict):
    """How ``executor: ray`` runs the stage graph (see docs/distributed.md)."""

    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None starts a local instance
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a local instance (default: all)
    # resource request of every train/fit/explain/score task; None: the run's torch thread count
    # (training.num_threads, else the driver's), which every task computes with whatever it asks for
    cpus_per_task: float | None = Field(None, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    max_retries: int = Field(3, ge=0)  # a task whose worker dies is retried this often
    # seconds to wait for the cluster at `address` to answer (then an error naming it)
    connect_timeout: float = Field(30.0, gt=0, le=3600)


class ProtocolRow(_Strict):
    """One setting of a source study: what the source did, what this config does, and why."""

    setting: str
    source: str
    ours: str
    why: str = ""


class ReferenceValue(_Strict):
    """A number the source study reported, to be set beside ours in the report."""

    metric: str
    explainer: str
    value: float | None = None  # a single reported number, or
    range: tuple[float, float] | None = None  # the range the source reports (e.g. over its images)
    source: str  # where the number comes from (the source's table, figure or output)
    dataset: str | None = None  # None: the run's (only) dataset
    explained_model: str = "f_b"
    note: str = ""

    @model_validator(mode="after")
    def _value_or_range(self) -> ReferenceValue:
        if (self.value is None) == (self.range is None):
            raise ValueError("a reference gives either value or range (not both)")
        return self


class StudyConfig(_Strict):
    """A study's question and the source-specific analyses its report adds (docs/studies.md)."""

    id: str
    title: str
    question: str
    # the source's own analyses, shown beside ours and labelled as such:
    #   improvement: per-dataset difference a - b on one metric, "a better", wins k/n, a bar chart, and the
    #                across-dataset paired t-test and Cohen's d (pooled SD) the source computed, once
    #                per scoring model (both maps always scored on the same model)
    #   agreement_bands: agreement outputs with bands (>= 0.7 high, >= 0.4 moderate, else low), accuracy chart
    #   per_image: per-image table of agreement outputs named by file; LIME superpixel figures
    #   fg_bg: t, p and Cohen's d_z of object vs background, beside the source's
    analyses: list[Literal["improvement", "agreement_bands", "per_image", "fg_bg"]] = Field(default_factory=list)
    compare: list[str] | None = None  # improvement: [a, b] explainer labels
    metric: str | None = None  # improvement: the output compared


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
    explainers: list[ExplainerSpec] = Field(default_factory=list)
    metrics: list[MetricSpec] = Field(default_factory=list)
    # retrain the model per seed: `replicates: N` derives N seeds from `seed` (the first is `seed`
    # itself), or list them in `seeds`; results gain `replicate` and `seed` columns
    replicates: int = Field(1, ge=1)
    seeds: list[int] | None = None
    # several runs in one: {key.path: [value, ...]} expands to every combination (results column `grid`)
    grid: dict[str, list[Any]] | None = None
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)
    # named sets of overrides (e.g. GPU tiers); `preset: NAME` (or --set preset=NAME) applies one,
    # after the file and before the other --set overrides
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    preset: str | None = None
    study: StudyConfig | None = None
    protocol: list[ProtocolRow] = Field(default_factory=list)
    reference: list[ReferenceValue] = Field(default_factory=list)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"seeds={value!r} must be a non-empty list without repeats")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if value is None:
            return None
        for key, values in value.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key} must be a non-empty list of values")
            if key.split(".")[0] in ("grid", "seeds", "replicates", "executor", "ray", "name", "output"):
                raise ValueError(f"grid.{key}: '{key.split('.')[0]}' cannot vary inside one run")
        return value

    def replicate_seeds(self) -> list[int]:
        """The seed of every replicate: ``seeds``, or ``seed`` then seeds derived from it."""
        if self.seeds is not None:
            return list(self.seeds)
        from .engine.cache import stable_seed

        return [self.seed] + [stable_seed(self.seed, "replicate", i) for i in range(1, self.replicates)]
    dissect: DissectConfig | None = None  # neuron labelling (xaiarena dissect), see dissect/config.py

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


    def to_dict(self) -> dict[str, Any]:
        # no dissect section: left out, so configs (and their hashes) without one are as before
        return self.model_dump(mode="json", exclude={"dissect"} if self.dissect is None else None)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- hashing




# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    return Path(str(resources.files("xaiarena") / "configs" / DEFAULT_CONFIG_NAME))


#: how many values (mappings, lists, scalars; every copy an alias makes counted) a config may hold
MAX_CONFIG_VALUES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, naming both lines (PyYAML
    keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys may override it
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        self.key, self.first, self.second = key, first, second
        super().__init__(f"key {key!r} appears twice, at line {first} and at line {second}; the "
                         "second would silently replace the first: keep one")


def yaml_load(text: str, where: str = "the YAML") -> Any:
    """Parse config YAML safely: no Python objects, no key given twice in a mapping (an error
    naming both lines), and at most :data:`MAX_CONFIG_VALUES` values once aliases are expanded (a
    few hundred bytes of nested aliases would otherwise expand to billions and hang validation).
    ``ConfigError`` otherwise."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError([("", f"{where}: {exc}")]) from None
    check_size(data, where)
    return data


def check_size(data: Any, where: str = "the config") -> None:
    """``ConfigError`` when ``data`` holds more than :data:`MAX_CONFIG_VALUES` values, every copy
    that YAML aliases (``*name``) or shared Python objects make counted; names the first top-level
    key past the bound. Stops counting at the bound, so a huge or self-referencing value costs no
    more."""
    budget = MAX_CONFIG_VALUES
    items = list(data.items()) if isinstance(data, dict) else [("", data)]
    for key, value in items:
        stack = [value]
        while stack:
            node = stack.pop()
            budget -= 1
            if budget < 0:
                at = f" (under '{key}')" if key != "" else ""
                raise ConfigError([(str(key), f"{where} holds more than {MAX_CONFIG_VALUES:,} "
                                    f"values{at} once its YAML aliases (*name) are expanded; "
                                    "nested aliases multiply, so a small file can stand for "
                                    "billions of values. Write the values out")])
            if isinstance(node, dict):
                stack.extend(node.keys())
                stack.extend(node.values())
            elif isinstance(node, (list, tuple)):
                stack.extend(node)


def load_raw(path: str | Path | None) -> dict[str, Any]:
    path = default_config_path() if path is None else Path(path)
    if not path.exists():
        raise ConfigError([("", f"config file '{path}' does not exist")])
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))[:8]
        raise ConfigError([("", f"'{path}' is a folder, not a config file"
                            + (f"; YAML files in it: {', '.join(yamls)}" if yamls else ""))])
    try:
        raw = yaml_load(path.read_text(), f"'{path}'")
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"'{path}' is not valid YAML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read '{path}': {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([("", f"'{path}' must hold a mapping at the top level")])
    return raw


def _parse_scalar(text: str) -> Any:
    try:
        return yaml_load(text, f"the value {text[:40]!r}")
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
        for cand in (ann, *getattr(ann, "__args__", ())):  # X, list[X], X | None
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def _type_hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
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
    for group in ("explainers", "metrics"):
        problems += _group_problems(group, raw.get(group) or [], explainer_keys, data_specs)
    return problems


GROUPS: dict[str, tuple[Registry, type[ComponentSpec]]] = {
    "explainers": (EXPLAINERS, ExplainerSpec), "metrics": (METRICS, MetricSpec)}


def _group_problems(group: str, items: Any, explainer_keys: list[str],
                    data_specs: list[tuple[str, DataConfig]] = ()) -> list[tuple[str, str]]:
    """Problems of a config's ``explainers:`` or ``metrics:`` list: names and options checked against
    the registry, then each component built; repeated labels; a metric's ``explainers:`` naming an
    explainer not in ``explainer_keys`` (the labels so far; the explainers group appends its own);
    mask-based metrics next to datasets without masks (``data_specs``)."""
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
        _check_component(reg, spec, f"{group}.{i}", problems)
        if len(problems) == n_before and spec.name in reg:
            built = _build_problem(reg, spec, f"{group}.{i}")
            if built:
                problems.append(built)
        meta = reg.entry(spec.name).meta if spec.name in reg else {}
        if group == "metrics" and "masks" in (meta.get("requires") or ()) and "image" in meta.get("modality", ()):
            for path, dspec in data_specs:
                gt = _dataset_ground_truth(dspec)
                image = "image" in (DATASETS.entry(dspec.name).meta.get("modality") or "image")
                if gt is not None and image and "masks" not in gt:
                    problems.append((f"{group}.{i}.name", f"metric '{spec.name}' needs ground-truth masks, but "
                                     f"dataset '{dspec.name}' ({path}) has none"))
        zeros = MOVES_ZERO | COUNTS_ZEROS
        moves_zero = [st for st in getattr(spec, "postprocess", ()) if st in zeros]
        if moves_zero and meta and "image" not in (meta.get("modality") or ("image",)):
            what = "give the padding of text maps (zeros past the last word) a value"
            if moves_zero[0] in COUNTS_ZEROS:
                what = "count the padding of text maps (zeros past the last word)"
            problems.append((f"{group}.{i}.postprocess", f"step '{moves_zero[0]}' would {what}; "
                             "use abs, normalise_by_max or normalise_by_negative"))
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


def validate_components(group: str, items: Any, *, explainer_labels: list[str] | None = None) -> list[ComponentSpec]:
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
        raise ConfigError([(group, f"bad value {items!r}: give a non-empty list of {group}, each a {kind} name or "
                            f"a mapping {{name: ..., <option>: ...}} as in a config's '{group}:' list "
                            "(xaiarena list shows them)")])
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
    from .plugins import config_plugin_problems

    check_size(raw)
    problems = config_plugin_problems(raw.get("plugins"))  # plugins register names before they are checked
    problems += _component_problems(raw) + dissect_problems(raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_friendly(e, raw) for e in exc.errors()]
        raise ConfigError(problems) from None
    if not cfg.explainers and cfg.dissect is None:
        problems.append(("explainers", "the config has no explainers and no 'dissect:' section; list at least one "
                         "explainer (xaiarena list shows them), or add a 'dissect:' section to label neurons"))
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


#: the most units (grid points x replicates x datasets) one run may plan: every unit trains a model,
#: and planning, validating and recording them costs time per unit before any work
#: ($XAIARENA_MAX_UNITS overrides it)
MAX_UNITS = 10_000
#: above this many units a run is planned with a warning
WARN_UNITS = 1_000


def run_size(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """``(grid points, replicates, datasets)`` of ``cfg``, counted without expanding anything."""
    import math

    points = math.prod(len(v) for v in (cfg.grid or {}).values()) if cfg.grid else 1
    replicates = len(cfg.seeds) if cfg.seeds is not None else cfg.replicates
    return points, replicates, len(cfg.data)


def check_run_size(cfg: ExperimentConfig) -> None:
    """``ConfigError`` when ``cfg`` plans more than ``$XAIARENA_MAX_UNITS`` (default
    :data:`MAX_UNITS`) units, a warning above :data:`WARN_UNITS`; in microseconds, before any grid
    point is expanded."""
    import logging
    import os

    points, replicates, datasets = run_size(cfg)
    n = points * replicates * datasets
    try:
        limit = int(os.environ.get("XAIARENA_MAX_UNITS", MAX_UNITS))
    except ValueError:
        limit = MAX_UNITS
    what = (f"{n:,} units (grid points x replicates x datasets = {points:,} x {replicates:,} x "
            f"{datasets}), each training a model")
    if n > limit:
        key = ("grid" if points > 1 and points >= replicates else
               "seeds" if cfg.seeds is not None else "replicates")
        raise ConfigError([(key, f"the run has {what}; at most {limit:,} are planned "
                            "(XAIARENA_MAX_UNITS raises the bound). Lower replicates or the grid's "
                            "values, or split the run")])
    if n > WARN_UNITS:
        logging.getLogger(__name__).warning("the run has %s; planning and training them takes "
                                            "a while", what)


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
            problems.append((f"explainers.{i}", f"{spec.name} needs a CAM layer, but model "
                             f"'{cfg.model.name}' has no {option}: set model.{option} to the "
                             "dotted name of your module's last convolutional stage (e.g. layer4, "
                             "features.7; xaiarena does not guess: the last nn.Conv2d is often a "
                             "residual branch or a shortcut), or this explainer's layer option "
                             "(net.<name>)"))
    return problems


def grid_points(cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of ``cfg.grid`` as ``(label, raw config)`` (without the grid); one point
    ``("", raw)`` without a grid. Labels name the values (``model.name=resnet+training.lr=0.01``), or
    the point's index where that is not a plain file name."""
    import itertools

    base = cfg.to_dict()
    grid = base.pop("grid", None) or {}
    if not grid:
        return [("", base)]
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        raw = apply_overrides(base, dict(zip(keys, combo, strict=True)))
        parts = []
        for k, v in zip(keys, combo, strict=True):
            if isinstance(v, dict):
                v = v.get("label") or v.get("name")
            parts.append(f"{k}={v}")
        label = "+".join(parts)
        if len(label) > MAX_NAME or not SAFE_NAME.match(label) or ".." in label:
            label = f"g{i}"
        points.append((label, raw))
    return points


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (the built-in default when ``path`` is None) and validate it."""
    if isinstance(path, ExperimentConfig):
        raw = path.to_dict()
    elif isinstance(path, dict):
        check_size(path)  # before deepcopy: a mapping with shared or self-referencing parts
        raw = copy.deepcopy(path)
    else:
        raw = load_raw(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    raw = apply_preset(raw, overrides)
    return validate(raw)


def apply_preset(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply ``presets[preset]`` (then the command-line overrides again, so that they win)."""
    name = raw.get("preset")
    if name is None:
        return raw
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict) or name not in presets:
        valid = ", ".join(presets) if isinstance(presets, dict) and presets else "(none defined)"
        hint = suggest(str(name), list(presets)) if isinstance(presets, dict) else None
        raise ConfigError([("preset", f"bad value {name!r}: no such preset{f' (did you mean {hint!r}?)' if hint else ''}"
                                      f"; valid: {valid}")])
    values = presets[name]
    if not isinstance(values, dict):
        raise ConfigError([(f"presets.{name}", "a preset is a mapping of key.path: value overrides")])
    raw = apply_overrides(raw, values)
    return apply_overrides(raw, overrides) if overrides else raw


from .dissect.config import DissectConfig, dissect_problems  # noqa: E402  (it builds on ComponentSpec above)

ExperimentConfig.model_rebuild()
