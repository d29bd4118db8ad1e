"""The self-contained HTML report of a run (``xaiarena report RUN_DIR``).

:func:`build_report` reads a run directory's saved results and writes
``report.html`` (figures embedded, no network access needed to view it) and
``figures/*.png``. See ``docs/report.md`` for what each part shows.
"""

from __future__ import annotations

from .html import build_report
from .loading import ReportError, RunData, load_run

__all__ = ["ReportError", "RunData", "build_report", "load_run"]
