"""``decay``: decayed-count admission (sirxsniper/llama-cpp-turboquant's adaptive hot set, decay mode).

Per layer a score per expert: +1 for every expert an observed step routed (once per step), and
``prompt_weight`` per selection of larger (prompt) steps. Every ``pass_interval`` observed steps a pass
runs over the layers in order: candidates are the non-resident experts with score >= ``admit``, by score
(descending, ties lower id); each goes into the lowest empty slot, else over the resident with the lowest
score (ties: lowest slot; slots filled in this pass are not victims) when its score is > ``ratio`` x the
victim's and > victim + ``margin``; the first candidate that fails ends the layer's pass. An upload cap per
pass (``cap_bytes`` / ``expert_bytes`` experts, shared by all layers) stops admissions when spent. After
the pass every score is multiplied by ``decay``.

Source: the mechanism and defaults in ``../shared/reference/hot-cache-mechanism.md`` (every 2 steps;
admit >= 2, > 1.2x victim and > victim + 0.5; decay 0.92; prompt x 0.03; 128 MiB per pass).

Parameters: ``pass_interval``, ``admit``, ``ratio``, ``margin``, ``decay``, ``prompt_weight``,
``cap_bytes``, ``expert_bytes`` (0 = no cap), ``observe_max_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from hotexperts.policies._engine import Policy, Prepared, preload_from_counts, put, step_stats, steps_above
from hotexperts.policies.window import cap_experts

__all__ = ["Decay"]


@dataclass(frozen=True)
class Decay(Policy):
    """Decayed counts with admission threshold, ratio and margin."""

    name: ClassVar[str] = "decay"
    label_keys: ClassVar[dict[str, str]] = {"pass_interval": "P", "decay": "D"}

    pass_interval: int = field(default=2, metadata={"help": "observed steps between admission passes"})
    admit: float = field(default=2.0, metadata={"help": "minimum score of a candidate"})
    ratio: float = field(default=1.2, metadata={"help": "candidate score must exceed ratio x victim score"})
    margin: float = field(default=0.5, metadata={"help": "candidate score must exceed victim score + margin"})
    decay: float = field(default=0.92, metadata={"help": "scores are multiplied by this after each pass"})
    prompt_weight: float = field(default=0.03, metadata={"help": "weight of one prompt (large-step) selection"})
    cap_bytes: int = field(default=128 << 20, metadata={"help": "upload cap per pass in bytes (all layers)"})
    expert_bytes: int = field(default=0, metadata={"help": "bytes of one expert (0 = no byte cap)"})
    observe_max_tokens: int = field(default=4, metadata={"help": "steps of at most this many tokens count fully"})
    max_tokens: int = field(
        default=0, metadata={"help": "steps with more tokens run the plain path, no hits (0 = every step uses the slots)"}
    )
    init_counts: np.ndarray | None = field(
        default=None, repr=False, compare=False,
        metadata={"help": "(n_layers, n_expert) counts: start each layer with its most-counted experts (a profile)"},
    )

    def __post_init__(self) -> None:
        if self.pass_interval <= 0:
            raise ValueError("decay: pass_interval must be positive")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"decay: decay must be in [0, 1], got {self.decay}")
        if self.cap_bytes < 0 or self.expert_bytes < 0 or self.prompt_weight < 0:
            raise ValueError("decay: cap_bytes, expert_bytes and prompt_weight must be >= 0")

    def label(self, slots=None) -> str:
        return super().label(slots) + ("" if self.init_counts is None else "-prof")

    def initial(self, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
        if self.init_counts is not None:
            preload_from_counts(self.name, self.init_counts, prep, slots, resident)

    def bypass(self, prep: Prepared) -> np.ndarray:
        return steps_above(prep, self.max_tokens)

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(
            decay_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass, prep.n_expert,
                         slots.astype(np.int64), self.pass_interval, float(self.admit), float(self.ratio),
                         float(self.margin), float(self.decay), float(self.prompt_weight),
                         cap_experts(self.cap_bytes, self.expert_bytes), self.observe_max_tokens,
                         stats, resident, slot_of, ev)
        )


@njit(cache=True, nogil=True)
def decay_kernel(experts, present, has_present, bounds, bypass, n_expert, slots, interval, admit, ratio,
                 margin, decay, prompt_w, cap, observe_max, stats, resident, slot_of, ev):
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    mark = np.zeros((n_layers, n_expert), np.int32)
    dist = np.empty(n_expert, np.int64)
    score = np.zeros((n_layers, n_expert), np.float64)
    filled = np.zeros(n_layers, np.int64)
    for ly in range(n_layers):  # preloaded slots (a profile-seeded set) are taken and start at `admit`
        while filled[ly] < resident.shape[1] and resident[ly, filled[ly]] >= 0:
            score[ly, resident[ly, filled[ly]]] = admit
            filled[ly] += 1
    inflight = np.zeros((n_layers, max(1, resident.shape[1])), np.int32)
    cand = np.empty(n_expert, np.int64)
    cscore = np.empty(n_expert, np.float64)
    n_obs = 0
    n_ev = 0
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        observe = (b - a) <= observe_max
        for ly in range(n_layers):
            nd, m = step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, mark, stats, dist)
            if observe:
                for i in range(nd):
                    score[ly, dist[i]] += 1.0
            else:
                for t in range(a, b):
                    if has_present and not present[t, ly]:
                        continue
                    for j in range(top_k):
                        score[ly, np.int64(experts[t, ly, j])] += prompt_w
        if not observe:
            continue
        n_obs += 1
        if n_obs % interval != 0:
            continue
        budget = cap
        for ly in range(n_layers):
            k = slots[ly]
            if k <= 0:
                continue
            nc = 0
            for e in range(n_expert):
                if slot_of[ly, e] < 0 and score[ly, e] >= admit:
                    cand[nc] = e
                    cscore[nc] = -score[ly, e]
                    nc += 1
            if nc == 0:
                continue
            order = np.argsort(cscore[:nc], kind="mergesort")
            for oi in range(nc):
                if budget == 0:
                    break
                e = cand[order[oi]]
                sc = score[ly, e]
                if filled[ly] < k:
                    slot = filled[ly]
                    filled[ly] += 1
                else:
                    slot = -1
                    best = 0.0
                    for q in range(k):
                        if inflight[ly, q] == s + 1:
                            continue
                        v = score[ly, resident[ly, q]]
                        if slot < 0 or v < best:
                            slot = q
                            best = v
                    if slot < 0 or not (sc > ratio * best and sc > best + margin):
                        break
                n_ev = put(ly, slot, e, s, resident, slot_of, mark, stats, ev, n_ev)
                inflight[ly, slot] = s + 1
                if budget > 0:
                    budget -= 1
        for ly in range(n_layers):
            for e in range(n_expert):
                score[ly, e] *= decay
    return n_ev
