"""Sample shards: the evaluation set in consecutive ranges of ``evaluation.shard_size`` samples.

The explain and score stages (:mod:`xaiarena.engine.stages`) work shard by shard and cache each
shard on its own (one file per explainer x view x shard), so a task holds one shard's maps at a
time and a killed run resumes with only its unfinished shards. :class:`ShardedTensor` is an
``(N, ...)`` tensor stored as such shard files: indexed like the tensor, it reads only the shards
an index touches. :class:`ShardedMaps` is one explainer's maps on one view (read as float32
whatever ``evaluation.map_dtype`` stored); :class:`ShardedSamples` a unit's evaluation inputs or
masks (``cache/samples/``, :func:`xaiarena.engine.stages.load_samples`), which keep the last
shard read, so that the batches of one shard read its file once.
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


class ShardedTensor:
    """An ``(N, ...)`` tensor as cached shard files (one per ``bounds`` range), read on demand.

    ``t[i]``, ``t[a:b]``, ``t[index_tensor]`` and ``t[rows, ...]`` read only the shards they
    touch; :meth:`shard` reads one shard, :meth:`full` all of them. Nothing is kept in memory
    between calls, except the last shard read where ``keep_last`` (one shard at most)."""

    #: what the files hold, for the error of a missing or corrupt shard
    noun = "tensors"
    keep_last = False

    def __init__(self, cache: Any, paths: list[Path], bounds: list[tuple[int, int]], what: str):
        if len(paths) != len(bounds):
            raise ValueError(f"{len(paths)} shard files for {len(bounds)} shards")
        self.cache, self.paths, self.bounds, self.what = cache, list(paths), list(bounds), what
        self.n = bounds[-1][1] if bounds else 0
        self._item_shape: torch.Size | None = None  # one item's shape, read once
        self._last: tuple[int, torch.Tensor] | None = None  # keep_last: (shard, its tensor)

    def _convert(self, t: torch.Tensor) -> torch.Tensor:
        """What a shard read returns of the stored tensor (as stored here)."""
        return t

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}({self.what!r}, {self.n} samples in {len(self.paths)} shards)"

    def shard(self, i: int) -> torch.Tensor:
        """The tensor of shard ``i``."""
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        t = self.cache.load_torch(self.paths[i])
        a, b = self.bounds[i]
        if t is None or len(t) != b - a:
            raise RunError(
                f"the cached {self.noun} of {self.what} (samples {a}..{b - 1}) are missing or "
                f"corrupt: {self.paths[i]}; run the config again to recompute them"
            )
        t = self._convert(t)
        if self.keep_last:
            self._last = (i, t)
        return t

    def full(self) -> torch.Tensor:
        """Every shard's tensor, concatenated."""
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


class ShardedMaps(ShardedTensor):
    """One explainer's ``(N, ...)`` maps on one view, as cached shard files, read on demand as
    float32 (whatever ``evaluation.map_dtype`` stored)."""

    noun = "maps"

    def _convert(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()


class ShardedSamples(ShardedTensor):
    """A unit's evaluation inputs (or masks) as cached shard files, read on demand as stored; the
    last shard read is kept (the batches of a shard read its file once)."""

    noun = "evaluation samples"
    keep_last = True


__all__ = [
    "MAP_DTYPES",
    "ShardProgress",
    "ShardedMaps",
    "ShardedSamples",
    "ShardedTensor",
    "shard_bounds",
    "shard_name",
    "stored",
]
