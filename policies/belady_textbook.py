"""``belady-textbook``: Belady's MIN with insert on every miss (demand paging), one request per routed
selection — the OPT of the textbooks and of libCacheSim's ``Belady``; not ``belady``, which decides once
per step on distinct decode experts and may bypass a miss.

Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems Journal 5(2),
1966. Per layer, every routed selection of a present (token, layer) entry is one request, in trace order
(token, then rank), prefill and decode alike. A miss uploads its expert at once: into the lowest empty
slot, else into the slot of the resident whose next request is furthest (never = furthest; ties: the
higher expert id). The hit counts do not depend on that tie-break (only never-again residents tie).

Statistics as for ``lru-textbook`` (see its module header): hits at the request, distinct experts
classified by their first request of the step, ``uploads_missed`` at most once per expert per step.
:func:`hotexperts.sim.curves.opt_curve` gives the hits of every K in one pass.

Implementation: next requests precomputed per layer in one backward pass; the victim by a scan of the
K residents' next requests (only on a miss with a full layer); layers one after the other.

Parameters: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import COLD, HIT, HOT, SEL, UP, UPM, Policy

__all__ = ["BeladyTextbook"]


@dataclass(frozen=True)
class BeladyTextbook(Policy):
    """Offline optimal replacement, every selection a request, every miss inserted."""

    name: ClassVar[str] = "belady-textbook"
    label_keys: ClassVar[dict[str, str]] = {}
    layer_independent: ClassVar[bool] = True

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(
            belady_textbook_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, prep.n_expert,
                                   slots.astype(np.int64), stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def belady_textbook_kernel(experts, present, has_present, bounds, n_expert, slots, stats, resident, slot_of, ev):
    n_steps = bounds.size - 1
    n_tokens = experts.shape[0]
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    max_slots = resident.shape[1]
    key = np.zeros(max(max_slots, 1), np.int64)  # next request * n_expert + id of each slot's expert
    mark = np.zeros(n_expert, np.int32)
    last = np.empty(n_expert, np.int64)
    nxt = np.empty(n_tokens * top_k, np.int64)
    n_ev = 0
    for ly in range(n_layers):
        k = slots[ly]
        # next request of every request of this layer (index into its request sequence)
        n_acc = 0
        for t in range(n_tokens):
            if not has_present or present[t, ly]:
                n_acc += top_k
        inf = n_acc
        last[:] = inf
        i = n_acc
        for t in range(n_tokens - 1, -1, -1):
            if has_present and not present[t, ly]:
                continue
            for j in range(top_k - 1, -1, -1):
                i -= 1
                e = np.intp(experts[t, ly, j])
                nxt[i] = last[e]
                last[e] = i
        filled = 0
        mark[:] = 0
        i = 0
        for s in range(n_steps):
            st = np.int32(s + 1)
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
                    nu = nxt[i]
                    i += 1
                    slot = slot_of[ly, e]
                    if (mark[e] >> 1) != st:
                        nd += 1
                        if slot >= 0:
                            mark[e] = 2 * st
                            n_hot += 1
                        else:
                            mark[e] = 2 * st + 1
                    if slot >= 0:
                        n_hit += 1
                        key[slot] = nu * n_expert + e
                        continue
                    if k <= 0:
                        continue
                    if filled < k:
                        slot = filled
                        filled += 1
                    else:
                        slot = 0
                        best = key[0]
                        for q in range(1, k):
                            if key[q] > best:
                                best = key[q]
                                slot = q
                    old = resident[ly, slot]
                    if old >= 0:
                        slot_of[ly, old] = -1
                    resident[ly, slot] = e
                    slot_of[ly, e] = slot
                    key[slot] = nu * n_expert + e
                    n_up += 1
                    if mark[e] == 2 * st + 1:
                        n_upm += 1
                        mark[e] = 2 * st  # count each expert once per step
                    if n_ev < ev.shape[0]:
                        ev[n_ev, 0] = s
                        ev[n_ev, 1] = ly
                        ev[n_ev, 2] = slot
                        ev[n_ev, 3] = e
                        ev[n_ev, 4] = old
                    n_ev += 1
            stats[SEL, s, ly] = m * top_k
            stats[HIT, s, ly] = n_hit
            stats[HOT, s, ly] = n_hot
            stats[COLD, s, ly] = nd - n_hot
            stats[UP, s, ly] = n_up
            stats[UPM, s, ly] = n_upm
    return n_ev
