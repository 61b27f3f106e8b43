"""``hotexperts trace info``: token counts and per-layer routing statistics of a trace (vectorised numpy).

Per MoE layer (absent entries ignored):
  * ``distinct_experts``: experts selected at least once (all phases);
  * ``top10pct_share``: share of all selections that went to the ``ceil(n_expert / 10)`` most-selected
    experts (all phases);
  * ``next_token_reuse``: over pairs of consecutive decode tokens of the same request (the previous
    decode token *of that request*, whatever other requests ran in between), the share of the later
    token's selections that the earlier token also selected;
  * ``median_reuse_distance``: for every decode selection of an expert the request already selected in
    an earlier decode token (same layer), the distance in decode tokens of that request to the most
    recent such token; the median over those selections (``None`` when there are none).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["trace_stats", "format_stats", "layer_stats"]


def _decode_order(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode token indices grouped by request (stable), their request, and index within the request."""
    dec = np.flatnonzero(trace.phase == PHASE_DECODE)
    req = trace.request[dec]
    order = np.argsort(req, kind="stable")
    dec, req = dec[order], req[order]
    first = np.r_[True, req[1:] != req[:-1]] if req.size else np.zeros(0, bool)
    grp = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    idx = np.arange(dec.size) - starts[grp] if dec.size else np.zeros(0, np.int64)
    return dec, req, idx


def layer_stats(trace: Trace, li: int, dec: np.ndarray, dreq: np.ndarray, didx: np.ndarray) -> dict[str, Any]:
    E, k = trace.n_expert, trace.top_k
    ids = trace.experts[:, li, :]
    pres = None if trace.present is None else trace.present[:, li]
    sel = ids if pres is None else ids[pres]
    counts = np.bincount(sel.reshape(-1).astype(np.int64), minlength=E)
    total = int(counts.sum())
    n_top = max(1, math.ceil(E / 10))
    top = np.sort(counts)[::-1][:n_top].sum()
    out: dict[str, Any] = {
        "layer": int(trace.moe_layers[li]),
        "selections": total,
        "distinct_experts": int(np.count_nonzero(counts)),
        "top10pct_share": float(top / total) if total else None,
    }
    d_ok = np.ones(dec.size, bool) if pres is None else pres[dec]
    pair = (didx[1:] == didx[:-1] + 1) & (dreq[1:] == dreq[:-1]) & d_ok[1:] & d_ok[:-1]
    n_pairs = int(np.count_nonzero(pair))
    out["next_token_reuse"] = None
    out["median_reuse_distance"] = None
    out["reuse_events"] = 0
    dd, rr, ii = dec[d_ok], dreq[d_ok], didx[d_ok]
    if dd.size == 0:
        return out
    # NOTE: one int64 key (request, expert, index within the request) sorted once: neighbours with the
    # same (request, expert) are consecutive uses of the expert, their index gap the reuse distance. A
    # gap of 1 is exactly "the previous decode token of the request also selected it" (absent tokens
    # are not in the keys), so next-token reuse = gaps of 1 / selections of tokens whose predecessor
    # is present.
    span = int(ii.max()) + 1
    _, rdense = _dense(rr)
    key = (np.repeat(rdense, k) * E + ids[dd].astype(np.int64).reshape(-1)) * span + np.repeat(ii.astype(np.int64), k)
    key.sort()
    grp = key // span
    dist = np.diff(key)[grp[1:] == grp[:-1]]
    if n_pairs:
        out["next_token_reuse"] = float(np.count_nonzero(dist == 1) / (n_pairs * k))
    if dist.size:
        hist = np.bincount(dist)
        cum = np.cumsum(hist)
        m = dist.size
        lo = int(np.searchsorted(cum, (m - 1) // 2 + 1))
        hi = int(np.searchsorted(cum, m // 2 + 1))
        out["median_reuse_distance"] = (lo + hi) / 2.0
        out["reuse_events"] = int(m)
    return out


def _dense(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like ``np.unique(a, return_inverse=True)`` but sort-based (fast on large arrays)."""
    o = np.argsort(a, kind="stable")
    s = a[o]
    first = np.r_[True, s[1:] != s[:-1]]
    inv = np.empty(a.size, np.int64)
    inv[o] = np.cumsum(first) - 1
    return s[first], inv


def trace_stats(trace: Trace) -> dict[str, Any]:
    """Summary and per-layer routing statistics (JSON-serialisable)."""
    dec, dreq, didx = _decode_order(trace)
    per_layer = [layer_stats(trace, li, dec, dreq, didx) for li in range(trace.n_layers)]
    b = trace.step_bounds()
    step_phase = trace.phase[b[:-1]] if trace.n_tokens else np.zeros(0, np.uint8)

    def mean(key: str) -> float | None:
        vals = [p[key] for p in per_layer if p[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "n_tokens": trace.n_tokens,
        "n_prefill_tokens": trace.n_prefill_tokens,
        "n_decode_tokens": trace.n_decode_tokens,
        "n_requests": trace.n_requests,
        "n_steps": trace.n_steps,
        "n_prefill_steps": int(np.count_nonzero(step_phase != PHASE_DECODE)),
        "n_decode_steps": int(np.count_nonzero(step_phase == PHASE_DECODE)),
        "n_layers": trace.n_layers,
        "moe_layers": [int(x) for x in trace.moe_layers],
        "n_expert": trace.n_expert,
        "top_k": trace.top_k,
        "has_weights": trace.weights is not None,
        "absent_entries": 0 if trace.present is None else int((~trace.present).sum()),
        "source": trace.meta.get("source"),
        "model": (trace.meta.get("model") or {}).get("name") if isinstance(trace.meta.get("model"), dict) else None,
        "subjects": _subjects(trace),
        "mean": {key: mean(key) for key in ("distinct_experts", "top10pct_share", "next_token_reuse",
                                            "median_reuse_distance")},
        "per_layer": per_layer,
    }


def _subjects(trace: Trace) -> list[dict[str, Any]]:
    """Per subject (``meta["subjects"]``, from the per-request importers): requests and tokens."""
    from hotexperts.tracer.split import request_subjects

    names, of = request_subjects(trace)
    if not names:
        return []
    rid, n_tok = np.unique(trace.request, return_counts=True)
    subj = np.array([of.get(int(r), -1) for r in rid], np.int64)
    out = []
    for i, name in enumerate(names):
        m = subj == i
        out.append({"name": name, "n_requests": int(m.sum()), "n_tokens": int(n_tok[m].sum())})
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_stats(stats: dict[str, Any]) -> str:
    """A readable text report of :func:`trace_stats`."""
    src = stats.get("source")
    if isinstance(src, dict):
        src_s = " ".join(f"{k}={v}" for k, v in src.items() if k in ("kind", "format", "file", "dialect"))
    else:
        src_s = str(src) if src is not None else "-"
    lines = [
        f"tokens        {stats['n_tokens']} ({stats['n_prefill_tokens']} prefill, {stats['n_decode_tokens']} decode)",
        f"requests      {stats['n_requests']}",
        f"steps         {stats['n_steps']} ({stats.get('n_prefill_steps', '-')} prefill, "
        f"{stats.get('n_decode_steps', '-')} decode)",
        f"MoE layers    {stats['n_layers']} ({_layer_ranges(stats['moe_layers'])})",
        f"experts       top-{stats['top_k']} of {stats['n_expert']}"
        + (", gate weights" if stats.get("has_weights") else ""),
        f"absent        {stats.get('absent_entries', 0)} (token, layer) entries",
        f"source        {src_s}",
    ]
    if stats.get("model"):
        lines.append(f"model         {stats['model']}")
    subj = stats.get("subjects") or []
    if subj:
        shown = ", ".join(f"{s['name']} ({s['n_requests']} req, {s['n_tokens']} tok)" for s in subj[:8])
        lines.append(f"subjects      {len(subj)}: {shown}" + (", ..." if len(subj) > 8 else ""))
    lines.append("")
    lines.append(f"{'layer':>5} {'distinct':>8} {'top10%':>7} {'reuse':>6} {'med.dist':>8}")
    for p in stats["per_layer"]:
        lines.append(
            f"{p['layer']:>5} {p['distinct_experts']:>8} {_f(p['top10pct_share'], '.3f'):>7} "
            f"{_f(p['next_token_reuse'], '.3f'):>6} {_f(p['median_reuse_distance'], 'g'):>8}"
        )
    m = stats.get("mean") or {}
    if m:
        lines.append(
            f"{'mean':>5} {_f(m.get('distinct_experts'), '.1f'):>8} {_f(m.get('top10pct_share'), '.3f'):>7} "
            f"{_f(m.get('next_token_reuse'), '.3f'):>6} {_f(m.get('median_reuse_distance'), 'g'):>8}"
        )
    return "\n".join(lines) + "\n"


def _layer_ranges(layers: list[int]) -> str:
    if not layers:
        return ""
    out, a, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:  # type: ignore[list-item]
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{a}" if a == prev else f"{a}..{prev}")
        if x is not None:
            a = prev = x
    return ", ".join(out)
