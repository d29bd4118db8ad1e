"""Sample shards: the evaluation set in consecutive ranges of ``evaluation.shard_size`` samples.

The explain and score stages (:mod:`xaiarena.engine.stages`) work shard by shard and cache each
shard on its own (one file per explainer x view x shard), so a task holds one shard's maps at a
time and a killed run resumes with only its unfinished shards. :class:`ShardedMaps` is one
explainer's maps on one view as those files: indexed like an ``(N, ...)`` tensor, it reads only
the shards an index touches, as float32 whatever ``evaluation.map_dtype`` stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import RunError

#: ``evaluation.map_dtype``: how cached maps are stored
MAP_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shard_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``n`` samples in consecutive shards of ``size`` (the last one
    shorter); one empty shard for an empty set."""
    if size < 1:
        raise ValueError(f"shard size {size!r} must be >= 1")
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def shard_name(stem: str, bounds: tuple[int, int], suffix: str) -> str:
    """The file name of one shard's artefact: ``<stem>.<start>-<stop><suffix>``."""
    return f"{stem}.{bounds[0]}-{bounds[1]}{suffix}"


def stored(maps: torch.Tensor, dtype: str) -> torch.Tensor:
    """``maps`` as ``evaluation.map_dtype`` stores them (contiguous, CPU)."""
    return maps.to(MAP_DTYPES[dtype]).contiguous()


class ShardProgress:
    """Shards done / total of one stage, as a progress line at most every ``every`` seconds
    (a long stage in a log without a terminal; the stage's last line says the total)."""

    def __init__(self, what: str, total: int, say: Callable[[str], None] | None, every=30.0):
        self.what, self.total, self.say, self.every = what, total, say, every
        self.done = 0
        self.last = time.monotonic()

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.say is not None and self.done < self.total and now - self.last >= self.every:
            self.last = now
            self.say(f"[xaiarena] {self.what}: {self.done}/{self.total} shards done")


class ShardedMaps:
    """One explainer's ``(N, ...)`` maps on one view, as cached shard files, read on demand.

    ``maps[i]``, ``maps[a:b]``, ``maps[index_tensor]`` and ``maps[rows, ...]`` read only the
    shards they touch (as float32); :meth:`shard` reads one shard, :meth:`full` all of them.
    Nothing is kept in memory between calls."""

    def __init__(self, cache: Any, paths: list[Path], bounds: list[tuple[int, int]], what: str):
        if len(paths) != len(bounds):
            raise ValueError(f"{len(paths)} shard files for {len(bounds)} shards")
        self.cache, self.paths, self.bounds, self.what = cache, list(paths), list(bounds), what
        self.n = bounds[-1][1] if bounds else 0
        self._item_shape: torch.Size | None = None  # one map's shape, read once

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ShardedMaps({self.what!r}, {self.n} samples in {len(self.paths)} shards)"

    def shard(self, i: int) -> torch.Tensor:
        """The maps of shard ``i`` (float32)."""
        maps = self.cache.load_torch(self.paths[i])
        a, b = self.bounds[i]
        if maps is None or len(maps) != b - a:
            raise RunError(
                f"the cached maps of {self.what} (samples {a}..{b - 1}) are missing or corrupt: "
                f"{self.paths[i]}; run the config again to recompute them"
            )
        return maps.float()

    def full(self) -> torch.Tensor:
        """Every shard's maps, concatenated (float32)."""
        return self[0 : self.n]

    @property
    def shape(self) -> torch.Size:
        if not self.n:
            return torch.Size([0])
        if self._item_shape is None:  # not a disk read on every access
            self._item_shape = self.shard(0).shape[1:]
        return torch.Size([self.n, *self._item_shape])

    def __getitem__(self, index: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        if isinstance(index, int):
            out = self._rows(torch.tensor([index]))[0]
            return out[rest] if rest else out
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            out = (
                self._range(start, stop)
                if step == 1
                else self._rows(torch.arange(start, stop, step))
            )
        else:
            rows = torch.as_tensor(index)
            if rows.dtype == torch.bool:
                if rows.shape != (self.n,):
                    raise IndexError(f"a mask of shape {tuple(rows.shape)} for {self.n} samples")
                rows = torch.nonzero(rows).flatten()
            out = self._rows(rows.long().reshape(-1))
        return out[(slice(None), *rest)] if rest else out

    def _range(self, start: int, stop: int) -> torch.Tensor:
        parts = []
        for i, (a, b) in enumerate(self.bounds):
            if b > start and a < stop:
                parts.append(self.shard(i)[max(start, a) - a : min(stop, b) - a])
        if not parts:  # an empty range: the maps' shape without rows
            return self.shard(0)[:0] if self.n else torch.empty(0)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        rows = torch.where(rows < 0, rows + self.n, rows)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n):
            raise IndexError(f"index out of range for {self.n} samples")
        starts = torch.tensor([a for a, _ in self.bounds])
        which = torch.searchsorted(starts, rows, right=True) - 1
        out: torch.Tensor | None = None
        for i in which.unique().tolist():
            sel = torch.nonzero(which == i).flatten()
            part = self.shard(i)[rows[sel] - self.bounds[i][0]]
            if out is None:
                out = part.new_empty((len(rows), *part.shape[1:]))
            out[sel] = part
        if out is None:
            return self.shard(0)[:0] if self.n else torch.empty(0)
        return out


__all__ = ["MAP_DTYPES", "ShardProgress", "ShardedMaps", "shard_bounds", "shard_name", "stored"]
