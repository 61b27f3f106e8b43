"""``belady``: the offline optimum (Belady's MIN with bypass), the upper bound for online policies.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems Journal 5(2),
1966; the bypass variant (a miss need not be admitted) is optimal for hit counts when any item may be
skipped. Per layer and step: the experts the step used are the requests. After the step, each missed
expert, in order of its next use (soonest first, ties lower id), is admitted into an empty slot (lowest
index) if it is used again at all, else replaces the resident whose next use is furthest (ties: higher
id) when its own next use is sooner; otherwise it and every later candidate is bypassed.

Implementation: next uses precomputed per layer in one backward pass; each slot keeps its resident's
key (next use * n_expert + id), updated when the resident is requested; the victim is the largest key, by
a vectorised scan of the K keys, done only when a missed candidate meets a full layer: O(n + m K)
(n = distinct (step, expert) requests, m = admissions into a full layer). A binary heap with lazy
deletion (O(log K) per request, every hit a push) was 2.3x slower at K = 64 and 2.2x at K = 200 on
benchmarks/replay_speed.py's trace, about even at K = 8.
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
    rkey = np.zeros(max(1, resident.shape[1]), np.int64)  # next request * n_expert + id, per slot
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
        filled = 0
        for s in range(n_steps):
            a = bounds[s]
            b = bounds[s + 1]
            step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, smark, stats, dist)
            if not request[s] or k <= 0:
                continue
            nc = 0
            for i in range(off[s], off[s + 1]):
                e = ids[i]
                slot = slot_of[ly, e]
                if slot >= 0:
                    rkey[slot] = nxt[i] * n_expert + e
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
                    # the furthest resident: the largest key (a vectorised max, then its slot)
                    best = rkey[0]
                    for q in range(1, k):
                        best = max(best, rkey[q])
                    if best // n_expert <= nu:
                        break
                    slot = 0
                    while rkey[slot] != best:
                        slot += 1
                n_ev_total = put(ly, slot, e, s, resident, slot_of, smark, stats, ev, n_ev_total)
                rkey[slot] = key
    return n_ev_total
