"""Reader for llama.cpp-style routing CSV (formats.md section 1), one row per (token, MoE layer).

Header line: ``# phase,n_tokens,layer,token_idx,e0,...,e{k-1}`` optionally followed by ``start_pos``
(pmains/kimi-linear-48b-ssd-streaming, ``phase-05-alt-conv.csv``) and by the hotexperts extension
columns ``request,ubatch,pos`` and ``w0..w{k-1}`` that :mod:`hotexperts.tracer.export` writes.

Two dialects, told apart by the ``ubatch`` column:

* llama.cpp dialect (no ``ubatch`` column): rows of a ubatch are layer-major; a new ubatch starts where
  ``phase``, ``n_tokens`` or ``start_pos`` change or ``(layer, token_idx)`` stops increasing. In the
  last MoE layer a ubatch may have ``r < n_tokens`` rows (llama.cpp computes only the tokens whose
  output is needed); those rows are numbered ``0..r-1`` and belong to the *last* ``r`` tokens of the
  ubatch (the ones that asked for logits); the others are marked absent in ``present``. The leading
  2-token prefill ubatch(es) are llama.cpp's warm-up and are dropped unless ``keep_warmup``.
  Requests: a new request where ``start_pos`` goes back (a cleared or rewound KV cache); without
  ``start_pos`` there is one request and positions are counted.
* hotexperts dialect (``request,ubatch,pos`` present): ``token_idx`` is always the token's index in
  its ubatch, a missing row is an absent (token, layer) entry, and request, ubatch id and position come
  from the columns, so an export imports back exactly. No warm-up detection.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import (
    check_ids,
    decode_text,
    read_bytes,
    resolve_n_expert,
    source_meta,
)
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = ["read_csv", "BASE_COLUMNS", "EXTRA_COLUMNS"]

BASE_COLUMNS = ("phase", "n_tokens", "layer", "token_idx")
EXTRA_COLUMNS = ("start_pos", "request", "ubatch", "pos")
_PHASES = {"prefill": PHASE_PREFILL, "decode": PHASE_DECODE}


def _parse_header(path: str | os.PathLike[str], line: str) -> tuple[list[str], int]:
    if not line.startswith("#"):
        raise InputError(
            path,
            "not a llama.cpp routing CSV: the first line must be a header '# phase,n_tokens,layer,token_idx,e0,...'",
            where="line 1",
        )
    cols = [c.strip() for c in line[1:].split(",")]
    if tuple(cols[:4]) != BASE_COLUMNS:
        raise InputError(
            path, f"header must start with '# phase,n_tokens,layer,token_idx', got '{line.strip()[:80]}'", where="line 1"
        )
    k = 0
    while 4 + k < len(cols) and cols[4 + k] == f"e{k}":
        k += 1
    if k == 0:
        raise InputError(path, "header has no expert columns e0, e1, ...", where="line 1")
    allowed = set(EXTRA_COLUMNS) | {f"w{j}" for j in range(k)}
    rest = cols[4 + k :]
    unknown = [c for c in rest if c not in allowed]
    if unknown:
        raise InputError(path, f"unknown header column(s) {unknown}", where="line 1")
    if len(set(rest)) != len(rest):
        raise InputError(path, "duplicate header columns", where="line 1")
    ws = [c for c in rest if c.startswith("w")]
    if ws and len(ws) != k:
        raise InputError(path, f"header has {len(ws)} weight columns for {k} expert columns", where="line 1")
    if any(c in rest for c in ("request", "ubatch", "pos")) and not all(c in rest for c in ("request", "ubatch", "pos")):
        raise InputError(path, "header has some but not all of the columns request, ubatch, pos", where="line 1")
    return cols, k


def _diagnose(path: str | os.PathLike[str], lines: list[str], cols: list[str]) -> InputError:
    """Find the first malformed data line (slow path, only after the fast parser failed)."""
    n = len(cols)
    for i, line in enumerate(lines):
        where = f"line {i + 2}"
        if not line.strip():
            return InputError(path, "empty line among the rows", where=where)
        fields = line.split(",")
        if len(fields) != n:
            return InputError(path, f"expected {n} fields, got {len(fields)} (truncated or corrupt row)", where=where)
        if fields[0].strip() not in _PHASES:
            return InputError(path, f"phase must be 'prefill' or 'decode', got {fields[0].strip()[:20]!r}", where=where)
        for name, f in zip(cols[1:], fields[1:]):
            f = f.strip()
            if name.startswith("w") and name[1:].isdigit():
                try:
                    float(f)
                except ValueError:
                    return InputError(path, f"column {name}: not a number: {f[:20]!r}", where=where)
                continue
            try:
                v = int(f)
            except ValueError:
                return InputError(path, f"column {name}: not an integer: {f[:20]!r}", where=where)
            if v < 0:
                return InputError(path, f"column {name}: negative value {v}", where=where)
    return InputError(path, "could not parse the rows")


def _load_rows(path: str | os.PathLike[str], body: list[str], cols: list[str]) -> dict[str, np.ndarray]:
    """Parse the data lines with numpy's C parser (fast path); on any problem find the bad line."""
    text = "\n" + "\n".join(body)
    n_pre = text.count("\nprefill,")
    n_dec = text.count("\ndecode,")
    if n_pre + n_dec != len(body):
        raise _diagnose(path, body, cols)
    # NOTE: phase names become 0/1 so the whole table parses as numbers in one C pass.
    text = text.replace("\nprefill,", "\n0,").replace("\ndecode,", "\n1,")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        raise _diagnose(path, body, cols) from None
    if table.shape != (len(body), len(cols)) or not bool(np.isfinite(table).all()):
        raise _diagnose(path, body, cols)
    out: dict[str, np.ndarray] = {"phase": table[:, 0].astype(np.uint8)}
    for j, c in enumerate(cols[1:], start=1):
        a = table[:, j]
        if c.startswith("w") and c[1:].isdigit():
            out[c] = a
            continue
        if bool(((a < 0) | (a != np.floor(a)) | (a > 2**40)).any()):
            raise _diagnose(path, body, cols)
        out[c] = a.astype(np.int64)
    return out


def read_csv(
    path: str | os.PathLike[str],
    *,
    keep_warmup: bool = False,
    n_expert: int | None = None,
) -> Trace:
    """Read a llama.cpp-style routing CSV into a :class:`Trace` (see the module docstring for the rules)."""
    data = read_bytes(path)
    text = decode_text(path, data)
    lines = text.splitlines()
    if not lines or not text.strip():
        raise InputError(path, "empty file: not a llama.cpp routing CSV")
    cols, k = _parse_header(path, lines[0])
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    if not body:
        raise InputError(path, "header but no rows")
    r = _load_rows(path, body, cols)
    n_rows = len(body)
    nt, lay, tok = r["n_tokens"], r["layer"], r["token_idx"]
    E = np.stack([r[f"e{j}"] for j in range(k)], axis=1)
    has_w = "w0" in r
    W = np.stack([r[f"w{j}"] for j in range(k)], axis=1) if has_w else None
    hx = "ubatch" in r
    sp = r.get("start_pos")

    def line_of(row: int) -> str:
        return f"line {int(row) + 2}"

    bad = np.flatnonzero(nt < 1)
    if bad.size:
        raise InputError(path, "n_tokens must be at least 1", where=line_of(bad[0]))
    bad = np.flatnonzero(tok >= nt)
    if bad.size:
        i = int(bad[0])
        raise InputError(path, f"token_idx {int(tok[i])} out of range for a ubatch of {int(nt[i])} tokens", where=line_of(i))
    if n_expert is not None:
        check_ids(path, E, n_expert, where_of=lambda i: line_of(i // k))
    elif E.size and int(E.max()) > 65535:
        i = int(np.argmax(E.reshape(-1)))
        raise InputError(path, f"expert id {int(E.reshape(-1)[i])} is beyond what any model has", where=line_of(i // k))

    # ---- ubatch boundaries
    order_up = np.ones(n_rows, bool)
    order_up[1:] = (lay[1:] > lay[:-1]) | ((lay[1:] == lay[:-1]) & (tok[1:] > tok[:-1]))
    content_change = np.zeros(n_rows, bool)
    content_change[0] = True
    content_change[1:] = (r["phase"][1:] != r["phase"][:-1]) | (nt[1:] != nt[:-1])
    if sp is not None:
        content_change[1:] |= sp[1:] != sp[:-1]
    if hx:
        ubc = r["ubatch"]
        new = np.ones(n_rows, bool)
        new[1:] = ubc[1:] != ubc[:-1]
        bad = np.flatnonzero(np.diff(ubc) < 0)
        if bad.size:
            raise InputError(path, "ubatch ids must not decrease", where=line_of(bad[0] + 1))
        bad = np.flatnonzero(content_change & ~new)
        if bad.size:
            raise InputError(path, "phase, n_tokens or start_pos change inside one ubatch", where=line_of(bad[0]))
        bad = np.flatnonzero(~order_up & ~new)
        if bad.size:
            raise InputError(
                path, "rows of a ubatch must be layer-major with increasing token_idx (duplicate or out-of-order row)",
                where=line_of(bad[0]),
            )
    else:
        new = content_change | ~order_up
    ub_row = np.cumsum(new) - 1
    first_row = np.flatnonzero(new)
    n_ub = int(first_row.size)
    ub_n = nt[first_row]
    ub_phase = r["phase"][first_row]

    layers = np.unique(lay)
    L = int(layers.size)
    lidx = np.searchsorted(layers, lay)
    counts = np.bincount(ub_row * L + lidx, minlength=n_ub * L).reshape(n_ub, L)

    # ---- token of each row
    ub_tok0 = np.zeros(n_ub + 1, np.int64)
    np.cumsum(ub_n, out=ub_tok0[1:])
    row_tok = ub_tok0[ub_row] + tok
    if not hx:
        # every layer but the last: exactly one row per token of the ubatch
        short = counts[:, : L - 1] != ub_n[:, None]
        if bool(short.any()):
            u, li = np.argwhere(short)[0]
            raise InputError(
                path,
                f"inconsistent layers: layer {int(layers[li])} has {int(counts[u, li])} rows in a ubatch of "
                f"{int(ub_n[u])} tokens (only the last MoE layer, {int(layers[-1])}, may have fewer; truncated file?)",
                where=line_of(first_row[u]),
            )
        last = lidx == L - 1
        r_last = counts[ub_row, L - 1]
        bad = np.flatnonzero(last & (tok >= r_last))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                path,
                f"last MoE layer has {int(r_last[i])} of {int(nt[i])} rows but token_idx {int(tok[i])}: "
                "expected the output rows 0..r-1",
                where=line_of(i),
            )
        # NOTE: llama.cpp keeps only the output rows (the tokens that asked for logits, the last ones of the
        # prompt) in the last layer; row j of r belongs to token n - r + j.
        row_tok = np.where(last, row_tok + (ub_n[ub_row] - r_last), row_tok)

    n_tok = int(ub_tok0[-1])
    # NOTE: sizes are bounded before allocation: n_tokens fields that promise far more tokens than the rows
    # give (a 3-line file declaring 20,000,000 tokens became a 320 MB trace) are corrupt
    if n_tok * L > 1024 * int(lay.size) + 65536:
        u = int(np.argmax(ub_n))
        raise InputError(path, f"n_tokens {int(ub_n[u])} with only {int(counts[u].max())} rows in any layer: the file "
                               f"declares {n_tok} tokens for {int(lay.size)} rows (corrupt n_tokens?)",
                         where=line_of(first_row[u]))
    tok_ub = np.repeat(np.arange(n_ub), ub_n)

    # ---- warm-up ubatches (llama.cpp dialect only)
    n_warm = 0
    if not hx:
        while (
            n_warm < n_ub - 1
            and ub_phase[n_warm] == PHASE_PREFILL
            and ub_n[n_warm] == 2
            and ub_phase[n_warm + 1] == PHASE_PREFILL
            and (sp is None or int(sp[first_row[n_warm + 1]]) == 0)
        ):
            n_warm += 1

    # ---- per-token request, position, ubatch id
    if hx:
        req_t = np.full(n_tok, -1, np.int64)
        pos_t = np.full(n_tok, -1, np.int64)
        req_t[row_tok] = r["request"]
        pos_t[row_tok] = r["pos"]
        missing = np.flatnonzero(req_t < 0)
        if missing.size:
            t = int(missing[0])
            raise InputError(path, f"token {t - int(ub_tok0[tok_ub[t]])} of a ubatch has no rows at all",
                             where=line_of(first_row[tok_ub[t]]))
        bad = np.flatnonzero((req_t[row_tok] != r["request"]) | (pos_t[row_tok] != r["pos"]))
        if bad.size:
            raise InputError(path, "rows of one token disagree on request or pos", where=line_of(bad[0]))
        ub_id_t = r["ubatch"][first_row][tok_ub]
    else:
        in_ub = np.arange(n_tok) - ub_tok0[tok_ub]
        ub_req = np.zeros(n_ub, np.int64)
        if sp is not None:
            ub_sp = sp[first_row]
            ub_end = ub_sp + ub_n
            restart = np.zeros(n_ub, bool)
            restart[1:] = ub_sp[1:] < ub_end[:-1]
            ub_req = np.cumsum(restart)
            pos_t = ub_sp[tok_ub] + in_ub
        else:
            # NOTE: nothing in the file separates requests; the warm-up (a cleared sequence) is its own.
            ub_req[n_warm:] = n_warm
            ub_req[:n_warm] = np.arange(n_warm)
            pos_t = np.zeros(n_tok, np.int64)
            for q in np.unique(ub_req):
                m = ub_req[tok_ub] == q
                pos_t[m] = np.arange(int(m.sum()))
        req_t = ub_req[tok_ub]
        ub_id_t = tok_ub

    experts = np.zeros((n_tok, L, k), np.int64)
    experts[row_tok, lidx] = E
    present = np.zeros((n_tok, L), bool)
    present[row_tok, lidx] = True
    weights = None
    if W is not None:
        weights = np.zeros((n_tok, L, k), np.float16)
        weights[row_tok, lidx] = W.astype(np.float16)

    keep = np.ones(n_tok, bool)
    if n_warm and not keep_warmup:
        keep = tok_ub >= n_warm
    if not bool(keep.any()):
        raise InputError(path, "no rows after the warm-up ubatch")
    kept_rows = keep[row_tok]
    max_id = int(E[kept_rows].max()) if bool(kept_rows.any()) else 0
    ne, inferred = resolve_n_expert(path, max_id, n_expert)
    experts, present, req_t, pos_t, ub_id_t = experts[keep], present[keep], req_t[keep], pos_t[keep], ub_id_t[keep]
    phase_t = ub_phase[tok_ub][keep]
    if weights is not None:
        weights = weights[keep]
    if not hx:
        # renumber requests and ubatches densely from 0
        _, req_t = np.unique(req_t, return_inverse=True)
        _, ub_id_t = np.unique(ub_id_t, return_inverse=True)
    if int(pos_t.max(initial=0)) > np.iinfo(np.int32).max or int(req_t.max(initial=0)) > np.iinfo(np.int32).max:
        raise InputError(path, "position or request id too large")
    n_absent = int((~present).sum())
    meta: dict[str, Any] = {
        "source": source_meta(
            path,
            "csv",
            data,
            dialect="hotexperts" if hx else "llama.cpp",
            warmup_ubatches=n_warm,
            warmup_dropped=bool(n_warm and not keep_warmup),
            absent_entries=n_absent,
        )
    }
    if inferred:
        meta["n_expert_inferred"] = True
    try:
        return Trace.from_arrays(
            experts,
            n_expert=ne,
            phase=phase_t,
            request=req_t,
            ubatch=ub_id_t,
            pos=pos_t,
            moe_layers=[int(x) for x in layers],
            weights=weights,
            present=None if n_absent == 0 else present,
            meta=meta,
        )
    except (ValueError, InputError) as exc:  # pragma: no cover - defensive: all checked above
        raise InputError(path, f"inconsistent trace: {exc}") from None
