"""Progress bars (tqdm), quiet when ``XAIARENA_QUIET`` is set or stderr is not a terminal."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


class _Progress:
    """``progress(iterable, desc=...)`` is a tqdm bar (quiet when not a TTY and XAIARENA_QUIET)."""

    def __call__(self, iterable=None, **kwargs):
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        if os.environ.get("XAIARENA_QUIET"):
            kwargs["disable"] = True
        elif not kwargs.get("disable"):
            kwargs["disable"] = None  # tqdm: hide the bar when stderr is not a terminal
        return tqdm(iterable, **kwargs)

    @staticmethod
    def write(msg: str) -> None:
        if not os.environ.get("XAIARENA_QUIET"):
            tqdm.write(msg, file=sys.stderr)


progress = _Progress()
