"""The one exception type for mistakes in what a user gave us (options, files, records).

The command line prints these as one line (`eagle-align <command>: <message>`, plus the hint) and exits 2;
everything else is a bug and keeps its traceback. Subclassing ValueError keeps `except ValueError` callers working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user-facing error: `message` names the option, file or record; `hint` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}\n  hint: {self.hint}" if self.hint else message
