"""Option checks shared by the dissection components and config validation.

A component raises :class:`OptionError` naming the option at fault; config validation
(:func:`~xaiarena.dissect.config.dissect_problems`) and the dissect runner turn it into a
:class:`~xaiarena.errors.ConfigError` at ``dissect.<component>.<option>`` (CLI exit 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class OptionError(ValueError):
    """An option value that is invalid, or does not fit the data; ``option`` names it."""

    def __init__(self, option: str, message: str):
        self.option = option
        self.message = message
        super().__init__(message)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


#: what each similarity option must be (the same rule wherever an option of that name appears)
SIMILARITY_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "top_k": (_int_at_least(1), "an integer >= 1"),
    "a": (lambda v: _number(v) and v > 0, "a number > 0"),
    "lam": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "p_start": (lambda v: _number(v) and 0 < v <= 1, "a probability in (0, 1]"),
    "p_end": (lambda v: _number(v) and 0 < v <= 1, "a probability in (0, 1]"),
    "min_prob": (lambda v: _number(v) and v > 0, "a number > 0"),
    "p": (lambda v: _number(v) and v > 0, "a number > 0"),
    "top_fraction": (lambda v: _number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "scale_p": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "min_norm": (lambda v: _number(v) and v > 0, "a number > 0"),
}


def option_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(option, message)`` for every option in ``params`` that breaks :data:`SIMILARITY_RULES`."""
    out = []
    for key, value in params.items():
        rule = SIMILARITY_RULES.get(key)
        if rule is not None and not rule[0](value):
            out.append((key, f"bad value {value!r}: must be {rule[1]}"))
    return out


def check_similarity_options(**options: Any) -> None:
    problems = option_problems(options)
    if problems:
        raise OptionError(*problems[0])


def check_batch_size(batch_size: Any) -> int:
    if not _int_at_least(1)(batch_size):
        raise OptionError("batch_size", f"bad value {batch_size!r}: must be an integer >= 1")
    return batch_size
