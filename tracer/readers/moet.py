"""Reader for MOET v1 binary routing traces (formats.md section 3).

Written by ``src/llama-moetrace.cpp`` of github.com/sirxsniper/llama-cpp-turboquant when
``LLAMA_MOE_TRACE=<file>`` is set; the layout below follows that writer and its reference reader
``tools/moe-trace/moet.py`` (read, not copied). All little-endian, no padding or alignment::

    file header   char[4] "MOET", u32 version (= 1), u32 n_expert
    record        u32 len, then exactly len bytes:
                    u32 step, u16 n_tokens, u8 flags, u8 n_layers, u16 seq_id[n_tokens],
                    per layer: u16 il, u16 T, u8 n_used, u8 pred_k, u16 T_pred, u16 pad (0),
                               u16 ids[T*n_used], f16 w[T*n_used], u16 pred[T_pred*pred_k]

``flags``: 1 prefill (the writer sets it for ubatches of more than 8 tokens), 2 draft graph,
4 multi-token decode. ``T`` of the last MoE layer may be the number of output rows instead of
``n_tokens``; as in the CSV reader those rows belong to the last ``T`` tokens of the ubatch.

Mapping: one step per non-draft record; ``request`` is the token's ``seq_id`` (the file has no
positions, so ``pos`` is counted per sequence; a server that reuses sequence 0 for every conversation
yields one long request). Draft-graph records (speculative decoding's draft model) are skipped and
counted in ``meta["source"]["draft_records_skipped"]``: their routing is not the target model's
workload. Weights are kept unless the writer had none (all zero). Predictor rows (``pred``) are
skipped. A truncated last record (the process was killed while writing) is reported with a warning
and the complete records before it are kept; anything else malformed is an error naming the record.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import read_bytes, resolve_n_expert, source_meta, warn
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace, expert_dtype

__all__ = ["read_moet", "MOET_MAGIC", "MOET_VERSION", "FLAG_PREFILL", "FLAG_DRAFT", "FLAG_MULTI"]

MOET_MAGIC = b"MOET"
MOET_VERSION = 1
FLAG_PREFILL, FLAG_DRAFT, FLAG_MULTI = 1, 2, 4
_FILE_HDR = struct.Struct("<4sII")
_REC_HDR = struct.Struct("<IHBB")
_LAYER_HDR = struct.Struct("<HHBBHH")


def read_moet(path: str | os.PathLike[str], *, n_expert: int | None = None) -> Trace:
    """Read a MOET v1 trace into a :class:`Trace` (see the module docstring for the mapping)."""
    data = read_bytes(path)
    size = len(data)
    if size == 0:
        raise InputError(path, "empty file: not a MOET trace")
    if size < _FILE_HDR.size:
        if not MOET_MAGIC.startswith(data[:4]):
            raise InputError(path, f"not a MOET trace (magic {data[:4]!r})")
        raise InputError(path, f"truncated file: {size} bytes, shorter than the 12-byte MOET header")
    magic, version, file_ne = _FILE_HDR.unpack_from(data, 0)
    if magic != MOET_MAGIC:
        raise InputError(path, f"not a MOET trace (magic {magic!r}, expected b'MOET')")
    if version != MOET_VERSION:
        raise InputError(path, f"MOET version {version} is not supported (this build reads version 1)")
    if file_ne == 0 or file_ne > 65536:
        raise InputError(path, f"header says n_expert={file_ne}, which no model has")
    if n_expert is not None and n_expert != file_ne:
        raise InputError(path, f"the file says n_expert={file_ne} but {n_expert} was given")
    ne = int(file_ne)
    mv = memoryview(data)

    layers_ref: tuple[int, ...] | None = None
    k_ref = -1
    # per kept record: (flags, seq ids (T,), ids (T, L, k) with absent rows, present (T, L) or None, weights)
    recs_phase: list[int] = []
    recs_seq: list[np.ndarray] = []
    recs_ids: list[np.ndarray] = []
    recs_w: list[np.ndarray] = []
    recs_present: list[np.ndarray | None] = []
    n_draft = 0
    truncated_at: int | None = None
    off = _FILE_HDR.size
    rec_no = 0
    while off < size:
        where = f"record {rec_no} (byte {off})"
        if size - off < 4:
            truncated_at = off
            break
        (length,) = struct.unpack_from("<I", data, off)
        body = off + 4
        end = body + length
        if end > size:
            truncated_at = off
            break
        if length < _REC_HDR.size:
            raise InputError(path, f"record length {length} is shorter than a record header", where=where)
        step, T, flags, n_l = _REC_HDR.unpack_from(data, body)
        p = body + _REC_HDR.size
        if T == 0:
            raise InputError(path, "record has n_tokens = 0", where=where)
        if n_l == 0:
            raise InputError(path, "record has no MoE layers", where=where)
        if flags & ~(FLAG_PREFILL | FLAG_DRAFT | FLAG_MULTI):
            raise InputError(path, f"unknown flag bits {flags:#x}", where=where)
        if p + 2 * T > end:
            raise InputError(path, f"record length {length} too short for {T} sequence ids", where=where)
        seq = np.frombuffer(mv, dtype="<u2", count=T, offset=p).astype(np.int64)
        p += 2 * T
        il_list: list[int] = []
        ids_l: list[np.ndarray] = []
        w_l: list[np.ndarray] = []
        rows_l: list[int] = []
        for j in range(n_l):
            if p + _LAYER_HDR.size > end:
                raise InputError(path, f"record length {length} too short for layer {j} of {n_l}", where=where)
            il, Tl, n_used, pk, Tp, _pad = _LAYER_HDR.unpack_from(data, p)
            p += _LAYER_HDR.size
            if n_used == 0:
                raise InputError(path, f"layer {il} has n_used = 0", where=where)
            if k_ref < 0:
                k_ref = n_used
            elif n_used != k_ref:
                raise InputError(path, f"layer {il} routes {n_used} experts per token, earlier layers {k_ref}",
                                 where=where)
            if Tl > T:
                raise InputError(path, f"layer {il} has {Tl} rows for a ubatch of {T} tokens", where=where)
            need = 4 * Tl * n_used + 2 * Tp * pk
            if p + need > end:
                raise InputError(path, f"record length {length} too short for the data of layer {il}", where=where)
            ids = np.frombuffer(mv, dtype="<u2", count=Tl * n_used, offset=p).reshape(Tl, n_used)
            p += 2 * Tl * n_used
            w = np.frombuffer(mv, dtype="<f2", count=Tl * n_used, offset=p).reshape(Tl, n_used)
            p += 2 * Tl * n_used + 2 * Tp * pk
            if ids.size and int(ids.max()) >= ne:
                raise InputError(path, f"layer {il}: expert id {int(ids.max())} out of range for n_expert={ne}",
                                 where=where)
            il_list.append(il)
            ids_l.append(ids)
            w_l.append(w)
            rows_l.append(Tl)
        if p != end:
            raise InputError(path, f"record length {length} but its layers end at byte {p - body}", where=where)
        layer_t = tuple(il_list)
        if list(layer_t) != sorted(set(layer_t)):
            raise InputError(path, f"layer ids not increasing: {list(layer_t)}", where=where)
        if flags & FLAG_DRAFT:
            n_draft += 1
            rec_no += 1
            off = end
            continue
        if layers_ref is None:
            layers_ref = layer_t
        elif layer_t != layers_ref:
            raise InputError(
                path,
                f"inconsistent layers: this record has MoE layers {list(layer_t)[:8]}..., earlier records "
                f"{list(layers_ref)[:8]}...",
                where=where,
            )
        short = [j for j, t in enumerate(rows_l[:-1]) if t != T]
        if short:
            j = short[0]
            raise InputError(
                path,
                f"inconsistent layers: layer {il_list[j]} has {rows_l[j]} rows for {T} tokens (only the last "
                "MoE layer may have fewer)",
                where=where,
            )
        L = len(il_list)
        ids3 = np.zeros((T, L, k_ref), np.uint16)
        w3 = np.zeros((T, L, k_ref), np.float16)
        pres = None
        for j in range(L):
            # NOTE: a short last layer holds the output rows, i.e. the last Tl tokens of the ubatch.
            ids3[T - rows_l[j] :, j] = ids_l[j]
            w3[T - rows_l[j] :, j] = w_l[j]
        if rows_l[-1] != T:
            pres = np.ones((T, L), bool)
            pres[: T - rows_l[-1], L - 1] = False
        recs_phase.append(PHASE_PREFILL if flags & FLAG_PREFILL else PHASE_DECODE)
        recs_seq.append(seq)
        recs_ids.append(ids3)
        recs_w.append(w3)
        recs_present.append(pres)
        rec_no += 1
        off = end
    if truncated_at is not None:
        warn(path, f"truncated file: the record at byte {truncated_at} is incomplete ({size - truncated_at} bytes); "
                   f"kept the {rec_no} complete records before it")
    if not recs_ids:
        if n_draft:
            raise InputError(path, f"only draft-graph records ({n_draft}); no routing of the target model")
        raise InputError(path, "no complete record" + (" (truncated file)" if truncated_at is not None else ""))
    assert layers_ref is not None
    sizes = np.asarray([a.shape[0] for a in recs_ids], np.int64)
    experts = np.concatenate(recs_ids).astype(expert_dtype(ne), copy=False)
    weights_all = np.concatenate(recs_w)
    has_w = bool(np.any(weights_all != 0))
    if any(pr is not None for pr in recs_present):
        present = np.concatenate(
            [pr if pr is not None else np.ones((a.shape[0], len(layers_ref)), bool) for pr, a in zip(recs_present, recs_ids)]
        )
    else:
        present = None
    seq_all = np.concatenate(recs_seq)
    phase = np.repeat(np.asarray(recs_phase, np.uint8), sizes)
    ubatch = np.repeat(np.arange(len(recs_ids), dtype=np.int64), sizes)
    ne_final, _ = resolve_n_expert(path, int(experts.max()), ne)
    meta: dict[str, Any] = {
        "source": source_meta(
            path,
            "moet",
            data,
            records=rec_no,
            draft_records_skipped=n_draft,
            truncated=truncated_at is not None,
            absent_entries=0 if present is None else int((~present).sum()),
        )
    }
    return Trace.from_arrays(
        experts,
        n_expert=ne_final,
        phase=phase,
        request=seq_all,
        ubatch=ubatch,
        pos=None,
        moe_layers=list(layers_ref),
        weights=weights_all if has_w else None,
        present=present,
        meta=meta,
    )
