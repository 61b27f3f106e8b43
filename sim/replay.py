"""Replay a routing trace under a caching policy at numba speed.

:func:`replay` runs one policy's compiled kernel over every step and layer of a trace (no Python per
access) and returns a :class:`ReplayResult` with per-(step, layer) counters: selections, hit selections,
hot/cold distinct experts, uploads and uploads of experts cold-used in the same step, plus the exact
upload schedule on request. :func:`hit_curve` sweeps many uniform slot counts in one call, in parallel
threads (the kernels release the GIL). :func:`warmup` compiles (or loads from numba's on-disk cache)
every kernel, so callers can time JIT apart from replay.

The step model and the meaning of every field are in ``docs/policies.md`` (and the interface note the
cost model relies on): residency used for step ``s`` is the table before step ``s``; uploads recorded at
step ``s`` serve step ``s + 1`` on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hotexperts.policies import REGISTRY, BeladyTextbook, LruTextbook, Policy, Prepared, make_policy, prepare
from hotexperts.policies._engine import COLD, HIT, HOT, SEL, UP, UPM, fill_slot_of
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["EVENT_DTYPE", "ReplayResult", "hit_curve", "replay", "warmup"]

EVENT_DTYPE = np.dtype(
    [("step", np.int32), ("layer", np.int16), ("slot", np.int16), ("expert", np.int32), ("evicted", np.int32)]
)


@dataclass(eq=False)
class ReplayResult:
    """What one replay produced. Arrays per (step, layer) are int32 ``(n_steps, n_layers)``."""

    policy: str
    params: dict[str, Any]
    label: str
    slots: np.ndarray
    step_bounds: np.ndarray
    step_phase: np.ndarray
    step_tokens: np.ndarray
    step_pos: np.ndarray
    sel: np.ndarray
    hit_sel: np.ndarray
    hot_distinct: np.ndarray
    cold_distinct: np.ndarray
    uploads: np.ndarray
    uploads_missed: np.ndarray
    bypass: np.ndarray
    blocking_uploads: bool
    resident_final: np.ndarray
    initial_resident: np.ndarray
    events: np.ndarray | None = None
    replay_seconds: float = 0.0
    moe_layers: tuple[int, ...] = field(default=())

    # ----------------------------------------------------------------- derived
    @property
    def n_steps(self) -> int:
        return int(self.step_phase.size)

    @property
    def n_layers(self) -> int:
        return int(self.slots.size)

    @property
    def decode_steps(self) -> np.ndarray:
        return self.step_phase == PHASE_DECODE

    @property
    def hit_rate(self) -> float:
        """Share of routed decode selections served from VRAM."""
        d = self.decode_steps
        total = int(self.sel[d].sum(dtype=np.int64))
        return float(self.hit_sel[d].sum(dtype=np.int64)) / total if total else 0.0

    @property
    def hit_rate_per_layer(self) -> np.ndarray:
        d = self.decode_steps
        tot = self.sel[d].sum(axis=0, dtype=np.int64)
        hit = self.hit_sel[d].sum(axis=0, dtype=np.int64)
        return np.divide(hit, tot, out=np.zeros(tot.shape, np.float64), where=tot > 0)

    @property
    def prefill_hit_rate(self) -> float:
        p = ~self.decode_steps
        total = int(self.sel[p].sum(dtype=np.int64))
        return float(self.hit_sel[p].sum(dtype=np.int64)) / total if total else 0.0

    @property
    def selections(self) -> int:
        return int(self.sel.sum(dtype=np.int64))

    @property
    def total_uploads(self) -> int:
        return int(self.uploads.sum(dtype=np.int64))

    @property
    def upload_experts_per_layer(self) -> np.ndarray:
        return self.uploads.sum(axis=0, dtype=np.int64)

    @property
    def n_rebalances(self) -> int:
        """Steps at which the fork swapped experts in STEADY mode (steps with uploads once FILLING ended;
        for other policies: steps with any upload)."""
        up_steps = self.uploads.sum(axis=1) > 0
        if self.policy != "fork":
            return int(np.count_nonzero(up_steps))
        k = self.slots
        filled = np.cumsum(self.uploads, axis=0) >= k[None, :]
        done = np.flatnonzero(filled.all(axis=1))
        if done.size == 0:
            return 0
        return int(np.count_nonzero(up_steps[done[0] + 1 :]))


def _slots_vector(slots: int | Sequence[int] | np.ndarray, n_layers: int, n_expert: int) -> np.ndarray:
    v = np.asarray(slots, dtype=np.int64)
    if v.ndim == 0:
        v = np.full(n_layers, int(v), np.int64)
    if v.shape != (n_layers,):
        raise ValueError(f"slots must be one int or one per trace layer ({n_layers}), got shape {v.shape}")
    if bool(np.any(v < 0)):
        raise ValueError("slots must be >= 0")
    if bool(np.any(v > n_expert)):
        raise ValueError(f"slots ({int(v.max())}) exceed the experts per layer ({n_expert})")
    return v.astype(np.int32)


#: below this many selections a replay stays on one thread (thread start-up and the merge cost more)
PARALLEL_MIN_SELECTIONS = 1_000_000


def _layer_chunk(prep: Prepared, lo: int, hi: int) -> Prepared:
    return dataclasses.replace(
        prep,
        experts=np.ascontiguousarray(prep.experts[:, lo:hi]),
        present=np.ascontiguousarray(prep.present[:, lo:hi]) if prep.has_present else prep.present,
        moe_layers=prep.moe_layers[lo:hi],
    )


def _run_layers_parallel(prep: Prepared, policy: Policy, slots: np.ndarray, bypass: np.ndarray, stats: np.ndarray,
                         resident: np.ndarray, slot_of: np.ndarray, threads: int) -> None:
    """Run a layer-independent policy's kernel on chunks of layers in parallel threads (the kernels release
    the GIL); each chunk gets its own contiguous arrays, copied back after."""
    n_layers = prep.n_layers
    bounds = [(n_layers * c) // threads for c in range(threads + 1)]

    def one(c: int) -> None:
        lo, hi = bounds[c], bounds[c + 1]
        sub = _layer_chunk(prep, lo, hi)
        st = np.zeros((6, prep.n_steps, hi - lo), np.int32)
        res = np.ascontiguousarray(resident[lo:hi])
        so = np.ascontiguousarray(slot_of[lo:hi])
        policy.run(sub, np.ascontiguousarray(slots[lo:hi]), bypass, st, res, so, np.zeros((0, 5), np.int32))
        stats[:, :, lo:hi] = st
        resident[lo:hi] = res
        slot_of[lo:hi] = so

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(threads)))


def _run(prep: Prepared, policy: Policy, slots_req: np.ndarray, *, record_events: bool,
         threads: int = 1) -> tuple[Any, ...]:
    slots = np.asarray(policy.slots_for(prep, slots_req), np.int32)
    n_steps, n_layers = prep.n_steps, prep.n_layers
    max_slots = int(slots.max()) if slots.size else 0
    resident = np.full((n_layers, max_slots), -1, np.int32)
    policy.initial(prep, slots, resident)
    initial = resident.copy()
    slot_of = fill_slot_of(resident, prep.n_expert)
    bypass = np.ascontiguousarray(policy.bypass(prep), np.bool_)
    stats = np.zeros((6, n_steps, n_layers), np.int32)
    ev = np.zeros((0, 5), np.int32)
    threads = min(threads, n_layers)
    parallel = (threads > 1 and type(policy).layer_independent and not record_events
                and prep.experts.size >= PARALLEL_MIN_SELECTIONS)
    t0 = time.perf_counter()
    if parallel:
        _run_layers_parallel(prep, policy, slots, bypass, stats, resident, slot_of, threads)
        n_ev = 0
    else:
        n_ev = policy.run(prep, slots, bypass, stats, resident, slot_of, ev)
    seconds = time.perf_counter() - t0
    events = None
    if record_events:
        # NOTE: a second pass with the exact event count from the first: kernels stay allocation-free
        # for events and the common no-events replay pays nothing.
        resident2 = initial.copy()
        slot_of2 = fill_slot_of(resident2, prep.n_expert)
        stats2 = np.zeros_like(stats)
        ev = np.zeros((n_ev, 5), np.int32)
        policy.run(prep, slots, bypass, stats2, resident2, slot_of2, ev)
        events = np.empty(n_ev, EVENT_DTYPE)
        for i, name in enumerate(EVENT_DTYPE.names or ()):
            events[name] = ev[:, i]
    return slots, bypass, stats, resident, initial, events, seconds


def replay(
    trace: Trace | Prepared,
    policy: Policy | str,
    slots: int | Sequence[int] | np.ndarray,
    *,
    record_events: bool = False,
    threads: int | None = None,
) -> ReplayResult:
    """Replay ``trace`` under ``policy`` with ``slots`` per trace layer (one int = the same for all).

    Args:
        trace: a :class:`Trace` (or one already prepared with :func:`hotexperts.policies.prepare`).
        policy: a policy config (e.g. ``Fork(interval=60, pp_bypass=64)``) or a registered name.
        slots: slots per trace layer (ignored by ``all-cpu`` and ``layer-offload``).
        record_events: also return the exact upload schedule (``events``) and ``initial_resident``.
        threads: for policies whose layers are independent (``layer_independent``), run chunks of
            layers in this many threads (default: the CPU count; traces under
            :data:`PARALLEL_MIN_SELECTIONS` selections and replays recording events stay on one thread).
    """
    prep = trace if isinstance(trace, Prepared) else prepare(trace)
    pol = make_policy(policy) if isinstance(policy, str) else policy
    if not isinstance(pol, Policy):
        raise TypeError(f"policy must be a registered policy config, got {type(pol).__name__}")
    req = _slots_vector(slots, prep.n_layers, prep.n_expert)
    n_threads = threads if threads is not None else (os.cpu_count() or 1)
    used, bypass, stats, resident, initial, events, seconds = _run(prep, pol, req, record_events=record_events,
                                                                   threads=max(1, n_threads))
    return ReplayResult(
        policy=pol.name,
        params=pol.params(),
        label=pol.label(used),
        slots=used,
        step_bounds=prep.bounds,
        step_phase=prep.step_phase,
        step_tokens=prep.step_tokens,
        step_pos=prep.step_pos,
        sel=stats[SEL],
        hit_sel=stats[HIT],
        hot_distinct=stats[HOT],
        cold_distinct=stats[COLD],
        uploads=stats[UP],
        uploads_missed=stats[UPM],
        bypass=bypass,
        blocking_uploads=type(pol).blocking_uploads,
        resident_final=resident,
        initial_resident=initial,
        events=events,
        replay_seconds=seconds,
        moe_layers=prep.moe_layers,
    )


def hit_curve(
    trace: Trace | Prepared,
    policy: Policy | str,
    ks: Sequence[int],
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Decode hit rate for each uniform slot count in ``ks`` (same numbers as :func:`replay`).

    The replays run in parallel threads (numba kernels release the GIL), one K per thread; ``threads``
    defaults to the CPU count.
    """
    prep = trace if isinstance(trace, Prepared) else prepare(trace)
    pol = make_policy(policy) if isinstance(policy, str) else policy
    ks = [int(k) for k in ks]
    for k in ks:
        _slots_vector(k, prep.n_layers, prep.n_expert)
    decode = prep.step_phase == PHASE_DECODE
    if isinstance(pol, (LruTextbook, BeladyTextbook)):
        # NOTE: stack algorithms: every K from one pass (hotexperts.sim.curves), same numbers as the replays
        from hotexperts.sim.curves import accesses_per_layer, lru_curve, opt_curve

        fn = lru_curve if isinstance(pol, LruTextbook) else opt_curve
        hits = fn(prep, ks, count="decode").sum(axis=0)
        tot = int(accesses_per_layer(prep, count="decode").sum())
        return np.array([float(h) / tot if tot else 0.0 for h in hits.tolist()], np.float64)

    def one(k: int) -> float:
        _, _, stats, _, _, _, _ = _run(prep, pol, np.full(prep.n_layers, k, np.int32), record_events=False)
        tot = int(stats[SEL][decode].sum(dtype=np.int64))
        return float(stats[HIT][decode].sum(dtype=np.int64)) / tot if tot else 0.0

    n = max(1, min(len(ks), threads or os.cpu_count() or 1))
    if n == 1:
        return np.array([one(k) for k in ks], np.float64)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return np.array(list(pool.map(one, ks)), np.float64)


def warmup() -> float:
    """Compile (or load from numba's cache) every policy kernel and the one-pass curves; returns the seconds
    it took."""
    from hotexperts.sim.curves import lru_curve, opt_curve

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for dtype_n in (8, 300):  # uint8 and uint16 expert ids
        ids = rng.integers(0, dtype_n, size=(6, 2, 2))
        phase = np.array([0, 0, 1, 1, 1, 1], np.uint8)
        ubatch = np.array([0, 0, 1, 2, 3, 4], np.int32)
        for present in (None, np.ones((6, 2), bool)):
            if present is not None:
                present[0, 1] = False
            tr = Trace.from_arrays(ids, n_expert=dtype_n, phase=phase, ubatch=ubatch, present=present)
            for name, cls in REGISTRY.items():
                pol = cls(n_cpu_moe=1) if name == "layer-offload" else cls()  # type: ignore[call-arg]
                replay(tr, pol, 2, record_events=True)
            lru_curve(tr)
            opt_curve(tr)
    return time.perf_counter() - t0
