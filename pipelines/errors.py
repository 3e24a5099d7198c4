"""Errors users see. Each renders as one line that names the thing (file and line, system and table)."""

from __future__ import annotations


class CitylakeError(Exception):
    """Base of every error the CLI prints as one line instead of a traceback."""


class ConfigError(CitylakeError):
    """A config file is invalid: the message names the file, the line and the fix.

    One load reports every problem it found, one line each (``problems``), so a fix-and-retry loop does
    not uncover them one at a time."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class SourceError(CitylakeError):
    """A source system or table cannot be read (unreachable, missing table)."""


class CommitStateUnknown(CitylakeError):
    """A catalog commit was sent and its outcome is unknown (connection lost): its files are kept."""


class SchemaDriftError(CitylakeError):
    """A source column was dropped or retyped incompatibly; the lake table is left unchanged."""


class FileRejected(CitylakeError):
    """A dropped file cannot be parsed; it is copied to the rejected area with this reason."""

    def __init__(self, file: str, reason: str, line: int | None = None):
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.reason = reason
        self.line = line
