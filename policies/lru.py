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

from hotexperts.policies._engine import Policy, Prepared, put, step_stats

__all__ = ["Lru"]


@dataclass(frozen=True)
class Lru(Policy):
    """LRU with at most ``inserts`` uploads per layer per step."""

    name: ClassVar[str] = "lru"
    blocking_uploads: ClassVar[bool] = False
    label_keys: ClassVar[dict[str, str]] = {"inserts": "M"}

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


@njit(cache=True, nogil=True, inline="always")
def _unlink(ly, slot, prv, nxt, head, tail):
    p = prv[ly, slot]
    n = nxt[ly, slot]
    if p >= 0:
        nxt[ly, p] = n
    else:
        head[ly] = n
    if n >= 0:
        prv[ly, n] = p
    else:
        tail[ly] = p


@njit(cache=True, nogil=True, inline="always")
def _push_front(ly, slot, prv, nxt, head, tail):
    prv[ly, slot] = -1
    nxt[ly, slot] = head[ly]
    if head[ly] >= 0:
        prv[ly, head[ly]] = slot
    else:
        tail[ly] = slot
    head[ly] = slot


@njit(cache=True, nogil=True)
def lru_kernel(experts, present, has_present, bounds, bypass, n_expert, slots, inserts, observe_max,
               stats, resident, slot_of, ev):
    # NOTE: recency is a doubly linked list of slots per layer (head = most recent), which orders slots
    # exactly like the source's strictly increasing last_use clock, with O(1) touch and victim choice.
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    max_slots = max(1, resident.shape[1])
    used = np.zeros((n_layers, n_expert), np.int32)
    cold = np.zeros((n_layers, n_expert), np.int32)
    pend_stamp = np.zeros((n_layers, n_expert), np.int32)
    dist = np.empty(n_expert, np.int64)
    pending = np.empty(n_expert, np.int64)
    prv = np.full((n_layers, max_slots), -1, np.int64)
    nxt = np.full((n_layers, max_slots), -1, np.int64)
    head = np.full(n_layers, -1, np.int64)
    tail = np.full(n_layers, -1, np.int64)
    filled = np.zeros(n_layers, np.int64)
    inflight = np.zeros((n_layers, max_slots), np.int32)
    n_ev = 0
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        observe = (b - a) <= observe_max
        for ly in range(n_layers):
            step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, used, cold, stats, dist)
            if not observe:
                continue
            npend = 0
            for t in range(a, b):
                if has_present and not present[t, ly]:
                    continue
                for j in range(top_k):
                    e = np.int64(experts[t, ly, j])
                    slot = slot_of[ly, e]
                    if slot >= 0:
                        if head[ly] != slot:
                            _unlink(ly, slot, prv, nxt, head, tail)
                            _push_front(ly, slot, prv, nxt, head, tail)
                    elif pend_stamp[ly, e] != s + 1:
                        pend_stamp[ly, e] = s + 1
                        pending[npend] = e
                        npend += 1
            k = slots[ly]
            budget = inserts
            i = npend - 1
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
                    slot = tail[ly]
                    while slot >= 0 and inflight[ly, slot] == s + 1:
                        slot = prv[ly, slot]
                    if slot < 0:
                        break
                    _unlink(ly, slot, prv, nxt, head, tail)
                n_ev = put(ly, slot, e, s, resident, slot_of, cold, stats, ev, n_ev)
                inflight[ly, slot] = s + 1
                _push_front(ly, slot, prv, nxt, head, tail)
    return n_ev
