"""YAML as configs read it: safe, no key given twice, a bounded number of values.

Used for config files (:func:`~xaiarena.config.loading.load_raw`), ``--set`` values
(:func:`~xaiarena.config.overrides.parse_value`) and the CLI's other YAML inputs.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError

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
        super().__init__(
            f"key {key!r} appears twice, at line {first} and at line {second}; the "
            "second would silently replace the first: keep one"
        )


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
                raise ConfigError(
                    [
                        (
                            str(key),
                            f"{where} holds more than {MAX_CONFIG_VALUES:,} "
                            f"values{at} once its YAML aliases (*name) are expanded; "
                            "nested aliases multiply, so a small file can stand for "
                            "billions of values. Write the values out",
                        )
                    ]
                )
            if isinstance(node, dict):
                stack.extend(node.keys())
                stack.extend(node.values())
            elif isinstance(node, (list, tuple)):
                stack.extend(node)
