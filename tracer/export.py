"""``hotexperts trace export``: write a trace as llama.cpp-style CSV (formats.md §1) or a ``.moeprof v1`` profile.

CSV layout: header ``# phase,n_tokens,layer,token_idx,e0,...,e{k-1},start_pos,request,ubatch,pos``
(plus ``w0..w{k-1}`` when the trace has gate weights); per ubatch, rows are layer-major (all tokens of
the first MoE layer, then the next, ...), ``layer`` is the model's layer index, ``token_idx`` the token's
index in its ubatch, and absent (token, layer) entries have no row.

NOTE: the first columns are exactly formats.md §1, so tools reading that form by position keep working;
the trailing ``request,ubatch,pos`` columns make the round trip exact for any trace (several requests,
a kept warm-up, positions that do not follow from ``start_pos``, gaps anywhere) and switch the reader to
the hotexperts dialect (see :mod:`hotexperts.tracer.readers.llamacsv`). ``start_pos`` is the position of
the ubatch's first token, as in ``phase-05-alt-conv.csv``. The expert count is not in the CSV: import
with ``--n-expert`` (or ``--model``) to get it back exactly.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from hotexperts._atomic import atomic_open
from hotexperts.errors import InputError
from hotexperts.tracer.profile import profile_from_trace, write_moeprof
from hotexperts.tracer.trace import PHASE_NAMES, Trace

__all__ = ["EXPORT_FORMATS", "export_trace", "export_from_args", "csv_header"]

EXPORT_FORMATS = ("csv", "moeprof")
_CHUNK_ROWS = 1 << 18


def csv_header(top_k: int, *, weights: bool = False) -> str:
    cols = ["phase", "n_tokens", "layer", "token_idx", *(f"e{j}" for j in range(top_k)),
            "start_pos", "request", "ubatch", "pos"]
    if weights:
        cols += [f"w{j}" for j in range(top_k)]
    return "# " + ",".join(cols)


def _csv_rows(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Row order (token, layer index) arrays: per ubatch, layer-major, then token; absent entries dropped."""
    n, L = trace.n_tokens, trace.n_layers
    b = trace.step_bounds()
    step_of = np.repeat(np.arange(b.size - 1), np.diff(b))
    tok = np.broadcast_to(np.arange(n)[:, None], (n, L)).reshape(-1)
    lay = np.broadcast_to(np.arange(L)[None, :], (n, L)).reshape(-1)
    keep = np.ones(n * L, bool) if trace.present is None else trace.present.reshape(-1)
    tok, lay = tok[keep], lay[keep]
    order = np.lexsort((tok, lay, step_of[tok]))
    return tok[order], lay[order]


def _write_csv(trace: Trace, path: str | os.PathLike[str]) -> None:
    if trace.present is not None:
        empty = np.flatnonzero(~trace.present.any(axis=1))
        if empty.size:
            raise InputError(path, f"token {int(empty[0])} has no recorded layer; the CSV form cannot hold it")
    k = trace.top_k
    has_w = trace.weights is not None
    tok, lay = _csv_rows(trace)
    b = trace.step_bounds()
    sizes = np.diff(b)
    step_of = np.repeat(np.arange(b.size - 1), sizes)
    start_pos = trace.pos[b[:-1]]
    layers = np.asarray(trace.moe_layers, np.int64)
    phase_names = np.asarray(PHASE_NAMES)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(csv_header(k, weights=has_w) + "\n")
        for a in range(0, tok.size, _CHUNK_ROWS):
            t, li = tok[a : a + _CHUNK_ROWS], lay[a : a + _CHUNK_ROWS]
            s = step_of[t]
            cols: list[np.ndarray] = [
                phase_names[trace.phase[t]],
                sizes[s].astype(str),
                layers[li].astype(str),
                (t - b[s]).astype(str),
            ]
            ids = trace.experts[t, li].astype(np.int64)
            cols += [ids[:, j].astype(str) for j in range(k)]
            cols += [start_pos[s].astype(str), trace.request[t].astype(str), trace.ubatch[t].astype(str),
                     trace.pos[t].astype(str)]
            if has_w and trace.weights is not None:
                w = trace.weights[t, li]
                # NOTE: repr of the float16 value as a Python float parses back to the same float16
                cols += [np.asarray([repr(float(x)) for x in w[:, j]]) for j in range(k)]
            lines = cols[0].astype(object)
            for c in cols[1:]:
                lines = lines + "," + c.astype(object)
            fh.write("\n".join(lines.tolist()))
            fh.write("\n")


def export_trace(trace: Trace, path: str | os.PathLike[str], *, format: str) -> None:
    """Write ``trace`` to ``path`` atomically as ``csv`` or ``moeprof``."""
    if format == "csv":
        _write_csv(trace, path)
    elif format == "moeprof":
        write_moeprof(profile_from_trace(trace), path)
    else:
        raise InputError(path, f"unknown export format {format!r}; known: {', '.join(EXPORT_FORMATS)}")


def export_from_args(args: argparse.Namespace) -> int:
    from hotexperts._atomic import check_output
    from hotexperts.tracer.importers import load_any

    check_output(args.out)
    tr = load_any(args.trace, n_expert=getattr(args, "n_expert", None))
    export_trace(tr, args.out, format=args.format)
    print(f"hotexperts: wrote {args.format} of {args.trace} ({tr.n_tokens} tokens) to {args.out}", file=sys.stderr)
    return 0
