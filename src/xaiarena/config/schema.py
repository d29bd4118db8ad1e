"""The experiment configuration's pydantic models: :class:`ExperimentConfig` and its sections.

Every key is validated by these models (types, ranges, unknown keys); names and options of
components are checked against the registries by :mod:`.validation`, which reads the raw
mapping so that every problem of a file is reported at once.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from .. import postprocess
from ..dissect.config import DissectConfig
from ..hashing import stable_seed
from .components import ComponentSpec, StrictModel, check_safe_name


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
        if value is None:
            return [] if info.field_name == "postprocess" else None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(
                f"{info.field_name} must be a list of steps; valid steps: "
                f"{', '.join(postprocess.STEPS)}"
            )
        steps = postprocess.check(list(value))
        if info.field_name == "reexplain_postprocess":
            bad = [st for st in steps if postprocess.over_set(st)]
            if bad:
                per_sample = bad[0].removesuffix(postprocess.SET_SUFFIX)
                raise ValueError(
                    f"step '{bad[0]}' normalises over the evaluation set, but "
                    "re-explained maps come in chunks of noisy copies; use a "
                    f"per-sample step ('{per_sample}') or none ([])"
                )
        return steps

    @model_validator(mode="after")
    def _reexplain_given(self) -> ExplainerSpec:
        bad = [st for st in self.postprocess if postprocess.over_set(st)]
        if bad and self.reexplain_postprocess is None:
            raise ValueError(
                f"postprocess step '{bad[0]}' normalises over the evaluation set, "
                "which re-explained maps (robustness metrics, mprt) are not: give "
                "reexplain_postprocess, e.g. [] (the explainer's raw maps, as "
                "Quantus's explain_func) or per-sample steps"
            )
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


class TrainingConfig(StrictModel):
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


class EvaluationConfig(StrictModel):
    n_samples: int = Field(256, ge=1)
    only_correct: bool = False
    # "auto": sized from free GPU memory on CUDA (engine.batching.auto_batch_size), 64 on CPU
    batch_size: int | Literal["auto"] = 64
    # the class each map explains: the true label, the model's prediction, or one fixed class for
    # every sample (a class index, or a class name of the model's label space, e.g. "airliner")
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
    # the evaluation set is explained and scored in shards of this many samples, each cached
    # on its own (memory per task does not grow with n_samples; a killed run resumes by shard).
    # Results do not depend on it (docs/architecture.md, "Shards"); a multiple of batch_size
    # keeps the batches of an unsharded run
    shard_size: int = 512
    # how cached maps are stored: float16 / bfloat16 halve the cache, and every metric then
    # scores the maps rounded to that precision (docs/architecture.md, "Shards")
    map_dtype: Literal["float32", "float16", "bfloat16"] = "float32"

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

    @field_validator("shard_size", mode="before")
    @classmethod
    def _shard_size(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a shard size; valid: an integer >= 1 (samples)")
        return value


class RayConfig(StrictModel):
    """How ``executor: ray`` runs the stage graph (see docs/distributed.md)."""

    address: str | None = (
        None  # a running cluster ("auto", "ray://host:10001"); None starts a local instance
    )
    num_cpus: int | None = Field(None, ge=1)  # CPUs of a local instance (default: all)
    # resource request of every train/fit/explain/score task; None: the run's torch thread count
    # (training.num_threads, else the driver's), which every task computes with whatever it asks for
    cpus_per_task: float | None = Field(None, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    max_retries: int = Field(3, ge=0)  # a task whose worker dies is retried this often
    # seconds to wait for the cluster at `address` to answer (then an error naming it)
    connect_timeout: float = Field(30.0, gt=0, le=3600)


class ProtocolRow(StrictModel):
    """One setting of a source study: what the source did, what this config does, and why."""

    setting: str
    source: str
    ours: str
    why: str = ""


class ReferenceValue(StrictModel):
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


class StudyConfig(StrictModel):
    """A study's question and the source-specific analyses its report adds (docs/studies.md)."""

    id: str
    title: str
    question: str
    # the source's own analyses, shown beside ours and labelled as such:
    #   improvement: per-dataset difference a - b on one metric, "a better", wins k/n, a bar
    #                chart, and the across-dataset paired t-test and Cohen's d (pooled SD) the
    #                source computed, once per scoring model (both maps always scored on the same
    #                model)
    #   agreement_bands: agreement outputs with bands (>= 0.7 high, >= 0.4 moderate, else low),
    #                accuracy chart
    #   per_image: per-image table of agreement outputs named by file; LIME superpixel figures
    #   fg_bg: t, p and Cohen's d_z of object vs background, beside the source's
    analyses: list[Literal["improvement", "agreement_bands", "per_image", "fg_bg"]] = Field(
        default_factory=list
    )
    compare: list[str] | None = None  # improvement: [a, b] explainer labels
    metric: str | None = None  # improvement: the output compared


class ExperimentConfig(StrictModel):
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    # bfloat16 autocast for forward passes on CUDA (training, explaining, metrics); no-op on CPU
    amp: bool = False
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
    # several runs in one: {key.path: [value, ...]} expands to every combination (results column
    # `grid`)
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
    dissect: DissectConfig | None = (
        None  # neuron labelling (xaiarena dissect), see dissect/config.py
    )

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
            if key.split(".")[0] in (
                "grid",
                "seeds",
                "replicates",
                "executor",
                "ray",
                "name",
                "output",
            ):
                raise ValueError(f"grid.{key}: '{key.split('.')[0]}' cannot vary inside one run")
        return value

    def replicate_seeds(self) -> list[int]:
        """The seed of every replicate: ``seeds``, or ``seed`` then seeds derived from it."""
        if self.seeds is not None:
            return list(self.seeds)
        return [self.seed] + [
            stable_seed(self.seed, "replicate", i) for i in range(1, self.replicates)
        ]

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
                raise ValueError(
                    f"'{value}' was asked for but CUDA is not available on this machine (torch "
                    f"{torch.__version__}); use device: auto or cpu"
                )
            if ":" in value and int(value[5:]) >= torch.cuda.device_count():
                raise ValueError(
                    f"'{value}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                    f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
                )
        return value

    def to_dict(self) -> dict[str, Any]:
        # no dissect section: left out, so configs (and their hashes) without one are as before
        return self.model_dump(mode="json", exclude={"dissect"} if self.dissect is None else None)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
