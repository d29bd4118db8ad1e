"""Exceptions with messages a user can act on."""

from __future__ import annotations


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
