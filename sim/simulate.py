"""``simulate``: replay a trace under a caching policy and predict what a user cares about.

Combines the replay engine (:func:`hotexperts.sim.replay.replay`: hits, distinct hot/cold experts and
uploads per step and layer), the cost model (:mod:`hotexperts.sim.cost`: step times, term by term) and the
VRAM accounting into one :class:`SimResult`.

Layer mapping. A trace must have the model's number of experts, top-k and number of MoE layers; otherwise
it is refused (:class:`~hotexperts.errors.InputError`). With ``remap=True`` a trace with a different number
of MoE layers is mapped onto the model's: model MoE layer ``i`` (of ``n_model``) replays the routing of
trace layer ``floor(i * n_trace / n_model)`` (:func:`layer_map`), so every model layer gets the routing of
the trace layer at the same relative depth; with more model than trace layers some trace layers are used
twice (those copies are perfectly correlated, which a real model's layers are not). ``remap`` never maps
expert ids or top-k: a trace with another expert count or top-k is refused even then (inventing expert
ids would invent the locality the simulation is meant to measure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec
from hotexperts.sim.cost import (
    MODES,
    CostBreakdown,
    GiB,
    StepCounts,
    evaluate,
    vram_breakdown,
)
from hotexperts.sim.hardware import HardwareProfile
from hotexperts.tracer.trace import Trace

__all__ = ["SimResult", "simulate", "layer_map", "map_trace_to_model", "check_trace_model"]


def layer_map(n_trace: int, n_model: int) -> np.ndarray:
    """``(n_model,)`` trace layer index replayed for each model MoE layer: ``floor(i * n_trace / n_model)``."""
    if n_trace <= 0 or n_model <= 0:
        raise ValueError("layer counts must be positive")
    return (np.arange(n_model, dtype=np.int64) * n_trace) // n_model


def check_trace_model(trace: Trace, model: ModelSpec, *, remap: bool, path: Any = None) -> None:
    """Raise InputError if ``trace`` cannot be replayed on ``model`` (see the module docstring)."""
    where = path if path is not None else "<trace>"
    if trace.n_expert != model.n_expert:
        raise InputError(
            where,
            f"trace has {trace.n_expert} experts per layer but model {model.name} has {model.n_expert} "
            "(--remap maps layers, not expert ids)",
        )
    if trace.top_k != model.n_expert_used:
        raise InputError(
            where,
            f"trace routes top-{trace.top_k} but model {model.name} uses {model.n_expert_used} experts per token "
            "(--remap maps layers, not top-k)",
        )
    if trace.n_layers != model.n_moe_layers and not remap:
        raise InputError(
            where,
            f"trace has {trace.n_layers} MoE layers but model {model.name} has {model.n_moe_layers}; "
            "pass --remap (remap=True) to map trace layers onto the model's",
        )


def map_trace_to_model(trace: Trace, model: ModelSpec, *, remap: bool = False, path: Any = None) -> tuple[Trace, np.ndarray]:
    """The trace as the model's MoE layers see it, and the trace layer of each model layer.

    Same layer count: the trace with the model's layer ids (identity map). Otherwise (``remap=True``) a new
    trace whose layer ``i`` is trace layer ``layer_map(n_trace, n_model)[i]``.
    """
    check_trace_model(trace, model, remap=remap, path=path)
    lm = layer_map(trace.n_layers, model.n_moe_layers)
    if trace.n_layers == model.n_moe_layers:
        if tuple(trace.moe_layers) == tuple(model.moe_layers):
            return trace, lm
        idx: slice | np.ndarray = slice(None)
    else:
        idx = lm
    meta = dict(trace.meta)
    if trace.n_layers != model.n_moe_layers:
        meta["remap"] = {"from_layers": list(trace.moe_layers), "layer_map": [int(x) for x in lm]}
    mapped = Trace(
        experts=np.ascontiguousarray(trace.experts[:, idx, :]),
        phase=trace.phase,
        request=trace.request,
        ubatch=trace.ubatch,
        pos=trace.pos,
        n_expert=trace.n_expert,
        moe_layers=tuple(int(x) for x in model.moe_layers),
        weights=None if trace.weights is None else np.ascontiguousarray(trace.weights[:, idx, :]),
        present=None if trace.present is None else np.ascontiguousarray(trace.present[:, idx]),
        step_seconds=trace.step_seconds,
        meta=meta,
    )
    return mapped, lm


@dataclass
class SimResult:
    """One simulated configuration: hit rates, predicted speeds, PCIe traffic and VRAM."""

    policy: str
    params: dict[str, Any]
    label: str
    mode: str
    model: str
    hardware: str
    slots: list[int]
    hit_rate: float
    hit_rate_per_layer: list[float]
    prefill_hit_rate: float | None
    decode_tok_s: float | None
    prefill_tok_s: float | None
    upload_bytes: float
    upload_experts: int
    fetch_bytes: float
    prefill_copy_bytes: float
    vram_bytes: float
    fits: bool
    vram_breakdown: dict[str, Any]
    selections: int
    decode_selections: int
    replay_seconds: float
    decode_tokens: int
    prefill_tokens: int
    n_steps: int
    terms_ms_per_decode_token: dict[str, float]
    terms_prefill_seconds: dict[str, float]
    remapped: bool
    layer_map: list[int]
    pos_offset: int
    replay: Any = field(default=None, repr=False)
    cost: CostBreakdown | None = field(default=None, repr=False)
    #: per step: experts uploaded (all layers), bytes uploaded, phase; what :meth:`upload_batches` needs
    #: when ``replay`` / ``cost`` were not kept (``simulate(..., keep_arrays=False)``)
    step_uploads: np.ndarray | None = field(default=None, repr=False)

    def upload_batches(self, limit: int = 500) -> dict[str, Any]:
        """Uploads grouped by the step after which they happen (a rebalance, for the fork).

        ``{"count": steps with uploads, "experts_mean", "bytes_mean", "items": [{step, decode_call, phase,
        experts, bytes}, ...]}``, the items capped at ``limit`` (the first ones).
        """
        if self.replay is not None and self.cost is not None:
            experts, nbytes, phase = _upload_steps(self.replay, self.cost)
        elif self.step_uploads is not None:
            experts, nbytes, phase = self.step_uploads["experts"], self.step_uploads["bytes"], self.step_uploads["phase"]
        else:
            return {"count": 0, "experts_mean": 0.0, "bytes_mean": 0.0, "items": []}
        decode_call = np.cumsum(phase == 1)
        idx = np.flatnonzero(experts > 0)
        items = [
            {"step": int(s), "decode_call": int(decode_call[s]), "phase": "decode" if phase[s] == 1 else "prefill",
             "experts": int(experts[s]), "bytes": float(nbytes[s])}
            for s in idx[:limit]
        ]
        return {
            "count": int(idx.size),
            "experts_mean": float(experts[idx].mean()) if idx.size else 0.0,
            "bytes_mean": float(nbytes[idx].mean()) if idx.size else 0.0,
            "items": items,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (no arrays beyond per-layer lists)."""
        return {
            "policy": self.policy,
            "params": _jsonable(self.params),
            "label": self.label,
            "mode": self.mode,
            "model": self.model,
            "hardware": self.hardware,
            "slots": self.slots,
            "hit_rate": self.hit_rate,
            "hit_rate_per_layer": self.hit_rate_per_layer,
            "prefill_hit_rate": self.prefill_hit_rate,
            "decode_tok_s": self.decode_tok_s,
            "prefill_tok_s": self.prefill_tok_s,
            "upload_bytes": self.upload_bytes,
            "upload_experts": self.upload_experts,
            "fetch_bytes": self.fetch_bytes,
            "prefill_copy_bytes": self.prefill_copy_bytes,
            "vram_bytes": self.vram_bytes,
            "vram_gib": self.vram_bytes / GiB,
            "fits": self.fits,
            "vram_breakdown": _jsonable(self.vram_breakdown),
            "selections": self.selections,
            "decode_selections": self.decode_selections,
            "replay_seconds": self.replay_seconds,
            "decode_tokens": self.decode_tokens,
            "prefill_tokens": self.prefill_tokens,
            "n_steps": self.n_steps,
            "terms": {
                "ms_per_decode_token": self.terms_ms_per_decode_token,
                "prefill_seconds": self.terms_prefill_seconds,
            },
            "upload_batches": self.upload_batches(),
            "remapped": self.remapped,
            "layer_map": self.layer_map,
            "pos_offset": self.pos_offset,
        }


_STEP_UPLOADS = np.dtype([("experts", np.int32), ("bytes", np.float64), ("phase", np.uint8)])


def _upload_steps(rr: Any, cb: CostBreakdown) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(rr.uploads).sum(axis=1), np.asarray(cb.upload_bytes, np.float64), np.asarray(rr.step_phase))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _check_slots(slots: Any, model: ModelSpec) -> Any:
    """Slots as one int or a per-model-layer list, each in ``[0, n_expert]``; InputError otherwise."""
    v = np.atleast_1d(np.asarray(slots))
    if v.ndim != 1 or v.size not in (1, model.n_moe_layers) or not np.issubdtype(v.dtype, np.integer):
        raise InputError(
            None, f"slots must be one integer or one per MoE layer of {model.name} ({model.n_moe_layers}), got {v.size}"
        )
    if int(v.min()) < 0 or int(v.max()) > model.n_expert:
        raise InputError(None, f"slots per layer must be in [0, {model.n_expert}], got {int(v.min())}..{int(v.max())}")
    return int(v[0]) if np.ndim(slots) == 0 else [int(x) for x in v]


def _warm_up(trace: Trace, policy: Any, slots: Any) -> None:
    """Compile (or load from cache) the policy's kernels on the first steps of the trace."""
    from hotexperts.sim.replay import replay

    b = trace.step_bounds()
    n = int(b[min(4, b.size - 1)])
    if n == 0:
        return
    mask = np.zeros(trace.n_tokens, np.bool_)
    mask[:n] = True
    replay(trace.select(mask), policy, slots)


def simulate(
    trace: Trace,
    model: ModelSpec,
    hardware: HardwareProfile,
    policy_config: Any,
    slots: int | Any = 0,
    *,
    mode: str = "cold-cpu",
    vram_gb: float | None = None,
    context: int | None = None,
    kv_type: str = "q8_0",
    remap: bool = False,
    ubatch: int | None = None,
    pos_offset: int = 0,
    warm_up: bool = True,
    trace_path: Any = None,
    keep_arrays: bool = True,
) -> SimResult:
    """Replay ``trace`` on ``model`` under ``policy_config`` with ``slots`` per layer, then cost it.

    Args:
        trace: the routing trace (see :func:`map_trace_to_model` for what must match the model).
        model, hardware: the model spec and the machine.
        policy_config: a policy parameter dataclass (``hotexperts.policies``).
        slots: slots per MoE layer (one number, or one per model MoE layer).
        mode: ``cold-cpu`` (cold experts on the CPU) or ``fetch-on-miss`` (misses uploaded, all on GPU).
        vram_gb: VRAM budget in GiB (2**30 bytes, as nvidia-smi's "GB"); default the profile's total.
        context: KV cache size in tokens for the VRAM accounting (default: the trace's longest context
            plus ``pos_offset``).
        kv_type: KV cache type (``q8_0``, ``f16``, ...).
        remap: map the trace's MoE layers onto the model's if their number differs.
        ubatch: ubatch size the compute buffer is reserved for (default ``max(512, largest step)``).
        pos_offset: tokens of context added to every step's position in the attention term.
        warm_up: compile the kernels on a few steps first, so ``replay_seconds`` is the replay alone.
        keep_arrays: keep the replay's and the cost model's per-(step, layer) arrays in ``replay`` and
            ``cost``; False keeps only ``step_uploads`` (13 bytes per step), for callers that hold many
            results (the tuner caches one per trial: the arrays are ~7 MB each on a 6K-step, 48-layer trace).
    """
    from hotexperts.sim.replay import replay

    if mode not in MODES:
        raise InputError(None, f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    mtrace, lm = map_trace_to_model(trace, model, remap=remap, path=trace_path)
    slots = _check_slots(slots, model)
    if warm_up:
        _warm_up(mtrace, policy_config, slots)
    t0 = time.perf_counter()
    rr = replay(mtrace, policy_config, slots)
    replay_seconds = time.perf_counter() - t0
    # NOTE: the engine times its kernel alone (no trace preparation); prefer that when it reports it
    replay_seconds = float(getattr(rr, "replay_seconds", 0.0) or replay_seconds)
    counts = StepCounts.from_replay(rr)
    try:
        cb = evaluate(counts, model, hardware, mode=mode, kv_type=kv_type, pos_offset=pos_offset)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    n_ctx = int(context) if context is not None else int(counts.step_pos.max(initial=0)) + 1 + int(pos_offset)
    ub = int(ubatch) if ubatch is not None else max(512, int(counts.step_tokens.max(initial=1)))
    try:
        vb = vram_breakdown(
            model,
            counts.slots,
            context=n_ctx,
            kv_type=kv_type,
            hardware=hardware,
            ubatch=ub,
            vram_budget_bytes=None if vram_gb is None else float(vram_gb) * GiB,
        )
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    dec = counts.step_phase == 1
    sel = np.asarray(rr.sel)
    hpl = np.asarray(rr.hit_rate_per_layer, dtype=np.float64)
    phr = getattr(rr, "prefill_hit_rate", None)
    return SimResult(
        policy=str(rr.policy),
        params=dict(rr.params),
        label=str(rr.label),
        mode=mode,
        model=model.name,
        hardware=hardware.name,
        slots=[int(x) for x in counts.slots],
        hit_rate=float(rr.hit_rate),
        hit_rate_per_layer=[float(x) for x in hpl],
        prefill_hit_rate=None if phr is None or not np.isfinite(phr) else float(phr),
        decode_tok_s=cb.decode_tok_s,
        prefill_tok_s=cb.prefill_tok_s,
        upload_bytes=float(cb.upload_bytes.sum() + cb.fetch_bytes.sum()),
        upload_experts=int(np.asarray(rr.uploads).sum()),
        fetch_bytes=float(cb.fetch_bytes.sum()),
        prefill_copy_bytes=float(cb.copy_bytes.sum()),
        vram_bytes=float(vb["total"]),
        fits=bool(vb["fits"]),
        vram_breakdown=vb,
        selections=int(sel.sum()),
        decode_selections=int(sel[dec].sum()),
        replay_seconds=float(replay_seconds),
        decode_tokens=cb.decode_tokens,
        prefill_tokens=cb.prefill_tokens,
        n_steps=counts.n_steps,
        terms_ms_per_decode_token=cb.term_ms_per_token(1),
        terms_prefill_seconds=cb.term_totals(0),
        remapped=trace.n_layers != model.n_moe_layers,
        layer_map=[int(x) for x in lm],
        pos_offset=int(pos_offset),
        replay=rr if keep_arrays else None,
        cost=cb if keep_arrays else None,
        step_uploads=None if keep_arrays else _compact_uploads(rr, cb),
    )


def _compact_uploads(rr: Any, cb: CostBreakdown) -> np.ndarray:
    experts, nbytes, phase = _upload_steps(rr, cb)
    out = np.empty(experts.size, _STEP_UPLOADS)
    out["experts"], out["bytes"], out["phase"] = experts, nbytes, phase
    return out
