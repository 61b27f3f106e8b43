"""``fork``: the ParmesanParty llama.cpp "MoE hot expert compute cache" policy, step for step.

Source: github.com/ParmesanParty/llama.cpp, ``src/llama-moe-hot-cache.cpp`` (``post_decode``,
``promote_layer``, ``hot_cache_rebalance``, ``swap_layer``); summarised in
``../shared/reference/hot-cache-mechanism.md``. Verified against that source:

- ``post_decode`` runs after every ``llama_decode`` call (a trace step, prefill or decode) and first does
  ``decode_counter += 1``; the counter therefore counts FILLING and prefill calls too.
- Counting: the ids of each layer are read from a pinned staging buffer of ``n_layers x n_expert`` ids;
  a layer whose ``n_tokens x n_expert`` ids do not fit after the layers before it (in cache-layer order)
  gets no ids this call (``snap.valid = false``; the sync fallback is a no-op). So a ubatch of ``n``
  tokens is counted on its first ``floor(n_layers / n)`` layers only (a layer with fewer present tokens,
  e.g. the last layer of a prompt, can still fit). Every id read adds 1 to ``counts[e]`` (FILLING and
  STEADY).
- FILLING: a layer that got ids and holds fewer than K experts appends the ids not yet hot, deduplicated,
  in order of appearance (token, then rank), up to K, into slots ``current_size..``. A layer without ids
  that is not full keeps the cache in FILLING. Uploads block (``cudaStreamSynchronize`` per layer).
- STEADY rebalance, checked before the FILLING->STEADY switch of the same call: in STEADY, when
  ``decode_counter % interval == 0``: score = count + bonus if hot; bonus = clamp(K*interval/320 + 6, 6,
  24) (integer division), halved when ``decode_counter / interval <= 1``, 3/4 (integer) when it is 2, full
  from 3; the top ``min(K, n_expert)`` by score are the new set; evicted = slots (in slot order) whose
  expert left the set; promoted = new-set experts not hot, in rank order; pairs reuse slots one for one;
  then every layer's counts are zeroed.
- FILLING->STEADY when every layer is full at the end of a call; counts are zeroed at the switch.

Semantics decisions (the source leaves them open):

- Ties in the top-K: the fork uses ``std::partial_sort`` on ``(score, id)`` pairs built in id order, so
  tied order is unspecified. Here ties go to the lower expert id (what a stable sort of the fork's own
  vector gives).
- Per-layer slot counts: the fork has one global K; with a vector, each layer fills to and ranks for its
  own K and its bonus uses its own K. Layers with K = 0 are always "full".
- PP bypass (``LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS``): a step with more tokens than the threshold runs the
  plain path (no hits); ``post_decode`` still runs for it (counter and staging rule apply).

Parameters: ``interval`` (rebalance interval in decode calls, default 40), ``pp_bypass`` (0 = off),
``staging`` (apply the staging-buffer rule), ``staging_layers`` (staging buffer height; 0 = the trace's
layer count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import COLD, HIT, HOT, SEL, Policy, Prepared, present_tokens, put

__all__ = ["Fork", "fork_bonus"]


def fork_bonus(k: int, interval: int, rebalance_index: int) -> int:
    """The hysteresis bonus of the fork at a rebalance (``rebalance_index = decode_counter // interval``)."""
    steady = min(24, max(6, k * interval // 320 + 6))
    if rebalance_index <= 1:
        return steady // 2
    if rebalance_index == 2:
        return steady * 3 // 4
    return steady


@dataclass(frozen=True)
class Fork(Policy):
    """ParmesanParty hot-expert cache: FILLING bootstrap, then tumbling-window top-K with hysteresis."""

    name: ClassVar[str] = "fork"
    blocking_uploads: ClassVar[bool] = True
    label_keys: ClassVar[dict[str, str]] = {"interval": "I", "pp_bypass": "B"}

    interval: int = field(default=40, metadata={"help": "decode calls between rebalances (--moe-hot-rebalance-interval)"})
    pp_bypass: int = field(
        default=0, metadata={"help": "ubatches with more tokens than this run the plain path (0 = off)"}
    )
    staging: bool = field(default=True, metadata={"help": "count only what fits the n_layers x n_expert staging buffer"})
    staging_layers: int = field(default=0, metadata={"help": "staging buffer height in layers (0 = trace layers)"})

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"fork: interval must be positive, got {self.interval}")
        if self.pp_bypass < 0 or self.staging_layers < 0:
            raise ValueError("fork: pp_bypass and staging_layers must be >= 0")

    def bypass(self, prep: Prepared) -> np.ndarray:
        if self.pp_bypass <= 0:
            return np.zeros(prep.n_steps, np.bool_)
        return prep.step_tokens > self.pp_bypass

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        height = 0 if not self.staging else (self.staging_layers or prep.n_layers)
        return int(
            fork_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass, prep.n_expert,
                        slots.astype(np.int64), self.interval, height, stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def _rank(score, order, cnt):
    """``order`` = expert ids by score descending, id ascending (counting sort when scores are small;
    ``cnt`` is a scratch buffer of at least ``16 * n + 4097`` entries)."""
    n = score.size
    mx = 0
    for e in range(n):
        if score[e] > mx:
            mx = score[e]
    if mx <= 16 * n + 4096:
        cnt[: mx + 1] = 0
        for e in range(n):
            cnt[score[e]] += 1
        run = 0
        for v in range(mx, -1, -1):
            c = cnt[v]
            cnt[v] = run
            run += c
        for e in range(n):
            v = score[e]
            order[cnt[v]] = e
            cnt[v] += 1
    else:
        key = np.empty(n, np.int64)
        for e in range(n):
            key[e] = -(score[e] * n + (n - 1 - e))
        o = np.argsort(key)
        for i in range(n):
            order[i] = o[i]


@njit(cache=True, nogil=True)
def fork_kernel(experts, present, has_present, bounds, bypass, n_expert, slots, interval, height,
                stats, resident, slot_of, ev):
    # NOTE: one pass per (step, layer) does the statistics and the counting together (the staging
    # decision needs only the layer's present-token count, known before the pass); the count increment
    # is 0 or 1, so there is no branch per selection.
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    mark = np.zeros((n_layers, n_expert), np.int32)
    dist = np.empty(n_expert, np.int64)
    counts = np.zeros((n_layers, n_expert), np.int64)
    size = np.zeros(n_layers, np.int64)
    score = np.empty(n_expert, np.int64)
    order = np.empty(n_expert, np.int64)
    cnt = np.empty(16 * n_expert + 4097, np.int64)
    in_new = np.zeros(n_expert, np.bool_)
    evict = np.empty(n_expert, np.int64)
    promo = np.empty(n_expert, np.int64)
    filling = True
    counter = 0
    n_ev = 0
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        counter += 1
        all_full = filling
        cursor = 0
        st = np.int32(s + 1)
        nobp = np.int32(1) - np.int32(bypass[s])
        for ly in range(n_layers):
            m = present_tokens(present, has_present, a, b, ly)
            k = slots[ly]
            valid = m > 0
            if valid and height > 0:
                if cursor + m <= height:
                    cursor += m
                else:
                    valid = False
            inc = np.int64(valid)
            n_hit = 0
            n_hot = 0
            nd = 0
            for t in range(a, b):
                if has_present and not present[t, ly]:
                    continue
                for j in range(top_k):
                    e = np.intp(experts[t, ly, j])
                    res = ((slot_of[ly, e] >> 31) + np.int32(1)) * nobp
                    n_hit += res
                    counts[ly, e] += inc
                    if (mark[ly, e] >> 1) != st:
                        mark[ly, e] = 2 * st + np.int32(1) - res
                        dist[nd] = e
                        nd += 1
                        n_hot += res
            stats[SEL, s, ly] = m * top_k
            stats[HIT, s, ly] = n_hit
            stats[HOT, s, ly] = n_hot
            stats[COLD, s, ly] = nd - n_hot
            if not valid:
                if filling and size[ly] < k:
                    all_full = False
                continue
            if filling and size[ly] < k:
                # dist holds the step's distinct experts in order of appearance
                for i in range(nd):
                    if size[ly] >= k:
                        break
                    e = dist[i]
                    if slot_of[ly, e] >= 0:
                        continue
                    n_ev = put(ly, size[ly], e, s, resident, slot_of, mark, stats, ev, n_ev)
                    size[ly] += 1
                if size[ly] < k:
                    all_full = False
        if (not filling) and counter % interval == 0:
            idx = counter // interval
            for ly in range(n_layers):
                k = slots[ly]
                if k <= 0:
                    continue
                steady = min(24, max(6, k * interval // 320 + 6))
                if idx <= 1:
                    bonus = steady // 2
                elif idx == 2:
                    bonus = steady * 3 // 4
                else:
                    bonus = steady
                for e in range(n_expert):
                    score[e] = counts[ly, e] + (bonus if slot_of[ly, e] >= 0 else 0)
                _rank(score, order, cnt)
                top = min(k, n_expert)
                for i in range(top):
                    in_new[order[i]] = True
                ne = 0
                for slot in range(k):
                    e = resident[ly, slot]
                    if e >= 0 and not in_new[e]:
                        evict[ne] = slot
                        ne += 1
                npr = 0
                for i in range(top):
                    e = order[i]
                    if slot_of[ly, e] < 0:
                        promo[npr] = e
                        npr += 1
                for i in range(min(ne, npr)):
                    n_ev = put(ly, evict[i], promo[i], s, resident, slot_of, mark, stats, ev, n_ev)
                for i in range(top):
                    in_new[order[i]] = False
            counts[:, :] = 0
        if filling and all_full:
            filling = False
            counts[:, :] = 0
    return n_ev
