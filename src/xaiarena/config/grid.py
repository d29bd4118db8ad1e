"""The size of a run and the points of its grid (``grid: {key.path: [values]}``).

A run plans one unit per (grid point, replicate seed, dataset entry); :func:`check_run_size`
bounds that count before anything is expanded, and :func:`grid_points` expands the grid into
one raw config per combination.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from typing import Any

from ..errors import ConfigError
from .components import MAX_NAME, SAFE_NAME
from .overrides import apply_overrides
from .schema import ExperimentConfig

log = logging.getLogger(__name__)

#: the most units (grid points x replicates x datasets) one run may plan: every unit trains a model,
#: and planning, validating and recording them costs time per unit before any work
#: ($XAIARENA_MAX_UNITS overrides it)
MAX_UNITS = 10_000
#: above this many units a run is planned with a warning
WARN_UNITS = 1_000


def run_size(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """``(grid points, replicates, datasets)`` of ``cfg``, counted without expanding anything."""
    points = math.prod(len(v) for v in (cfg.grid or {}).values()) if cfg.grid else 1
    replicates = len(cfg.seeds) if cfg.seeds is not None else cfg.replicates
    return points, replicates, len(cfg.data)


def check_run_size(cfg: ExperimentConfig) -> None:
    """``ConfigError`` when ``cfg`` plans more than ``$XAIARENA_MAX_UNITS`` (default
    :data:`MAX_UNITS`) units, a warning above :data:`WARN_UNITS`; in microseconds, before any grid
    point is expanded."""
    points, replicates, datasets = run_size(cfg)
    n = points * replicates * datasets
    try:
        limit = int(os.environ.get("XAIARENA_MAX_UNITS", MAX_UNITS))
    except ValueError:
        limit = MAX_UNITS
    what = (
        f"{n:,} units (grid points x replicates x datasets = {points:,} x {replicates:,} x "
        f"{datasets}), each training a model"
    )
    if n > limit:
        key = (
            "grid"
            if points > 1 and points >= replicates
            else "seeds"
            if cfg.seeds is not None
            else "replicates"
        )
        raise ConfigError(
            [
                (
                    key,
                    f"the run has {what}; at most {limit:,} are planned "
                    "(XAIARENA_MAX_UNITS raises the bound). Lower replicates or the grid's "
                    "values, or split the run",
                )
            ]
        )
    if n > WARN_UNITS:
        log.warning("the run has %s; planning and training them takes a while", what)


def grid_points(cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of ``cfg.grid`` as ``(label, raw config)`` (without the grid); one point
    ``("", raw)`` without a grid. Labels name the values (``model.name=resnet+training.lr=0.01``),
    or the point's index where that is not a plain file name."""
    base = cfg.to_dict()
    grid = base.pop("grid", None) or {}
    if not grid:
        return [("", base)]
    keys = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        raw = apply_overrides(base, dict(zip(keys, combo, strict=True)))
        parts = []
        for k, v in zip(keys, combo, strict=True):
            if isinstance(v, dict):
                v = v.get("label") or v.get("name")
            parts.append(f"{k}={v}")
        label = "+".join(parts)
        if len(label) > MAX_NAME or not SAFE_NAME.match(label) or ".." in label:
            label = f"g{i}"
        points.append((label, raw))
    return points
