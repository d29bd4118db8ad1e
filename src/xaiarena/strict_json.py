"""Strict JSON: what ``list --json`` and ``run.json`` are written with (NaN and +-inf as null)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch


def json_safe(obj: Any) -> Any:
    """Turn ``obj`` into strict JSON data: NaN and +-inf become ``null``; numpy/torch scalars
    and tensors become Python numbers and lists; anything else unknown becomes its ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` data; always valid strict JSON (no NaN/Infinity)."""
    kwargs.setdefault("indent", 2)
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
