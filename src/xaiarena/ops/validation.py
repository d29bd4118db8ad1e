"""Option validation: one declarative style and one message for every component.

A component declares what each of its options accepts, as a list of constraints (any one
of them may hold, as in scikit-learn's ``_parameter_constraints``)::

    class IntegratedGradientsExplainer(Explainer):
        option_constraints = {
            "n_steps": [Interval(int, 1, None)],
            "baseline": [OneOf(BASELINES)],
            "num_features": [Interval(int, 1, None), Null("all features")],
        }

and checks its constructor's arguments with one call, :func:`validate_options`, which returns
them converted (an integer option as ``int``, a number as ``float``) or raises
:class:`OptionError` with one message that names the component, the option, the bad value and
what is valid::

    integrated_gradients: n_steps=0 is not valid; it must be an integer >= 1
    deletion: fill='bluur' is not valid; it must be one of black, white, mean, blur, uniform or a
        finite number (did you mean 'blur'?)

Checks that involve several options, or the data an option meets, raise the same
:class:`OptionError` through :func:`option_error` (same format) or with their own sentence.
The declared constraints are also what :mod:`xaiarena.testing` reads to try bad values on a
component.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import suggest

__all__ = [
    "COUNT",
    "FINITE",
    "FRACTION",
    "NON_NEGATIVE",
    "POSITIVE",
    "Boolean",
    "Constraint",
    "Interval",
    "ListOf",
    "Null",
    "OneOf",
    "OptionError",
    "Satisfies",
    "Text",
    "describe",
    "invalid_values",
    "option_error",
    "option_message",
    "set_options",
    "validate_options",
]

_MISSING = object()


class OptionError(ValueError):
    """An option value that is not valid, or does not fit the data it meets.

    ``component`` and ``option`` name it, ``value`` is the value given (when known) and
    ``message`` the whole sentence (also ``str(error)``)."""

    def __init__(self, component: str, option: str, message: str, value: Any = _MISSING):
        self.component = component
        self.option = option
        self.message = message
        if value is not _MISSING:
            self.value = value
        super().__init__(message)


# --------------------------------------------------------------------------- constraints


class Constraint:
    """One kind of value an option accepts."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The accepted ``value`` as the component uses it (default: unchanged)."""
        return value

    def describe(self) -> str:
        """What the constraint accepts, in words ("an integer >= 1")."""
        raise NotImplementedError

    def hint(self, value: Any) -> str | None:
        """A close valid value for a near miss ("did you mean"), or None."""
        return None

    def detail(self, value: Any) -> str | None:
        """Which part of ``value`` breaks the constraint (an item of a list), or None."""
        return None

    def invalid_examples(self) -> list[Any]:
        """Values the constraint refuses (for :mod:`xaiarena.testing`)."""
        return []


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    return ok and math.isfinite(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


class Interval(Constraint):
    """An integer (``kind=int``) or a finite number (``kind=float``) between ``low`` and ``high``
    (None: unbounded). ``closed``: which bounds belong to the interval, ``"both"``, ``"left"``,
    ``"right"`` or ``"neither"``. ``noun`` replaces "a number" / "an integer" in the message
    ("a probability")."""

    def __init__(
        self,
        kind: type,
        low: float | None = None,
        high: float | None = None,
        *,
        closed: str = "both",
        noun: str | None = None,
    ):
        if kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed={closed!r}: one of both, left, right, neither")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed
        self.noun = noun or ("an integer" if kind is int else "a number")

    def _left_closed(self) -> bool:
        return self.closed in ("both", "left")

    def _right_closed(self) -> bool:
        return self.closed in ("both", "right")

    def accepts(self, value: Any) -> bool:
        if not (_is_int(value) if self.kind is int else _is_number(value)):
            return False
        if self.low is not None and (
            value < self.low if self._left_closed() else value <= self.low
        ):
            return False
        return not (
            self.high is not None
            and (value > self.high if self._right_closed() else value >= self.high)
        )

    def convert(self, value: Any) -> Any:
        return int(value) if self.kind is int else float(value)

    def describe(self) -> str:
        lo, hi = self.low, self.high
        if lo is None and hi is None:
            return self.noun if self.kind is int else f"a finite {self.noun.removeprefix('a ')}"
        if hi is None:
            return f"{self.noun} {'>=' if self._left_closed() else '>'} {_fmt(lo)}"
        if lo is None:
            return f"{self.noun} {'<=' if self._right_closed() else '<'} {_fmt(hi)}"
        left, right = "[" if self._left_closed() else "(", "]" if self._right_closed() else ")"
        return f"{self.noun} in {left}{_fmt(lo)}, {_fmt(hi)}{right}"

    def invalid_examples(self) -> list[Any]:
        out: list[Any] = ["a"]
        step = 1 if self.kind is int else 0.5
        if self.low is not None:
            out.append(self.low - step if self._left_closed() else self.low)
        if self.high is not None:
            out.append(self.high + step if self._right_closed() else self.high)
        if self.kind is int:
            out.append((self.low if self.low is not None else 0) + 1.5)
        else:
            out.append(float("nan"))
        return out


class OneOf(Constraint):
    """One of the given ``choices`` (names, usually)."""

    def __init__(self, choices: Iterable[Any]):
        self.choices = tuple(choices)

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.choices and not isinstance(value, (list, dict))
        except TypeError:  # an unhashable value compared to a set-like
            return False

    def describe(self) -> str:
        if len(self.choices) == 1:
            return repr(self.choices[0])
        return f"one of {', '.join(str(c) for c in self.choices)}"

    def hint(self, value: Any) -> str | None:
        names = [c for c in self.choices if isinstance(c, str)]
        return suggest(value, names) if isinstance(value, str) and names else None

    def invalid_examples(self) -> list[Any]:
        return ["not_an_option"]


class Null(Constraint):
    """``None`` (``null`` in a config), with what it means ("all layers")."""

    def __init__(self, meaning: str = ""):
        self.meaning = meaning

    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return f"null ({self.meaning})" if self.meaning else "null"


class Boolean(Constraint):
    """``True`` or ``False`` (``description`` replaces "true or false")."""

    def __init__(self, description: str = "true or false"):
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def convert(self, value: Any) -> Any:
        return bool(value)

    def describe(self) -> str:
        return self.description

    def invalid_examples(self) -> list[Any]:
        return ["yes"]


class Text(Constraint):
    """A non-empty string."""

    def __init__(self, description: str = "a non-empty string"):
        self.description = description

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def describe(self) -> str:
        return self.description

    def invalid_examples(self) -> list[Any]:
        return [""]


class ListOf(Constraint):
    """A list (or tuple) whose every item meets one of ``items``: ``min_len`` items at least
    (``max_len`` at most); ``unique``: without repeats (after conversion: 10 and 10.0 repeat);
    ``increasing``: in increasing order. Converted to a tuple of converted items."""

    def __init__(
        self,
        items: Constraint | Sequence[Constraint],
        *,
        min_len: int = 1,
        max_len: int | None = None,
        unique: bool = False,
        increasing: bool = False,
    ):
        self.items = [items] if isinstance(items, Constraint) else list(items)
        self.min_len, self.max_len = min_len, max_len
        self.unique, self.increasing = unique, increasing

    def _item_ok(self, v: Any) -> bool:
        return any(c.accepts(v) for c in self.items)

    def _convert_item(self, v: Any) -> Any:
        return next(c for c in self.items if c.accepts(v)).convert(v)

    def _repeated(self, value: Sequence[Any]) -> Any:
        """The first item whose converted value repeats an earlier one's, else ``_MISSING``."""
        seen: set[Any] = set()
        for v in value:
            c = self._convert_item(v)
            k = c if isinstance(c, (str, int, float, bool, tuple)) else repr(c)
            if k in seen:
                return v
            seen.add(k)
        return _MISSING

    def _ordered(self, value: Sequence[Any]) -> bool:
        items = [self._convert_item(v) for v in value]
        return items == sorted(items)

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        n = len(value)
        if n < self.min_len or (self.max_len is not None and n > self.max_len):
            return False
        if not all(self._item_ok(v) for v in value):
            return False
        if self.increasing and not self._ordered(value):
            return False
        return not (self.unique and self._repeated(value) is not _MISSING)

    def convert(self, value: Any) -> Any:
        return tuple(self._convert_item(v) for v in value)

    def describe(self) -> str:
        if self.max_len is not None and self.max_len == self.min_len:
            size = f"a list of {self.min_len} items"
        else:
            size = "a non-empty list" if self.min_len >= 1 else "a list"
        if self.increasing:
            size = size.replace("list", "increasing list")
        repeats = " without repeats" if self.unique else ""
        return f"{size}{repeats}, each item {' or '.join(c.describe() for c in self.items)}"

    def detail(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return None
        bad = [v for v in value if not self._item_ok(v)]
        if bad:
            return f"{bad[0]!r} is not {' or '.join(c.describe() for c in self.items)}"
        if self.unique and (dup := self._repeated(value)) is not _MISSING:
            return f"{dup!r} is repeated"
        if self.increasing and not self._ordered(value):
            return "the items are not in increasing order"
        return None

    def invalid_examples(self) -> list[Any]:
        out: list[Any] = []
        if self.min_len >= 1:
            out.append([])
        for c in self.items:
            out += [[v] * max(1, self.min_len) for v in c.invalid_examples()[:1]]
        return out


class Satisfies(Constraint):
    """Whatever ``predicate(value)`` accepts, described by ``description`` (``invalid``: values
    it refuses, for :mod:`xaiarena.testing`; ``convert``: how an accepted value is used)."""

    def __init__(
        self,
        predicate: Callable[[Any], bool],
        description: str,
        *,
        invalid: Sequence[Any] = (),
        convert: Callable[[Any], Any] | None = None,
    ):
        self.predicate, self.description = predicate, description
        self._invalid, self._convert = list(invalid), convert

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def convert(self, value: Any) -> Any:
        return value if self._convert is None else self._convert(value)

    def describe(self) -> str:
        return self.description

    def invalid_examples(self) -> list[Any]:
        return list(self._invalid)


# --------------------------------------------------------------------------- the one check


def _constraints(spec: Constraint | Sequence[Constraint | None]) -> list[Constraint]:
    items = [spec] if isinstance(spec, Constraint) else list(spec)
    return [Null() if c is None else c for c in items]


def option_message(
    component: str,
    option: str,
    value: Any,
    expected: str,
    hint: str | None = None,
    detail: str | None = None,
) -> str:
    """The one message of an invalid option: ``"<component>: <option>=<value> is not valid;
    it must be <expected>[ (<detail>)][ (did you mean '<hint>'?)]"``."""
    msg = f"{component}: {option}={value!r} is not valid; it must be {expected}"
    if detail:
        msg += f" ({detail})"
    if hint:
        msg += f" (did you mean '{hint}'?)"
    return msg


def option_error(
    component: str,
    option: str,
    value: Any,
    expected: str,
    hint: str | None = None,
    detail: str | None = None,
) -> OptionError:
    """:class:`OptionError` in the one format, for a check a constraint cannot declare (one
    option's validity depending on another's)."""
    message = option_message(component, option, value, expected, hint, detail)
    return OptionError(component, option, message, value)


def describe(spec: Constraint | Sequence[Constraint | None]) -> str:
    """What an option accepts, in words: the constraints' descriptions joined by "or"."""
    return " or ".join(c.describe() for c in _constraints(spec))


def validate_options(
    component: str,
    constraints: Mapping[str, Constraint | Sequence[Constraint | None]],
    values: Mapping[str, Any],
) -> dict[str, Any]:
    """Check every option of ``values`` that ``constraints`` declares; return ``values`` with
    each checked one converted by the first constraint that accepts it (options without
    constraints are returned unchanged). The first option no constraint accepts raises
    :class:`OptionError` in the one format (see the module docstring)."""
    out = dict(values)
    for option, value in values.items():
        spec = constraints.get(option)
        if spec is None:
            continue
        items = _constraints(spec)
        ok = next((c for c in items if c.accepts(value)), None)
        if ok is not None:
            out[option] = ok.convert(value)
            continue
        hint = next((h for c in items if (h := c.hint(value))), None)
        detail = next((d for c in items if (d := c.detail(value))), None)
        raise OptionError(
            component,
            option,
            option_message(component, option, value, describe(items), hint, detail),
            value,
        )
    return out


def set_options(component: Any, **values: Any) -> None:
    """:func:`validate_options` with ``component.name`` and the constraints its class declares
    (``option_constraints``), then every value set as an attribute of ``component`` under the
    option's name."""
    checked = validate_options(component.name, type(component).option_constraints, values)
    for option, value in checked.items():
        setattr(component, option, value)


def invalid_values(spec: Constraint | Sequence[Constraint | None]) -> list[Any]:
    """Example values that no constraint of ``spec`` accepts (for :mod:`xaiarena.testing`)."""
    items = _constraints(spec)
    out = []
    for c in items:
        for v in c.invalid_examples():
            if not any(other.accepts(v) for other in items) and not any(v is o for o in out):
                out.append(v)
    return out


#: shorthands for the most common constraints
COUNT = Interval(int, 1, None)  # an integer >= 1
POSITIVE = Interval(float, 0, None, closed="neither")  # a number > 0
NON_NEGATIVE = Interval(float, 0, None)  # a number >= 0
FRACTION = Interval(float, 0, 1, closed="right")  # a number in (0, 1]
FINITE = Interval(float)  # a finite number
