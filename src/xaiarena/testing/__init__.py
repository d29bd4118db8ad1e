"""Conformance kit: check that an explainer or a metric keeps the contract every built-in keeps.

::

    from xaiarena.testing import check_explainer, check_metric

    check_explainer("vargrad", {"n_samples": 4})      # a registered name, or the class
    check_metric("top_mass")

Each call runs every check on tiny fixed models and inputs (:mod:`xaiarena.testing.fixtures`;
give your own with ``model=``/``inputs=``/``targets=`` or ``batch=``/``maps=``/``explainers=``)
and raises :class:`ConformanceError` listing every check that failed, or returns a
:class:`CheckReport`. The checks: metadata, option validation (declared constraints, bad values
refused in the one format of :mod:`xaiarena.ops.validation`), the output shape, determinism
under a seed, and independence from the batch size and from the batch mates. xaiarena's own
test suite runs them on every registered explainer and metric; a plugin's tests call them on its
components (docs/byo.md).
"""

from __future__ import annotations

from .explainers import check_explainer
from .metrics import check_metric
from .report import CheckReport, ConformanceError

__all__ = ["CheckReport", "ConformanceError", "check_explainer", "check_metric"]
