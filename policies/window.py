"""``window``: windowed admission (sirxsniper/llama-cpp-turboquant's adaptive hot set, window mode).

Per layer, a ring of the last ``window`` observed steps keeps which experts each step routed; an
expert's sightings = the number of those steps that routed it. After each observed step, the layer's
candidates are the experts of that step that are not resident and have at least ``min_sightings``
sightings, taken by sightings (descending, ties lower id). Each is admitted into the lowest empty slot,
else over the resident with the fewest sightings (ties: lowest slot; slots filled in this step are not
victims) if its sightings exceed the victim's by more than ``hyst``; the first candidate that fails ends
the layer's pass. An upload cap per step (``cap_bytes`` / ``expert_bytes`` experts, shared by all layers in
layer order) stops admissions when spent.

Source: the mechanism as described in ``../shared/reference/hot-cache-mechanism.md`` (defaults N/W =
3/16, 64 MiB per step). Observed steps: those of at most ``observe_max_tokens`` tokens (decode).

Parameters: ``window`` (W), ``min_sightings`` (N), ``hyst``, ``cap_bytes``, ``expert_bytes`` (bytes of
one expert; 0 = no cap), ``observe_max_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import Policy, Prepared, preload_from_counts, put, step_stats, steps_above

__all__ = ["Window", "cap_experts"]


def cap_experts(cap_bytes: int, expert_bytes: int) -> int:
    """Uploads allowed by a byte cap (-1 = unlimited when either is 0)."""
    if cap_bytes <= 0 or expert_bytes <= 0:
        return -1
    return int(cap_bytes // expert_bytes)


@dataclass(frozen=True)
class Window(Policy):
    """Admit at N sightings in the last W steps, beating the victim by more than HYST."""

    name: ClassVar[str] = "window"
    label_keys: ClassVar[dict[str, str]] = {"window": "W", "min_sightings": "N", "hyst": "H"}

    window: int = field(default=16, metadata={"help": "ring length W in observed steps"})
    min_sightings: int = field(default=3, metadata={"help": "sightings N in the window needed to admit"})
    hyst: int = field(default=1, metadata={"help": "admit only if sightings exceed the victim's by more than this"})
    cap_bytes: int = field(default=64 << 20, metadata={"help": "upload cap per step in bytes (all layers)"})
    expert_bytes: int = field(default=0, metadata={"help": "bytes of one expert (0 = no byte cap)"})
    observe_max_tokens: int = field(default=4, metadata={"help": "only steps of at most this many tokens are observed"})
    max_tokens: int = field(
        default=0, metadata={"help": "steps with more tokens run the plain path, no hits (0 = every step uses the slots)"}
    )
    init_counts: np.ndarray | None = field(
        default=None, repr=False, compare=False,
        metadata={"help": "(n_layers, n_expert) counts: start each layer with its most-counted experts (a profile)"},
    )

    def __post_init__(self) -> None:
        if self.window <= 0 or self.min_sightings <= 0:
            raise ValueError("window: window and min_sightings must be positive")
        if self.hyst < 0 or self.cap_bytes < 0 or self.expert_bytes < 0:
            raise ValueError("window: hyst, cap_bytes and expert_bytes must be >= 0")

    def label(self, slots=None) -> str:
        return super().label(slots) + ("" if self.init_counts is None else "-prof")

    def initial(self, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
        if self.init_counts is not None:
            preload_from_counts(self.name, self.init_counts, prep, slots, resident)

    def bypass(self, prep: Prepared) -> np.ndarray:
        return steps_above(prep, self.max_tokens)

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(
            window_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass, prep.n_expert,
                          slots.astype(np.int64), self.window, self.min_sightings, self.hyst,
                          cap_experts(self.cap_bytes, self.expert_bytes), self.observe_max_tokens,
                          stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def window_kernel(experts, present, has_present, bounds, bypass, n_expert, slots, w, min_n, hyst, cap,
                  observe_max, stats, resident, slot_of, ev):
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    width = max(1, observe_max * top_k)
    mark = np.zeros((n_layers, n_expert), np.int32)
    dist = np.empty(n_expert, np.int64)
    ring = np.zeros((n_layers, w, width), np.int64)
    ring_len = np.zeros((n_layers, w), np.int64)
    cnt = np.zeros((n_layers, n_expert), np.int64)
    filled = np.zeros(n_layers, np.int64)
    for ly in range(n_layers):  # preloaded slots (a profile-seeded set) are taken, lowest slots first
        while filled[ly] < resident.shape[1] and resident[ly, filled[ly]] >= 0:
            filled[ly] += 1
    inflight = np.zeros((n_layers, max(1, resident.shape[1])), np.int32)
    cand = np.empty(width, np.int64)
    pos = 0
    n_ev = 0
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        observe = (b - a) <= observe_max
        budget = cap
        for ly in range(n_layers):
            nd, m = step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, mark, stats, dist)
            if not observe:
                continue
            for i in range(ring_len[ly, pos]):
                cnt[ly, ring[ly, pos, i]] -= 1
            for i in range(nd):
                ring[ly, pos, i] = dist[i]
                cnt[ly, dist[i]] += 1
            ring_len[ly, pos] = nd
            k = slots[ly]
            if k <= 0:
                continue
            nc = 0
            for i in range(nd):
                e = dist[i]
                if slot_of[ly, e] < 0 and cnt[ly, e] >= min_n:
                    # insertion sort by (sightings desc, id asc)
                    j = nc
                    while j > 0 and (cnt[ly, cand[j - 1]] < cnt[ly, e] or (cnt[ly, cand[j - 1]] == cnt[ly, e] and cand[j - 1] > e)):
                        cand[j] = cand[j - 1]
                        j -= 1
                    cand[j] = e
                    nc += 1
            for i in range(nc):
                if budget == 0:
                    break
                e = cand[i]
                if filled[ly] < k:
                    slot = filled[ly]
                    filled[ly] += 1
                else:
                    slot = -1
                    best = 0
                    for q in range(k):
                        if inflight[ly, q] == s + 1:
                            continue
                        c = cnt[ly, resident[ly, q]]
                        if slot < 0 or c < best:
                            slot = q
                            best = c
                    if slot < 0 or not (cnt[ly, e] > best + hyst):
                        break
                n_ev = put(ly, slot, e, s, resident, slot_of, mark, stats, ev, n_ev)
                inflight[ly, slot] = s + 1
                if budget > 0:
                    budget -= 1
        if observe:
            pos = (pos + 1) % w
    return n_ev
