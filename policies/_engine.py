"""Shared machinery of every caching policy: the policy base class, the prepared trace arrays and the
numba helpers that every policy kernel uses (per-step statistics, one upload into one slot).

Step model (see docs/policies.md): a step is one ``llama_decode`` call (one ubatch of the trace). The
statistics of step ``s`` use the slot table *before* step ``s``; uploads a policy decides while or after
observing step ``s`` are recorded at step ``s`` and change the slot table for step ``s + 1`` on.

Every kernel takes the same trace arrays and fills the same outputs:

- ``stats``: ``(6, n_steps, n_layers)`` int32 (zero-filled by the caller), rows :data:`SEL`, :data:`HIT`, :data:`HOT`, :data:`COLD`,
  :data:`UP`, :data:`UPM` (selections, hit selections, hot distinct, cold distinct, uploads, uploads of
  experts cold-used in the same step);
- ``resident``: ``(n_layers, max_slots)`` int32 slot table, ``-1`` = empty (preloads already written);
- ``slot_of``: ``(n_layers, n_expert)`` int32 inverse table, ``-1`` = not resident;
- ``ev``: ``(cap, 5)`` int32 upload events ``(step, layer, slot, expert, evicted)``; a kernel writes the
  first ``cap`` events and returns how many it made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit

from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = [
    "COLD",
    "HIT",
    "HOT",
    "SEL",
    "UP",
    "UPM",
    "Policy",
    "Prepared",
    "prepare",
]

SEL, HIT, HOT, COLD, UP, UPM = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Prepared:
    """The trace arrays a kernel reads (built once per trace by :func:`prepare`)."""

    experts: np.ndarray  # (n_tokens, n_layers, top_k) uint8/uint16
    present: np.ndarray  # (n_tokens, n_layers) bool, or (1, 1) when everything is present
    has_present: bool
    bounds: np.ndarray  # (n_steps + 1,) int64
    step_tokens: np.ndarray  # (n_steps,) int32
    step_phase: np.ndarray  # (n_steps,) uint8
    step_pos: np.ndarray  # (n_steps,) int32
    n_expert: int
    moe_layers: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return int(self.bounds.size - 1)

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[1])


def prepare(trace: Trace) -> Prepared:
    """Step structure and contiguous arrays of ``trace`` for the kernels."""
    b = trace.step_bounds()
    n_steps = b.size - 1
    tokens = np.diff(b).astype(np.int32)
    if n_steps:
        phase = trace.phase[b[:-1]].astype(np.uint8)
        pos = np.maximum.reduceat(trace.pos, b[:-1]).astype(np.int32) if trace.n_tokens else np.zeros(0, np.int32)
    else:
        phase = np.zeros(0, np.uint8)
        pos = np.zeros(0, np.int32)
    if trace.present is None or bool(trace.present.all()):
        present, has_present = np.ones((1, 1), np.bool_), False
    else:
        present, has_present = np.ascontiguousarray(trace.present, np.bool_), True
    return Prepared(
        experts=np.ascontiguousarray(trace.experts),
        present=present,
        has_present=has_present,
        bounds=b.astype(np.int64),
        step_tokens=tokens,
        step_phase=phase,
        step_pos=pos,
        n_expert=int(trace.n_expert),
        moe_layers=tuple(trace.moe_layers),
    )


@dataclass(frozen=True)
class Policy:
    """Base of every policy's frozen parameter dataclass.

    A policy module defines one subclass with its parameters as fields (each with ``metadata={"help":
    ...}``), sets ``name`` and ``blocking_uploads``, and implements :meth:`run` (fill the outputs with its
    numba kernel). :meth:`slots_for` may override the requested slot counts (layer offload does).
    """

    name: ClassVar[str] = ""
    blocking_uploads: ClassVar[bool] = False
    #: short keys for :meth:`label`, field name -> letter(s); fields not listed are left out of the label
    label_keys: ClassVar[dict[str, str]] = {}
    #: whether the slot count matters (False for all-cpu / layer-offload)
    uses_slots: ClassVar[bool] = True
    #: whether each layer's replay depends on that layer alone (then a replay may run chunks of layers in
    #: parallel threads: ``run`` on a :class:`Prepared` holding only those layers gives the same numbers)
    layer_independent: ClassVar[bool] = False

    def label(self, slots: Any = None) -> str:
        """Name with parameters, e.g. ``fork-K44-I60-B64``."""
        parts = [self.name]
        if slots is not None and self.uses_slots:
            s = np.atleast_1d(np.asarray(slots))
            parts.append(f"K{int(s[0])}" if s.size and bool(np.all(s == s[0])) else "Kvar")
        for f, key in self.label_keys.items():
            v = getattr(self, f)
            if isinstance(v, float):
                v = f"{v:g}"
            elif isinstance(v, bool):
                v = int(v)
            parts.append(f"{key}{v}")
        return "-".join(parts)

    def params(self) -> dict[str, Any]:
        """JSON-friendly parameters (arrays summarised)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = f"<array {tuple(v.shape)}>"
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}

    def slots_for(self, prep: Prepared, slots: np.ndarray) -> np.ndarray:
        """The slot counts actually used (default: as requested)."""
        return slots

    def bypass(self, prep: Prepared) -> np.ndarray:
        """``(n_steps,)`` bool: steps that run the plain path (cache unused for compute)."""
        return np.zeros(prep.n_steps, np.bool_)

    def initial(self, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
        """Write static preloads into ``resident`` (default: start empty)."""

    def run(
        self,
        prep: Prepared,
        slots: np.ndarray,
        bypass: np.ndarray,
        stats: np.ndarray,
        resident: np.ndarray,
        slot_of: np.ndarray,
        ev: np.ndarray,
    ) -> int:
        """Replay the trace, fill the outputs, return the number of upload events (each policy implements it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")


def steps_above(prep: Prepared, max_tokens: int) -> np.ndarray:
    """``(n_steps,)`` bool: steps of more than ``max_tokens`` tokens (none when ``max_tokens <= 0``)."""
    if max_tokens <= 0:
        return np.zeros(prep.n_steps, np.bool_)
    return prep.step_tokens > max_tokens


def preload_from_counts(name: str, counts: Any, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
    """Start each layer with its ``slots[ly]`` most-counted experts (ids ascending; never a zero count)."""
    from hotexperts.policies.static import static_hot_sets

    c = np.asarray(counts)
    if c.shape != (prep.n_layers, prep.n_expert):
        raise ValueError(f"{name}: init_counts shape {c.shape} does not match the trace "
                         f"({prep.n_layers}, {prep.n_expert})")
    for ly, hot in enumerate(static_hot_sets(np.where(c > 0, c, -np.inf), slots)):
        hot = hot[np.asarray(c[ly])[hot] > 0]  # NOTE: a profile's zero-count experts are never loaded
        resident[ly, : hot.size] = np.sort(hot)


def decode_mask(prep: Prepared) -> np.ndarray:
    return prep.step_phase == PHASE_DECODE


# --------------------------------------------------------------------------- numba helpers


@njit(cache=True, nogil=True)
def present_tokens(present, has_present, a, b, ly):
    """Tokens of ``[a, b)`` present on layer ``ly``."""
    if not has_present:
        return b - a
    m = 0
    for t in range(a, b):
        m += np.int64(present[t, ly])
    return m


@njit(cache=True, nogil=True)
def step_stats(experts, present, has_present, a, b, ly, s, bypass, slot_of, mark, stats, dist):
    """Fill the statistics of step ``s`` (tokens ``[a, b)``) for layer ``ly``.

    ``dist`` receives the distinct experts of the step in order of first appearance (token order, then
    rank). ``mark[ly, e]`` is a generation stamp: ``2 * (s + 1)`` when ``e`` was used in step ``s`` and
    served from VRAM, ``2 * (s + 1) + 1`` when it was computed cold (not resident, or the step is
    bypassed), so nothing is ever cleared. Returns ``(n_distinct, n_present_tokens)``.
    """
    # NOTE: branch-free counting (residency is a coin flip per selection, so an ``if resident`` costs a
    # mispredicted branch on a third of the selections: that was most of the statistics pass).
    top_k = experts.shape[2]
    st = np.int32(s + 1)
    nobp = np.int32(1) - np.int32(bypass)
    n_hit = 0
    n_hot = 0
    nd = 0
    m = 0
    for t in range(a, b):
        if has_present and not present[t, ly]:
            continue
        m += 1
        for j in range(top_k):
            e = np.intp(experts[t, ly, j])
            res = ((slot_of[ly, e] >> 31) + np.int32(1)) * nobp  # 1 = resident and not bypassed
            n_hit += res
            if (mark[ly, e] >> 1) != st:
                mark[ly, e] = 2 * st + np.int32(1) - res
                dist[nd] = e
                nd += 1
                n_hot += res
    stats[SEL, s, ly] = m * top_k
    stats[HIT, s, ly] = n_hit
    stats[HOT, s, ly] = n_hot
    stats[COLD, s, ly] = nd - n_hot
    return nd, m


@njit(cache=True, nogil=True)
def put(ly, slot, e, s, resident, slot_of, mark, stats, ev, n_ev):
    """Upload expert ``e`` into slot ``slot`` of layer ``ly`` at step ``s`` (evicting the occupant)."""
    old = resident[ly, slot]
    if old >= 0:
        slot_of[ly, old] = -1
    resident[ly, slot] = e
    slot_of[ly, e] = slot
    stats[UP, s, ly] += 1
    if mark[ly, e] == 2 * (s + 1) + 1:
        stats[UPM, s, ly] += 1
    if n_ev < ev.shape[0]:
        ev[n_ev, 0] = s
        ev[n_ev, 1] = ly
        ev[n_ev, 2] = slot
        ev[n_ev, 3] = e
        ev[n_ev, 4] = old
    return n_ev + 1


@njit(cache=True, nogil=True)
def static_kernel(experts, present, has_present, bounds, bypass, n_expert, stats, slot_of):
    """Replay with a fixed slot table (all-cpu, layer offload, static): statistics only."""
    n_steps = bounds.size - 1
    n_layers = experts.shape[1]
    mark = np.zeros((n_layers, n_expert), np.int32)
    dist = np.empty(n_expert, np.int64)
    for s in range(n_steps):
        a = bounds[s]
        b = bounds[s + 1]
        for ly in range(n_layers):
            step_stats(experts, present, has_present, a, b, ly, s, bypass[s], slot_of, mark, stats, dist)
    return 0


def fill_slot_of(resident: np.ndarray, n_expert: int) -> np.ndarray:
    """Inverse of a slot table."""
    slot_of = np.full((resident.shape[0], n_expert), -1, np.int32)
    for ly in range(resident.shape[0]):
        for slot in np.flatnonzero(resident[ly] >= 0):
            slot_of[ly, resident[ly, slot]] = slot
    return slot_of
