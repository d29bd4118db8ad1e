"""Datasets. Importing this package registers every built-in dataset."""

from . import images, synthetic, text, user, voc  # noqa: F401  (register the datasets)
from .base import ImageSplit, Task, TextSplit, channel_stats

__all__ = ["ImageSplit", "Task", "TextSplit", "channel_stats", "load_task"]


def load_task(name: str, *, seed: int = 0, data_dir: str | None = None, **params) -> Task:
    """Build the registered dataset ``name`` into a :class:`Task`."""
    from ..registry import DATASETS

    factory = DATASETS.get(name)
    kwargs = dict(params)
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    return factory(seed=seed, **kwargs)
