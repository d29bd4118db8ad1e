"""What a conformance check returns or raises: the checks that passed, were skipped or failed."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@contextmanager
def quiet() -> Iterator[None]:
    """xaiarena's warnings (constant maps, NaN reasons) off while the checks run: the checks feed
    components odd maps on purpose."""
    log = logging.getLogger("xaiarena")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class ConformanceError(AssertionError):
    """A component broke its contract; ``report.failed`` lists ``(check, why)`` for every check
    that failed (the message lists them too)."""

    def __init__(self, report: CheckReport):
        self.report = report
        lines = [f"{report.kind} '{report.name}' fails {len(report.failed)} conformance check(s):"]
        lines += [f"  - {check}: {why}" for check, why in report.failed]
        super().__init__("\n".join(lines))


@dataclass
class CheckReport:
    """The outcome of :func:`~xaiarena.testing.check_explainer` or
    :func:`~xaiarena.testing.check_metric`: ``passed`` check names, ``skipped`` ``(check, why)``
    and ``failed`` ``(check, why)``."""

    kind: str
    name: str
    passed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def run(self, check: str, fn: Callable[[], Any]) -> Any:
        """Run one check: an AssertionError (or any other error) is recorded as its failure."""
        try:
            with quiet():
                out = fn()
        except AssertionError as exc:
            self.failed.append((check, str(exc) or "assertion failed"))
            return None
        except Exception as exc:  # a crash is a failure of that check, with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.failed.append(
                (check, f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")
            )
            return None
        self.passed.append(check)
        return out

    def skip(self, check: str, why: str) -> None:
        self.skipped.append((check, why))

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_if_failed(self) -> CheckReport:
        if self.failed:
            raise ConformanceError(self)
        return self
