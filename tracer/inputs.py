"""One way in for traces: every command that takes a trace reads it here, by content.

A ``.hxt`` file is recognised by its magic bytes (whatever its name) and loaded with its CRC-32 checked;
anything else goes to the importers, which detect the format by content (``hotexperts.tracer.importers``).
A missing path, a FIFO or a device is one line, never a hang.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from hotexperts.errors import InputError
from hotexperts.tracer.trace import MAGIC, Trace

__all__ = ["open_trace", "is_hxt"]


def is_hxt(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the ``.hxt`` magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def open_trace(path: str | os.PathLike[str], *, n_expert: int | None = None, model: Any = None,
               quiet_inferred: bool = False) -> Trace:
    """Read any trace hotexperts can read: a ``.hxt`` file, or a file or folder an importer reads.

    ``n_expert`` / ``model`` help formats that do not record the expert count. With ``quiet_inferred`` the
    importer's "assuming n_expert" warning is dropped when the inferred count equals ``model``'s.
    """
    p = Path(path)
    try:
        st: os.stat_result | None = p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(p, "symbolic link loop") from None
        st = None  # NOTE: maybe a folder inside an archive (``requests.tar.xz/anatomy``): the importers say
    if st is not None and stat.S_ISDIR(st.st_mode) and not any(p.iterdir()):
        raise InputError(p, "empty folder: no trace files in it")
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputError(p, "not a regular file (a FIFO or a device cannot be read as a trace)")
    if st is not None and stat.S_ISREG(st.st_mode) and is_hxt(p):
        tr = Trace.load(p)
        if n_expert is not None and n_expert != tr.n_expert:
            raise InputError(p, f"--n-expert {n_expert} differs from the trace's n_expert={tr.n_expert}")
        return tr
    from hotexperts.tracer.importers import import_trace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = import_trace(p, n_expert=n_expert)
    want = getattr(model, "n_expert", None)
    for w in caught:
        msg = str(w.message)
        if quiet_inferred and "assuming n_expert" in msg and want is not None and tr.n_expert == want:
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return tr
