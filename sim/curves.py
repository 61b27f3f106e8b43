"""Whole hit-rate curves in one pass: Mattson's stack algorithm for textbook LRU and OPT.

Mattson, Gecsei, Slutz and Traiger, "Evaluation techniques for storage hierarchies", IBM Systems
Journal 9(2), 1970: LRU and OPT (Belady's MIN with insert on every miss) are *stack algorithms* — the
content of a cache of K slots is always the top K entries of one priority stack — so one pass that
records at which stack depth every request is found gives the hits of every cache size at once:
``hits(K) = #requests found at depth < K``.

The request model is the textbook one of the ``lru-textbook`` and ``belady-textbook`` policies (and of
libCacheSim): per layer, every routed selection of a present (token, layer) entry is one request, in
trace order (token, then rank); a hit is checked at the request; a miss is inserted at once. Prefill
tokens are requests like decode tokens. ``count`` picks which requests are *counted* (all, or only those
of decode tokens); every request updates the stack either way.

- LRU: the stack is recency order; the depth of a request is the number of distinct experts used since
  its expert's previous use. Positions live in a small array (``uint8`` up to 256 experts): a request at
  depth ``d`` adds one to every position ``< d`` — one branch-free, vectorised pass over the experts.
- OPT: the stack is ordered by priority = next use (sooner = higher); a request at depth ``d`` moves to
  the top and, going down levels ``1 .. d - 1``, the entry with the later next use is carried one level
  further down (Mattson's OPT update). Next uses come from one backward pass per layer.

Layers are independent: both run layers in parallel threads (numba ``prange``; the thread count is
numba's, ``numba.set_num_threads``). Both take a :class:`~hotexperts.tracer.trace.Trace` or a trace
prepared for replay (:class:`~hotexperts.policies.Prepared`; there a step's phase is its first token's,
as in :attr:`~hotexperts.sim.replay.ReplayResult.hit_rate`). :func:`hotexperts.sim.replay.hit_curve`
uses them for ``lru-textbook`` and ``belady-textbook``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange

from hotexperts.policies._engine import Prepared
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["accesses_per_layer", "lru_curve", "opt_curve"]


def _weights(trace: Trace | Prepared, count: str) -> np.ndarray:
    if count not in ("all", "decode"):
        raise ValueError(f"count must be 'all' or 'decode', got {count!r}")
    if isinstance(trace, Prepared):
        if count == "all":
            return np.ones(trace.experts.shape[0], np.uint8)
        # NOTE: a step's phase is its first token's (as in replay's decode hit rate)
        return np.repeat((trace.step_phase == PHASE_DECODE).astype(np.uint8), trace.step_tokens)
    if count == "all":
        return np.ones(trace.n_tokens, np.uint8)
    return (trace.phase == PHASE_DECODE).astype(np.uint8)


def _present(trace: Trace | Prepared) -> tuple[np.ndarray, bool]:
    if isinstance(trace, Prepared):
        return trace.present, trace.has_present
    if trace.present is None or bool(trace.present.all()):
        return np.ones((1, 1), np.bool_), False
    return np.ascontiguousarray(trace.present, np.bool_), True


def accesses_per_layer(trace: Trace | Prepared, *, count: str = "all") -> np.ndarray:
    """``(n_layers,)`` int64: the counted requests (selections) per layer, the denominator of a curve."""
    w = _weights(trace, count).astype(np.int64)
    n_tokens, n_layers, top_k = trace.experts.shape
    present, has_present = _present(trace)
    if not has_present:
        return np.full(n_layers, int(w.sum()) * top_k, np.int64)
    return (w @ present.astype(np.int64)) * top_k


def _finish(hist: np.ndarray, ks: Sequence[int] | None, n_expert: int) -> np.ndarray:
    hits = np.zeros((hist.shape[0], n_expert + 1), np.int64)
    np.cumsum(hist[:, :n_expert], axis=1, out=hits[:, 1:])
    if ks is None:
        return hits
    idx = np.asarray([int(k) for k in ks], np.int64)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) > n_expert):
        raise ValueError(f"ks must lie in 0 .. n_expert ({n_expert})")
    return hits[:, idx]


def lru_curve(trace: Trace | Prepared, ks: Sequence[int] | None = None, *, count: str = "all") -> np.ndarray:
    """Textbook LRU hits per layer for every cache size, in one pass.

    Returns ``(n_layers, n_expert + 1)`` int64 (column ``K`` = hits with ``K`` slots per layer), or
    ``(n_layers, len(ks))`` for the sizes ``ks``. Equal to replaying ``lru-textbook`` at each K.
    """
    ex = np.ascontiguousarray(trace.experts)
    present, has_present = _present(trace)
    n_expert = int(trace.n_expert)
    init = np.full(n_expert, 255, np.uint8) if n_expert <= 256 else np.full(n_expert, 65535, np.uint16)
    n_chunks = max(1, min(ex.shape[1], numba.get_num_threads()))
    hist = _lru_hist(ex, present, has_present, _weights(trace, count), n_expert, init, n_chunks)
    return _finish(hist, ks, n_expert)


def opt_curve(trace: Trace | Prepared, ks: Sequence[int] | None = None, *, count: str = "all") -> np.ndarray:
    """Textbook OPT (Belady's MIN, insert on every miss) hits per layer for every cache size, in one pass.

    Same shapes as :func:`lru_curve`; equal to replaying ``belady-textbook`` at each K.
    """
    ex = np.ascontiguousarray(trace.experts)
    present, has_present = _present(trace)
    hist = _opt_hist(ex, present, has_present, _weights(trace, count), int(trace.n_expert))
    return _finish(hist, ks, int(trace.n_expert))


@njit(cache=True, nogil=True, parallel=True)
def _lru_hist(experts, present, has_present, weight, n_expert, init, n_chunks):
    # NOTE: hist[ly, d] counts requests found at depth d; column n_expert = first uses (never hits).
    # A position array of a narrow dtype keeps the depth update one vectorised compare-and-add: unseen
    # experts hold the sentinel (255 / 65535), which is >= every depth while any expert is unseen.
    # Token-outer within a chunk of layers (the chunks run in parallel): each token's row of the trace
    # is read once per chunk, not once per layer.
    n_layers = experts.shape[1]
    hist = np.zeros((n_layers, n_expert + 1), np.int64)
    for c in prange(n_chunks):
        lo = (n_layers * c) // n_chunks
        hi = (n_layers * (c + 1)) // n_chunks
        if n_expert == 256:
            _lru_chunk(experts, present, has_present, weight, 256, init, lo, hi, hist)
        else:
            _lru_chunk(experts, present, has_present, weight, n_expert, init, lo, hi, hist)
    return hist


@njit(cache=True, nogil=True, inline="always")
def _lru_chunk(experts, present, has_present, weight, n_expert, init, lo, hi, hist):
    n_tokens = experts.shape[0]
    top_k = experts.shape[2]
    pos = np.empty((hi - lo, init.size), init.dtype)
    for ly in range(lo, hi):
        pos[ly - lo, :] = init
    ns = np.zeros(hi - lo, np.int64)
    dv = init[:1].copy()
    for t in range(n_tokens):
        w = weight[t]
        for ly in range(lo, hi):
            if has_present and not present[t, ly]:
                continue
            p_ = pos[ly - lo]
            n_s = ns[ly - lo]
            for j in range(top_k):
                e = np.intp(experts[t, ly, j])
                p = np.int64(p_[e])
                if p < n_s:
                    d = p
                    hist[ly, p] += w
                else:
                    d = n_s
                    n_s += 1
                    hist[ly, n_expert] += w
                dv[0] = d
                dd = dv[0]
                for i in range(n_expert):  # a constant trip count when n_expert is the literal 256
                    p_[i] += p_[i] < dd
                p_[e] = 0
            ns[ly - lo] = n_s


@njit(cache=True, nogil=True, parallel=True)
def _opt_hist(experts, present, has_present, weight, n_expert):
    n_tokens = experts.shape[0]
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    hist = np.zeros((n_layers, n_expert + 1), np.int64)
    for ly in prange(n_layers):
        n_acc = 0
        for t in range(n_tokens):
            if not has_present or present[t, ly]:
                n_acc += top_k
        inf = n_acc  # "never used again"
        # next use of every request (index into this layer's request sequence), one backward pass
        nxt = np.empty(n_acc, np.int32)
        last = np.full(n_expert, inf, np.int32)
        i = n_acc
        for t in range(n_tokens - 1, -1, -1):
            if has_present and not present[t, ly]:
                continue
            for j in range(top_k - 1, -1, -1):
                i -= 1
                e = np.intp(experts[t, ly, j])
                nxt[i] = last[e]
                last[e] = i
        sid = np.zeros(n_expert + 1, np.int64)
        snu = np.zeros(n_expert + 1, np.int32)
        pos = np.full(n_expert, -1, np.int64)
        ns = 0
        i = 0
        for t in range(n_tokens):
            if has_present and not present[t, ly]:
                continue
            w = weight[t]
            for j in range(top_k):
                e = np.intp(experts[t, ly, j])
                nu = nxt[i]
                i += 1
                d = pos[e]
                if d < 0:
                    d = ns
                    ns += 1
                    hist[ly, n_expert] += w
                else:
                    hist[ly, d] += w
                if d == 0:  # a hit on the top entry, or the layer's first request
                    sid[0] = e
                    snu[0] = nu
                    pos[e] = 0
                    continue
                # Mattson's OPT update: e to the top; going down, the entry with the later next use is
                # carried one level further, until it fills e's old level (or the new bottom)
                cid = sid[0]
                cnu = snu[0]
                sid[0] = e
                snu[0] = nu
                pos[e] = 0
                for q in range(1, d):
                    v = snu[q]
                    if v > cnu:
                        vid = sid[q]
                        sid[q] = cid
                        snu[q] = cnu
                        pos[cid] = q
                        cid = vid
                        cnu = v
                sid[d] = cid
                snu[d] = cnu
                pos[cid] = d
    return hist
