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
    task = factory(seed=seed, **kwargs)
    if task.num_classes < 2:  # a one-output model is always right: accuracy 1, every score moot
        from ..errors import DataError

        found = f" ('{task.class_names[0]}')" if task.class_names else ""
        raise DataError(
            f"dataset '{name}' has {task.num_classes} class{found}: a classifier of "
            "one class predicts it whatever the input, so its accuracy and every "
            "attribution score would be meaningless; give at least two classes (class "
            "folders, label values, or the classes option listing the model's classes)"
        )
    return task
