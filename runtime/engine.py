"""A live MoE decode engine that applies a caching policy's exact upload schedule on a real GPU.

The engine is shaped from a :class:`~hotexperts.modelspec.ModelSpec` (hidden size, expert
intermediate size, experts per layer, top-k, shared expert, non-expert bytes per layer) with a chosen
number of MoE layers, and holds real random weights:

- routed experts in host memory in the shape's ``dtype`` (:data:`EXPERT_DTYPES`), one contiguous block per
  expert (gate and up rows, then down rows), page-locked so uploads are true async copies: ``"int8"``
  weight-only with per-output-channel scales (CPU op ``torch._weight_int8pack_mm``), or ``"fp32"``,
  ``"bf16"``, ``"fp16"`` plain weights (CPU op ``F.linear`` in that dtype).
  # NOTE: the CPU path must stream at least half the host's DRAM read rate in weight bytes per second. On the
  H200 host (benchmarks/results/2026-11-29-h200/) ``_weight_int8pack_mm`` calibrated at 31-36 GB/s over GBs
  of experts (the probe's 50 GB/s came from a pool 1.5x the L3), below the 45-49 GB/s goal; fp32 ``F.linear``
  probed at 103 GB/s (16 threads), bf16 48, fp16 53. fp32 costs 4x int8's memory and upload bytes, so
  fewer engine layers fit in host RAM (:func:`default_layers`). docs/runtime.md has the measurements.
- per MoE layer a VRAM slot pool in the same dtype (the policy's slots plus ``top_k`` scratch slots for
  fetch-on-miss);
- on the GPU a shared expert and a dense part that streams ``dense_bytes / n_layer`` bytes of weights per
  layer (the model's non-expert work), followed by an RMS norm.

Per token and MoE layer (:meth:`MoEEngine.forward_layer`): dense part on the GPU; the routed experts
(from the trace) split into hot (resident in a slot) and cold; the cold ones run on a CPU worker thread
(torch ops release the GIL) while the hot ones run on the GPU as one grouped call (gather the slots by
index, convert (int8: dequantise) to the compute dtype, two batched mat-muls: no per-expert launches);
one hand-off (the layer input copied to pinned host memory, the CPU partial sum copied back) and the sum.
In ``fetch-on-miss`` mode every expert runs on the GPU and the misses are uploaded into scratch slots
first. The policy's uploads (:class:`Schedule`, built from :func:`hotexperts.sim.replay.replay` events,
so the decisions come from the same policies/ code as the simulator) are applied after each step's
compute on a separate copy stream, either blocking per layer (the ParmesanParty fork) or overlapped (the
compute stream waits for a layer's copies only when it next uses that layer).

With ``device="cpu"`` the "GPU" side runs on the CPU too: CI checks every hot/cold split against a dense
reference that way (tests/test_runtime.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hotexperts.modelspec import ModelSpec

__all__ = [
    "EngineShape",
    "MoEEngine",
    "RunResult",
    "Schedule",
    "MODES",
    "EXPERT_DTYPES",
    "default_layers",
]

MODES = ("cold-cpu", "fetch-on-miss")

#: host (and VRAM slot) dtypes of the routed experts -> (torch dtype, bytes per weight)
EXPERT_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "int8": (torch.int8, 1),
    "fp32": (torch.float32, 4),
    "bf16": (torch.bfloat16, 2),
    "fp16": (torch.float16, 2),
}


def default_layers(dtype: str) -> int:
    """Engine MoE layers by expert dtype, so Qwen3.5-122B-shaped experts fit a 125 GB host with room left.

    NOTE: 256 experts x 3 x 3072 x 1024 weights per layer: int8 2.4 GB (12 layers 29 GB), bf16/fp16 4.8 GB
    (8 layers 39 GB), fp32 9.7 GB (6 layers 58 GB; page-locked in place, so no second copy; calibrate's own
    2-layer engine, 19 GB, runs in a separate process before validate).
    """
    if dtype not in EXPERT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPERT_DTYPES)}, got {dtype!r}")
    return {"int8": 12, "fp32": 6, "bf16": 8, "fp16": 8}[dtype]


def default_cpu_threads(device: str) -> int:
    """CPU threads for the cold experts: every core, less one on a GPU device.

    NOTE: the Python thread that issues the GPU work (dense part, grouped hot-expert call, copies) must
    not compete with the CPU expert threads for cores; on the H200 host the live-vs-simulated error of
    the cold-CPU configurations fell from a median of 13.1 % to 5.2 % with 15 of 16 cores for experts
    (benchmarks/results/2026-11-29-h200/run3).
    """
    import os

    n = os.cpu_count() or 1
    return max(1, n - 1) if not str(device).startswith("cpu") else n


@dataclass(frozen=True)
class EngineShape:
    """The shape of the engine's model: what is built and how many bytes everything takes."""

    hidden: int
    expert_ff: int
    n_expert: int
    top_k: int
    n_layers: int
    shared_ff: int = 0
    dense_bytes_per_layer: int = 0
    dtype: str = "int8"

    def __post_init__(self) -> None:
        for name in ("hidden", "expert_ff", "n_expert", "top_k", "n_layers"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.top_k > self.n_expert:
            raise ValueError("top_k exceeds n_expert")
        if self.shared_ff < 0 or self.dense_bytes_per_layer < 0:
            raise ValueError("shared_ff and dense_bytes_per_layer must be >= 0")
        if self.dtype not in EXPERT_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(EXPERT_DTYPES)}, got {self.dtype!r}")

    @property
    def expert_weights(self) -> int:
        """Weights of one routed expert (gate + up + down)."""
        return 3 * self.hidden * self.expert_ff

    @property
    def weight_elem(self) -> int:
        """Bytes per expert weight in host memory and in the VRAM slots."""
        return EXPERT_DTYPES[self.dtype][1]

    @property
    def expert_bytes(self) -> int:
        """Bytes one upload moves over PCIe and the CPU op streams: the expert's weight block (int8 scales
        stay on the GPU and are not counted)."""
        return self.expert_weights * self.weight_elem

    def dense_rows(self, elem: int) -> int:
        """Rows (multiple of ``hidden``) of the dense part's bf16 weight, ``>= hidden`` when any."""
        if self.dense_bytes_per_layer <= 0:
            return 0
        per_row = self.hidden * elem
        rows = max(1, round(self.dense_bytes_per_layer / per_row / self.hidden)) * self.hidden
        return int(rows)

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, n_layers: int, dtype: str = "int8") -> EngineShape:
        """``n_layers`` MoE layers of ``spec``'s shape; each gets ``(dense - embedding) / n_layer`` dense bytes."""
        if n_layers <= 0:
            raise ValueError("n_layers must be positive")
        return cls(
            hidden=int(spec.hidden_size),
            expert_ff=int(spec.expert_ff),
            n_expert=int(spec.n_expert),
            top_k=int(spec.n_expert_used),
            n_layers=int(n_layers),
            shared_ff=int(spec.shared_ff) * max(1, int(spec.n_shared_expert)) if spec.shared_ff else 0,
            # NOTE: the token embedding stays in host memory in llama.cpp (a row lookup, no GPU work)
            dense_bytes_per_layer=int((spec.dense_bytes - spec.embd_bytes) // max(1, spec.n_layer)),
            dtype=dtype,
        )

    def model_spec(self, base: ModelSpec, *, compute_elem: int = 2) -> ModelSpec:
        """The ModelSpec of what the engine actually built (for the simulator): ``n_layers`` MoE layers
        with the engine's expert bytes and its dense bytes, other fields from ``base``."""
        d = base.to_dict()
        d.update(
            name=f"{base.name}@engine{self.n_layers}L-{self.dtype}",
            n_layer=self.n_layers,
            moe_layers=list(range(self.n_layers)),
            expert_bytes=[self.expert_bytes] * self.n_layers,
            expert_types=[],
            dense_bytes=self.dense_rows(compute_elem) * self.hidden * compute_elem * self.n_layers,
            embd_bytes=0,
            # the engine has no attention and no recurrent state: those terms are zero in its spec
            n_kv_layers=0,
            state_bytes=0,
            source="hotexperts.runtime engine",
        )
        return ModelSpec.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    """What the engine replays: routing per token and layer, and the policy's upload schedule.

    Attributes:
        experts: ``(n_tokens, n_layers, top_k)`` routed ids (from the trace).
        weights: ``(n_tokens, n_layers, top_k)`` float32 gate weights.
        present: ``(n_tokens, n_layers)`` bool (False: that token skipped that layer).
        step_bounds: ``(n_steps + 1,)`` token offsets of the steps.
        step_phase: ``(n_steps,)`` 0 prefill, 1 decode.
        slots: ``(n_layers,)`` slots per layer.
        initial_resident: ``(n_layers, max_slots)`` slot table before step 0 (-1 empty).
        events: ``(n_events, 4)`` int64 rows ``(step, layer, slot, expert)`` sorted by step.
        blocking_uploads: whether uploads block the decode thread (per layer).
        bypass: ``(n_steps,)`` bool: steps computed as if nothing were resident.
        label: the policy's label.
    """

    experts: np.ndarray
    weights: np.ndarray
    present: np.ndarray
    step_bounds: np.ndarray
    step_phase: np.ndarray
    slots: np.ndarray
    initial_resident: np.ndarray
    events: np.ndarray
    blocking_uploads: bool
    bypass: np.ndarray
    label: str = ""

    @property
    def n_steps(self) -> int:
        return int(self.step_bounds.size - 1)

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[1])

    @classmethod
    def from_replay(cls, trace: Any, result: Any, *, seed: int = 0) -> Schedule:
        """Build from a :class:`~hotexperts.tracer.trace.Trace` and its ``replay(..., record_events=True)``.

        Gate weights come from the trace when it has them, else from a fixed-seed softmax (they change
        numbers, not timing).
        """
        if result.events is None:
            raise ValueError("the replay must be run with record_events=True")
        ev = result.events
        order = np.argsort(ev["step"], kind="stable")
        events = np.stack(
            [ev["step"][order], ev["layer"][order], ev["slot"][order], ev["expert"][order]], axis=1
        ).astype(np.int64)
        n, nl, k = trace.experts.shape
        if trace.weights is not None:
            w = trace.weights.astype(np.float32)
        else:
            rng = np.random.default_rng(seed)
            z = rng.standard_normal((n, nl, k)).astype(np.float32)
            w = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
        present = np.ones((n, nl), bool) if trace.present is None else trace.present.astype(bool)
        return cls(
            experts=np.ascontiguousarray(trace.experts.astype(np.int64)),
            weights=np.ascontiguousarray(w),
            present=present,
            step_bounds=np.asarray(result.step_bounds, np.int64),
            step_phase=np.asarray(result.step_phase, np.uint8),
            slots=np.asarray(result.slots, np.int64),
            initial_resident=np.asarray(result.initial_resident, np.int64),
            events=events,
            blocking_uploads=bool(result.blocking_uploads),
            bypass=np.asarray(result.bypass, bool),
            label=str(result.label),
        )


@dataclass
class RunResult:
    """Per-step measurements of one live run (decode steps only; prefill steps are not computed).

    Arrays are per executed decode step; ``measured`` marks the steps after warm-up.
    """

    label: str
    mode: str
    steps: np.ndarray  # step index in the schedule
    wall_s: np.ndarray  # wall time of the step (compute + blocking uploads, synchronised)
    tokens: np.ndarray
    sel: np.ndarray  # routed selections (present tokens x top_k, summed over layers)
    hit_sel: np.ndarray
    hot_distinct: np.ndarray
    cold_distinct: np.ndarray
    uploads: np.ndarray  # policy uploads (experts) after this step
    upload_bytes: np.ndarray  # PCIe bytes of this step: policy uploads + fetch-on-miss fetches
    measured: np.ndarray  # bool
    hit_sel_layers: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int64))
    info: dict[str, Any] = field(default_factory=dict)
    #: with ``MoEEngine.instrument``: per executed decode step, the per-layer records (:func:`_resolve_profile`)
    layer_profile: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def tok_s(self) -> float:
        m = self.measured
        t = float(self.wall_s[m].sum())
        return float(self.tokens[m].sum()) / t if t > 0 else float("nan")

    @property
    def hit_rate(self) -> float:
        m = self.measured
        s = int(self.sel[m].sum())
        return float(self.hit_sel[m].sum()) / s if s else 0.0

    @property
    def measured_upload_bytes(self) -> int:
        return int(self.upload_bytes[self.measured].sum())

    def summary(self) -> dict[str, Any]:
        m = self.measured
        return {
            "label": self.label,
            "mode": self.mode,
            "tok_s": self.tok_s,
            "hit_rate": self.hit_rate,
            "decode_tokens": int(self.tokens[m].sum()),
            "upload_bytes": self.measured_upload_bytes,
            "uploads": int(self.uploads[m].sum()),
            "median_ms": float(np.median(self.wall_s[m]) * 1e3) if m.any() else float("nan"),
        }


class _Streams:
    """CUDA streams and events, or no-ops on the CPU (where every copy is synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.compute = torch.cuda.current_stream(device) if self.cuda else None
        self.copy = torch.cuda.Stream(device) if self.cuda else None

    def event(self) -> Any:
        return torch.cuda.Event() if self.cuda else None

    def sync_compute(self) -> None:
        if self.cuda:
            assert self.compute is not None
            self.compute.synchronize()


class MoEEngine:
    """The live engine: weights, slot pools, the CPU worker, and :meth:`run`.

    Args:
        shape: what to build.
        device: ``"cuda"`` (the GPU side on the GPU) or ``"cpu"`` (everything on the CPU: tests).
        compute_dtype: activation dtype (default bf16 on CUDA, float32 on the CPU).
        cpu_threads: threads of the CPU expert op (default: all cores).
        pin: page-lock the host expert store (CUDA only).
        seed: weights' seed.
        distinct_experts: experts generated independently per layer; the others copy one of them
            (fills tens of GB quickly; every expert still has its own memory and its own scales).
    """

    def __init__(
        self,
        shape: EngineShape,
        *,
        device: str = "cuda",
        compute_dtype: torch.dtype | None = None,
        cpu_threads: int | None = None,
        pin: bool = True,
        seed: int = 0,
        distinct_experts: int | None = None,
        progress: Any = None,
    ) -> None:
        self.shape = shape
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available; use device='cpu'")
        self.dtype = compute_dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.cpu_threads = int(cpu_threads or default_cpu_threads(str(device)))
        self.streams = _Streams(self.device)
        h, ff, E, L = shape.hidden, shape.expert_ff, shape.n_expert, shape.n_layers
        self._gu = 2 * ff * h  # elements of gate+up in an expert block
        self.expert_dtype = shape.dtype
        self.wdtype = EXPERT_DTYPES[shape.dtype][0]
        self.quantized = shape.dtype == "int8"
        g = torch.Generator().manual_seed(seed)
        n_distinct = E if distinct_experts is None else max(1, min(E, int(distinct_experts)))
        # host store: q[l] (E, 3*ff*h) in the expert dtype; for int8 also scales sgu[l] (E, 2ff), sd[l] (E, h)
        # in the compute dtype (float dtypes: empty, the scales are folded into the weights)
        self.q: list[torch.Tensor] = []
        self.sgu: list[torch.Tensor] = []
        self.sd: list[torch.Tensor] = []
        self.pinned = False

        def block(n: int) -> torch.Tensor:
            """``n`` random expert blocks in the expert dtype.

            int8: uniform in [-127, 127]. Float dtypes: the same int8 values times random per-row scales,
            rounded to the dtype (weights of std ~1/sqrt(fan_in), like the int8 experts dequantised)."""
            qi = torch.randint(-127, 128, (n, 3 * ff * h), dtype=torch.int8, generator=g)
            if self.quantized:
                return qi
            sg = (torch.rand(n, 2 * ff, 1, generator=g) * 0.5 + 0.75) / (73.0 * math.sqrt(h))
            sdn = (torch.rand(n, h, 1, generator=g) * 0.5 + 0.75) / (73.0 * math.sqrt(ff))
            out = torch.empty(n, 3 * ff * h, dtype=self.wdtype)
            out[:, : self._gu].view(n, 2 * ff, h).copy_(qi[:, : self._gu].view(n, 2 * ff, h).float() * sg)
            out[:, self._gu :].view(n, h, ff).copy_(qi[:, self._gu :].view(n, h, ff).float() * sdn)
            return out

        # NOTE: with fewer distinct experts than experts, one random pool serves every layer (random int8
        # generation is slow, ~100 MB/s); each layer then maps its experts onto the pool differently
        shared_base = block(n_distinct) if n_distinct < E else None
        for layer in range(L):
            q = torch.empty(E, 3 * ff * h, dtype=self.wdtype)
            if shared_base is None:
                q.copy_(block(E))
            else:
                for e in range(E):
                    q[e] = shared_base[(e * 7 + layer) % n_distinct]
            self.q.append(q)
            if self.quantized:
                # scales ~ 1/(sqrt(fan_in) * 73): int8 uniform weights have std ~73, so W has std 1/sqrt(fan_in)
                sgu = (torch.rand(E, 2 * ff, generator=g) * 0.5 + 0.75) / (73.0 * math.sqrt(h))
                sd = (torch.rand(E, h, generator=g) * 0.5 + 0.75) / (73.0 * math.sqrt(ff))
                self.sgu.append(sgu.to(self.dtype).contiguous())
                self.sd.append(sd.to(self.dtype).contiguous())
            else:
                self.sgu.append(torch.empty(0, dtype=self.dtype))
                self.sd.append(torch.empty(0, dtype=self.dtype))
            if progress is not None:
                progress(layer + 1, L)
        if pin and self.device.type == "cuda":
            self.pinned = all(_host_register(t) for t in self.q)
        dev, dt = self.device, self.dtype
        # GPU-side: scales of every expert (indexed by expert id), shared expert, dense part
        self.sgu_dev = [s.to(dev) for s in self.sgu]
        self.sd_dev = [s.to(dev) for s in self.sd]
        gd = torch.Generator().manual_seed(seed + 1)
        sf = shape.shared_ff
        self.shared_gu = [
            (torch.randn(2 * sf, h, generator=gd) / math.sqrt(h)).to(dev, dt) if sf else None for _ in range(L)
        ]
        self.shared_d = [(torch.randn(h, sf, generator=gd) / math.sqrt(sf)).to(dev, dt) if sf else None for _ in range(L)]
        elem = torch.finfo(dt).bits // 8
        rows = shape.dense_rows(elem)
        self.dense = [
            (torch.randn(rows, h, generator=gd) / math.sqrt(h) / math.sqrt(rows / h)).to(dev, dt) if rows else None
            for _ in range(L)
        ]
        self.dense_bytes_per_layer = rows * h * elem
        # slot pools (allocated by set_slots)
        self.slots = np.zeros(L, np.int64)
        self.pool: list[torch.Tensor] = []
        self.table = np.full((L, 0), -1, np.int64)  # slot -> expert
        self.slot_of = np.full((L, E), -1, np.int64)  # expert -> slot
        self._ready: list[Any] = [None] * L  # copy-stream event a layer's next use must wait for
        # hand-off buffers (pinned on CUDA), one per layer
        pin_hand = self.device.type == "cuda"
        self._x_host = [torch.empty(1, h, dtype=dt, pin_memory=pin_hand) for _ in range(L)]
        self._y_host = [torch.empty(1, h, dtype=dt, pin_memory=pin_hand) for _ in range(L)]
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hx-cpu-experts")
        self._worker.submit(torch.set_num_threads, self.cpu_threads).result()
        self._scratch_expert: list[dict[int, int]] = [{} for _ in range(L)]
        # per-layer instrumentation (issue 12, item 1): off unless ``instrument`` is set; see forward_layer
        self.instrument = False
        self._prof: list[dict[str, Any]] = []
        self._cold_t: dict[int, tuple[float, float]] = {}
        ge = torch.Generator().manual_seed(seed + 2)
        self._embed = torch.randn(64, h, generator=ge).to(self.device, self.dtype)

    # ------------------------------------------------------------------ slots
    def set_slots(self, slots: Sequence[int] | np.ndarray, initial_resident: np.ndarray | None = None) -> None:
        """Allocate each layer's pool (``slots[l]`` + ``top_k`` scratch slots) and load ``initial_resident``."""
        s = np.asarray(slots, np.int64)
        L, E, k = self.shape.n_layers, self.shape.n_expert, self.shape.top_k
        if s.shape != (L,) or bool(np.any(s < 0)) or bool(np.any(s > E)):
            raise ValueError(f"slots must be {L} values in [0, {E}], got {s.tolist()}")
        self.pool = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        for layer in range(L):
            self.pool.append(torch.empty(int(s[layer]) + k, 3 * self.shape.expert_ff * self.shape.hidden,
                                         dtype=self.wdtype, device=self.device))
        self.slots = s
        width = int(s.max()) if L else 0
        self.table = np.full((L, width), -1, np.int64)
        self.slot_of = np.full((L, E), -1, np.int64)
        self._ready = [None] * L
        if initial_resident is not None:
            init = np.asarray(initial_resident, np.int64)
            for layer in range(L):
                for slot in range(min(init.shape[1], int(s[layer]))):
                    e = int(init[layer, slot])
                    if e >= 0:
                        self._upload(layer, slot, e, from_scratch=False)
            for layer in range(L):
                self._finish_layer_uploads(layer, blocking=True)

    def resident(self, layer: int) -> np.ndarray:
        """Experts resident in ``layer`` (slot order, -1 = empty)."""
        return self.table[layer, : int(self.slots[layer])].copy()

    def _upload(self, layer: int, slot: int, expert: int, *, from_scratch: bool) -> int:
        """Enqueue one expert's upload into ``slot``; returns the PCIe bytes it moves."""
        if not 0 <= slot < int(self.slots[layer]):
            raise ValueError(f"slot {slot} out of range for layer {layer} ({int(self.slots[layer])} slots)")
        old = int(self.table[layer, slot])
        if old >= 0:
            self.slot_of[layer, old] = -1
        prev = int(self.slot_of[layer, expert])
        if prev >= 0:  # an expert lives in one slot at a time
            self.table[layer, prev] = -1
        self.table[layer, slot] = expert
        self.slot_of[layer, expert] = slot
        dst = self.pool[layer][slot]
        st = self.streams
        scratch = self._scratch_expert[layer].get(expert) if from_scratch else None
        ctx = torch.cuda.stream(st.copy) if st.cuda else _null()
        with ctx:
            if scratch is not None:
                dst.copy_(self.pool[layer][scratch], non_blocking=True)
                return 0
            dst.copy_(self.q[layer][expert], non_blocking=self.pinned)
        return self.shape.expert_bytes

    def _finish_layer_uploads(self, layer: int, *, blocking: bool) -> None:
        st = self.streams
        if not st.cuda:
            return
        if blocking:
            assert st.copy is not None
            st.copy.synchronize()
            self._ready[layer] = None
        else:
            ev = st.event()
            ev.record(st.copy)
            self._ready[layer] = ev

    # ---------------------------------------------------------------- compute
    def _dense(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w = self.dense[layer]
        a = x
        if w is not None:
            a = a + (w @ x.view(-1)).view(-1, self.shape.hidden).sum(0).view(1, -1)
        a32 = a.float()
        return (a32 * torch.rsqrt(a32.pow(2).mean() + 1e-6)).to(self.dtype)

    def _shared(self, layer: int, a: torch.Tensor) -> torch.Tensor | None:
        wgu = self.shared_gu[layer]
        if wgu is None:
            return None
        sf = self.shape.shared_ff
        gu = F.linear(a, wgu)
        wd = self.shared_d[layer]
        assert wd is not None
        return F.linear(F.silu(gu[:, :sf]) * gu[:, sf:], wd)

    def _grouped(self, layer: int, a: torch.Tensor, slots: torch.Tensor, experts: torch.Tensor,
                 w: torch.Tensor) -> torch.Tensor:
        """All selected slot experts of one layer as one grouped call: gather, convert to the compute dtype
        (int8: dequantise with the per-row scales), two bmm."""
        h, ff = self.shape.hidden, self.shape.expert_ff
        n = slots.numel()
        blk = self.pool[layer].index_select(0, slots)
        wgu = blk[:, : self._gu].view(n, 2 * ff, h).to(self.dtype)
        gu = torch.bmm(wgu, a.view(1, h, 1).expand(n, h, 1)).view(n, 2 * ff)
        if self.quantized:
            gu = gu * self.sgu_dev[layer].index_select(0, experts)
        hh = F.silu(gu[:, :ff]) * gu[:, ff:]
        wd = blk[:, self._gu :].view(n, h, ff).to(self.dtype)
        d = torch.bmm(wd, hh.view(n, ff, 1)).view(n, h)
        if self.quantized:
            d = d * self.sd_dev[layer].index_select(0, experts)
        return (d * w.view(n, 1)).sum(0, keepdim=True)

    def _cold(self, layer: int, ev: Any, experts: list[int], w: list[float]) -> torch.Tensor:
        """CPU experts of one layer (runs on the worker thread); result in the layer's host buffer."""
        if ev is not None:
            ev.synchronize()  # the layer input has arrived in pinned memory
        t_start = time.perf_counter() if self.instrument else 0.0
        y = self._cold_compute(layer, experts, w)
        if self.instrument:
            self._cold_t[layer] = (t_start, time.perf_counter())
        return y

    def _cold_compute(self, layer: int, experts: list[int], w: list[float]) -> torch.Tensor:
        a = self._x_host[layer]
        ff, gu_n = self.shape.expert_ff, self._gu
        h = self.shape.hidden
        q, sgu, sd = self.q[layer], self.sgu[layer], self.sd[layer]
        if not self.quantized:
            # NOTE: plain F.linear in the weights' own dtype (activations converted once per layer, tiny):
            # fp32 F.linear is the fastest CPU mat-vec per weight byte measured on the H200 host
            af = a.to(self.wdtype)
            y = torch.zeros(1, h, dtype=self.wdtype)
            for e, we in zip(experts, w):
                blk = q[e]
                gu = F.linear(af, blk[:gu_n].view(2 * ff, h))
                hh = F.silu(gu[:, :ff]) * gu[:, ff:]
                y.add_(F.linear(hh, blk[gu_n:].view(h, ff)), alpha=we)
            self._y_host[layer].copy_(y)
            return self._y_host[layer]
        y = torch.zeros(1, h, dtype=self.dtype)
        for e, we in zip(experts, w):
            blk = q[e]
            gu = torch._weight_int8pack_mm(a, blk[:gu_n].view(2 * ff, h), sgu[e])
            hh = F.silu(gu[:, :ff]) * gu[:, ff:]
            y.add_(torch._weight_int8pack_mm(hh, blk[gu_n:].view(h, ff), sd[e]), alpha=we)
        self._y_host[layer].copy_(y)
        return self._y_host[layer]

    def forward_layer(self, layer: int, x: torch.Tensor, experts: Sequence[int], weights: Sequence[float], *,
                      mode: str = "cold-cpu", bypass: bool = False) -> tuple[torch.Tensor, dict[str, int]]:
        """One token through one MoE layer with the current residency.

        Returns the layer output ``(1, hidden)`` on the engine's device and counters
        ``{sel, hit_sel, hot_distinct, cold_distinct, fetch_bytes}``.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        st = self.streams
        prof = self.instrument and mode == "cold-cpu"
        t0 = time.perf_counter() if prof else 0.0
        evs: dict[str, Any] = {}
        if prof and st.cuda:
            evs["start"] = torch.cuda.Event(enable_timing=True)
            evs["start"].record()
        if st.cuda and self._ready[layer] is not None:
            assert st.compute is not None
            st.compute.wait_event(self._ready[layer])
            self._ready[layer] = None
        if prof and st.cuda:
            evs["ready"] = torch.cuda.Event(enable_timing=True)
            evs["ready"].record()
        a = self._dense(layer, x)
        ids = [int(e) for e in experts]
        ws = [float(v) for v in weights]
        slot_of = self.slot_of[layer]
        hot_i = [i for i, e in enumerate(ids) if not bypass and slot_of[e] >= 0]
        cold_i = [i for i in range(len(ids)) if bypass or slot_of[ids[i]] < 0]
        stats = {
            "sel": len(ids),
            "hit_sel": len(hot_i),
            "hot_distinct": len({ids[i] for i in hot_i}),
            "cold_distinct": len({ids[i] for i in cold_i}),
            "fetch_bytes": 0,
        }
        out = a
        y_shared = self._shared(layer, a)
        if y_shared is not None:
            out = out + y_shared
        if mode == "fetch-on-miss":
            # upload each distinct missed expert into a scratch slot first (on the compute stream: the
            # grouped call must wait for it), then everything runs on the GPU
            scratch: dict[int, int] = {}
            base = int(self.slots[layer])
            for i in cold_i:
                e = ids[i]
                if e not in scratch:
                    scratch[e] = base + len(scratch)
                    self.pool[layer][scratch[e]].copy_(self.q[layer][e], non_blocking=self.pinned)
                    stats["fetch_bytes"] += self.shape.expert_bytes
            self._scratch_expert[layer] = scratch
            slots = [int(slot_of[ids[i]]) for i in hot_i] + [scratch[ids[i]] for i in cold_i]
            order = hot_i + cold_i
            if order:
                out = out + self._grouped(layer, a, *self._index(order, slots, ids, ws))
            return out, stats
        if prof and st.cuda:
            evs["dense"] = torch.cuda.Event(enable_timing=True)
            evs["dense"].record()
        t_dense = time.perf_counter() if prof else 0.0
        fut = None
        t_submit = 0.0
        if cold_i:
            ev = None
            self._x_host[layer].copy_(a, non_blocking=st.cuda)
            if st.cuda:
                ev = st.event()
                ev.record(st.compute)
            t_submit = time.perf_counter() if prof else 0.0
            fut = self._worker.submit(self._cold, layer, ev, [ids[i] for i in cold_i], [ws[i] for i in cold_i])
        t_hot0 = time.perf_counter() if prof else 0.0
        if hot_i:
            out = out + self._grouped(layer, a, *self._index(hot_i, [int(slot_of[ids[i]]) for i in hot_i], ids, ws))
        if prof and st.cuda:
            evs["hot"] = torch.cuda.Event(enable_timing=True)
            evs["hot"].record()
        t_hot1 = time.perf_counter() if prof else 0.0
        if fut is not None:
            y = fut.result()  # the one hand-off of the layer
            t_got = time.perf_counter() if prof else 0.0
            out = out + y.to(self.device, non_blocking=st.cuda)
        if prof:
            t_end = time.perf_counter()
            rec: dict[str, Any] = {"layer": layer, "hot": stats["hot_distinct"], "cold": stats["cold_distinct"],
                                   "host_dense_us": (t_dense - t0) * 1e6, "host_hot_issue_us": (t_hot1 - t_hot0) * 1e6,
                                   "host_layer_us": (t_end - t0) * 1e6, "events": evs}
            if fut is not None:
                c0, c1 = self._cold_t.pop(layer)
                rec.update(cold_start_latency_us=(c0 - t_submit) * 1e6, cold_us=(c1 - c0) * 1e6,
                           wait_cold_us=(t_got - t_hot1) * 1e6, handback_us=(t_end - t_got) * 1e6)
            self._prof.append(rec)
        return out, stats

    def _index(self, order: list[int], slots: list[int], ids: list[int], ws: list[float]) -> tuple[torch.Tensor, ...]:
        """Slot ids, expert ids and gate weights of a grouped call, sent with async copies from pinned memory."""
        dev, cuda = self.device, self.device.type == "cuda"
        n = len(order)
        idx = torch.tensor(slots + [ids[i] for i in order], dtype=torch.long, pin_memory=cuda)
        w = torch.tensor([ws[i] for i in order], dtype=self.dtype, pin_memory=cuda)
        idx = idx.to(dev, non_blocking=cuda)
        return idx[:n], idx[n:], w.to(dev, non_blocking=cuda)

    # -------------------------------------------------------------------- run
    def token_input(self, token: int) -> torch.Tensor:
        """A fixed pseudo-random embedding for ``token`` (the model's input to its first layer)."""
        return self._embed[int(token) % self._embed.shape[0]].view(1, -1)

    def apply_uploads(self, events: np.ndarray, *, blocking: bool, mode: str = "cold-cpu") -> tuple[int, int]:
        """Apply upload events ``(step, layer, slot, expert)`` (one step's); returns (experts, PCIe bytes)."""
        st = self.streams
        if st.cuda and len(events):
            assert st.copy is not None and st.compute is not None
            st.copy.wait_stream(st.compute)  # never overwrite a slot the step still reads
        n, nbytes = 0, 0
        layers = sorted({int(r[1]) for r in events})
        for layer in layers:
            for r in events[events[:, 1] == layer]:
                nbytes += self._upload(layer, int(r[2]), int(r[3]), from_scratch=mode == "fetch-on-miss")
                n += 1
            self._finish_layer_uploads(layer, blocking=blocking)
        return n, nbytes

    def run(self, schedule: Schedule, *, mode: str = "cold-cpu", warmup: int = 16,
            max_decode_steps: int | None = None, progress: Any = None) -> RunResult:
        """Replay ``schedule``: prefill steps apply their uploads only (not computed, not timed); decode
        steps are computed and timed; the first ``warmup`` decode steps are excluded from the totals."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        sh = self.shape
        if schedule.n_layers != sh.n_layers or schedule.experts.shape[2] != sh.top_k:
            raise ValueError(
                f"schedule has {schedule.n_layers} layers x top-{schedule.experts.shape[2]}, engine "
                f"{sh.n_layers} x top-{sh.top_k}"
            )
        self.set_slots(schedule.slots, schedule.initial_resident)
        ev = schedule.events
        ev_starts = np.searchsorted(ev[:, 0], np.arange(schedule.n_steps + 1)) if len(ev) else None
        b = schedule.step_bounds
        rec: dict[str, list[Any]] = {k: [] for k in (
            "steps", "wall", "tokens", "sel", "hit", "hot", "cold", "up", "bytes", "layers")}
        n_decode = 0
        layer_prof: list[dict[str, Any]] = []
        self._prof = []
        limit = None if max_decode_steps is None else warmup + int(max_decode_steps)
        for s in range(schedule.n_steps):
            step_ev = ev[ev_starts[s]: ev_starts[s + 1]] if ev_starts is not None else ev[:0]
            if schedule.step_phase[s] != 1:
                self.apply_uploads(step_ev, blocking=True, mode="cold-cpu")
                self.streams.sync_compute()
                continue
            if limit is not None and n_decode >= limit:
                break
            self.streams.sync_compute()
            t0 = time.perf_counter()
            tot = {"sel": 0, "hit_sel": 0, "hot_distinct": 0, "cold_distinct": 0, "fetch_bytes": 0}
            hit_layers = np.zeros(sh.n_layers, np.int64)
            for t in range(int(b[s]), int(b[s + 1])):
                x = self.token_input(t)
                for layer in range(sh.n_layers):
                    if not schedule.present[t, layer]:
                        continue
                    x, c = self.forward_layer(layer, x, schedule.experts[t, layer], schedule.weights[t, layer],
                                              mode=mode, bypass=bool(schedule.bypass[s]))
                    for k in tot:
                        tot[k] += c[k]
                    hit_layers[layer] += c["hit_sel"]
            t_up = time.perf_counter()
            n_up, up_bytes = self.apply_uploads(step_ev, blocking=schedule.blocking_uploads, mode=mode)
            t_up = time.perf_counter() - t_up
            self.streams.sync_compute()
            wall = time.perf_counter() - t0
            if self.instrument:
                layer_prof.append(_resolve_profile(self._prof, step=s, upload_issue_us=t_up * 1e6))
                self._prof = []
            rec["steps"].append(s)
            rec["wall"].append(wall)
            rec["tokens"].append(int(b[s + 1] - b[s]))
            rec["sel"].append(tot["sel"])
            rec["hit"].append(tot["hit_sel"])
            rec["hot"].append(tot["hot_distinct"])
            rec["cold"].append(tot["cold_distinct"])
            rec["up"].append(n_up)
            rec["bytes"].append(up_bytes + tot["fetch_bytes"])
            rec["layers"].append(hit_layers)
            n_decode += 1
            if progress is not None:
                progress(n_decode)
        if self.streams.cuda:
            torch.cuda.synchronize()
        measured = np.arange(len(rec["steps"])) >= warmup
        return RunResult(
            label=schedule.label,
            mode=mode,
            steps=np.asarray(rec["steps"], np.int64),
            wall_s=np.asarray(rec["wall"], np.float64),
            tokens=np.asarray(rec["tokens"], np.int64),
            sel=np.asarray(rec["sel"], np.int64),
            hit_sel=np.asarray(rec["hit"], np.int64),
            hot_distinct=np.asarray(rec["hot"], np.int64),
            cold_distinct=np.asarray(rec["cold"], np.int64),
            uploads=np.asarray(rec["up"], np.int64),
            upload_bytes=np.asarray(rec["bytes"], np.int64),
            measured=measured,
            hit_sel_layers=np.asarray(rec["layers"], np.int64).reshape(-1, sh.n_layers),
            info={"pinned": self.pinned, "cpu_threads": self.cpu_threads, "dtype": str(self.dtype),
                  "expert_dtype": self.expert_dtype},
            layer_profile=layer_prof,
        )

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        if self.pinned:
            for t in self.q:
                _host_unregister(t)
            self.pinned = False

    def __enter__(self) -> MoEEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _host_register(t: torch.Tensor) -> bool:
    """Page-lock an existing host tensor in place (no copy, no power-of-two rounding)."""
    # NOTE: torch's pinned allocator rounds big blocks up to a power of two (2.4 GB -> 4 GB per layer);
    # cudaHostRegister pins the tensor's own pages instead.
    try:
        rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    except Exception:  # noqa: BLE001 - pinning is an optimisation; pageable copies still work
        return False
    if isinstance(rc, tuple):
        rc = rc[0]
    return int(getattr(rc, "value", rc)) == 0


def _host_unregister(t: torch.Tensor) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(t.data_ptr())
    except Exception:  # noqa: BLE001
        pass


#: per-layer quantities an instrumented step reports (microseconds), summed over the step's layers
PROFILE_KEYS = ("host_dense_us", "host_hot_issue_us", "host_layer_us", "cold_start_latency_us", "cold_us",
                "wait_cold_us", "handback_us", "gpu_ready_wait_us", "gpu_dense_us", "gpu_hot_us")


def _resolve_profile(recs: list[dict[str, Any]], *, step: int, upload_issue_us: float) -> dict[str, Any]:
    """One instrumented step (after its synchronize): per-layer records with the CUDA event times read out,
    and their sums over layers (``totals``, keys :data:`PROFILE_KEYS`, microseconds).

    Host times (``time.perf_counter``): ``host_dense_us`` issuing the dense part and shared expert,
    ``host_hot_issue_us`` issuing the grouped call, ``host_layer_us`` the whole layer call,
    ``cold_start_latency_us`` from submitting the CPU op to the worker starting it (after the input event),
    ``cold_us`` the CPU op, ``wait_cold_us`` the decode thread waiting for it after issuing the hot call,
    ``handback_us`` adding the result. GPU times (CUDA events on the compute stream): ``gpu_ready_wait_us``
    waiting for the layer's overlapped uploads, ``gpu_dense_us`` the dense part, ``gpu_hot_us`` the index
    upload + grouped call. ``upload_issue_us``: issuing the step's uploads (with blocking uploads, their
    copies and synchronizes)."""
    layers = []
    tot = {k: 0.0 for k in PROFILE_KEYS}
    for r in recs:
        evs = r.pop("events", {})
        if evs:
            r["gpu_ready_wait_us"] = evs["start"].elapsed_time(evs["ready"]) * 1e3
            r["gpu_dense_us"] = evs["ready"].elapsed_time(evs["dense"]) * 1e3
            r["gpu_hot_us"] = evs["dense"].elapsed_time(evs["hot"]) * 1e3
        for k in PROFILE_KEYS:
            tot[k] += float(r.get(k, 0.0))
        layers.append(r)
    return {"step": int(step), "upload_issue_us": float(upload_issue_us), "totals": tot, "layers": layers}
