"""The one exception type the CLI turns into a one-line error message and a non-zero exit."""

from __future__ import annotations

import os

__all__ = ["HotExpertsError", "InputError"]


class HotExpertsError(Exception):
    """An error the user can act on. Its message is printed as one line, without a traceback."""


class InputError(HotExpertsError):
    """Bad input: a missing, truncated, corrupt or inconsistent file, or an impossible request.

    The message names the file (and where useful the record or line) and what is wrong.
    """

    def __init__(self, path: str | os.PathLike[str] | None, what: str, *, where: str | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.what = what
        self.where = where
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if where:
            parts.append(where)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {what}" if prefix else what)
