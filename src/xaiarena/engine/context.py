"""What the tasks of one unit share within one process, how long each stage took, and the torch
thread count every task computes with.

* :class:`Env`: what every task of a run shares beyond its spec (plain data, sent to Ray workers).
* :class:`UnitContext`: per process and unit, the unit's settings, dataset, trained model, built
  explainers, views and maps, materialised on first use (:func:`context_for`), so the local
  executor never loads anything twice and a Ray worker that runs several tasks of one unit
  loads its data and model once.
* :class:`StageRecorder`: timings, cache hits and where each stage ran (run.json ``stages``).
* :func:`unit_threads`: every task computes with :func:`thread_count` threads.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ComponentSpec
from ..environment import resolve_device
from ..registry import EXPLAINERS
from . import stages
from .batching import Attribution, View, auto_batch_size
from .cache import Cache, stable_hash
from .plan import Unit, home_views, scored_maps, view_members


@dataclass(frozen=True)
class Env:
    """What every task of a run shares beyond its spec (all plain data)."""

    run_dir: str
    show_progress: bool = False
    threads: int = 0  # torch threads of the process that started the run (0: this process' own)
    #: whether a unit's samples and view targets are written to the cache for the tasks of other
    #: processes (``Settings.share_samples``; the Ray executor sets it, a local run never reads
    #: them back)
    share_samples: bool = False


# --------------------------------------------------------------------------- threads


def thread_count(unit: Unit, env: Env) -> int:
    """The torch thread count a unit's work computes with, wherever it runs:
    ``training.num_threads`` where the config sets it, else the thread count of the process that
    started the run. Float sums (training above all) depend on it, so every task, local or on
    Ray, uses it (:func:`unit_threads`)."""
    import torch

    return unit.experiment().training.num_threads or env.threads or torch.get_num_threads()


@contextmanager
def unit_threads(unit: Unit, env: Env) -> Iterator[None]:
    """Compute with :func:`thread_count` threads; the process' count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(thread_count(unit, env))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- stage timings


class StageRecorder:
    """Timings, cache hits and where each stage ran (host, pid), for run.json."""

    def __init__(self, say: Callable[[str], None] | None = None):
        self.stages: dict[str, dict[str, Any]] = {}
        self.say = say

    @contextmanager
    def stage(self, key: str) -> Iterator[dict[str, Any]]:
        info: dict[str, Any] = {"cache_hit": False}
        start = time.perf_counter()
        try:
            yield info
        finally:
            info["seconds"] = round(time.perf_counter() - start, 3)
            info["host"], info["pid"] = socket.gethostname(), os.getpid()
            self.stages[key] = info
            if self.say is not None:
                self.say(f"[xaiarena] {key}: {info['seconds']:.1f}s{_done(info)}")


def _done(info: dict[str, Any]) -> str:
    """What a stage's progress line adds to its time: cached, or its shards done / total."""
    shards = info.get("shards", 1)
    if info.get("cache_hit"):
        return " (cached)" if shards == 1 else f" ({shards}/{shards} shards, cached)"
    if shards == 1:
        return ""
    cached = info.get("shards_cached", 0)
    return f" ({shards}/{shards} shards: {shards - cached} computed, {cached} cached)"


# --------------------------------------------------------------------------- per-process context


class UnitContext:
    """What the tasks of one unit share within one process, materialised on first use.

    :meth:`prep` runs (or loads) data, train and select; :meth:`samples` is what explain and
    score read (the prepared unit, or the samples as the run's cache has them); the views and
    maps the unit's tasks
    compute are kept in :attr:`views` and :attr:`attributions` (filled by
    :func:`xaiarena.engine.tasks.view` and :func:`~xaiarena.engine.tasks.attribution`)."""

    def __init__(self, unit: Unit, env: Env):
        self.unit, self.env = unit, env
        self.cfg = unit.experiment()
        run_dir = Path(env.run_dir)
        device = resolve_device(self.cfg.device)
        amp = bool(self.cfg.amp) and device.type == "cuda"
        bs = (
            self.cfg.evaluation.batch_size
            if isinstance(self.cfg.evaluation.batch_size, int)
            else 64
        )
        self.s = stages.Settings(
            cfg=self.cfg,
            cache=Cache(run_dir / "cache", run_dir),
            device=device,
            amp=amp,
            batch_size=bs,
            show_progress=env.show_progress,
            data_seed=unit.data_seed,
            replicate_seeds=unit.replicate_seeds,
            share_samples=env.share_samples,
        )
        self.dcfg = self.cfg.data[unit.data_index]
        self.specs: dict[str, ComponentSpec] = {s.key: s for s in self.cfg.explainers}
        self.home = home_views(self.cfg)
        self.members = view_members(self.cfg)
        self.maps = scored_maps(self.cfg)
        self._prep: stages.PreparedUnit | None = None
        self._samples: stages.UnitSamples | None = None
        self._samples_read = False
        self._built: dict[str, Any] = {}
        self.views: dict[str, View] = {}
        self.attributions: dict[tuple[str, str], Attribution] = {}

    def prep(self, rec: StageRecorder) -> stages.PreparedUnit:
        """The unit's data, trained model and evaluation samples (data, train and select stages)."""
        if self._prep is None:
            self._prep = stages.prepare(self.s, self.dcfg, rec.stage, stage_prefix=self.unit.id)
            if self.cfg.evaluation.batch_size == "auto":
                self.s.batch_size = auto_batch_size(
                    self._prep.model, self._prep.inputs, self.s.device
                )
            self._prep.info["evaluation_batch_size"] = self.s.batch_size
            self._prep.info["evaluation_shard_size"] = stages.shard_size(self.s)
            stages.save_samples(self.s, self._prep)  # where shared: for other processes' tasks
        return self._prep

    def samples(self, rec: StageRecorder) -> stages.UnitSamples:
        """The unit's evaluation samples and ``f_b``, for its explain and score tasks: the
        prepared unit where this process has it; else as the process that selected them wrote
        them to the run's cache (:func:`~xaiarena.engine.stages.load_samples`: the model from
        its checkpoint, the inputs read shard by shard where they are used; the data is not
        loaded); else :meth:`prep`."""
        if self._prep is not None:
            return self._prep
        if not self._samples_read:
            self._samples_read = True
            self._samples = stages.load_samples(self.s, self.dcfg)
        return self._samples if self._samples is not None else self.prep(rec)

    def explainer(self, label: str):
        """The explainer of the config entry ``label``, built once."""
        if label not in self._built:
            spec = self.specs[label]
            self._built[label] = EXPLAINERS.create(spec.name, **spec.params)
        return self._built[label]


_CONTEXTS: dict[tuple[str, str], UnitContext] = {}


def context_for(unit: Unit, env: Env) -> UnitContext:
    """The process' context of ``unit`` (one per run directory and unit; kept for the process' life,
    so a Ray worker that runs several tasks of one unit loads its data and model once)."""
    key = (env.run_dir, unit.id + stable_hash(unit.config))
    if key not in _CONTEXTS:
        if len(_CONTEXTS) > 8:  # a long-lived worker: forget the oldest units
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = UnitContext(unit, env)
    return _CONTEXTS[key]


def forget_contexts(run_dir: str) -> None:
    for k in [k for k in _CONTEXTS if k[0] == run_dir]:
        del _CONTEXTS[k]


__all__ = [
    "Env",
    "StageRecorder",
    "UnitContext",
    "context_for",
    "forget_contexts",
    "thread_count",
    "unit_threads",
]
