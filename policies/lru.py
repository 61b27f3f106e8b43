"""``lru``: least-recently-used slots with throttled inserts (upstream llama.cpp PR #27861,
``--moe-expert-cache N``, as carried by sirxsniper/llama-cpp-turboquant ``src/llama-moecache.cpp``).

Verified against that source (``moe_obs_cb`` and ``llama_moe_cache_step``):

- Observation runs only for graphs of at most ``observe_max_tokens`` (4) tokens: per token, per routed
  id, a resident expert's slot gets ``last_use = ++clock``; a missing one is appended to the layer's
  pending list (deduplicated).
- At the end of the call the pending list is walked newest first with a budget of ``inserts``
  (``LLAMA_MOE_CACHE_INSERTS``, default 2) per layer; every walked entry uses budget. Victim: the first
  empty slot not in flight, else the non-in-flight slot with the smallest ``last_use`` (first on ties).
  The pending list is then cleared (misses beyond the budget are forgotten).
- The cache graph is built only for single-token graphs: larger steps run the plain path
  (``compute_max_tokens``, default 1; turboquant later raised it to 8).
- Uploads run on a worker thread (overlapped, not blocking).

Semantics decisions: the PR publishes a finished upload at a later ``step()`` (an extra step of lag);
here, as for every policy, an upload decided at step ``s`` serves step ``s + 1`` and its slot gets
``last_use = ++clock`` at insertion. A slot filled in this step is "in flight" for the rest of the step.

Parameters: ``inserts`` (M), ``observe_max_tokens``, ``compute_max_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import COLD, HIT, HOT, SEL, UP, UPM, Policy, Prepared

__all__ = ["Lru"]


@dataclass(frozen=True)
class Lru(Policy):
    """LRU with at most ``inserts`` uploads per layer per step."""

    name: ClassVar[str] = "lru"
    blocking_uploads: ClassVar[bool] = False
    label_keys: ClassVar[dict[str, str]] = {"inserts": "M"}
    layer_independent: ClassVar[bool] = True

    inserts: int = field(default=2, metadata={"help": "uploads per layer per step (LLAMA_MOE_CACHE_INSERTS)"})
    observe_max_tokens: int = field(default=4, metadata={"help": "only steps of at most this many tokens update the LRU"})
    compute_max_tokens: int = field(
        default=1, metadata={"help": "steps with more tokens run the plain path (no cache hits)"}
    )

    def __post_init__(self) -> None:
        if self.inserts < 0 or self.observe_max_tokens < 0 or self.compute_max_tokens < 0:
            raise ValueError("lru: inserts, observe_max_tokens and compute_max_tokens must be >= 0")

    def bypass(self, prep: Prepared) -> np.ndarray:
        return prep.step_tokens > self.compute_max_tokens

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(
            lru_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass, prep.n_expert,
                       slots.astype(np.int64), self.inserts, self.observe_max_tokens, stats, resident, slot_of, ev)
        )


_TZ8 = np.array([(i & -i).bit_length() - 1 if i else 8 for i in range(256)], np.int64)  # trailing zeros


@njit(cache=True, nogil=True)
def _compact(ly, ring, last, front, clock, mask):
    """Drop the stale entries of layer ``ly``'s recency log: re-stamp the live ones, oldest first."""
    clk = clock[ly]
    n = 0
    live = np.empty(mask + 1, np.int64)
    for f in range(front[ly], clk + 1):
        q = np.intp(np.uint32(ring[ly, np.intp(np.uint32(f & mask))]))
        live[n] = q
        n += np.int64(last[ly, q] == f)  # branch-free: most entries are stale
    for i in range(n):
        clk += 1
        ring[ly, clk & mask] = live[i]
        last[ly, live[i]] = clk
    front[ly] = clk - n + 1
    clock[ly] = clk


@njit(cache=True, nogil=True)
def lru_kernel(experts, present, has_present, bounds, bypass, n_expert, slots, inserts, observe_max,
               stats, resident, slot_of, ev):
    # NOTE: recency as in the source (``last[slot] = ++clock`` on every touch, victim = smallest ``last``),
    # plus a log: a ring indexed by the per-layer clock holds the slot touched at each time, so the oldest
    # entry whose slot still carries that time is the least recently used slot. Stale entries are skipped
    # once (amortised O(1) victim choice); a full ring is compacted to its live entries. Touches are two
    # stores and no branch: a miss writes a dummy slot one past the clock, and the clock does not move.
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    max_slots = resident.shape[1]
    dummy = max_slots
    # touches (and pending) per observed step and layer, at most: from the trace's largest observed step
    # (not from observe_max, which may be huge), so the ring stays small
    longest = 0
    for s in range(n_steps):
        w = bounds[s + 1] - bounds[s]
        if w <= observe_max and w > longest:
            longest = w
    width = longest * top_k
    need = width + min(max(inserts, 0), width) + 2
    r = 1024
    while r < 4 * (max_slots + need):
        r *= 2
    mask = r - 1
    ring = np.zeros((n_layers, r), np.int32)
    last = np.full((n_layers, max_slots + 1), -1, np.int64)
    clock = np.zeros(n_layers, np.int64)
    front = np.ones(n_layers, np.int64)
    mark = np.zeros((n_layers, n_expert), np.int32)
    pending = np.empty(n_expert + 1, np.int64)
    filled = np.zeros(n_layers, np.int64)
    n_ev = 0
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        observe = (b - a) <= observe_max
        st = np.int32(s + 1)
        nobp = np.int32(1) - np.int32(bypass[s])
        for ly in range(n_layers):
            n_hit = 0
            n_hot = 0
            nd = 0
            m = 0
            npend = 0
            n_up = 0
            n_upm = 0
            if not observe:
                for t in range(a, b):
                    if has_present and not present[t, ly]:
                        continue
                    m += 1
                    for j in range(top_k):
                        e = np.intp(experts[t, ly, j])
                        res = ((slot_of[ly, e] >> 31) + np.int32(1)) * nobp
                        n_hit += res
                        if (mark[ly, e] >> 1) != st:
                            mark[ly, e] = 2 * st + np.int32(1) - res
                            nd += 1
                            n_hot += res
            else:
                if clock[ly] + need - front[ly] >= r - 1:
                    _compact(ly, ring, last, front, clock, mask)
                clk = clock[ly]
                for t in range(a, b):
                    if has_present and not present[t, ly]:
                        continue
                    m += 1
                    for j in range(top_k):
                        e = np.intp(experts[t, ly, j])
                        slot = np.intp(slot_of[ly, e])
                        rs = (slot >> 63) + 1  # 1 = resident
                        res = np.int32(rs) * nobp
                        n_hit += res
                        if (mark[ly, e] >> 1) != st:
                            mark[ly, e] = 2 * st + np.int32(1) - res
                            nd += 1
                            n_hot += res
                            pending[npend] = e
                            npend += 1 - rs
                        # touch: a resident slot gets last = ++clock; a miss writes the dummy slot
                        # NOTE: indices through uint32 are known non-negative: no wraparound code
                        q = np.intp(np.uint32(slot + ((slot >> 63) & (dummy + 1))))
                        ring[ly, np.intp(np.uint32((clk + 1) & mask))] = q
                        clk += rs
                        last[ly, q] = clk
                k = slots[ly]
                budget = inserts
                i = npend - 1
                clk0 = clk  # slots filled from here on are in flight (they get later times)
                while i >= 0 and budget > 0:
                    e = pending[i]
                    i -= 1
                    budget -= 1
                    if slot_of[ly, e] >= 0:
                        continue
                    if filled[ly] < k:
                        slot = filled[ly]
                        filled[ly] += 1
                    else:
                        # oldest live entry, tested 8 at a time (one well-predicted branch instead of a
                        # loop exit per victim; a cell past the clock is never live: last <= clock)
                        f = front[ly]
                        while f <= clk:
                            hit8 = 0
                            for u in range(8):
                                g = f + u
                                qq = np.intp(np.uint32(ring[ly, np.intp(np.uint32(g & mask))]))
                                hit8 |= np.int64(last[ly, qq] == g) << u
                            if hit8 != 0:
                                f += _TZ8[hit8 & 255]
                                break
                            f += 8
                        if f > clk:
                            front[ly] = clk + 1
                            break
                        front[ly] = f
                        if f > clk0:
                            # in-flight slots carry the newest times: the oldest live one is in flight
                            # only when every slot is
                            break
                        slot = np.intp(np.uint32(ring[ly, np.intp(np.uint32(f & mask))]))
                    # put (written out: a call would incref/decref every array argument atomically)
                    old = resident[ly, slot]
                    if old >= 0:
                        slot_of[ly, old] = -1
                    resident[ly, slot] = e
                    slot_of[ly, e] = slot
                    n_up += 1
                    n_upm += np.int64(mark[ly, e] == 2 * st + 1)
                    if n_ev < ev.shape[0]:
                        ev[n_ev, 0] = s
                        ev[n_ev, 1] = ly
                        ev[n_ev, 2] = slot
                        ev[n_ev, 3] = e
                        ev[n_ev, 4] = old
                    n_ev += 1
                    clk += 1
                    ring[ly, clk & mask] = slot
                    last[ly, slot] = clk
                clock[ly] = clk
            stats[SEL, s, ly] = m * top_k
            stats[HIT, s, ly] = n_hit
            stats[HOT, s, ly] = n_hot
            stats[COLD, s, ly] = nd - n_hot
            stats[UP, s, ly] = n_up
            stats[UPM, s, ly] = n_upm
    return n_ev
