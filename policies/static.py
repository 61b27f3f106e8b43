"""``static``: a fixed hot set per layer, chosen once from routing counts (turboquant's static profile).

The hot set of layer ``ly`` is its ``slots[ly]`` most-counted experts (ties: lower expert id first),
preloaded before the first step (slot ``r`` holds the expert of rank ``r``); nothing is uploaded during
the replay. The counts come from a ``.moeprof`` profile or another trace (``counts``, an
``(n_layers, n_expert)`` array), or, when ``counts`` is None, from the replayed trace itself (an oracle:
optimistic). :func:`allocate_static_slots` chooses a variable number of slots per layer under a VRAM budget,
greedily by marginal hits per byte, as sirxsniper/llama-cpp-turboquant's ``LLAMA_MOE_HOT_PROFILE`` does
(there weighted by CPU cost per byte; here by the counts alone).

Parameters: ``counts`` (array or None), ``phase`` (which selections of the replayed trace count when
``counts`` is None: ``decode`` or ``all``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hotexperts.policies._engine import Policy, Prepared, static_kernel, steps_above
from hotexperts.tracer.trace import PHASE_DECODE

__all__ = ["Static", "allocate_static_slots", "static_hot_sets"]


def static_hot_sets(counts: np.ndarray, slots: np.ndarray) -> list[np.ndarray]:
    """Per layer, the ``slots[ly]`` experts with the highest counts (ties: lower id first), in rank order."""
    out = []
    for ly in range(counts.shape[0]):
        order = np.lexsort((np.arange(counts.shape[1]), -counts[ly].astype(np.float64)))
        out.append(order[: int(slots[ly])].astype(np.int32))
    return out


def allocate_static_slots(counts: np.ndarray, expert_bytes: float | np.ndarray, budget_bytes: float) -> np.ndarray:
    """Slots per layer that maximise counted hits under ``budget_bytes``.

    Greedy by marginal hits per byte: the ``r``-th slot of layer ``ly`` is worth the count of that layer's
    ``r``-th most-routed expert divided by the layer's expert size; slots are taken in decreasing worth
    (ties: lower layer, then lower rank) while they fit. Experts never counted get no slot. With one expert
    size per layer the worth never rises along a layer, so the greedy choice is optimal (a fractional
    knapsack whose items all have the size of their layer).

    Args:
        counts: ``(n_layers, n_expert)`` selection counts.
        expert_bytes: bytes of one expert, a scalar or one value per layer.
        budget_bytes: VRAM available for slots.
    Returns:
        ``(n_layers,)`` int32 slot counts.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"counts must be (n_layers, n_expert), got shape {c.shape}")
    n_layers, n_expert = c.shape
    eb = np.broadcast_to(np.asarray(expert_bytes, dtype=np.float64), (n_layers,))
    if bool(np.any(eb <= 0)):
        raise ValueError("expert_bytes must be positive")
    if budget_bytes < 0:
        raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
    ranked = -np.sort(-c, axis=1)  # (n_layers, n_expert) descending
    worth = ranked / eb[:, None]
    lay = np.repeat(np.arange(n_layers), n_expert)
    rank = np.tile(np.arange(n_expert), n_layers)
    w = worth.reshape(-1)
    order = np.lexsort((rank, lay, -w))
    slots = np.zeros(n_layers, np.int32)
    left = float(budget_bytes)
    for i in order:
        if w[i] <= 0:
            break
        ly = lay[i]
        if rank[i] != slots[ly]:  # an earlier slot of this layer did not fit
            continue
        if eb[ly] <= left:
            slots[ly] += 1
            left -= eb[ly]
    return slots


@dataclass(frozen=True, eq=False)
class Static(Policy):
    """A fixed hot set per layer."""

    name: ClassVar[str] = "static"
    layer_independent: ClassVar[bool] = True
    label_keys: ClassVar[dict[str, str]] = {}

    counts: np.ndarray | None = field(
        default=None,
        metadata={"help": "(n_layers, n_expert) counts choosing the hot sets; None = the replayed trace's own"},
    )
    phase: str = field(default="decode", metadata={"help": "with counts=None: count 'decode' or 'all' selections"})
    max_tokens: int = field(
        default=0, metadata={"help": "steps with more tokens run the plain path, no hits (0 = every step uses the slots)"}
    )

    def __post_init__(self) -> None:
        if self.phase not in ("decode", "all"):
            raise ValueError(f"static: phase must be 'decode' or 'all', got {self.phase!r}")
        if self.counts is not None:
            c = np.asarray(self.counts)
            if c.ndim != 2:
                raise ValueError(f"static: counts must be (n_layers, n_expert), got shape {c.shape}")
            object.__setattr__(self, "counts", c)

    def label(self, slots=None) -> str:
        base = super().label(slots)
        return base + ("-own" if self.counts is None else "-prof")

    def _counts(self, prep: Prepared) -> np.ndarray:
        if self.counts is not None:
            c = np.asarray(self.counts)
            if c.shape != (prep.n_layers, prep.n_expert):
                raise ValueError(
                    f"static: counts shape {c.shape} does not match the trace ({prep.n_layers}, {prep.n_expert})"
                )
            return c
        out = np.zeros((prep.n_layers, prep.n_expert), np.int64)
        keep = np.ones(prep.experts.shape[0], bool)
        if self.phase == "decode":
            keep = np.repeat(prep.step_phase == PHASE_DECODE, prep.step_tokens)
        for ly in range(prep.n_layers):
            sel = prep.experts[keep, ly, :]
            if prep.has_present:
                sel = sel[prep.present[keep, ly]]
            out[ly] = np.bincount(sel.reshape(-1).astype(np.int64), minlength=prep.n_expert)
        return out

    def initial(self, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
        for ly, hot in enumerate(static_hot_sets(self._counts(prep), slots)):
            resident[ly, : hot.size] = hot

    def bypass(self, prep: Prepared) -> np.ndarray:
        return steps_above(prep, self.max_tokens)

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(static_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass,
                                 prep.n_expert, stats, slot_of))
