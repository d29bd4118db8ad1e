"""The options of the dissection components, declared once (:mod:`xaiarena.ops.validation`).

A component raises :class:`~xaiarena.ops.validation.OptionError` (``option`` names the option at
fault) in the one format of every component's option errors; config validation
(:func:`~xaiarena.dissect.config.dissect_problems`) and the dissect runner turn it into a
:class:`~xaiarena.errors.ConfigError` at ``dissect.<component>.<option>`` (CLI exit 2). An
option whose value does not fit the data (``top_k`` above the number of probe images) raises the
same error with its own sentence.
"""

from __future__ import annotations

from typing import Any

from ..ops.validation import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Interval,
    OptionError,
    validate_options,
)

__all__ = ["SIMILARITY_OPTIONS", "OptionError", "check_similarity_options", "option_problems"]

#: a probability of a rank's image belonging to a neuron's set
PROBABILITY = Interval(float, 0, 1, closed="right", noun="a probability")

#: what each similarity option accepts (the same rule wherever an option of that name appears)
SIMILARITY_OPTIONS: dict[str, Any] = {
    "top_k": COUNT,
    "a": POSITIVE,
    "lam": NON_NEGATIVE,
    "p_start": PROBABILITY,
    "p_end": PROBABILITY,
    "min_prob": POSITIVE,
    "p": POSITIVE,
    "top_fraction": Interval(float, 0, 1, closed="right", noun="a fraction"),
    "scale_p": NON_NEGATIVE,
    "min_norm": POSITIVE,
}


def option_problems(name: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(option, message)`` for every option in ``params`` of the similarity function ``name``
    that :data:`SIMILARITY_OPTIONS` refuses."""
    out = []
    for key, value in params.items():
        try:
            validate_options(name, SIMILARITY_OPTIONS, {key: value})
        except OptionError as exc:
            out.append((key, exc.message))
    return out


def check_similarity_options(name: str, **options: Any) -> None:
    """OptionError for the first option of the similarity function ``name`` that
    :data:`SIMILARITY_OPTIONS` refuses."""
    validate_options(name, SIMILARITY_OPTIONS, options)
