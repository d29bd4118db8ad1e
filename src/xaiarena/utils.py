"""Former home of small shared helpers, now split by topic; the names stay importable here.

================================  ==============================================================
``xaiarena.files``                every file write (``writes_inside``, ``check_inside``,
                                  ``atomic_write_*``, ``WriteError`` causes), ``load_torch``
``xaiarena.environment``          ``resolve_device``, ``torch_threads``, ``hardware``,
                                  ``versions``, ``user_cache_dir``
``xaiarena.strict_json``          ``json_safe``, ``dumps_json``
``xaiarena.progress``             ``progress`` bars
``xaiarena.ops.seeding``          ``seed_everything`` (and per-sample random streams)
``xaiarena.ops.modes``            ``eval_mode`` (and ``frozen``)
================================  ==============================================================

New code imports from those modules.
"""

from __future__ import annotations

from .environment import hardware, resolve_device, torch_threads, user_cache_dir, versions
from .files import (
    atomic_save_torch,
    atomic_to_csv,
    atomic_to_parquet,
    atomic_write_bytes,
    atomic_write_many,
    atomic_write_text,
    check_inside,
    csv_bytes,
    is_write_error,
    load_torch,
    make_dir,
    parquet_bytes,
    torch_bytes,
    write_error,
    writes_inside,
)
from .ops.modes import eval_mode
from .ops.seeding import seed_everything
from .progress import progress
from .strict_json import dumps_json, json_safe

__all__ = [
    "atomic_save_torch", "atomic_to_csv", "atomic_to_parquet", "atomic_write_bytes",
    "atomic_write_many", "atomic_write_text", "check_inside", "csv_bytes", "dumps_json",
    "eval_mode", "hardware", "is_write_error", "json_safe", "load_torch", "make_dir",
    "parquet_bytes", "progress", "resolve_device", "seed_everything", "torch_bytes", "torch_threads",
    "user_cache_dir", "versions", "write_error", "writes_inside",
]
