"""Reading a config: a YAML file (or a mapping, or a config), then overrides, preset, validation."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .overrides import apply_overrides, apply_preset
from .safe_yaml import check_size, yaml_load
from .schema import ExperimentConfig
from .validation import validate

DEFAULT_CONFIG_NAME = "default.yaml"


def default_config_path() -> Path:
    return Path(str(resources.files("xaiarena") / "configs" / DEFAULT_CONFIG_NAME))


def load_raw(path: str | Path | None) -> dict[str, Any]:
    path = default_config_path() if path is None else Path(path)
    if not path.exists():
        raise ConfigError([("", f"config file '{path}' does not exist")])
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))[:8]
        raise ConfigError(
            [
                (
                    "",
                    f"'{path}' is a folder, not a config file"
                    + (f"; YAML files in it: {', '.join(yamls)}" if yamls else ""),
                )
            ]
        )
    try:
        raw = yaml_load(path.read_text(), f"'{path}'")
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"'{path}' is not valid YAML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read '{path}': {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([("", f"'{path}' must hold a mapping at the top level")])
    return raw


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
