"""The cost model: predicted step times (decode and prefill tok/s) and VRAM use from replayed routing.

Input: per step (one ``llama_decode`` call) and per model MoE layer, the counts a replay produces
(:class:`StepCounts`, built from a :class:`~hotexperts.sim.replay.ReplayResult` by
:meth:`StepCounts.from_replay`): distinct experts served from VRAM (``hot_distinct``) and from host memory
(``cold_distinct``), experts uploaded into slots, the step's token count, phase, context position and
whether the PP bypass sent it down the plain path.

Every term is its own function below, returns seconds per step (or per step and layer), and appears in
:class:`CostBreakdown` so a prediction can be inspected term by term. The structure follows the execution
of the hot-expert fork (``../shared/reference/hot-cache-mechanism.md``) and the published decode
derivation in ``calibration.md``; the full derivation, the fit and the checks are in
``docs/cost-model.md``.

Decode path (a step of fewer than ``op_offload_min_batch`` tokens), mode ``cold-cpu``::

    T = dense + attention + sum_l [ handoff_l + max(gpu_l, cpu_l) ] + blocking uploads + stall + contention
    dense      = dense_fixed_ms + gpu_dense_bytes / gpu_mem_bw + (n - 1) * gpu_prefill_ms_per_token
    attention  = pos * kv_bytes_per_token / gpu_mem_bw + 4 * n_head * head_dim * n_kv_layers * n * pos / flops
    gpu_l      = gpu_expert_fixed_us + hot_distinct_l * b_l / gpu_expert_bw       (0 if no hot expert)
    cpu_l      = cold_distinct_l * b_l / cpu_expert_bw
    handoff_l  = handoff_us                                                      (0 if no cold expert)

Mode ``fetch-on-miss`` (every expert computed on the GPU; misses uploaded first, then one expert op)::

    layer_l = miss_sync_l + miss_bytes_l / pcie_pinned_bw + gpu_expert_fixed_us + (hot_l + cold_l) * b_l / gpu_expert_bw
    miss_sync_l = miss_sync_us (default handoff_us)                         (0 if no cold expert)

``gpu_expert_bw`` (default ``gpu_mem_bw``) prices the expert op, ``gpu_mem_bw`` the dense mat-vec and the
KV read: the two kernels stream weights at different rates (docs/cost-model.md, the H200 runtime numbers).

Uploads decided at step s (policy uploads; in fetch-on-miss minus those that reused a miss transfer) move
``bytes / pcie_pinned_bw`` (+ staging memcpy, + a per-layer sync): *blocking* policies add that to step
s; *overlapped* policies run it during step s+1 in layer order, where layer l waits until its own slots
are written (:func:`overlapped_stall_seconds`) and the overlap slows the CPU experts by the DRAM-contention
share (:attr:`HardwareProfile.contention`).

Batched path (a step of at least ``op_offload_min_batch`` tokens; prompt ubatches)::

    T = dense_fixed_ms + n * gpu_prefill_ms_per_token + attention + copy_bytes / prefill_pcie_bw
    copy_bytes = sum_l (n_expert - usable_slots_l) * b_l      (usable_slots = 0 on a bypassed step)

VRAM (:func:`vram_breakdown`): dense weights on the GPU (all but the token embedding) + slots x expert bytes per layer + KV cache + recurrent state +
compute buffer (estimate documented on :func:`compute_buffer_bytes`) + fixed overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec
from hotexperts.sim.hardware import HardwareProfile

__all__ = [
    "MODES",
    "StepCounts",
    "CostBreakdown",
    "TERMS",
    "GiB",
    "expert_bytes_array",
    "gpu_dense_bytes",
    "dense_seconds",
    "attention_seconds",
    "gpu_expert_seconds",
    "cpu_expert_seconds",
    "handoff_seconds",
    "miss_fetch_seconds",
    "upload_seconds",
    "overlapped_stall_seconds",
    "prefill_copy_bytes",
    "evaluate",
    "prefill_throughput",
    "compute_buffer_bytes",
    "vram_breakdown",
]

MODES = ("cold-cpu", "fetch-on-miss")
GiB = float(1 << 30)
_GB = 1e9
# terms of CostBreakdown, in the order they are reported; each is seconds per step
TERMS = (
    "dense",
    "attention",
    "experts",
    "handoff",
    "upload_blocking",
    "upload_stall",
    "contention",
    "prefill_copy",
    "prefill_compute",
)


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class StepCounts:
    """Per-step, per-layer counts the cost model reads (a ReplayResult reduced to what costs time).

    Arrays are indexed ``[step]`` or ``[step, layer]`` with layers in the model's MoE-layer order.
    """

    step_tokens: np.ndarray  # (S,) int
    step_phase: np.ndarray  # (S,) uint8, 0 prefill 1 decode
    step_pos: np.ndarray  # (S,) int, largest position in the step (context length)
    hot_distinct: np.ndarray  # (S, L) distinct experts served from VRAM
    cold_distinct: np.ndarray  # (S, L) distinct experts not resident (or all, on a bypassed step)
    uploads: np.ndarray  # (S, L) experts uploaded after step s
    slots: np.ndarray  # (L,) int
    bypass: np.ndarray | None = None  # (S,) bool
    uploads_missed: np.ndarray | None = None  # (S, L) int
    blocking_uploads: bool = True

    def __post_init__(self) -> None:
        S = int(np.asarray(self.step_tokens).shape[0])
        conv: dict[str, np.ndarray] = {
            "step_tokens": np.asarray(self.step_tokens, np.int64),
            "step_phase": np.asarray(self.step_phase, np.uint8),
            "step_pos": np.asarray(self.step_pos, np.int64),
            # NOTE: float, so analytic callers may pass expected (fractional) counts, e.g. k * hit_rate
            "hot_distinct": np.asarray(self.hot_distinct, np.float64),
            "cold_distinct": np.asarray(self.cold_distinct, np.float64),
            "uploads": np.asarray(self.uploads, np.float64),
            "slots": np.asarray(self.slots, np.int64).reshape(-1),
            "bypass": np.zeros(S, np.bool_) if self.bypass is None else np.asarray(self.bypass, np.bool_),
        }
        L = conv["hot_distinct"].shape[1] if conv["hot_distinct"].ndim == 2 else -1
        conv["uploads_missed"] = (
            np.zeros((S, max(L, 0)), np.float64)
            if self.uploads_missed is None
            else np.asarray(self.uploads_missed, np.float64)
        )
        for k in ("step_phase", "step_pos", "bypass"):
            if conv[k].shape != (S,):
                raise ValueError(f"{k} has shape {conv[k].shape}, expected ({S},)")
        for k in ("hot_distinct", "cold_distinct", "uploads", "uploads_missed"):
            if conv[k].ndim != 2 or conv[k].shape != (S, L):
                raise ValueError(f"{k} has shape {conv[k].shape}, expected ({S}, {L})")
        if conv["slots"].shape != (L,):
            raise ValueError(f"slots has shape {conv['slots'].shape}, expected ({L},)")
        for k, v in conv.items():
            object.__setattr__(self, k, v)

    @property
    def n_steps(self) -> int:
        return int(self.step_tokens.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.hot_distinct.shape[1])

    @classmethod
    def from_replay(cls, rr: Any) -> StepCounts:
        """Take the fields of a ReplayResult (``docs/`` interface: sim-interface)."""
        return cls(
            step_tokens=rr.step_tokens,
            step_phase=rr.step_phase,
            step_pos=rr.step_pos,
            hot_distinct=rr.hot_distinct,
            cold_distinct=rr.cold_distinct,
            uploads=rr.uploads,
            slots=rr.slots,
            bypass=rr.bypass,
            uploads_missed=getattr(rr, "uploads_missed", None),
            blocking_uploads=bool(rr.blocking_uploads),
        )


def expert_bytes_array(model: ModelSpec) -> np.ndarray:
    """``(n_moe_layers,)`` float64 bytes of one routed expert (gate + up + down) per MoE layer."""
    b = np.asarray(model.expert_bytes, dtype=np.float64)
    if b.shape != (model.n_moe_layers,):
        raise InputError(None, f"model {model.name}: {b.size} expert sizes for {model.n_moe_layers} MoE layers")
    return b


def gpu_dense_bytes(model: ModelSpec) -> int:
    """Non-expert weights held in VRAM: ``dense_bytes - embd_bytes`` (llama.cpp keeps the token embedding
    in host memory even with every layer offloaded; the fork keeps all other dense weights on the GPU)."""
    return int(model.dense_bytes - getattr(model, "embd_bytes", 0))


# ------------------------------------------------------------------------------------------- terms
def dense_seconds(model: ModelSpec, hw: HardwareProfile, n_tokens: np.ndarray) -> np.ndarray:
    """GPU dense part of a mat-vec step: fixed launches + one read of the dense weights + extra tokens.

    ``dense_fixed_ms + gpu_dense_bytes / gpu_mem_bw + (n - 1) * gpu_prefill_ms_per_token``.
    """
    n = np.asarray(n_tokens, dtype=np.float64)
    base = hw.dense_fixed_ms * 1e-3 + gpu_dense_bytes(model) / (hw.gpu_mem_bw * _GB)
    return base + np.maximum(n - 1.0, 0.0) * hw.gpu_prefill_ms_per_token * 1e-3


def attention_seconds(
    model: ModelSpec,
    hw: HardwareProfile,
    n_tokens: np.ndarray,
    pos: np.ndarray,
    *,
    kv_type: str,
    batched: np.ndarray | None = None,
) -> np.ndarray:
    """Attention cost growing with context: reading the KV cache once per step (mat-vec steps) plus the
    score/value FLOPs ``4 * n_head * head_dim * n_kv_layers * n * ctx`` at ``gpu_tflops``.

    For batched (prompt) steps the KV read is folded into the FLOP term and ``ctx`` is the mean context
    of the ubatch's tokens (``pos - n/2``); for mat-vec steps ``ctx = pos``.
    """
    n = np.asarray(n_tokens, dtype=np.float64)
    p = np.asarray(pos, dtype=np.float64) + 1.0
    bat = np.zeros(n.shape, np.bool_) if batched is None else np.asarray(batched, np.bool_)
    ctx = np.where(bat, np.maximum(p - n / 2.0, 0.0), p)
    flops = 4.0 * model.n_head * model.head_dim * model.n_kv_layers * n * ctx
    t = flops / (hw.gpu_tflops * 1e12)
    kv_read = p * model.kv_bytes_per_token(kv_type) / (hw.gpu_mem_bw * _GB)
    return t + np.where(bat, 0.0, kv_read)


def gpu_expert_seconds(hot_distinct: np.ndarray, expert_bytes: np.ndarray, hw: HardwareProfile) -> np.ndarray:
    """``(S, L)``: hot experts' mat-vecs on the GPU: ``fixed + hot * b_l / gpu_expert_bw`` (0 if none hot)."""
    h = np.asarray(hot_distinct, dtype=np.float64)
    t = h * expert_bytes[None, :] / (hw.expert_bw * _GB) + hw.gpu_expert_fixed_us * 1e-6
    return np.where(h > 0, t, 0.0)


def cpu_expert_seconds(cold_distinct: np.ndarray, expert_bytes: np.ndarray, hw: HardwareProfile) -> np.ndarray:
    """``(S, L)``: cold experts' mat-vecs on the CPU, weight-streaming bound: ``cold * b_l / cpu_expert_bw``."""
    c = np.asarray(cold_distinct, dtype=np.float64)
    return c * expert_bytes[None, :] / (hw.cpu_expert_bw * _GB)


def handoff_seconds(cold_distinct: np.ndarray, hw: HardwareProfile, *, mode: str = "cold-cpu") -> np.ndarray:
    """``(S, L)``: per-layer fixed cost of the layer's cold experts, charged where it has any:
    ``handoff_us`` (GPU<->CPU hand-off) in ``cold-cpu`` mode, ``miss_sync_us`` in ``fetch-on-miss``."""
    # NOTE: fetch-on-miss sends nothing to the CPU and waits for no CPU op: it pays at most for the host
    # learning the routing to issue the copies (miss_sync_us), not the hand-off (runtime H200 results)
    fixed = hw.miss_sync_s if mode == "fetch-on-miss" else hw.handoff_us * 1e-6
    return np.where(np.asarray(cold_distinct) > 0, fixed, 0.0)


def miss_fetch_seconds(cold_distinct: np.ndarray, expert_bytes: np.ndarray, hw: HardwareProfile) -> np.ndarray:
    """``(S, L)``: fetch-on-miss: uploading the step's missing experts at the pinned PCIe rate."""
    c = np.asarray(cold_distinct, dtype=np.float64)
    return c * expert_bytes[None, :] / (hw.pcie_pinned_bw * _GB)


def upload_seconds(upload_bytes: np.ndarray, layers_with_uploads: np.ndarray, hw: HardwareProfile) -> np.ndarray:
    """``(S,)``: time of a step's slot uploads: PCIe at the pinned rate (+ staging memcpy if modelled)
    + ``upload_layer_fixed_us`` per layer that uploads."""
    b = np.asarray(upload_bytes, dtype=np.float64)
    t = b / (hw.pcie_pinned_bw * _GB)
    if hw.staging_copy_bw:
        t = t + b / (hw.staging_copy_bw * _GB)
    return t + np.asarray(layers_with_uploads, dtype=np.float64) * hw.upload_layer_fixed_us * 1e-6


def overlapped_stall_seconds(
    uploads: np.ndarray,
    expert_bytes: np.ndarray,
    hw: HardwareProfile,
    layer_seconds: np.ndarray,
    compute: np.ndarray,
    shared_seconds: np.ndarray,
    matvec: np.ndarray,
) -> np.ndarray:
    """``(S,)``: stall of step s+1 waiting for the overlapped uploads decided at step s.

    The uploads stream in layer order (one copy stream) from the start of step s+1; layer ``l`` of that
    step may start only once its own slots are written, i.e. after the uploads of layers ``0..l``:
    ``stall = max(0, max_l(U_l - C_l))`` with ``U_l`` the upload time of layers ``<= l`` and ``C_l`` the
    compute of the layers before ``l`` (``layer_seconds`` per layer plus an even share of the step's
    dense and attention time, ``shared_seconds``). Batched steps keep the whole-step form
    ``max(0, U_L - compute)``.
    """
    up = np.asarray(uploads, dtype=np.float64)
    S, L = up.shape
    if S == 0:
        return np.zeros(0)
    t_l = up * expert_bytes[None, :] / (hw.pcie_pinned_bw * _GB)
    if hw.staging_copy_bw:
        t_l = t_l + up * expert_bytes[None, :] / (hw.staging_copy_bw * _GB)
    t_l = t_l + np.where(up > 0, hw.upload_layer_fixed_us * 1e-6, 0.0)
    # NOTE: uploads decided at step s are waited for in step s+1
    inc = np.vstack([np.zeros((1, L)), t_l[:-1]])
    U = np.cumsum(inc, axis=1)
    per_layer = np.asarray(layer_seconds, np.float64) + np.asarray(shared_seconds, np.float64)[:, None] / max(L, 1)
    C = np.cumsum(per_layer, axis=1) - per_layer  # compute before layer l starts
    by_layer = np.maximum((U - C).max(axis=1), 0.0)
    whole = np.maximum(U[:, -1] - np.asarray(compute, np.float64), 0.0)
    return np.where(np.asarray(matvec, np.bool_), by_layer, whole)


def prefill_copy_bytes(
    model: ModelSpec, slots: np.ndarray, bypass: np.ndarray, expert_bytes: np.ndarray | None = None
) -> np.ndarray:
    """``(S,)``: bytes llama.cpp's op offload copies for a batched step: every host-resident expert of
    every layer, ``sum_l (n_expert - usable_slots_l) * b_l``; slots are unusable on a bypassed step."""
    b = expert_bytes_array(model) if expert_bytes is None else expert_bytes
    s = np.minimum(np.asarray(slots, dtype=np.float64), model.n_expert)
    with_slots = float(np.sum((model.n_expert - s) * b))
    plain = float(np.sum(model.n_expert * b))
    return np.where(np.asarray(bypass, np.bool_), plain, with_slots)


# ------------------------------------------------------------------------------------------ result
@dataclass
class CostBreakdown:
    """Predicted time per step, split into named terms (seconds per step, arrays of shape ``(S,)``)."""

    mode: str
    step_tokens: np.ndarray
    step_phase: np.ndarray
    batched: np.ndarray
    terms: dict[str, np.ndarray]
    total: np.ndarray
    upload_bytes: np.ndarray  # (S,) PCIe bytes of slot uploads (policy), after the step
    fetch_bytes: np.ndarray  # (S,) PCIe bytes of fetch-on-miss transfers
    copy_bytes: np.ndarray  # (S,) PCIe bytes of prefill op-offload copies
    gpu_busy: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    cpu_busy: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def _mask(self, phase: int) -> np.ndarray:
        return self.step_phase == phase

    @property
    def decode_tokens(self) -> int:
        return int(self.step_tokens[self._mask(1)].sum())

    @property
    def prefill_tokens(self) -> int:
        return int(self.step_tokens[self._mask(0)].sum())

    @property
    def decode_seconds(self) -> float:
        return float(self.total[self._mask(1)].sum())

    @property
    def prefill_seconds(self) -> float:
        return float(self.total[self._mask(0)].sum())

    @property
    def decode_tok_s(self) -> float | None:
        s = self.decode_seconds
        return self.decode_tokens / s if s > 0 else None

    @property
    def prefill_tok_s(self) -> float | None:
        s = self.prefill_seconds
        return self.prefill_tokens / s if s > 0 else None

    def term_totals(self, phase: int | None = None) -> dict[str, float]:
        """Seconds per term summed over steps (of one phase, or all)."""
        m = np.ones(self.total.shape, np.bool_) if phase is None else self._mask(phase)
        return {k: float(v[m].sum()) for k, v in self.terms.items()}

    def term_ms_per_token(self, phase: int = 1) -> dict[str, float]:
        """Milliseconds per token of each term (decode by default)."""
        m = self._mask(phase)
        ntok = float(self.step_tokens[m].sum())
        if ntok == 0:
            return {k: 0.0 for k in self.terms}
        return {k: 1e3 * float(v[m].sum()) / ntok for k, v in self.terms.items()}

    def timeline(self) -> dict[str, np.ndarray]:
        """Per-step columns: step, tokens, phase, batched, every term, total (seconds), upload bytes."""
        out: dict[str, np.ndarray] = {
            "step": np.arange(self.total.shape[0]),
            "tokens": self.step_tokens,
            "phase": self.step_phase,
            "batched": self.batched.astype(np.int8),
        }
        out.update({k: v for k, v in self.terms.items()})
        out["total"] = self.total
        out["upload_bytes"] = self.upload_bytes
        out["fetch_bytes"] = self.fetch_bytes
        out["copy_bytes"] = self.copy_bytes
        return out


# ------------------------------------------------------------------------------------------- model
def evaluate(
    counts: StepCounts,
    model: ModelSpec,
    hw: HardwareProfile,
    *,
    mode: str = "cold-cpu",
    kv_type: str = "q8_0",
    pos_offset: int = 0,
) -> CostBreakdown:
    """Predict every step's time, term by term.

    ``pos_offset`` shifts the trace's context positions (e.g. to model decode after a longer prompt than
    the trace had). Layers of ``counts`` must be the model's MoE layers (remap the trace first).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    b = expert_bytes_array(model)
    S, L = counts.n_steps, counts.n_layers
    if L != b.shape[0]:
        raise InputError(None, f"counts have {L} layers but model {model.name} has {b.shape[0]} MoE layers")
    n = counts.step_tokens.astype(np.float64)
    pos = counts.step_pos.astype(np.float64) + float(pos_offset)
    batched = counts.step_tokens >= hw.op_offload_min_batch
    mv = ~batched  # mat-vec path
    zeros = np.zeros(S)

    # ---- dense / attention
    dense = np.where(mv, dense_seconds(model, hw, n), 0.0)
    attention = attention_seconds(model, hw, n, pos, kv_type=kv_type, batched=batched)

    # ---- per-layer expert work (mat-vec steps)
    hot = np.where(mv[:, None], counts.hot_distinct, 0)
    cold = np.where(mv[:, None], counts.cold_distinct, 0)
    handoff_l = handoff_seconds(cold, hw, mode=mode)
    gpu_hot = gpu_expert_seconds(hot, b, hw)
    if mode == "cold-cpu":
        cpu_l = cpu_expert_seconds(cold, b, hw)
        layer = np.maximum(gpu_hot, cpu_l)
        cpu_busy = cpu_l.sum(axis=1)
        cpu_critical = np.where(cpu_l > gpu_hot, cpu_l, 0.0).sum(axis=1)
        gpu_busy = gpu_hot.sum(axis=1)
        fetch_bytes = zeros.copy()
    else:
        fetch_l = miss_fetch_seconds(cold, b, hw)
        # NOTE: one expert op per layer reads every selected expert, so it starts once the misses have
        # arrived (the copies precede it on the compute stream): fetch and compute are serial
        gpu_all = gpu_expert_seconds(hot + cold, b, hw)
        layer = fetch_l + gpu_all
        cpu_busy = zeros.copy()
        cpu_critical = zeros.copy()
        gpu_busy = gpu_all.sum(axis=1)
        fetch_bytes = (cold * b[None, :]).sum(axis=1)
    experts = layer.sum(axis=1)
    handoff = handoff_l.sum(axis=1)

    # ---- batched (prompt) steps: op offload copies + GPU compute
    copy_b = np.where(batched, prefill_copy_bytes(model, counts.slots, np.asarray(counts.bypass, np.bool_), b), 0.0)
    prefill_copy = copy_b / (hw.prefill_pcie_bw * _GB)
    prefill_compute = np.where(batched, hw.dense_fixed_ms * 1e-3 + n * hw.gpu_prefill_ms_per_token * 1e-3, 0.0)

    # ---- slot uploads
    up = counts.uploads
    if mode == "fetch-on-miss":
        # NOTE: an upload of an expert that was fetched for this very step reuses that transfer
        up = np.maximum(up - counts.uploads_missed, 0)
    up_bytes = (up * b[None, :]).sum(axis=1)
    up_time = upload_seconds(up_bytes, (up > 0).sum(axis=1), hw)
    compute = dense + attention + experts + handoff + prefill_copy + prefill_compute
    upload_blocking = zeros.copy()
    upload_stall = zeros.copy()
    contention = zeros.copy()
    if counts.blocking_uploads:
        upload_blocking = up_time
    else:
        # uploads decided at step s stream during step s+1 (the last step's after the run: no cost)
        incoming = np.concatenate(([0.0], up_time[:-1])) if S else zeros
        upload_stall = overlapped_stall_seconds(up, b, hw, layer + handoff_l, compute, dense + attention, mv)
        if mode == "cold-cpu":
            c = hw.contention
            if c > 0:
                overlap = np.minimum(incoming, cpu_busy)
                # NOTE: the CPU loses share c of its bandwidth while the upload streams; the lost time only
                # lengthens the step where CPU experts are on the critical path of their layer
                share = np.divide(cpu_critical, cpu_busy, out=np.zeros(S), where=cpu_busy > 0)
                contention = overlap * (c / max(1.0 - c, 1e-9)) * share
    terms = {
        "dense": dense,
        "attention": attention,
        "experts": experts,
        "handoff": handoff,
        "upload_blocking": upload_blocking,
        "upload_stall": upload_stall,
        "contention": contention,
        "prefill_copy": prefill_copy,
        "prefill_compute": prefill_compute,
    }
    total = np.zeros(S)
    for k in TERMS:
        total = total + terms[k]
    return CostBreakdown(
        mode=mode,
        step_tokens=counts.step_tokens,
        step_phase=counts.step_phase,
        batched=batched,
        terms=terms,
        total=total,
        upload_bytes=up_bytes,
        fetch_bytes=fetch_bytes,
        copy_bytes=copy_b,
        gpu_busy=gpu_busy,
        cpu_busy=cpu_busy,
    )


def prefill_throughput(
    model: ModelSpec,
    hw: HardwareProfile,
    *,
    n_prompt: int,
    ubatch: int,
    slots: int | Sequence[int] = 0,
    bypass: int = 0,
    kv_type: str = "q8_0",
    pos0: int = 0,
) -> dict[str, float]:
    """Prompt processing of ``n_prompt`` tokens in ubatches of ``ubatch`` (no trace needed).

    Every ubatch of at least ``op_offload_min_batch`` tokens takes the batched path (slots usable unless
    the ubatch exceeds ``bypass`` > 0). A ubatch below the threshold is charged as a mat-vec step with
    all its ``min(n_expert, n * top_k)`` distinct experts cold (no routing known): an upper bound.
    Returns ``{"seconds", "tok_s", "copy_bytes", "ubatches"}``.
    """
    if n_prompt <= 0 or ubatch <= 0:
        raise ValueError("n_prompt and ubatch must be positive")
    L = model.n_moe_layers
    sl = np.full(L, int(np.asarray(slots)), np.int64) if np.ndim(slots) == 0 else np.asarray(slots, np.int64)
    sizes = [ubatch] * (n_prompt // ubatch) + ([n_prompt % ubatch] if n_prompt % ubatch else [])
    pos = np.cumsum(sizes) - 1 + pos0
    nb = np.asarray(sizes)
    byp = (nb > bypass) if bypass > 0 else np.zeros(len(sizes), np.bool_)
    distinct = np.minimum(model.n_expert, nb * model.n_expert_used)
    # small ubatches: assume the resident share of distinct experts is slots / n_expert
    hot = np.where(byp[:, None], 0, np.floor(distinct[:, None] * np.minimum(sl, model.n_expert)[None, :] / model.n_expert))
    cold = distinct[:, None] - hot
    counts = StepCounts(
        step_tokens=nb,
        step_phase=np.zeros(len(sizes), np.uint8),
        step_pos=pos,
        hot_distinct=hot,
        cold_distinct=cold,
        uploads=np.zeros((len(sizes), L), np.int64),
        slots=sl,
        bypass=byp,
    )
    cb = evaluate(counts, model, hw, kv_type=kv_type)
    sec = float(cb.total.sum())
    return {"seconds": sec, "tok_s": n_prompt / sec, "copy_bytes": float(cb.copy_bytes.sum()), "ubatches": len(sizes)}


# -------------------------------------------------------------------------------------------- VRAM
def compute_buffer_bytes(model: ModelSpec, *, ubatch: int, host_experts: bool) -> dict[str, float]:
    """Estimate of llama.cpp's CUDA compute buffer for a graph reserved at ``ubatch`` tokens.

    - logits: ``ubatch x vocab x 4`` (f32; the reserve graph assumes every token outputs logits);
    - op-offload weight copies: when any expert lives in host memory and ``ubatch >= 32``, the scheduler
      copies one layer's expert tensors into the compute buffer: ``n_expert x max_l b_l``;
    - activations: ``ubatch x 4 x (6 x hidden + 2 x top_k x expert_ff)`` (residual, norms, attention
      output, the MoE up/gate intermediates; flash attention assumed, so no ``ubatch x context`` scores).
    It is an estimate (the allocator reuses memory between ops); ``vram_overhead_bytes`` absorbs the rest.
    """
    logits = float(ubatch) * model.vocab_size * 4.0
    weights = float(model.n_expert * max(model.expert_bytes)) if (host_experts and ubatch >= 32) else 0.0
    act = float(ubatch) * 4.0 * (6 * model.hidden_size + 2 * model.n_expert_used * model.expert_ff)
    return {"logits": logits, "offload_weights": weights, "activations": act, "total": logits + weights + act}


def vram_breakdown(
    model: ModelSpec,
    slots: int | Sequence[int] | np.ndarray,
    *,
    context: int,
    kv_type: str = "q8_0",
    hardware: HardwareProfile,
    ubatch: int = 512,
    vram_budget_bytes: float | None = None,
) -> dict[str, Any]:
    """Bytes of VRAM a configuration needs, by part, and whether it fits.

    ``slots``: experts resident on the GPU per MoE layer (a number for every layer, or one per layer;
    layer offload = ``n_expert`` for GPU layers, 0 otherwise). Dense (non-expert) weights are all on the GPU
    (``-ngl 99``; the fork keeps them there). ``vram_budget_bytes`` defaults to ``hardware.vram_bytes``.
    Returns ``{dense_weights, expert_slots, kv_cache, recurrent_state, compute_buffer, overhead, total,
    budget, fits, free}`` (bytes; ``fits`` bool) plus ``slots_per_layer`` and ``compute_buffer_parts``.
    """
    b = expert_bytes_array(model)
    sl = np.full(b.shape[0], int(np.asarray(slots)), np.int64) if np.ndim(slots) == 0 else np.asarray(slots, np.int64)
    if sl.shape != b.shape:
        raise InputError(None, f"{sl.size} slot counts for {b.size} MoE layers of {model.name}")
    if np.any(sl < 0) or np.any(sl > model.n_expert):
        raise InputError(None, f"slots per layer must be in [0, {model.n_expert}]")
    if context < 0:
        raise InputError(None, f"context must be >= 0, got {context}")
    experts = float(np.sum(sl * b))
    kv = float(context) * model.kv_bytes_per_token(kv_type)
    cb = compute_buffer_bytes(model, ubatch=ubatch, host_experts=bool(np.any(sl < model.n_expert)))
    parts: dict[str, Any] = {
        "dense_weights": float(gpu_dense_bytes(model)),
        "expert_slots": experts,
        "kv_cache": kv,
        "recurrent_state": float(model.state_bytes),
        "compute_buffer": cb["total"],
        "overhead": float(hardware.vram_overhead_bytes),
    }
    total = sum(parts.values())
    budget = float(hardware.vram_bytes if vram_budget_bytes is None else vram_budget_bytes)
    parts["total"] = total
    parts["budget"] = budget
    parts["free"] = budget - total
    parts["fits"] = bool(total <= budget)
    parts["slots_per_layer"] = [int(x) for x in sl]
    parts["compute_buffer_parts"] = {k: v for k, v in cb.items() if k != "total"}
    parts["context"] = int(context)
    parts["kv_type"] = kv_type
    parts["ubatch"] = int(ubatch)
    return parts
