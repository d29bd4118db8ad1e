"""Quantus 0.6 under NumPy 2, for the tests that use Quantus as an oracle."""

from __future__ import annotations

import sys

import numpy as np


class DivideWithOut:
    """NumPy with ``divide(..., where=...)`` writing into zeros: NumPy 2 warns about ``where``
    without ``out``, and Quantus 0.6's normalise_by_negative turns every warning into an error on
    mixed-sign maps; the positions ``where`` leaves out are masked by Quantus anyway, so values
    are unchanged."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def divide(a, b, where=True, **kw):
        if where is not True and "out" not in kw:
            kw["out"] = np.zeros(
                np.broadcast_shapes(np.shape(a), np.shape(b)), dtype=np.result_type(a, b)
            )
        return np.divide(a, b, where=where, **kw)


def patched_normalise_funcs(monkeypatch):
    """Quantus's ``quantus.functions.normalise_func`` module with :class:`DivideWithOut` as its
    ``np`` for the test (``monkeypatch`` undoes it)."""
    import quantus  # noqa: F401  (loads the module below)

    module = sys.modules["quantus.functions.normalise_func"]
    monkeypatch.setattr(module, "np", DivideWithOut())
    return module
