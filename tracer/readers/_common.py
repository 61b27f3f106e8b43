"""Shared helpers of the trace readers: file opening with clear errors, warnings, expert-count resolution."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts.errors import InputError

__all__ = [
    "TraceImportWarning",
    "check_ids",
    "decode_text",
    "read_bytes",
    "resolve_n_expert",
    "source_meta",
    "warn",
]


class TraceImportWarning(UserWarning):
    """Something in an imported file was odd but recoverable (gaps, a truncated tail, a guessed count)."""


def warn(path: str | os.PathLike[str], what: str) -> None:
    """Emit a :class:`TraceImportWarning` naming the file; the CLI prints it as one stderr line."""
    warnings.warn(f"{os.fspath(path)}: {what}", TraceImportWarning, stacklevel=3)


def _open_check(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not a file")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    _open_check(p)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(p, f"cannot read: {exc.strerror}") from None


def decode_text(path: str | os.PathLike[str], data: bytes) -> str:
    """``data`` as UTF-8 text; InputError naming the line on binary or corrupt content."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(path, "not UTF-8 text (binary or corrupt file)", where=f"line {line}") from None
    return text


def resolve_n_expert(
    path: str | os.PathLike[str],
    max_id: int,
    n_expert: int | None,
    *,
    what: str = "expert id",
) -> tuple[int, bool]:
    """The expert count to use: the given one (checked against the ids), else ``max_id + 1`` with a warning.

    Returns ``(n_expert, inferred)``.
    """
    if n_expert is not None:
        if n_expert <= 0:
            raise InputError(path, f"expert count must be positive, got {n_expert}")
        if max_id >= n_expert:
            raise InputError(path, f"{what} {max_id} out of range for n_expert={n_expert}")
        return int(n_expert), False
    # NOTE: max id + 1 is a lower bound (an expert never routed to is invisible); rounding up to a
    # power of two would be wrong for 60-, 160- or 384-expert models, so we warn instead of guessing.
    guess = int(max_id) + 1
    warn(path, f"the file does not say how many experts a layer has; assuming n_expert={guess} (largest id + 1); "
               "pass --n-expert to set it")
    return guess, True


def source_meta(path: str | os.PathLike[str], fmt: str, data: bytes | None = None, **extra: Any) -> dict[str, Any]:
    """The ``meta["source"]`` record of an imported trace."""
    p = Path(path)
    out: dict[str, Any] = {"kind": "import", "format": fmt, "file": p.name}
    if data is not None:
        out["sha256"] = hashlib.sha256(data).hexdigest()
    out.update(extra)
    return out


def check_ids(path: str | os.PathLike[str], ids: np.ndarray, n_expert: int, where_of: Any = None) -> None:
    """Raise InputError when any id is >= n_expert (``where_of(index)`` names the place)."""
    if ids.size == 0:
        return
    bad = np.flatnonzero(ids.reshape(-1) >= n_expert) if ids.dtype.kind == "u" else np.flatnonzero(
        (ids.reshape(-1) >= n_expert) | (ids.reshape(-1) < 0)
    )
    if bad.size:
        i = int(bad[0])
        raise InputError(
            path,
            f"expert id {int(ids.reshape(-1)[i])} out of range for n_expert={n_expert}",
            where=None if where_of is None else where_of(i),
        )
