"""Per-request routing files (one file per request) gathered from a directory, a tar archive or one file.

Two such formats are read (docs/trace-format.md sections 3.4 to 3.6):

* ``chaos-json``: the "Patterns behind Chaos" dataset (arXiv 2510.05497; Llama-4-Maverick, DeepSeek-R1,
  Qwen3-235B, Kimi-K2): ``<n>.json`` per request, :mod:`hotexperts.tracer.readers.chaos`;
* ``moe-beyond-csv``: github.com/ngavhane/moe-beyond (DeepSeek-V2-Lite): ``prompt_<n>_data*.csv`` per
  prompt, :mod:`hotexperts.tracer.readers.moebeyond`.

A source is a directory (searched recursively), a tar archive (any compression ``tarfile`` reads), a
folder inside a tar archive written as a path below the archive (``requests.tar.xz/abstract_algebra``),
or a single request file. Every ``.json`` / ``.csv`` file found is a request file of the one format (a
file of the other kind, or one that does not parse, is an error naming it); other files (e.g. a prompt
text list) and hidden files are skipped and counted.

The result is ONE multi-request trace:

* the request number is the first integer in the file's name; the *subject* of a request is the folder
  it is in (relative to the archive's root or to the given directory; files directly in a given
  directory take that directory's name). Subjects go to ``meta["subjects"]`` (name, request-id ranges,
  request count, missing numbers) and drive ``trace split --by subject``;
* request ids are the numbers when they are distinct. Where two subjects use the same numbers, subjects
  are taken largest first and a subject whose numbers collide with ids already taken gets an offset: the
  smallest multiple of ``10**d`` (``d`` digits of the largest number) that frees all its ids; its
  ``request_offset`` says which;
* requests are laid out one after the other in increasing id; numbers missing between a subject's
  smallest and largest (a request absent from the source) are reported in a warning and kept in
  ``meta["subjects"][i]["missing"]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import resolve_n_expert, warn
from hotexperts.tracer.trace import Trace, expert_dtype

__all__ = [
    "RequestRouting",
    "Source",
    "open_source",
    "read_per_request",
    "REQUEST_SUFFIX",
]

# format name -> the file suffix of its request files
REQUEST_SUFFIX = {"chaos-json": ".json", "moe-beyond-csv": ".csv"}
_NUMBER = re.compile(r"\d+")
_TAR_MAGIC = (b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh")  # xz, gzip, bzip2 (plain tar: "ustar" at 257)


@dataclass
class RequestRouting:
    """The routing of one request as a file parser returns it.

    ``experts``: ``(n_tokens, n_layers, top_k)`` int ids in processing order; ``step_sizes``: tokens per
    step (sum = n_tokens); ``step_phase``: the phase of each step; ``layers``: the model layer ids.
    """

    experts: np.ndarray
    step_sizes: np.ndarray
    step_phase: np.ndarray
    layers: tuple[int, ...]


@dataclass(frozen=True)
class Source:
    """Where per-request files come from: ``kind`` is ``dir``, ``tar`` or ``file``."""

    kind: str
    path: Path  # the directory, the archive or the file
    member: str = ""  # tar: the folder (or file) inside the archive, "" for all of it

    @property
    def display(self) -> str:
        return os.fspath(self.path) + (f"/{self.member}" if self.member else "")


def _is_tar(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    if head.startswith(_TAR_MAGIC) or head[257:262] == b"ustar":
        try:
            return tarfile.is_tarfile(path)
        except OSError:
            return False
    return False


def open_source(path: str | os.PathLike[str]) -> Source | None:
    """The :class:`Source` at ``path``, or None when ``path`` is neither a directory, a tar archive, a
    path into a tar archive, nor an existing file (then the caller says "no such file")."""
    p = Path(path)
    if p.is_dir():
        return Source("dir", p)
    if p.is_file():
        return Source("tar", p) if _is_tar(p) else Source("file", p)
    for parent in p.parents:
        if parent.is_file():
            if not _is_tar(parent):
                return None
            member = PurePosixPath(*p.relative_to(parent).parts).as_posix().strip("/")
            return Source("tar", parent, member)
        if parent.exists():
            return None
    return None


def _norm(name: str) -> str:
    n = PurePosixPath(name).as_posix()
    while n.startswith("./"):
        n = n[2:]
    return n.strip("/")


def _wanted(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith((".json", ".csv"))


def iter_files(src: Source) -> Iterator[tuple[str, str, bytes | Callable[[], bytes]]]:
    """Yield ``(display name, path relative to the source root, data or a loader)`` of every request-file
    candidate (``.json`` / ``.csv``, not hidden), in the source's order (a tar member's path is relative to
    the archive root even when a folder inside it was asked for); other files are yielded with ``b""``
    data and a relative path starting with ``"\\0"`` so the caller can count them."""
    if src.kind == "file":
        yield os.fspath(src.path), src.path.name, lambda: src.path.read_bytes()
        return
    if src.kind == "dir":
        for root, dirs, files in os.walk(src.path):
            dirs.sort()
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in sorted(files):
                full = Path(root) / f
                rel = full.relative_to(src.path).as_posix()
                if _wanted(rel):
                    yield os.fspath(full), rel, (lambda full=full: full.read_bytes())  # type: ignore[misc]
                else:
                    yield os.fspath(full), "\0" + rel, b""
        return
    yield from _threaded(_tar_members(src))


def _tar_members(src: Source) -> Iterator[tuple[str, str, bytes | Callable[[], bytes]]]:
    prefix = src.member
    found = False
    try:
        with tarfile.open(src.path, "r:*") as tf:
            for m in tf:
                name = _norm(m.name)
                if prefix and not (name == prefix or name.startswith(prefix + "/")):
                    continue
                found = True
                if not m.isfile():
                    continue
                disp = f"{src.path}/{name}"
                if not _wanted(name):
                    yield disp, "\0" + name, b""
                    continue
                fh = tf.extractfile(m)
                if fh is not None:
                    yield disp, name, fh.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise InputError(src.path, f"corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    if prefix and not found:
        raise InputError(src.display, f"no folder or file {prefix!r} in the archive {src.path.name}")


_DONE = object()


def _threaded(items: Iterator[Any], depth: int = 32) -> Iterator[Any]:
    """Run the iterator ``items`` in a background thread, ``depth`` items ahead of the consumer.

    NOTE: a compressed archive is decompressed (lzma/zlib release the GIL) while the previous files are
    parsed (numpy), so a 2-core machine does both at once; exceptions are re-raised in the consumer, and
    a consumer that stops early (an error in a file) stops the producer.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    t = threading.Thread(target=produce, name="hotexperts-tar-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            t.join(timeout=0.05)
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _number(disp: str, rel: str) -> int:
    base = rel.rsplit("/", 1)[-1]
    m = _NUMBER.search(base)
    if m is None:
        raise InputError(disp, "cannot tell the request number: the file name holds no number")
    return int(m.group(0))


def _subject(src: Source, rel: str) -> str:
    """The folder of a request file: relative to the archive root, or to a given directory (whose own
    name it takes for files directly in it)."""
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if src.kind == "tar":
        return folder or "."
    if src.kind == "dir":
        return folder or src.path.resolve().name
    return src.path.resolve().parent.name or "."


def _ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted distinct ids as inclusive ``[lo, hi]`` runs."""
    if ids.size == 0:
        return []
    brk = np.flatnonzero(np.diff(ids) != 1)
    starts = np.r_[0, brk + 1]
    ends = np.r_[brk, ids.size - 1]
    return [[int(ids[a]), int(ids[b])] for a, b in zip(starts, ends)]


def read_per_request(
    path: str | os.PathLike[str],
    fmt: str,
    parse: Callable[[str, bytes], RequestRouting],
    *,
    n_expert: int | None = None,
    source_extra: dict[str, Any] | None = None,
) -> Trace:
    """Read every request file of ``fmt`` under ``path`` with ``parse(name, data)`` into one trace."""
    src = open_source(path)
    if src is None:
        raise InputError(path, "no such file or directory")
    suffix = REQUEST_SUFFIX[fmt]
    other = ".csv" if suffix == ".json" else ".json"
    items: list[tuple[str, str, int, RequestRouting]] = []  # (display, subject, number, routing)
    skipped = 0
    layers: tuple[int, ...] | None = None
    first_disp = ""
    k = 0
    for disp, rel, data in iter_files(src):
        if rel.startswith("\0"):
            skipped += 1
            continue
        if rel.lower().endswith(other):
            raise InputError(disp, f"a {other} file among {fmt} request files ({suffix}): one format per import")
        num = _number(disp, rel)
        try:
            raw = data() if callable(data) else data
        except OSError as exc:
            raise InputError(disp, f"cannot read: {exc.strerror or exc}") from None
        r = parse(disp, raw)
        if layers is None:
            layers, k, first_disp = r.layers, r.experts.shape[2], disp
        elif r.layers != layers:
            raise InputError(disp, f"MoE layers {_fmt_layers(r.layers)} differ from {_fmt_layers(layers)} in {first_disp}")
        elif r.experts.shape[2] != k:
            raise InputError(disp, f"top-{r.experts.shape[2]} routing, but top-{k} in {first_disp}")
        items.append((disp, _subject(src, rel), num, r))
    if not items:
        raise InputError(src.display, f"no request files ({suffix}) found")
    assert layers is not None

    # subjects, request ids (offsets where numbers collide), missing numbers
    by_subject: dict[str, list[int]] = {}
    for i, (_d, subj, _n, _r) in enumerate(items):
        by_subject.setdefault(subj, []).append(i)
    max_num = max(n for _d, _s, n, _r in items)
    stride = 10 ** len(str(max_num))
    taken: set[int] = set()
    req_id = np.zeros(len(items), np.int64)
    subjects: list[dict[str, Any]] = []
    for subj in sorted(by_subject, key=lambda s: (-len(by_subject[s]), s)):
        idx = by_subject[subj]
        nums = np.array([items[i][2] for i in idx], np.int64)
        order = np.argsort(nums, kind="stable")
        dup = np.flatnonzero(np.diff(nums[order]) == 0)
        if dup.size:
            a, b = idx[int(order[dup[0]])], idx[int(order[dup[0] + 1])]
            raise InputError(items[b][0], f"request number {items[b][2]} also used by {items[a][0]}")
        off = 0
        while any(int(n) + off in taken for n in nums):
            off += stride
        taken.update(int(n) + off for n in nums)
        req_id[idx] = nums + off
        srt = np.sort(nums)
        full = np.arange(srt[0], srt[-1] + 1)
        missing = np.setdiff1d(full, srt)
        if missing.size:
            shown = ", ".join(str(int(x)) for x in missing[:10]) + (", ..." if missing.size > 10 else "")
            warn(src.display, f"subject {subj!r}: {missing.size} request number(s) missing between {int(srt[0])} and "
                              f"{int(srt[-1])}: {shown} (absent from the source; the others are imported)")
        entry: dict[str, Any] = {
            "name": subj,
            "n_requests": int(nums.size),
            "request_offset": off,
            "request_ranges": _ranges(np.sort(nums + off)),
            "missing": [int(x) for x in missing],
        }
        subjects.append(entry)
    if len(req_id) and int(req_id.max()) > 2**31 - 1:
        raise InputError(src.display, "request numbers too large for the trace (int32)")
    subjects.sort(key=lambda e: e["request_ranges"][0][0])

    # lay the requests out one after the other, in increasing id
    order = np.argsort(req_id, kind="stable")
    max_id = max(int(r.experts.max()) if r.experts.size else 0 for _d, _s, _n, r in items)
    ne, inferred = resolve_n_expert(src.display, max_id, n_expert)
    dt = expert_dtype(ne)
    n_tok = sum(int(r.experts.shape[0]) for _d, _s, _n, r in items)
    n_steps = sum(int(r.step_sizes.size) for _d, _s, _n, r in items)
    experts = np.empty((n_tok, len(layers), k), dt)
    step_sizes = np.empty(n_steps, np.int64)
    step_phase = np.empty(n_steps, np.uint8)
    step_req = np.empty(n_steps, np.int64)
    t = s = 0
    for j in order:
        disp, _subj, _num, r = items[j]
        n = r.experts.shape[0]
        if n and int(r.experts.max()) >= ne:
            raise InputError(disp, f"expert id {int(r.experts.max())} out of range for n_expert={ne}")
        experts[t : t + n] = r.experts
        m = r.step_sizes.size
        step_sizes[s : s + m] = r.step_sizes
        step_phase[s : s + m] = r.step_phase
        step_req[s : s + m] = req_id[j]
        t += n
        s += m
        r.experts = np.empty((0, *r.experts.shape[1:]), r.experts.dtype)  # NOTE: free each request's copy as it is packed: peak memory ~ 2 traces
    tok_step = np.repeat(np.arange(n_steps, dtype=np.int64), step_sizes)
    request = step_req[tok_step]
    first = np.r_[True, request[1:] != request[:-1]] if n_tok else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    pos = np.arange(n_tok, dtype=np.int64) - starts[np.cumsum(first) - 1] if n_tok else np.zeros(0, np.int64)
    info: dict[str, Any] = {"files": len(items), "skipped_files": skipped, "source_kind": src.kind}
    if src.member:
        info["member"] = src.member
    if src.kind in ("tar", "file"):
        h = hashlib.sha256()
        with open(src.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        info["sha256"] = h.hexdigest()
    if source_extra:
        info.update(source_extra)
    meta: dict[str, Any] = {
        "source": {"kind": "import", "format": fmt, "file": src.path.name, **info},
        "subjects": subjects,
    }
    if inferred:
        meta["n_expert_inferred"] = True
    return Trace.from_arrays(
        experts,
        n_expert=ne,
        phase=step_phase[tok_step],
        request=request,
        ubatch=tok_step,
        pos=pos,
        moe_layers=layers,
        meta=meta,
        validate=True,
    )


def _fmt_layers(layers: tuple[int, ...]) -> str:
    if len(layers) > 6:
        return f"[{layers[0]}, {layers[1]}, ..., {layers[-1]}] ({len(layers)})"
    return str(list(layers))


def sniff_source(path: str | os.PathLike[str]) -> tuple[str, bytes] | None:
    """``(name, first bytes)`` of the first request-file candidate of a directory or archive, or None."""
    src = open_source(path)
    if src is None or src.kind == "file":
        return None
    for disp, rel, data in iter_files(src):
        if rel.startswith("\0"):
            continue
        raw = data() if callable(data) else data
        return disp, raw[:65536]
    return None
