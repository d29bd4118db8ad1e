"""Pairs of explainers that agreement metrics compare, and their ``"<a>~<b>"`` labels.

With ``reference=None`` every unordered pair is compared once, ``a`` before ``b`` in the order
the maps are given; with ``reference="name"`` every other explainer is compared to that one and
the key is ``"<reference>~<other>"``. Result tables hold the pair labels where the explainer's
name goes (:func:`is_pair`).
"""

from __future__ import annotations

PAIR_SEPARATOR = "~"


def pair_key(a: str, b: str) -> str:
    """The label of the pair ``(a, b)``: ``"<a>~<b>"``."""
    return f"{a}{PAIR_SEPARATOR}{b}"


def is_pair(label: str) -> bool:
    """Whether a result row's explainer label names a pair of explainers."""
    return PAIR_SEPARATOR in str(label)


def has_pairs(names: list[str], reference: str | None) -> bool:
    """Whether ``names`` give an agreement metric anything to compare."""
    return len(names) >= 2 and (reference is None or reference in names)


def explainer_pairs(
    names: list[str], reference: str | None, component: str
) -> list[tuple[str, str]]:
    """The pairs of ``names`` to compare (see the module docstring); a ``reference`` that is not
    among them is a ValueError naming ``component`` and the valid names."""
    if reference is None:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    if reference not in names:
        raise ValueError(
            f"{component}: reference='{reference}' is not among the explainers; "
            f"valid: {', '.join(names)}"
        )
    return [(reference, b) for b in names if b != reference]
