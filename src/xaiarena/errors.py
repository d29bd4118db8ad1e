"""Exceptions with messages a user can act on."""

from __future__ import annotations

import difflib


def suggest(name: str, choices: list[str]) -> str | None:
    """Closest match for ``name`` among ``choices`` (case-insensitive), or None: the "did you mean"
    of every message about an unknown name."""
    lowered = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hit[0]] if hit else None


class XaiArenaError(Exception):
    """Base class for all errors raised by xaiarena."""


class ConfigError(XaiArenaError):
    """A configuration value is invalid. The CLI turns it into exit code 2.

    ``problems`` is a list of ``(key_path, message)`` pairs.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"invalid configuration ({len(self.problems)} problem(s)):"]
        for path, msg in self.problems:
            lines.append(f"  {path or '<root>'}: {msg}")
        return "\n".join(lines)


class UnknownNameError(XaiArenaError, KeyError):
    """A dataset/model/explainer/metric name that is not registered."""

    def __init__(self, kind: str, name: str, choices: list[str], suggestion: str | None):
        self.kind, self.name, self.choices, self.suggestion = kind, name, choices, suggestion
        super().__init__(self.message)

    @property
    def message(self) -> str:
        hint = f" Did you mean '{self.suggestion}'?" if self.suggestion else ""
        return f"unknown {self.kind[:-1]} '{self.name}'.{hint} Valid: {', '.join(self.choices)}"

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message


class DataError(XaiArenaError):
    """A dataset cannot be read or is not usable as given (a missing folder, a corrupt or empty
    Parquet file, a wrong column, an undecodable image, labels outside the class range). The
    message names the file, row, column or key; the CLI prints it on one line and exits 2."""


class TrainingError(XaiArenaError):
    """Training cannot produce a usable model (e.g. the loss became NaN or infinite). The message
    says at which epoch and step and what to change; the CLI prints it and exits 2. A model that
    failed this way is never cached."""


class RunError(XaiArenaError):
    """A run cannot proceed for a reason the user can fix (the run directory is locked by another
    run, a path is not what it should be, the environment lacks something). CLI exit 2."""


class InputError(XaiArenaError, ValueError):
    """An argument of the functional API (:func:`xaiarena.evaluate`, :func:`xaiarena.explain`) or of
    ``xaiarena score`` has the wrong type, shape or value (maps that do not match the inputs,
    targets of the wrong length, a metric that needs masks without masks). The message names the
    argument, what was given and what is expected; the CLI prints it on one line and exits 2."""


class WriteError(RunError):
    """A file or folder could not be written (no space left, a read-only or foreign folder, a
    symbolic link leading out of the run directory). The message names the path and the cause;
    nothing half-written is left behind (writes are atomic). CLI exit 2."""


class ContractError(XaiArenaError, RuntimeError):
    """A component (an explainer, often a plugin's) broke its contract with xaiarena: maps of the
    wrong shape, NaN or infinite maps. The message names the component, where it comes from and the
    contract; the CLI prints it on one line and exits 2."""
