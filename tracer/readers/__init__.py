"""Readers for routing traces written by other tools, one module per format, and format detection.

``READERS`` maps a format name to a function ``(path, *, keep_warmup, n_expert, prompt_tokens) -> Trace``;
:func:`detect_format` tells the format from the first bytes of a file (of a directory or tar archive of
per-request files: from its first ``.json`` / ``.csv`` file). The fork log (``fork-log``) is a
run summary, not a trace (:func:`hotexperts.tracer.readers.forklog.read_fork_log`), and a ``.moeprof``
is a count table (:func:`hotexperts.tracer.profile.load_moeprof`); detection still names them so the
caller can say so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import TraceImportWarning
from hotexperts.tracer.trace import Trace

__all__ = ["FORMATS", "READERS", "TraceImportWarning", "detect_format", "read_trace"]

FORMATS = ("csv", "vllm-jsonl", "moet", "chaos-json", "moe-beyond-csv", "fork-log")


def _csv(path: str | os.PathLike[str], *, keep_warmup: bool = False, n_expert: int | None = None, **_: Any) -> Trace:
    from hotexperts.tracer.readers.llamacsv import read_csv

    return read_csv(path, keep_warmup=keep_warmup, n_expert=n_expert)


def _vllm(path: str | os.PathLike[str], *, keep_warmup: bool = False, n_expert: int | None = None, **_: Any) -> Trace:
    from hotexperts.tracer.readers.vllm import read_vllm_jsonl

    return read_vllm_jsonl(path, n_expert=n_expert)


def _moet(path: str | os.PathLike[str], *, keep_warmup: bool = False, n_expert: int | None = None, **_: Any) -> Trace:
    from hotexperts.tracer.readers.moet import read_moet

    return read_moet(path, n_expert=n_expert)


def _chaos(path: str | os.PathLike[str], *, n_expert: int | None = None, **_: Any) -> Trace:
    from hotexperts.tracer.readers.chaos import read_chaos

    return read_chaos(path, n_expert=n_expert)


def _moebeyond(
    path: str | os.PathLike[str], *, n_expert: int | None = None, prompt_tokens: int | None = None, **_: Any
) -> Trace:
    from hotexperts.tracer.readers.moebeyond import read_moebeyond

    return read_moebeyond(path, n_expert=n_expert, prompt_tokens=prompt_tokens)


READERS: dict[str, Callable[..., Trace]] = {
    "csv": _csv,
    "vllm-jsonl": _vllm,
    "moet": _moet,
    "chaos-json": _chaos,
    "moe-beyond-csv": _moebeyond,
}


def _per_request_format(head: bytes) -> str | None:
    from hotexperts.tracer.readers.chaos import looks_like_chaos
    from hotexperts.tracer.readers.moebeyond import looks_like_moebeyond

    if looks_like_chaos(head):
        return "chaos-json"
    if looks_like_moebeyond(head):
        return "moe-beyond-csv"
    return None


def _detect_collection(p: Path, kind: str) -> str:
    """The format of a directory / tar archive (or a folder in one) from its first request file."""
    from hotexperts.tracer.readers.perrequest import sniff_source

    first = sniff_source(p)
    if first is None:
        if kind == "dir":
            return "fork-log"  # a telemetry directory
        raise InputError(p, "the archive holds no per-request routing files (.json or .csv)")
    name, head = first
    fmt = _per_request_format(head)
    if fmt is None:
        raise InputError(name, "cannot tell the format from the content (neither a Chaos request JSON "
                               "'[{\"<layer>\": ...' nor a moe-beyond CSV header); pass --format")
    return fmt


def detect_format(path: str | os.PathLike[str]) -> str:
    """``csv``, ``vllm-jsonl``, ``moet``, ``chaos-json``, ``moe-beyond-csv``, ``fork-log``, ``moeprof`` or
    ``hxt``, from the file's first bytes; a directory or tar archive (``A.tar.xz/folder``: a folder in one)
    from its first ``.json`` / ``.csv`` file (a directory without one is a fork-log telemetry folder)."""
    p = Path(path)
    if not p.exists():
        from hotexperts.tracer.readers.perrequest import open_source

        src = open_source(p)
        if src is not None and src.kind == "tar":
            return _detect_collection(p, "tar")
        raise InputError(p, "no such file")
    if p.is_dir():
        return _detect_collection(p, "dir")
    try:
        with open(p, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputError(p, f"cannot read: {exc.strerror}") from None
    if not head:
        raise InputError(p, "empty file: cannot tell its format")
    if head.startswith(b"MOET"):
        return "moet"
    if head.startswith(b"HXTRACE\0"):
        return "hxt"
    if head.startswith(b"moeprof"):
        return "moeprof"
    from hotexperts.tracer.readers.perrequest import _is_tar

    if _is_tar(p):
        return _detect_collection(p, "tar")
    per_request = _per_request_format(head)
    if per_request is not None:
        return per_request
    text = head.decode("utf-8", errors="replace")
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if first.startswith("#") and "phase" in first and "token_idx" in first:
        return "csv"
    if first.startswith("{"):
        try:
            obj: Any = json.loads(first)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            if "problem_id" in obj and "experts" in obj:
                return "vllm-jsonl"
            if "type" in obj:
                return "fork-log"
    if "hot_cache_rebalance" in text or "STEADY at decode" in text or "rebalance #" in text:
        return "fork-log"
    raise InputError(
        p, "cannot tell the format from the content; pass --format csv|vllm-jsonl|moet|chaos-json|moe-beyond-csv|fork-log"
    )


def read_trace(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    keep_warmup: bool = False,
    n_expert: int | None = None,
    prompt_tokens: int | None = None,
) -> Trace:
    """Read a foreign trace with the reader of ``format`` (``auto``: detected)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "fork-log":
        raise InputError(
            path, "a fork log holds a run summary, not a routing trace; read it with read_fork_log (or "
            "`hotexperts trace import --format fork-log`, which writes the summary as JSON)"
        )
    if fmt == "moeprof":
        raise InputError(path, "a .moeprof file holds per-layer counts, not a trace; load it with "
                               "hotexperts.tracer.profile.load_moeprof")
    if fmt == "hxt":
        raise InputError(path, "already a hotexperts trace (.hxt): nothing to import")
    try:
        reader = READERS[fmt]
    except KeyError:
        raise InputError(path, f"unknown format {fmt!r}; known: {', '.join(FORMATS)}") from None
    if prompt_tokens is not None and fmt != "moe-beyond-csv":
        raise InputError(path, f"--prompt-tokens applies to teacher-forced moe-beyond CSVs, not to {fmt}")
    return reader(path, keep_warmup=keep_warmup, n_expert=n_expert, prompt_tokens=prompt_tokens)
