"""Reader for the per-prompt routing CSVs of github.com/ngavhane/moe-beyond (``moe-beyond-csv``).

Recorded from DeepSeek-V2-Lite-Chat with a forward hook on every ``mlp.gate``, ONE teacher-forced
forward pass over each prompt (no generation). One file per prompt, ``prompt_<n>_data.csv`` (or
``prompt_<n>_data_formatted.csv``)::

    Layer ID,Batch Number,Token,Activated Expert IDs
    1,0,<｜begin▁of▁sentence｜>,"[8, 26, 56, 57, 60, 43]"
    1,0,Ġsome,"[0, 5, 6, 8, 21, 34]"
    ...

Rows are layer-major (all tokens of the first MoE layer, then the next layer, ...); the token is the
tokenizer's string (``Ġ`` = a leading space), quoted CSV-style where it holds a comma or a quote; the
expert ids are a quoted list of k ints in the gate's order. Layer 0 (dense) has no rows.

Mapping: the MoE layers are the ``Layer ID`` values; every layer must have the same number of rows T
and list the same tokens in the same order (checked, so a file whose layer blocks are misaligned is
refused); token t of the prompt is row t of each layer block. By default the T tokens are one prefill
ubatch (that is what was recorded). ``prompt_tokens=N`` (``--prompt-tokens N``) keeps the first N as the
prompt and turns every later token into a decode step of its own: in a causal model token t's routing
depends only on tokens <= t, so this is the routing a decode that produced the same text would have
(up to numerics).

Parsing is vectorised numpy over the file's bytes (no per-row Python): the expert list is the last
``"[...]"`` of a line, so a token holding commas, quotes or brackets does not confuse it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers.perrequest import RequestRouting, read_per_request
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = ["HEADER", "parse_moebeyond_csv", "read_moebeyond", "looks_like_moebeyond"]

HEADER = "Layer ID,Batch Number,Token,Activated Expert IDs"
_BOM = b"\xef\xbb\xbf"


def looks_like_moebeyond(head: bytes) -> bool:
    """True when ``head`` starts with the moe-beyond header line."""
    s = head[3:] if head.startswith(_BOM) else head
    return s.split(b"\n", 1)[0].rstrip(b"\r").strip() == HEADER.encode()


def _int_fields(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse the decimal integers ``a[lo[i]:hi[i]]``; returns ``(values, ok)`` (ok: 1-9 digits only).

    One vectorised pass per digit position (at most 9), not per digit: ids have 1-5 digits.
    """
    n = hi - lo
    ok = (n >= 1) & (n <= 9)
    vals = np.zeros(lo.size, np.int64)
    scale = 1
    for j in range(int(n[ok].max()) if bool(ok.any()) else 0):
        m = ok & (n > j)
        if bool(m.all()):
            d = a[hi - 1 - j].astype(np.int64) - 48
            vals += d * scale
        else:
            d = a[hi[m] - 1 - j].astype(np.int64) - 48
            vals[m] += d * scale
        bad = (d < 0) | (d > 9)
        if bool(bad.any()):
            if bool(m.all()):
                ok &= ~bad
            else:
                ok[np.flatnonzero(m)[bad]] = False
        scale *= 10
    return vals, ok


def parse_moebeyond_csv(name: str, data: bytes, *, prompt_tokens: int | None = None) -> RequestRouting:
    """Parse one prompt file (``name`` is used in error messages)."""
    if data.startswith(_BOM):
        data = data[3:]
    if not data.strip():
        raise InputError(name, "empty file: no header, no rows")
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == 10)
    hdr_end = int(nl[0]) if nl.size else a.size
    if data[:hdr_end].rstrip(b"\r").strip() != HEADER.encode():
        raise InputError(name, f"header must be '{HEADER}', got {data[:min(hdr_end, 80)].decode('utf-8', 'replace')!r}",
                         where="line 1")
    starts = np.r_[hdr_end + 1, nl[1:] + 1] if nl.size else np.zeros(0, np.int64)
    ends = np.r_[nl[1:], a.size] if nl.size else np.zeros(0, np.int64)
    if ends.size and starts[-1] >= a.size:  # the final newline
        starts, ends = starts[:-1], ends[:-1]
    starts = starts.astype(np.int64)
    ends = ends.astype(np.int64)
    cr = np.zeros(ends.size, bool)
    nz = ends > starts
    cr[nz] = a[ends[nz] - 1] == 13
    ends = ends - cr
    rows = int(starts.size)
    if rows == 0:
        raise InputError(name, "no rows after the header")

    def line(i: int) -> str:
        return f"line {i + 2}"

    def row_text(i: int) -> str:
        return data[starts[i] : ends[i]].decode("utf-8", "replace")[:60]

    length = ends - starts
    short = np.flatnonzero(length < 8)
    if short.size:
        i = int(short[0])
        raise InputError(name, f"malformed row {row_text(i)!r} (empty or truncated)", where=line(i))
    tail_ok = (a[ends - 1] == ord('"')) & (a[ends - 2] == ord("]"))
    br = np.flatnonzero(a == ord("["))
    bi = np.searchsorted(br, ends - 2) - 1
    lb = np.where(bi >= 0, br[np.maximum(bi, 0)], -1) if br.size else np.full(rows, -1, np.int64)
    shape_ok = tail_ok & (lb >= starts + 5)
    shape_ok[shape_ok] &= (a[lb[shape_ok] - 1] == ord('"')) & (a[lb[shape_ok] - 2] == ord(","))
    bad = np.flatnonzero(~shape_ok)
    if bad.size:
        i = int(bad[0])
        raise InputError(name, f"row does not end with a quoted expert list \"[a, b, ...]\" (truncated or corrupt): "
                               f"{row_text(i)!r}", where=line(i))
    # the expert lists: k integers separated by commas (and optional spaces); the ids' bounds follow
    # from the commas inside each list, so no pass over the list bytes is needed besides the digits'
    lo, hi = lb + 1, ends - 2
    commas = np.flatnonzero(a == ord(","))
    c_lo = np.searchsorted(commas, lo)
    n_commas = np.searchsorted(commas, hi) - c_lo
    k = int(n_commas[0]) + 1
    bad = np.flatnonzero(n_commas != k - 1)
    if bad.size:
        i = int(bad[0])
        raise InputError(name, f"expert list of {int(n_commas[i]) + 1} ids where earlier rows have {k} (top-k must "
                               f"not change): {row_text(i)!r}", where=line(i))
    sep = commas[c_lo[:, None] + np.arange(k - 1)]  # (rows, k-1)
    id_lo = np.concatenate([lo[:, None], sep + 1], axis=1).reshape(-1)
    id_hi = np.concatenate([sep, hi[:, None]], axis=1).reshape(-1)
    id_lo += a[id_lo] == ord(" ")  # ", " separators
    ids, ok = _int_fields(a, id_lo, id_hi)
    bad = np.flatnonzero(~ok | (ids > 65535) | (id_hi - id_lo > 5))
    if bad.size:
        i = int(bad[0]) // k
        raise InputError(name, f"expert list must hold {k} integer ids in 0..65535: {row_text(i)!r}", where=line(i))
    ids = ids.reshape(rows, k)
    if k > 1:
        same = np.zeros(rows, bool)
        if k <= 16:  # NOTE: pairwise column compares beat a row-wise sort of millions of short rows
            for x in range(k):
                for y in range(x + 1, k):
                    same |= ids[:, x] == ids[:, y]
        else:
            srt = np.sort(ids, axis=1)
            same = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
        dup = np.flatnonzero(same)
        if dup.size:
            i = int(dup[0])
            raise InputError(name, f"the same expert twice in one row: {row_text(i)!r}", where=line(i))
    # Layer ID and Batch Number: the first two fields
    ci = np.searchsorted(commas, starts)
    c1 = commas[np.minimum(ci, commas.size - 1)]
    c2 = commas[np.minimum(ci + 1, commas.size - 1)]
    fields_ok = (ci + 1 < commas.size) & (c2 <= lb - 2)
    layer, ok1 = _int_fields(a, starts, c1)
    batch, ok2 = _int_fields(a, c1 + 1, c2)
    bad = np.flatnonzero(~(fields_ok & ok1 & ok2))
    if bad.size:
        i = int(bad[0])
        raise InputError(name, f"Layer ID and Batch Number must be integers: {row_text(i)!r}", where=line(i))
    if bool((batch != batch[0]).any()):
        i = int(np.flatnonzero(batch != batch[0])[0])
        raise InputError(name, f"Batch Number {int(batch[i])} after {int(batch[0])}: one batch per file is supported",
                         where=line(i))
    # layer-major blocks of equal length
    chg = np.flatnonzero(layer[1:] != layer[:-1]) + 1
    bstart = np.r_[0, chg]
    blayer = layer[bstart]
    if bool((np.diff(blayer) <= 0).any()):
        j = int(np.flatnonzero(np.diff(blayer) <= 0)[0]) + 1
        raise InputError(name, f"layer {int(blayer[j])} after layer {int(blayer[j - 1])}: rows are not layer-major "
                               "(all tokens of a layer, then the next layer, in increasing order)",
                         where=line(int(bstart[j])))
    blen = np.diff(np.r_[bstart, rows])
    T = int(blen[0])
    if bool((blen != T).any()):
        j = int(np.flatnonzero(blen != T)[0])
        raise InputError(name, f"layer {int(blayer[j])} has {int(blen[j])} rows but layer {int(blayer[0])} has {T}: "
                               "every layer must list every token", where=line(int(bstart[j])))
    L = int(blayer.size)
    # every layer block lists the same tokens: compare the token fields' (length, byte sum, first byte)
    t_lo, t_hi = c2 + 1, lb - 2
    t_len = t_hi - t_lo
    s1 = np.add.reduceat(a, np.stack([t_lo, t_hi], axis=1).reshape(-1), dtype=np.int64)[::2]
    s1[t_len == 0] = 0  # reduceat gives a[i] for an empty span
    sig = np.stack([t_len, s1, a[t_lo]], axis=1).reshape(L, T, 3)
    diff = np.flatnonzero((sig != sig[:1]).any(axis=2).reshape(-1))
    if diff.size:
        i = int(diff[0])
        raise InputError(name, f"token {i % T} of layer {int(blayer[i // T])} differs from the same row of layer "
                               f"{int(blayer[0])} ({row_text(i)!r} vs {row_text(i % T)!r})", where=line(i))
    dt = np.uint8 if int(ids.max()) < 256 else np.uint16
    experts = np.ascontiguousarray(ids.reshape(L, T, k).transpose(1, 0, 2), dtype=dt)
    if prompt_tokens is None or prompt_tokens >= T:
        sizes = np.array([T], np.int64)
        phase = np.array([PHASE_PREFILL], np.uint8)
    else:
        p = max(int(prompt_tokens), 0)
        sizes = np.r_[[p] if p else [], np.ones(T - p)].astype(np.int64)
        phase = np.r_[[PHASE_PREFILL] if p else [], np.full(T - p, PHASE_DECODE)].astype(np.uint8)
    return RequestRouting(experts, sizes, phase, tuple(int(x) for x in blayer))


def read_moebeyond(path: Any, *, n_expert: int | None = None, prompt_tokens: int | None = None) -> Trace:
    """Read a moe-beyond prompt CSV, a directory of them, or a tar archive (or a folder inside one)."""
    if prompt_tokens is not None and prompt_tokens < 0:
        raise InputError(None, f"--prompt-tokens must not be negative, got {prompt_tokens}")
    parse = functools.partial(parse_moebeyond_csv, prompt_tokens=prompt_tokens)
    extra = {} if prompt_tokens is None else {"prompt_tokens": int(prompt_tokens)}
    return read_per_request(path, "moe-beyond-csv", parse, n_expert=n_expert, source_extra=extra)
