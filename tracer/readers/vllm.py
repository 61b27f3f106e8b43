"""Reader for vLLM-style routing JSONL (formats.md section 2; github.com/Mario928/speculative-moe).

One JSON object per (generated token, layer): ``dataset, problem_id, layer, experts, gating_probs,
token_idx``. Only decode tokens are recorded; the prompt is not. Mapping to the trace schema:

* one request per ``problem_id``, in order of first appearance; the requests are laid out one after
  the other (the file does not say how vLLM interleaved them);
* every token is a decode step of its own; ``pos`` is ``token_idx`` (index among the generated
  tokens: the prompt length is unknown);
* a request has ``max(token_idx) + 1`` tokens; a (token, layer) row that is missing is an absent entry
  in ``present`` and reported with one warning (the humaneval sample has 37 such gaps);
* ``gating_probs`` become the gate weights (float16);
* ``n_expert`` is not in the file: pass it (Mixtral-8x7B: 8), or it is taken as the largest id + 1
  with a warning.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import (
    check_ids,
    decode_text,
    read_bytes,
    resolve_n_expert,
    source_meta,
    warn,
)
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["read_vllm_jsonl", "REQUIRED_FIELDS"]

REQUIRED_FIELDS = ("problem_id", "layer", "experts", "token_idx")


def _int(path: str | os.PathLike[str], obj: dict[str, Any], key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(path, f"field {key!r} must be an integer, got {json.dumps(v)[:40]}", where=where)
    if v < 0:
        raise InputError(path, f"field {key!r} must not be negative, got {v}", where=where)
    if v > _MAX_INDEX:
        raise InputError(path, f"field {key!r} is implausibly large: {v}", where=where)
    return v


#: largest layer or token index a record may carry (the trace stores them as int32)
_MAX_INDEX = 2**31 - 1


def read_vllm_jsonl(path: str | os.PathLike[str], *, n_expert: int | None = None) -> Trace:
    """Read a vLLM routing JSONL file into a decode-only :class:`Trace`."""
    data = read_bytes(path)
    text = decode_text(path, data)
    if not text.strip():
        raise InputError(path, "empty file: no routing records")
    problems: dict[Any, int] = {}
    datasets: set[str] = set()
    rec_req: list[int] = []
    rec_layer: list[int] = []
    rec_tok: list[int] = []
    rec_ids: list[list[int]] = []
    rec_w: list[list[float]] = []
    rec_line: list[int] = []
    k = -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg}; truncated or corrupt line)", where=where) from None
        if not isinstance(obj, dict):
            raise InputError(path, "expected one JSON object per line", where=where)
        missing = [f for f in REQUIRED_FIELDS if f not in obj]
        if missing:
            raise InputError(path, f"not a vLLM routing record: missing field(s) {missing}", where=where)
        pid = obj["problem_id"]
        if isinstance(pid, bool) or not isinstance(pid, (int, str)):
            raise InputError(path, f"field 'problem_id' must be an integer or string, got {json.dumps(pid)[:40]}",
                             where=where)
        layer = _int(path, obj, "layer", where)
        tok = _int(path, obj, "token_idx", where)
        ids = obj["experts"]
        if not isinstance(ids, list) or not ids or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise InputError(path, "field 'experts' must be a non-empty list of integers", where=where)
        if k < 0:
            k = len(ids)
        elif len(ids) != k:
            raise InputError(path, f"{len(ids)} experts in this row but {k} in earlier rows (top-k must not change)",
                             where=where)
        if min(ids) < 0 or max(ids) > 65535:
            raise InputError(path, f"expert id {min(ids) if min(ids) < 0 else max(ids)} out of range", where=where)
        if len(set(ids)) != len(ids):
            raise InputError(path, f"the same expert appears twice in {ids}", where=where)
        w = obj.get("gating_probs")
        if w is not None:
            if (
                not isinstance(w, list)
                or len(w) != k
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)
            ):
                raise InputError(path, f"field 'gating_probs' must be a list of {k} numbers", where=where)
        if isinstance(obj.get("dataset"), str):
            datasets.add(obj["dataset"])
        req = problems.setdefault(pid, len(problems))
        rec_req.append(req)
        rec_layer.append(layer)
        rec_tok.append(tok)
        rec_ids.append(ids)
        rec_w.append(w if w is not None else [float("nan")] * k)
        rec_line.append(lineno)
    if not rec_req:
        raise InputError(path, "no routing records")
    req_a = np.asarray(rec_req, np.int64)
    lay_a = np.asarray(rec_layer, np.int64)
    tok_a = np.asarray(rec_tok, np.int64)
    ids_a = np.asarray(rec_ids, np.int64)
    w_a = np.asarray(rec_w, np.float64)
    lines = np.asarray(rec_line, np.int64)
    # NOTE: sizes are bounded before allocation: a request spans max(token_idx) + 1 tokens, so one wild
    # token_idx would otherwise ask for gigabytes of absent entries
    n_cells = sum(int(tok_a[req_a == r].max()) + 1 for r in np.unique(req_a)) * int(np.unique(lay_a).size)
    if n_cells > 4 * len(rec_req) + 4096:
        i = int(np.argmax(tok_a))
        raise InputError(path, f"token_idx {int(tok_a[i])} leaves most (token, layer) entries of its request empty "
                               f"({len(rec_req)} records for {n_cells} entries): corrupt file?",
                         where=f"line {int(lines[i])}")
    if n_expert is not None:
        check_ids(path, ids_a, n_expert, where_of=lambda i: f"line {int(lines[i // k])}")
    ne, inferred = resolve_n_expert(path, int(ids_a.max()), n_expert)

    layers = np.unique(lay_a)
    L = int(layers.size)
    lidx = np.searchsorted(layers, lay_a)
    n_req = len(problems)
    req_len = np.zeros(n_req, np.int64)
    np.maximum.at(req_len, req_a, tok_a + 1)
    if int(req_len.sum()) > 2**31 - 1:
        raise InputError(path, "too many tokens")
    req_off = np.zeros(n_req + 1, np.int64)
    np.cumsum(req_len, out=req_off[1:])
    row_tok = req_off[req_a] + tok_a
    n_tok = int(req_off[-1])
    key = row_tok * L + lidx
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(np.diff(key[order]) == 0)
    if dup.size:
        i = int(order[dup[0] + 1])
        raise InputError(
            path, f"duplicate row for token {int(tok_a[i])} layer {int(lay_a[i])} of this problem", where=f"line {int(lines[i])}"
        )
    experts = np.zeros((n_tok, L, k), np.int64)
    experts[row_tok, lidx] = ids_a
    present = np.zeros((n_tok, L), bool)
    present[row_tok, lidx] = True
    has_w = not bool(np.isnan(w_a).all())
    weights = None
    if has_w:
        if bool(np.isnan(w_a).any()):
            i = int(np.flatnonzero(np.isnan(w_a).any(axis=1))[0])
            raise InputError(path, "some rows have 'gating_probs' and others do not", where=f"line {int(lines[i])}")
        weights = np.zeros((n_tok, L, k), np.float16)
        weights[row_tok, lidx] = w_a.astype(np.float16)
    n_absent = int((~present).sum())
    if n_absent:
        per_req = np.bincount(np.repeat(np.arange(n_req), req_len), weights=(~present).sum(axis=1), minlength=n_req)
        warn(path, f"{n_absent} (token, layer) rows are missing (per request: "
                   f"{per_req.astype(int).tolist()}); marked absent in the present mask")
    request = np.repeat(np.arange(n_req, dtype=np.int64), req_len)
    pos = np.arange(n_tok, dtype=np.int64) - req_off[request]
    meta: dict[str, Any] = {
        "source": source_meta(
            path,
            "vllm-jsonl",
            data,
            datasets=sorted(datasets),
            problem_ids=[p for p in problems],
            absent_entries=n_absent,
        )
    }
    if inferred:
        meta["n_expert_inferred"] = True
    return Trace.from_arrays(
        experts,
        n_expert=ne,
        phase=np.full(n_tok, PHASE_DECODE, np.uint8),
        request=request,
        ubatch=np.arange(n_tok),
        pos=pos,
        moe_layers=[int(x) for x in layers],
        weights=weights,
        present=None if n_absent == 0 else present,
        meta=meta,
    )
