"""``--set key.path=value`` overrides and named presets (``preset: NAME``), on the raw mapping.

Overrides apply before validation, so a value set from the command line is checked like one
written in the file. A preset is a named set of overrides in the config's ``presets:``
section; it applies after the file and before the other overrides, which are applied again
after it so that they win.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..errors import ConfigError, suggest
from .safe_yaml import yaml_load


def parse_value(text: str) -> Any:
    """A ``--set key=value`` value: parsed as YAML (``16``, ``[a, b]``, ``{name: x}``), else the
    text."""
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
            items.append((key.strip(), parse_value(val)))
    for key, val in items:
        parts = key.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: i + 1], next_is_index=parts[i + 1].isdigit())
        last = parts[-1]
        if not isinstance(node, (dict, list)):
            parent = ".".join(parts[:-1])
            raise ConfigError(
                [
                    (
                        key,
                        f"cannot set '{last}' inside '{parent}', whose value {node!r} is not a "
                        "mapping or a list",
                    )
                ]
            )
        if isinstance(node, list):
            idx = _index(node, last, parts)
            node[idx] = val
        else:
            node[last] = val
    return raw


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            [(".".join(parts), f"index '{part}' out of range (list has {len(node)} items)")]
        )
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


def apply_preset(
    raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Apply ``presets[preset]`` (then the command-line overrides again, so that they win)."""
    name = raw.get("preset")
    if name is None:
        return raw
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict) or name not in presets:
        valid = ", ".join(presets) if isinstance(presets, dict) and presets else "(none defined)"
        hint = suggest(str(name), list(presets)) if isinstance(presets, dict) else None
        raise ConfigError(
            [
                (
                    "preset",
                    f"bad value {name!r}: no such "
                    f"preset{f' (did you mean {hint!r}?)' if hint else ''}; valid: {valid}",
                )
            ]
        )
    values = presets[name]
    if not isinstance(values, dict):
        raise ConfigError(
            [(f"presets.{name}", "a preset is a mapping of key.path: value overrides")]
        )
    raw = apply_overrides(raw, values)
    return apply_overrides(raw, overrides) if overrides else raw
