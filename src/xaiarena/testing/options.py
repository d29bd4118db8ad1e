"""The option checks both kits run: declared constraints, defaults, and bad values refused in the
one format of :mod:`xaiarena.ops.validation`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..ops.validation import OptionError, invalid_values, validate_options


def parameters(cls: Any, reserved: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """The keyword options a component's constructor takes (what a config may set)."""
    params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
    return {
        n: p
        for n, p in params.items()
        if n != "self" and n not in reserved and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def check_defaults(cls: Any, name: str) -> None:
    """Every option has a default (configs may omit it), and every declared constraint names an
    option of the constructor and accepts its default."""
    params = parameters(cls)
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty]
    assert not missing, (
        f"option(s) {', '.join(missing)} have no default; configs must be able to omit them"
    )
    constraints = getattr(cls, "option_constraints", {}) or {}
    unknown = [o for o in constraints if o not in params]
    assert not unknown, (
        f"option_constraints declares {', '.join(unknown)}, which the constructor does not "
        f"take (options: {', '.join(params) or 'none'})"
    )
    for option, spec in constraints.items():
        default = params[option].default
        try:
            validate_options(name, {option: spec}, {option: default})
        except OptionError as exc:
            raise AssertionError(
                f"the default of {option} breaks its own constraint: {exc}"
            ) from None


def check_bad_values(
    build: Callable[..., Any], cls: Any, name: str, options: Mapping[str, Any]
) -> int:
    """For every declared constraint, values it refuses must make ``build(**options)`` raise
    :class:`~xaiarena.ops.validation.OptionError` naming the component, the option, the value and
    what is valid (``"<name>: <option>=<value> is not valid; it must be ..."``). Returns how many
    bad values were tried."""
    constraints = getattr(cls, "option_constraints", {}) or {}
    params = parameters(cls)
    undeclared = [
        p
        for p, v in params.items()
        if p not in constraints
        and isinstance(v.default, (int, float, str))
        and not isinstance(v.default, bool)
    ]
    assert not undeclared, (
        f"option(s) {', '.join(undeclared)} have no declared constraint "
        "(option_constraints): their bad values would not be refused in the one format "
        "(see xaiarena.ops.validation)"
    )
    tried = 0
    for option, spec in constraints.items():
        for bad in invalid_values(spec):
            tried += 1
            try:
                build(**{**options, option: bad})
            except OptionError as exc:
                msg = exc.message
                head = f"{name}: {option}="
                assert msg.startswith(head) and " is not valid; it must be " in msg, (
                    f"{option}={bad!r} was refused, but not in the one format "
                    f"('{head}<value> is not valid; it must be ...'): {msg}"
                )
                assert exc.option == option, (
                    f"{option}={bad!r}: the error names option '{exc.option}'"
                )
                continue
            except Exception as exc:
                raise AssertionError(
                    f"{option}={bad!r} raised {type(exc).__name__} ({exc}), not an OptionError "
                    "naming the option (declare the constraint and call set_options or "
                    "validate_options in the constructor)"
                ) from None
            raise AssertionError(
                f"{option}={bad!r} was accepted, but its declared constraint refuses it"
            )
    return tried
