"""Atomic output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and a failure leaves no partial output behind. The file gets
the permissions a plain ``open(target, "w")`` would give it (0666 less the umask; an existing target
keeps its mode), not the 0600 of the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["check_output", "atomic_path", "atomic_open", "write_text_atomic", "write_bytes_atomic"]


def _umask() -> int:
    # NOTE: os.umask can only be read by setting it; done once, at import, before any worker thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


def check_output(target: str | os.PathLike[str]) -> Path:
    """The output file ``target`` as a Path; InputError for an empty or special path, a folder, or a parent
    that is a file (checked before any work, so that nothing is computed for an output that cannot be written)."""
    from hotexperts.errors import InputError

    raw = os.fspath(target)
    p = Path(raw)
    if not raw.strip():
        raise InputError(None, "empty output path: name a file")
    if raw.strip() in (".", "..") or raw.endswith(os.sep):
        raise InputError(raw, "not a file name: name a file to write")
    if p.is_dir():
        raise InputError(p, "is a directory: name a file to write")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(p, "cannot write: a parent is not a folder")
            break
    return p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    On an exception the temporary file is removed and the target is left untouched.
    """
    from hotexperts.errors import InputError

    target = check_output(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        why = "a parent is not a folder" if isinstance(exc, (FileExistsError, NotADirectoryError)) else (
            exc.strerror or str(exc))
        raise InputError(target, f"cannot write: {why}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = _NEW_FILE_MODE
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; rename it to ``target`` when the block ends without error."""
    if not mode.startswith(("w", "x")):
        raise ValueError("atomic_open only writes")
    with atomic_path(target) as tmp, open(tmp, mode.replace("x", "w"), **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(target, "wb") as fh:
        fh.write(data)
