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

The package, from the bottom up:

* :mod:`.components`: strict models, safe names, :class:`ComponentSpec` and
  :func:`check_component` (a spec against its registry); what other config sections
  (``dissect:``, :mod:`xaiarena.dissect.config`) build on;
* :mod:`.schema`: :class:`ExperimentConfig` and its sections;
* :mod:`.safe_yaml`: YAML without duplicate keys and with a bounded number of values;
* :mod:`.overrides`: ``--set key.path=value`` and ``preset: NAME``;
* :mod:`.grid`: the grid's points and the run's size;
* :mod:`.validation`: a raw mapping validated into an :class:`ExperimentConfig`, every
  problem reported at once; :func:`validate_components` for the functional API;
* :mod:`.loading`: :func:`load_config` (a file, a mapping or a config, then overrides, preset,
  validation).

Everything below is importable from ``xaiarena.config``.
"""

from __future__ import annotations

from ..hashing import stable_hash
from .components import (
    MAX_NAME,
    SAFE_NAME,
    ComponentSpec,
    StrictModel,
    check_component,
    check_safe_name,
)
from .grid import MAX_UNITS, WARN_UNITS, check_run_size, grid_points, run_size
from .loading import DEFAULT_CONFIG_NAME, default_config_path, load_config, load_raw
from .overrides import apply_overrides, apply_preset, parse_value
from .safe_yaml import MAX_CONFIG_VALUES, DuplicateKeyError, check_size, yaml_load
from .schema import (
    DataConfig,
    EvaluationConfig,
    ExperimentConfig,
    ExplainerSpec,
    MetricSpec,
    ProtocolRow,
    RayConfig,
    ReferenceValue,
    StudyConfig,
    TrainingConfig,
)
from .validation import GROUPS, cam_layer_problems, validate, validate_components

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "GROUPS",
    "MAX_CONFIG_VALUES",
    "MAX_NAME",
    "MAX_UNITS",
    "SAFE_NAME",
    "WARN_UNITS",
    "ComponentSpec",
    "DataConfig",
    "DuplicateKeyError",
    "EvaluationConfig",
    "ExperimentConfig",
    "ExplainerSpec",
    "MetricSpec",
    "ProtocolRow",
    "RayConfig",
    "ReferenceValue",
    "StrictModel",
    "StudyConfig",
    "TrainingConfig",
    "apply_overrides",
    "apply_preset",
    "cam_layer_problems",
    "check_component",
    "check_run_size",
    "check_safe_name",
    "check_size",
    "default_config_path",
    "grid_points",
    "load_config",
    "load_raw",
    "parse_value",
    "run_size",
    "stable_hash",
    "validate",
    "validate_components",
    "yaml_load",
]
