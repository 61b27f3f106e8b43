"""``belady``: the offline optimum (Belady's MIN with bypass), the upper bound for online policies.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems Journal 5(2),
1966; the bypass variant (a miss need not be admitted) is optimal for hit counts when any item may be
skipped. Per layer and step: the experts the step used are the requests. After the step, each missed
expert, in order of its next use (soonest first, ties lower id), is admitted into an empty slot (lowest
index) if it is used again at all, else replaces the resident whose next use is furthest (ties: higher
id) when its own next use is sooner; otherwise it and every later candidate is bypassed.

Implementation: next uses precomputed per layer in one backward pass; the residents' next uses in a
binary max-heap with lazy deletion (rebuilt from the residents when it grows past 4K + 64 entries), so a
replay is O(n log K) (n = distinct (step, expert) requests).
Layers are independent and replayed one after the other, so memory is O(n of one layer).

Parameters: ``decode_only`` (only decode steps are requests; prefill steps neither drive decisions nor
count as future uses, since the hit rate is measured on decode), ``pp_bypass`` (steps with more tokens are
plain-path steps and not requests; 0 = off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import Policy, Prepared, put, step_stats
from hotexperts.tracer.trace import PHASE_DECODE

__all__ = ["Belady"]


@dataclass(frozen=True)
class Belady(Policy):
    """Offline optimal replacement with bypass."""

    name: ClassVar[str] = "belady"
    label_keys: ClassVar[dict[str, str]] = {}
    layer_independent: ClassVar[bool] = True

    decode_only: bool = field(default=True, metadata={"help": "only decode steps are requests"})
    pp_bypass: int = field(default=0, metadata={"help": "steps with more tokens run the plain path (0 = off)"})

    def bypass(self, prep: Prepared) -> np.ndarray:
        if self.pp_bypass <= 0:
            return np.zeros(prep.n_steps, np.bool_)
        return prep.step_tokens > self.pp_bypass

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        request = ~bypass
        if self.decode_only:
            request &= prep.step_phase == PHASE_DECODE
        return int(
            belady_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass, request,
                          prep.n_expert, slots.astype(np.int64), stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def belady_kernel(experts, present, has_present, bounds, bypass, request, n_expert, slots,
                  stats, resident, slot_of, ev):
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    smark = np.zeros((n_layers, n_expert), np.int32)
    mark = np.zeros(n_expert, np.int64)
    dist = np.empty(n_expert, np.int64)
    last = np.empty(n_expert, np.int64)
    cur_next = np.empty(n_expert, np.int64)
    cand = np.empty(n_expert, np.int64)
    inf = n_steps  # "never used again"
    # upper bound on requests of one layer: every present selection of a request step
    cap = 0
    for s in range(n_steps):
        if request[s]:
            cap += (bounds[s + 1] - bounds[s]) * top_k
    ids = np.empty(cap, np.int64)
    nxt = np.empty(cap, np.int64)
    off = np.empty(n_steps + 1, np.int64)
    heap = np.empty(cap + max(1, resident.shape[1]) + 1, np.int64)
    n_ev_total = 0
    stamp = 0
    for ly in range(n_layers):
        k = slots[ly]
        # pass 1: distinct requests per step (CSR)
        n = 0
        for s in range(n_steps):
            off[s] = n
            if not request[s]:
                continue
            stamp += 1
            for t in range(bounds[s], bounds[s + 1]):
                if has_present and not present[t, ly]:
                    continue
                for j in range(top_k):
                    e = np.int64(experts[t, ly, j])
                    if mark[e] != stamp:
                        mark[e] = stamp
                        ids[n] = e
                        n += 1
        off[n_steps] = n
        # pass 2: next use of every request
        last[:] = inf
        for s in range(n_steps - 1, -1, -1):
            for i in range(off[s], off[s + 1]):
                e = ids[i]
                nxt[i] = last[e]
                last[e] = s
        # pass 3: replay
        hn = 0
        filled = 0
        for s in range(n_steps):
            a = bounds[s]
            b = bounds[s + 1]
            step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, smark, stats, dist)
            if not request[s] or k <= 0:
                continue
            if hn > 4 * k + 64:
                # NOTE: stale entries (residents requested again) sink and are never popped; rebuilding
                # from the residents' current keys keeps the heap O(K) and every operation O(log K)
                hn = 0
                for q in range(filled):
                    e = np.int64(resident[ly, q])
                    # heap push (written out: a numba call increfs/decrefs each array argument atomically)
                    hi = hn
                    heap[hi] = cur_next[e] * n_expert + e
                    hn += 1
                    while hi > 0:
                        hp = (hi - 1) >> 1
                        if heap[hp] >= heap[hi]:
                            break
                        htmp = heap[hp]
                        heap[hp] = heap[hi]
                        heap[hi] = htmp
                        hi = hp
            nc = 0
            for i in range(off[s], off[s + 1]):
                e = ids[i]
                if slot_of[ly, e] >= 0:
                    cur_next[e] = nxt[i]
                    # heap push (written out: a numba call increfs/decrefs each array argument atomically)
                    hi = hn
                    heap[hi] = nxt[i] * n_expert + e
                    hn += 1
                    while hi > 0:
                        hp = (hi - 1) >> 1
                        if heap[hp] >= heap[hi]:
                            break
                        htmp = heap[hp]
                        heap[hp] = heap[hi]
                        heap[hi] = htmp
                        hi = hp
                else:
                    cand[nc] = nxt[i] * n_expert + e
                    nc += 1
            if nc == 0:
                continue
            if nc <= 32:
                # NOTE: in-place insertion sort: np.sort would allocate on every step
                for ci in range(1, nc):
                    key = cand[ci]
                    cj = ci - 1
                    while cj >= 0 and cand[cj] > key:
                        cand[cj + 1] = cand[cj]
                        cj -= 1
                    cand[cj + 1] = key
            else:
                cand[:nc] = np.sort(cand[:nc])
            for ci in range(nc):
                key = cand[ci]
                nu = key // n_expert
                e = key - nu * n_expert
                if nu >= inf:
                    break
                if filled < k:
                    slot = filled
                    filled += 1
                else:
                    # furthest valid resident
                    while hn > 0:
                        top = heap[0]
                        te = top % n_expert
                        if slot_of[ly, te] >= 0 and cur_next[te] * n_expert + te == top:
                            break
                        # heap pop
                        hn -= 1
                        heap[0] = heap[hn]
                        hi = 0
                        while True:
                            hc = 2 * hi + 1
                            if hc >= hn:
                                break
                            if hc + 1 < hn and heap[hc + 1] > heap[hc]:
                                hc += 1
                            if heap[hi] >= heap[hc]:
                                break
                            htmp = heap[hc]
                            heap[hc] = heap[hi]
                            heap[hi] = htmp
                            hi = hc
                    if hn == 0 or heap[0] // n_expert <= nu:
                        break
                    slot = slot_of[ly, heap[0] % n_expert]
                    # heap pop
                    hn -= 1
                    heap[0] = heap[hn]
                    hi = 0
                    while True:
                        hc = 2 * hi + 1
                        if hc >= hn:
                            break
                        if hc + 1 < hn and heap[hc + 1] > heap[hc]:
                            hc += 1
                        if heap[hi] >= heap[hc]:
                            break
                        htmp = heap[hc]
                        heap[hc] = heap[hi]
                        heap[hi] = htmp
                        hi = hc
                n_ev_total = put(ly, slot, e, s, resident, slot_of, smark, stats, ev, n_ev_total)
                cur_next[e] = nu
                # heap push (written out: a numba call increfs/decrefs each array argument atomically)
                hi = hn
                heap[hi] = key
                hn += 1
                while hi > 0:
                    hp = (hi - 1) >> 1
                    if heap[hp] >= heap[hi]:
                        break
                    htmp = heap[hp]
                    heap[hp] = heap[hi]
                    heap[hi] = htmp
                    hi = hp
    return n_ev_total
