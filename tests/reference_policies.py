"""Plain-Python reference implementations of every caching policy, written from the documented semantics
(docs/policies.md, the policy module headers) with lists, sets and dicts and no attention to speed.

``reference_replay(trace, policy, slots)`` returns a :class:`RefResult` with the same counters as
:func:`hotexperts.sim.replay.replay`, so tests can compare them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hotexperts.policies import (
    AllCpu,
    Belady,
    BeladyTextbook,
    Decay,
    Fork,
    LayerOffload,
    Lru,
    LruTextbook,
    Policy,
    Static,
    Window,
)
from hotexperts.tracer.trace import PHASE_DECODE, Trace


@dataclass
class RefResult:
    sel: np.ndarray
    hit_sel: np.ndarray
    hot_distinct: np.ndarray
    cold_distinct: np.ndarray
    uploads: np.ndarray
    uploads_missed: np.ndarray
    bypass: np.ndarray
    slots: np.ndarray
    events: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    tables: list[list[int]] = field(default_factory=list)
    initial: list[list[int]] = field(default_factory=list)


class Sim:
    """Slot tables, the statistics of each step and the upload log."""

    def __init__(self, trace: Trace, slots: list[int]) -> None:
        self.trace = trace
        b = trace.step_bounds()
        self.steps = [(int(b[i]), int(b[i + 1])) for i in range(len(b) - 1)]
        self.phase = [int(trace.phase[a]) for a, _ in self.steps]
        n, nl = len(self.steps), trace.n_layers
        self.slots = list(slots)
        self.tables = [[-1] * k for k in slots]
        self.out = {name: np.zeros((n, nl), np.int64) for name in ("sel", "hit", "hot", "cold", "up", "upm")}
        self.bypass = [False] * n
        self.events: list[tuple[int, int, int, int, int]] = []
        self.cold_used: dict[tuple[int, int], set[int]] = {}

    def routed(self, s: int, layer: int) -> list[int]:
        """The step's routed ids of one layer, token by token, rank by rank (absent tokens skipped)."""
        a, b = self.steps[s]
        ids = []
        for t in range(a, b):
            if self.trace.present is not None and not self.trace.present[t, layer]:
                continue
            ids.extend(int(x) for x in self.trace.experts[t, layer])
        return ids

    def n_present(self, s: int, layer: int) -> int:
        a, b = self.steps[s]
        if self.trace.present is None:
            return b - a
        return int(self.trace.present[a:b, layer].sum())

    def resident(self, layer: int) -> set[int]:
        return {e for e in self.tables[layer] if e >= 0}

    def observe(self, s: int, layer: int) -> list[int]:
        """Record the statistics of step s for a layer; returns the routed ids."""
        ids = self.routed(s, layer)
        res = set() if self.bypass[s] else self.resident(layer)
        distinct = set(ids)
        self.out["sel"][s, layer] = len(ids)
        self.out["hit"][s, layer] = sum(1 for e in ids if e in res)
        self.out["hot"][s, layer] = len(distinct & res)
        self.out["cold"][s, layer] = len(distinct - res)
        self.cold_used[(s, layer)] = distinct - res
        return ids

    def upload(self, s: int, layer: int, slot: int, e: int) -> None:
        assert e not in self.tables[layer], "uploading a resident expert"
        old = self.tables[layer][slot]
        self.tables[layer][slot] = e
        self.out["up"][s, layer] += 1
        if e in self.cold_used[(s, layer)]:
            self.out["upm"][s, layer] += 1
        self.events.append((s, layer, slot, e, old))

    def result(self, initial: list[list[int]]) -> RefResult:
        o = self.out
        return RefResult(o["sel"], o["hit"], o["hot"], o["cold"], o["up"], o["upm"], np.array(self.bypass),
                         np.array(self.slots), self.events, self.tables, initial)


def first_appearance(ids: list[int]) -> list[int]:
    seen: list[int] = []
    for e in ids:
        if e not in seen:
            seen.append(e)
    return seen


# ------------------------------------------------------------------------------------------ policies


def ref_fixed(sim: Sim) -> None:
    for s in range(len(sim.steps)):
        for layer in range(sim.trace.n_layers):
            sim.observe(s, layer)


def ref_fork(sim: Sim, p: Fork) -> None:
    nl, n_expert = sim.trace.n_layers, sim.trace.n_expert
    height = (p.staging_layers or nl) if p.staging else None
    counts = [[0] * n_expert for _ in range(nl)]
    mode = "FILLING"
    decode_counter = 0
    for s, (a, b) in enumerate(sim.steps):
        sim.bypass[s] = p.pp_bypass > 0 and (b - a) > p.pp_bypass
        decode_counter += 1
        every_layer_full = mode == "FILLING"
        used_rows = 0  # staging buffer rows (of n_expert ids) used so far in this call
        for layer in range(nl):
            ids = sim.observe(s, layer)
            k = sim.slots[layer]
            ntok = sim.n_present(s, layer)
            got_ids = ntok > 0
            if got_ids and height is not None:
                if used_rows + ntok <= height:
                    used_rows += ntok
                else:
                    got_ids = False
            filled = len(sim.resident(layer))
            if not got_ids:
                if mode == "FILLING" and filled < k:
                    every_layer_full = False
                continue
            for e in ids:
                counts[layer][e] += 1
            if mode == "FILLING" and filled < k:
                novel = [e for e in first_appearance(ids) if e not in sim.resident(layer)]
                novel = novel[: k - filled]
                for i, e in enumerate(novel):
                    sim.upload(s, layer, filled + i, e)
                if len(sim.resident(layer)) < k:
                    every_layer_full = False
        if mode == "STEADY" and decode_counter % p.interval == 0:
            index = decode_counter // p.interval
            for layer in range(nl):
                k = sim.slots[layer]
                if k == 0:
                    continue
                full_bonus = max(6, min(24, k * p.interval // 320 + 6))
                bonus = full_bonus // 2 if index <= 1 else (full_bonus * 3 // 4 if index == 2 else full_bonus)
                hot = sim.resident(layer)
                ranked = sorted(range(n_expert), key=lambda e: (-(counts[layer][e] + (bonus if e in hot else 0)), e))
                new_set = ranked[: min(k, n_expert)]
                evicted_slots = [i for i, e in enumerate(sim.tables[layer]) if e >= 0 and e not in new_set]
                promoted = [e for e in new_set if e not in hot]
                for slot, e in zip(evicted_slots, promoted):
                    sim.upload(s, layer, slot, e)
            counts = [[0] * n_expert for _ in range(nl)]
        if mode == "FILLING" and every_layer_full:
            mode = "STEADY"
            counts = [[0] * n_expert for _ in range(nl)]


def ref_lru(sim: Sim, p: Lru) -> None:
    nl = sim.trace.n_layers
    clock = [0] * nl
    last_use = [[0] * k for k in sim.slots]
    for s, (a, b) in enumerate(sim.steps):
        sim.bypass[s] = (b - a) > p.compute_max_tokens
        for layer in range(nl):
            ids = sim.observe(s, layer)
            if (b - a) > p.observe_max_tokens:
                continue
            table = sim.tables[layer]
            pending: list[int] = []
            for e in ids:
                if e in table:
                    clock[layer] += 1
                    last_use[layer][table.index(e)] = clock[layer]
                elif e not in pending:
                    pending.append(e)
            in_flight: set[int] = set()
            budget = p.inserts
            for e in reversed(pending):
                if budget <= 0:
                    break
                budget -= 1
                victim = None
                for slot in range(len(table)):
                    if slot not in in_flight and table[slot] < 0:
                        victim = slot
                        break
                if victim is None:
                    choices = [slot for slot in range(len(table)) if slot not in in_flight]
                    if not choices:
                        break
                    victim = min(choices, key=lambda q: (last_use[layer][q], q))
                sim.upload(s, layer, victim, e)
                in_flight.add(victim)
                clock[layer] += 1
                last_use[layer][victim] = clock[layer]


def ref_window(sim: Sim, p: Window) -> None:
    nl = sim.trace.n_layers
    cap = -1 if (p.cap_bytes <= 0 or p.expert_bytes <= 0) else p.cap_bytes // p.expert_bytes
    history: list[list[set[int]]] = [[] for _ in range(nl)]
    for s, (a, b) in enumerate(sim.steps):
        observed = (b - a) <= p.observe_max_tokens
        left = cap
        for layer in range(nl):
            ids = sim.observe(s, layer)
            if not observed:
                continue
            history[layer].append(set(ids))
            history[layer] = history[layer][-p.window :]
            sightings = {e: sum(1 for h in history[layer] if e in h) for e in set(ids)}
            table = sim.tables[layer]
            if not table:
                continue
            cands = [e for e in set(ids) if e not in table and sightings[e] >= p.min_sightings]
            cands.sort(key=lambda e: (-sightings[e], e))
            just_filled: set[int] = set()
            for e in cands:
                if left == 0:
                    break
                empty = [q for q in range(len(table)) if table[q] < 0]
                if empty:
                    slot = empty[0]
                else:
                    def seen(x: int, hist: list[set[int]] = history[layer]) -> int:
                        return sum(1 for h in hist if x in h)

                    options = [q for q in range(len(table)) if q not in just_filled]
                    if not options:
                        break
                    slot = min(options, key=lambda q: (seen(table[q]), q))
                    if not sightings[e] > seen(table[slot]) + p.hyst:
                        break
                sim.upload(s, layer, slot, e)
                just_filled.add(slot)
                if left > 0:
                    left -= 1


def ref_decay(sim: Sim, p: Decay) -> None:
    nl, n_expert = sim.trace.n_layers, sim.trace.n_expert
    cap = -1 if (p.cap_bytes <= 0 or p.expert_bytes <= 0) else p.cap_bytes // p.expert_bytes
    score = [[0.0] * n_expert for _ in range(nl)]
    observed_steps = 0
    for s, (a, b) in enumerate(sim.steps):
        observed = (b - a) <= p.observe_max_tokens
        for layer in range(nl):
            ids = sim.observe(s, layer)
            if observed:
                for e in first_appearance(ids):
                    score[layer][e] += 1.0
            else:
                for e in ids:
                    score[layer][e] += p.prompt_weight
        if not observed:
            continue
        observed_steps += 1
        if observed_steps % p.pass_interval:
            continue
        left = cap
        for layer in range(nl):
            table = sim.tables[layer]
            if not table:
                continue
            sc = score[layer]
            cands = sorted((e for e in range(n_expert) if e not in table and sc[e] >= p.admit), key=lambda e: (-sc[e], e))
            just_filled: set[int] = set()
            for e in cands:
                if left == 0:
                    break
                if -1 in table:
                    slot = table.index(-1)
                else:
                    options = [q for q in range(len(table)) if q not in just_filled]
                    if not options:
                        break
                    slot = min(options, key=lambda q: (sc[table[q]], q))
                    v = sc[table[slot]]
                    if not (sc[e] > p.ratio * v and sc[e] > v + p.margin):
                        break
                sim.upload(s, layer, slot, e)
                just_filled.add(slot)
                if left > 0:
                    left -= 1
        for layer in range(nl):
            score[layer] = [x * p.decay for x in score[layer]]


def ref_belady(sim: Sim, p: Belady) -> None:
    nl = sim.trace.n_layers
    n = len(sim.steps)
    for s, (a, b) in enumerate(sim.steps):
        sim.bypass[s] = p.pp_bypass > 0 and (b - a) > p.pp_bypass
    is_request = [not sim.bypass[s] and (not p.decode_only or sim.phase[s] == PHASE_DECODE) for s in range(n)]
    for layer in range(nl):
        uses: dict[int, list[int]] = {}
        for s in range(n):
            if is_request[s]:
                for e in set(sim.routed(s, layer)):
                    uses.setdefault(e, []).append(s)

        def next_use(e: int, after: int, uses: dict[int, list[int]] = uses) -> int:
            for u in uses.get(e, []):
                if u > after:
                    return u
            return n  # never

        table = sim.tables[layer]
        for s in range(n):
            ids = sim.observe(s, layer)
            if not is_request[s] or not table:
                continue
            misses = [e for e in set(ids) if e not in table]
            misses.sort(key=lambda e: (next_use(e, s), e))
            for e in misses:
                nu = next_use(e, s)
                if nu >= n:
                    break
                if -1 in table:
                    sim.upload(s, layer, table.index(-1), e)
                    continue
                furthest = max(table, key=lambda x: (next_use(x, s), x))
                if next_use(furthest, s) <= nu:
                    break
                sim.upload(s, layer, table.index(furthest), e)


def ref_textbook(sim: Sim, victim: str) -> None:
    """``lru-textbook`` (victim "lru") and ``belady-textbook`` (victim "opt"): every routed selection is a
    request in trace order; a miss is inserted at once (lowest empty slot, else the victim's slot)."""
    nl = sim.trace.n_layers
    n = len(sim.steps)
    for layer in range(nl):
        seq = [(s, e) for s in range(n) for e in sim.routed(s, layer)]
        table = sim.tables[layer]
        recency: list[int] = []  # least recently used first

        def next_request(e: int, after: int, seq: list[tuple[int, int]] = seq) -> int:
            for i in range(after + 1, len(seq)):
                if seq[i][1] == e:
                    return i
            return len(seq)  # never

        i = 0
        for s in range(n):
            ids = sim.routed(s, layer)
            sim.out["sel"][s, layer] = len(ids)
            first_seen: set[int] = set()
            for e in ids:
                hit = e in table
                if e not in first_seen:
                    first_seen.add(e)
                    sim.out["hot" if hit else "cold"][s, layer] += 1
                    sim.cold_used.setdefault((s, layer), set())
                    if not hit:
                        sim.cold_used[(s, layer)].add(e)
                if hit:
                    sim.out["hit"][s, layer] += 1
                    recency.remove(e)
                    recency.append(e)
                elif table:
                    if -1 in table:
                        slot = table.index(-1)
                    elif victim == "lru":
                        slot = table.index(recency[0])
                    else:
                        slot = table.index(max(table, key=lambda x: (next_request(x, i), x)))
                    if table[slot] >= 0:
                        recency.remove(table[slot])
                    sim.upload(s, layer, slot, e)
                    sim.cold_used[(s, layer)].discard(e)  # uploads_missed: once per expert and step
                    recency.append(e)
                i += 1


# -------------------------------------------------------------------------------------------- entry


def reference_replay(trace: Trace, policy: Policy, slots: int | list[int] | np.ndarray) -> RefResult:
    """Replay ``trace`` under ``policy`` in plain Python."""
    nl, n_expert = trace.n_layers, trace.n_expert
    k = [int(x) for x in np.broadcast_to(np.asarray(slots), (nl,))]
    if isinstance(policy, AllCpu):
        k = [0] * nl
    elif isinstance(policy, LayerOffload):
        if policy.n_cpu_moe is not None:
            on_gpu = [m >= policy.n_cpu_moe for m in trace.moe_layers]
        else:
            on_gpu = [m in policy.gpu_layers for m in trace.moe_layers]
        k = [n_expert if g else 0 for g in on_gpu]
    sim = Sim(trace, k)
    if isinstance(policy, LayerOffload):
        for layer in range(nl):
            if k[layer]:
                sim.tables[layer] = list(range(n_expert))
    if isinstance(policy, Static):
        if policy.counts is not None:
            counts = np.asarray(policy.counts)
        else:
            counts = trace.counts(phase=PHASE_DECODE if policy.phase == "decode" else None)
        for layer in range(nl):
            ranked = sorted(range(n_expert), key=lambda e: (-counts[layer][e], e))
            sim.tables[layer] = ranked[: k[layer]]
    initial = [list(t) for t in sim.tables]
    if isinstance(policy, (AllCpu, LayerOffload, Static)):
        ref_fixed(sim)
    elif isinstance(policy, Fork):
        ref_fork(sim, policy)
    elif isinstance(policy, Lru):
        ref_lru(sim, policy)
    elif isinstance(policy, Window):
        ref_window(sim, policy)
    elif isinstance(policy, Decay):
        ref_decay(sim, policy)
    elif isinstance(policy, Belady):
        ref_belady(sim, policy)
    elif isinstance(policy, LruTextbook):
        ref_textbook(sim, "lru")
        sim.events.sort(key=lambda ev: (ev[0], ev[1]))  # its kernel runs steps outside, layers inside
    elif isinstance(policy, BeladyTextbook):
        ref_textbook(sim, "opt")
    else:
        raise NotImplementedError(f"no reference for {type(policy).__name__}")
    return sim.result(initial)
