"""``lru-textbook``: plain least-recently-used caching, one request per routed selection (the LRU of the
textbooks and of libCacheSim; not the throttled LRU of llama.cpp PR #27861, which is ``lru``).

Per layer, every routed selection of a present (token, layer) entry is one request, in trace order
(token, then rank), prefill and decode alike. A request finds its expert resident (a hit) or not (a miss);
a hit makes the expert the most recently used; a miss uploads it at once — into the lowest empty slot,
else into the slot of the least recently used expert — so a later request of the same step can hit it.
No bypass, no insert budget. Equal to libCacheSim's ``LRU`` fed each layer's requests with unit sizes
(tests check it), and to the per-layer LRU of ``tools/expert_cache_sim.py`` (pmains/kimi-linear-48b-ssd-
streaming) when every layer has the same slots.

Statistics (the request model differs from the step model of docs/policies.md): ``hit_sel`` counts
hits at the request; ``hot_distinct`` / ``cold_distinct`` classify each distinct expert of the step by
its first request; ``uploads`` counts misses when K > 0; ``uploads_missed`` counts each expert at most
once per step (uploads of experts whose first request in the step missed). Uploads recorded at step
``s`` serve later requests of step ``s`` too. :func:`hotexperts.sim.curves.lru_curve` gives the hits of
every K in one pass.

Parameters: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import COLD, HIT, HOT, SEL, UP, UPM, Policy

__all__ = ["LruTextbook"]


@dataclass(frozen=True)
class LruTextbook(Policy):
    """Textbook LRU: every selection is a request, every miss is inserted."""

    name: ClassVar[str] = "lru-textbook"
    blocking_uploads: ClassVar[bool] = False
    label_keys: ClassVar[dict[str, str]] = {}
    layer_independent: ClassVar[bool] = True

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(
            lru_textbook_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, prep.n_expert,
                                slots.astype(np.int64), stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def lru_textbook_kernel(experts, present, has_present, bounds, n_expert, slots, stats, resident, slot_of, ev):
    # NOTE: recency is a doubly linked list over each layer's resident experts (most recent at the head):
    # a hit moves its expert to the head, a miss with a full layer evicts the tail — O(1) per request.
    # Steps outside, layers inside: each step's statistics row is written once, in order (a layer-outer
    # loop re-streamed the whole (6, n_steps, n_layers) array once per layer: 2x slower on 1M tokens).
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    nil = n_expert
    nxt = np.empty((n_layers, n_expert + 1), np.int64)
    prv = np.empty((n_layers, n_expert + 1), np.int64)
    mark = np.zeros((n_layers, n_expert), np.int32)
    head = np.full(n_layers, nil, np.int64)
    tail = np.full(n_layers, nil, np.int64)
    filled = np.zeros(n_layers, np.int64)
    n_ev = 0
    for s in range(n_steps):
        st = np.int32(s + 1)
        for ly in range(n_layers):
            k = slots[ly]
            hd = head[ly]
            tl = tail[ly]
            m = 0
            n_hit = 0
            n_hot = 0
            nd = 0
            n_up = 0
            n_upm = 0
            for t in range(bounds[s], bounds[s + 1]):
                if has_present and not present[t, ly]:
                    continue
                m += 1
                for j in range(top_k):
                    e = np.intp(experts[t, ly, j])
                    slot = slot_of[ly, e]
                    hit = slot >= 0
                    if (mark[ly, e] >> 1) != st:
                        nd += 1
                        n_hot += np.int64(hit)
                        mark[ly, e] = 2 * st + np.int32(1) - np.int32(hit)
                    if hit:
                        n_hit += 1
                        if e != hd:  # unlink, then push at the head
                            a = prv[ly, e]
                            b = nxt[ly, e]
                            nxt[ly, a] = b
                            if b != nil:
                                prv[ly, b] = a
                            else:
                                tl = a
                            nxt[ly, e] = hd
                            prv[ly, e] = nil
                            prv[ly, hd] = e
                            hd = e
                        continue
                    if k <= 0:
                        continue
                    if filled[ly] < k:
                        slot = filled[ly]
                        filled[ly] += 1
                        old = -1
                    else:
                        old = tl
                        slot = slot_of[ly, old]
                        tl = prv[ly, old]
                        if tl != nil:
                            nxt[ly, tl] = nil
                        else:
                            hd = nil
                        slot_of[ly, old] = -1
                    nxt[ly, e] = hd
                    prv[ly, e] = nil
                    if hd != nil:
                        prv[ly, hd] = e
                    else:
                        tl = e
                    hd = e
                    resident[ly, slot] = e
                    slot_of[ly, e] = slot
                    n_up += 1
                    if mark[ly, e] == 2 * st + 1:
                        n_upm += 1
                        mark[ly, e] = 2 * st  # count each expert once per step
                    if n_ev < ev.shape[0]:
                        ev[n_ev, 0] = s
                        ev[n_ev, 1] = ly
                        ev[n_ev, 2] = slot
                        ev[n_ev, 3] = e
                        ev[n_ev, 4] = old
                    n_ev += 1
            head[ly] = hd
            tail[ly] = tl
            stats[SEL, s, ly] = m * top_k
            stats[HIT, s, ly] = n_hit
            stats[HOT, s, ly] = n_hot
            stats[COLD, s, ly] = nd - n_hot
            stats[UP, s, ly] = n_up
            stats[UPM, s, ly] = n_upm
    return n_ev
