"""Errors a user can act on.

Every error the CLI reports is an :class:`AgsevnetError` (or a subclass). The CLI prints it as one line,
``error: <file>: <what is wrong>``, and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path


class AgsevnetError(Exception):
    """An error with an optional file it concerns."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else Path(path)

    def __reduce__(self):  # keep the path when pickled across worker processes
        return (type(self), (self.message, self.path))

    def __str__(self) -> str:  # "file: what is wrong"
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class DataError(AgsevnetError):
    """Input data is missing, unreadable or inconsistent."""


class ConfigError(AgsevnetError):
    """A configuration value or command-line option is invalid."""


class OutputExistsError(AgsevnetError):
    """An output exists and --overwrite was not given."""
