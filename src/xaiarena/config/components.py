"""The building blocks of every config section: strict models, safe names, components.

A component (dataset, model, explainer, metric; the dissection's concept set, scorer and
similarity) is written as a bare name or as a mapping with ``name``, an optional ``label`` and
the component's own keyword parameters next to it (:class:`ComponentSpec`).
:func:`check_component` checks such a spec against its registry.

This module imports no other config module and no component, so that a config section defined
next to its feature (the ``dissect:`` section, :mod:`xaiarena.dissect.config`) builds on it
without an import cycle.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import UnknownNameError, suggest
from ..registry import Registry


class StrictModel(BaseModel):
    """A config section: an unknown key is an error, and assigned values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: labels and names become file and folder names in the run directory: a plain file name
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")
MAX_NAME = 64


def check_safe_name(value: str, what: str) -> str:
    """``value`` if it is a plain, short file name (no path separators, no ``..``); else
    ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ValueError(
            f"{what} is {len(value)} characters long; at most {MAX_NAME} (it names files in "
            "the run directory)"
        )
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} may only use letters, digits and _ . + = - (not starting with . or "
            "-, no '..'): it names files in the run directory"
        )
    return value


class ComponentSpec(StrictModel):
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
        if isinstance(value, ComponentSpec) and not isinstance(
            value, cls
        ):  # e.g. a plain spec as an ExplainerSpec
            value = value.model_dump()
        if isinstance(value, dict):
            value = dict(value)
            # the spec's own fields (name, label, and a subclass's extras); every other key is a
            # keyword parameter of the component
            known = {
                k: value.pop(k) for k in list(value) if k in cls.model_fields and k != "params"
            }
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


def _type_hints(factory: Any) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: skip type checks, names are still checked
        return {}


def check_component(
    reg: Registry, spec: ComponentSpec, path: str, problems: list[tuple[str, str]]
) -> None:
    """Append to ``problems`` what is wrong with ``spec`` against its registry ``reg``, at key path
    ``path``: an unknown name (with "did you mean" and the valid names), unknown option names, and
    option values of the wrong type (from the factory's type hints). Option *values* beyond their
    types are the component's own business (config validation then builds it)."""
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
