"""``hotexperts calibrate``: microbenchmarks of the live engine's parts -> a hardware profile for the simulator.

Microbenchmarks only, never a fit to end-to-end runs: each field of
:class:`~hotexperts.sim.hardware.HardwareProfile` comes from timing one part of
:class:`~hotexperts.runtime.engine.MoEEngine` in isolation (straight lines fitted to one part's
time vs its size are the only fits):

- host->device copies from pinned and pageable memory of one expert's bytes (the unit of an upload)
  -> ``pcie_pinned_bw``, ``pcie_pageable_bw``; ``upload_layer_fixed_us`` = a one-expert upload plus
  stream synchronize, minus its bytes at the pinned rate (the table by size 1..256 MB is in the raw file);
- the CPU expert op (:meth:`MoEEngine._cold`) with 1..top_k experts at the engine's thread count ->
  ``cpu_expert_bw`` (slope) and its per-layer fixed cost (intercept, raw); 1, 4 and 8 threads once, raw;
- the GPU grouped call (:meth:`MoEEngine._grouped` with its index upload) with 1..top_k experts, issued
  back to back as the decode loop issues it -> ``gpu_expert_bw`` (slope) and ``gpu_expert_fixed_us``
  (intercept); the synced latencies are kept in the raw tables;
- the dense mat-vec alone, back to back -> ``gpu_mem_bw``;
- the dense part of one layer and the per-token fixed work -> ``dense_fixed_ms`` = per-token work +
  layers x dense-layer time - the dense bytes at ``gpu_mem_bw`` (the cost model adds that term back);
- a whole layer with 1, k/2, k CPU experts (``forward_layer``, cold-cpu) -> ``handoff_us`` = its time
  minus the dense-layer time minus the experts' bytes at ``cpu_expert_bw`` (mean over the three);
- a fetch-on-miss layer with one miss minus one with one hot expert minus one expert at the pinned rate
  -> ``miss_sync_us``;
- host DRAM read rate (a sum over ``dram_gib`` GiB) -> ``dram_bw``; the CPU expert op while pinned uploads
  stream -> ``upload_contention``.

**Stability (issue 12, item 0).** Each of these is measured in ``rounds`` rounds (default 9). A round
runs every microbenchmark once (``reps`` timed calls each, after a warm-up of the GPU and the CPU op), in
an order shuffled per round, with the sizes inside a line (1..top_k experts) shuffled too, so a slow
drift of the machine (clocks, page cache, another process) spreads over all parameters instead of
biasing one. Every round derives a complete set of profile parameters from its own timings
(:func:`derive_round`, a pure function), so an error that propagates (``handoff_us`` depends on
``cpu_expert_bw``) is inside each parameter's spread. The profile takes each parameter's median over
the rounds; :func:`interval` gives a distribution-free confidence interval of that median (order
statistics, >= 95 % where the rounds allow it) and flags outlying rounds (more than 3.5 scaled MADs
from the median; reported, not removed: the median already ignores them). The raw file holds every
round's timings and parameters, the intervals, and the *prediction shifts*: how far each parameter's
interval moves the cost model's tok/s for reference configurations of this engine (all experts on the
CPU, a quarter / half / three quarters hot, all hot, blocking and overlapped uploads, fetch-on-miss;
:func:`reference_predictions`). A parameter is flagged ``wide`` when its interval moves some reference
prediction by more than ``max_shift_pct`` (default 1 %); ``calibrate`` prints the flags.

The experts are built in the chosen host dtype (``--dtype``: int8, fp32, bf16, fp16), so every rate is in
bytes of that dtype. The raw tables record ``cpu_path_vs_dram``: the CPU expert op's weight bytes per second
against half the measured DRAM read rate (issue 6's requirement for the CPU path), met or not.

The profile describes this engine with ``--layers`` layers on this machine (``dense_fixed_ms`` scales
with the layer count); ``hotexperts validate`` must be given the same layer count.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.modelspec import ModelSpec

__all__ = [
    "calibrate",
    "Calibration",
    "PROFILE_PARAMS",
    "derive_round",
    "interval",
    "reference_predictions",
    "prediction_shifts",
    "flag_wide",
    "interval_table",
    "load_intervals",
    "write_profile",
]

Calibration = dict[str, Any]

#: profile fields calibrate measures, each with an interval in the raw file
PROFILE_PARAMS = (
    "gpu_mem_bw",
    "pcie_pinned_bw",
    "pcie_pageable_bw",
    "cpu_expert_bw",
    "dram_bw",
    "handoff_us",
    "miss_sync_us",
    "gpu_expert_bw",
    "gpu_expert_fixed_us",
    "dense_fixed_ms",
    "upload_layer_fixed_us",
    "upload_contention",
)
#: further quantities derived per round (diagnostics for the cost model, not profile fields)
EXTRA_QUANTITIES = (
    "cpu_op_fixed_us",
    "handoff_roundtrip_us",
    "dense_layer_us",
    "token_fixed_us",
    "gpu_grouped_k_synced_us",
    "layer_all_hot_us",
    "layer_cold_k_us",
    "layer_mixed_half_hot_us",
    "cpu_bw_in_layer",
    "handoff_intercept_us",
    "dense_issue_alone_us",
    "dense_issue_beside_cpu_us",
)
#: values used where a part cannot be measured (no GPU): the old calibrate's defaults
_NO_GPU = {"pcie_pinned_bw": 50.0, "pcie_pageable_bw": 10.0, "upload_layer_fixed_us": 20.0, "miss_sync_us": 0.0,
           "upload_contention": 0.0}


# ------------------------------------------------------------------------------------------ timing
def _median(fn: Callable[[], Any], reps: int, *, sync: Callable[[], None] | None = None) -> float:
    ts = []
    for _ in range(reps):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        ts.append(time.perf_counter() - t0)
    return float(statistics.median(ts))


def _pipelined(fn: Callable[[], Any], reps: int, *, sync: Callable[[], None] | None = None) -> float:
    """Seconds per call of ``fn`` issued back to back (one sync before and after all ``reps`` calls).

    This is how the decode loop issues GPU work: the host runs ahead of the GPU, so a call costs the
    larger of its host issue time and its GPU time, not their sum plus a sync (``_median``)."""
    fn()
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / reps


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    slope, icpt = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    # NOTE: a non-positive slope means the part is all fixed cost at these sizes; keep the rate finite
    return float(icpt), max(float(slope), 1e-12)


# ------------------------------------------------------------------------------------ statistics
def _binom_cdf(j: int, n: int) -> float:
    """P(X <= j) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(0, j + 1)) / 2.0**n


def interval(values: Sequence[float], *, conf: float = 0.95) -> dict[str, Any]:
    """Median of ``values`` with a distribution-free confidence interval and the outliers.

    The interval is ``[x_(j), x_(n+1-j)]`` of the sorted values with the largest ``j`` whose coverage of
    the true median, ``1 - 2 P(Binomial(n, 1/2) <= j - 1)``, is at least ``conf``; with too few values for
    ``conf`` (n <= 5 at 95 %) it is the whole range, and ``coverage`` says what it covers. Outliers: values
    more than 3.5 scaled MADs (1.4826 x MAD) from the median (indices into ``values``; reported, not removed).
    ``rel_halfwidth`` is half the interval's width over ``|median|`` (inf for a zero median with a
    non-zero width).
    """
    x = np.asarray([float(v) for v in values], float)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("interval needs finite values")
    n = int(x.size)
    s = np.sort(x)
    med = float(np.median(x))
    j = 1
    for cand in range(1, n // 2 + 1):
        if 1.0 - 2.0 * _binom_cdf(cand - 1, n) >= conf:
            j = cand
    coverage = 1.0 - 2.0 * _binom_cdf(j - 1, n) if n > 1 else 0.0
    lo, hi = float(s[j - 1]), float(s[n - j])
    mad = float(np.median(np.abs(x - med)))
    scale = 1.4826 * mad
    outliers = [int(i) for i in np.flatnonzero(np.abs(x - med) > 3.5 * scale)] if scale > 0 else []
    width = hi - lo
    rel = width / 2.0 / abs(med) if med != 0 else (0.0 if width == 0 else math.inf)
    return {
        "value": med,
        "lo": lo,
        "hi": hi,
        "coverage": round(coverage, 4),
        "n": n,
        "mad": mad,
        "rel_halfwidth": rel,
        "outliers": outliers,
        "values": [float(v) for v in x],
    }


# ----------------------------------------------------------------------------- derived parameters
def derive_round(m: Mapping[str, Any], c: Mapping[str, Any]) -> dict[str, float]:
    """One round's timings ``m`` (seconds) -> every profile parameter and the extra quantities.

    ``c`` holds the constants: ``k`` (top-k), ``b`` (expert bytes), ``n_layers`` (the profile's engine
    layers), ``gemv_bytes`` (one dense mat-vec's weight bytes), ``dense_bytes_total`` (all layers' dense
    bytes), ``dram_bytes`` (bytes summed in the DRAM read), ``cuda`` (whether the GPU-only parts ran).
    Keys of ``m``: ``cpu_s`` / ``gpu_s`` / ``gpu_synced_s`` (lists over 1..k experts), ``gemv_s``,
    ``dense_layer_s``, ``all_hot_s``, ``token_s``, ``cold_layer_s`` ({n: s}), ``handoff_roundtrip_s``,
    ``mixed_s``, ``dram_s``, and with CUDA ``pinned_s``, ``pageable_s``, ``upload_blocking_s``, ``miss1_s``,
    ``hot1_s``, ``cpu_alone_s``, ``cpu_busy_s``.
    """
    k, b, L = int(c["k"]), float(c["b"]), int(c["n_layers"])
    ns = list(range(1, k + 1))
    out: dict[str, float] = {}
    cpu_fixed, cpu_slope = _line(ns, m["cpu_s"])
    cpu_bw = b / cpu_slope / 1e9
    gpu_fixed, gpu_slope = _line(ns, m["gpu_s"])
    gpu_bw = float(c["gemv_bytes"]) / m["gemv_s"] / 1e9 if c["gemv_bytes"] else 1000.0
    t_dense = max(float(m["dense_layer_s"]), float(m["all_hot_s"]) - float(m["gpu_s"][-1]))
    dense_fixed_ms = max(0.0, (m["token_s"] + L * t_dense) * 1e3 - c["dense_bytes_total"] / (gpu_bw * 1e9) * 1e3)
    cold = {int(n): float(t) for n, t in m["cold_layer_s"].items()}
    resid = [t - t_dense - n * b / (cpu_bw * 1e9) for n, t in cold.items()]
    out.update(
        gpu_mem_bw=gpu_bw,
        cpu_expert_bw=cpu_bw,
        dram_bw=float(c["dram_bytes"]) / float(m["dram_s"]) / 1e9,
        handoff_us=max(0.0, float(np.mean(resid))) * 1e6,
        gpu_expert_bw=b / gpu_slope / 1e9,
        gpu_expert_fixed_us=max(gpu_fixed, 0.0) * 1e6,
        dense_fixed_ms=dense_fixed_ms,
    )
    if c.get("cuda"):
        pinned = b / float(m["pinned_s"]) / 1e9
        out.update(
            pcie_pinned_bw=pinned,
            pcie_pageable_bw=b / float(m["pageable_s"]) / 1e9,
            upload_layer_fixed_us=max(0.0, float(m["upload_blocking_s"]) - b / (pinned * 1e9)) * 1e6,
            miss_sync_us=max(0.0, (float(m["miss1_s"]) - float(m["hot1_s"])) - b / (pinned * 1e9)) * 1e6,
            # NOTE: capped below 1: the cost model divides by (1 - contention)
            upload_contention=max(0.0, min(0.9, 1.0 - float(m["cpu_alone_s"]) / float(m["cpu_busy_s"]))),
        )
    else:
        out.update(_NO_GPU)
    # extras: diagnostics for the missing cost terms (issue 12, item 2)
    cold_n = sorted(cold)
    if len(cold_n) >= 2:
        icpt, sl = _line(cold_n, [cold[n] for n in cold_n])
        out["cpu_bw_in_layer"] = b / sl / 1e9
        out["handoff_intercept_us"] = (icpt - t_dense) * 1e6
    out.update(
        cpu_op_fixed_us=cpu_fixed * 1e6,
        handoff_roundtrip_us=float(m["handoff_roundtrip_s"]) * 1e6,
        dense_layer_us=t_dense * 1e6,
        token_fixed_us=float(m["token_s"]) * 1e6,
        gpu_grouped_k_synced_us=float(m["gpu_synced_s"][-1]) * 1e6,
        layer_all_hot_us=float(m["all_hot_s"]) * 1e6,
        layer_cold_k_us=cold[max(cold)] * 1e6,
        layer_mixed_half_hot_us=float(m["mixed_s"]) * 1e6,
    )
    if "dense_issue_alone_s" in m:
        out["dense_issue_alone_us"] = float(m["dense_issue_alone_s"]) * 1e6
        out["dense_issue_beside_cpu_us"] = float(m["dense_issue_beside_cpu_s"]) * 1e6
    return out


# ------------------------------------------------------------------------- prediction sensitivity
def reference_predictions(model: ModelSpec, hw: Any, *, steps: int = 40) -> dict[str, float]:
    """Decode tok/s the cost model predicts for reference configurations of ``model`` (the engine's spec).

    Synthetic per-layer counts, the same every step (top-k = k): all experts on the CPU; a quarter, half
    and three quarters of them hot (cold-cpu); all hot; half hot with one blocking upload per layer every
    10 steps (fork-like); half hot with one overlapped upload per layer per step (lru-like); half hot in
    fetch-on-miss. Fractional counts are allowed (expected values).
    """
    from hotexperts.sim.cost import StepCounts, evaluate

    k, L, S = int(model.n_expert_used), int(model.n_moe_layers), int(steps)

    def tok_s(hot: float, *, mode: str = "cold-cpu", up_every: int = 0, blocking: bool = True) -> float:
        up = np.zeros((S, L))
        if up_every:
            up[::up_every] = 1.0
        cnt = StepCounts(step_tokens=np.ones(S, np.int64), step_phase=np.ones(S, np.uint8),
                         step_pos=np.arange(S), hot_distinct=np.full((S, L), hot),
                         cold_distinct=np.full((S, L), k - hot), uploads=up, slots=np.full(L, 2 * k),
                         blocking_uploads=blocking)
        return float(S / evaluate(cnt, model, hw, mode=mode).total.sum())

    return {
        "all-cpu": tok_s(0.0),
        "hot-25%": tok_s(0.25 * k),
        "hot-50%": tok_s(0.5 * k),
        "hot-75%": tok_s(0.75 * k),
        "all-hot": tok_s(float(k)),
        "hot-50%-blocking-uploads": tok_s(0.5 * k, up_every=10),
        "hot-50%-overlapped-uploads": tok_s(0.5 * k, up_every=1, blocking=False),
        "hot-50%-fetch-on-miss": tok_s(0.5 * k, mode="fetch-on-miss"),
    }


def prediction_shifts(hw: Any, intervals: Mapping[str, Mapping[str, Any]],
                      predict: Callable[[Any], Mapping[str, float]]) -> dict[str, dict[str, list[float]]]:
    """How far each parameter's interval moves each prediction: ``{param: {config: [lo %, hi %]}}``.

    ``predict(profile)`` returns ``{config: tok/s}``; each parameter in turn is set to its interval's ``lo``
    and ``hi`` (all others at the profile's values) and the predictions are compared with those at the
    profile: ``(pred(lo) / pred - 1) * 100`` and likewise for ``hi``.
    """
    base = dict(predict(hw))
    out: dict[str, dict[str, list[float]]] = {}
    for p, iv in intervals.items():
        row: dict[str, list[float]] = {name: [0.0, 0.0] for name in base}
        for j, end in enumerate(("lo", "hi")):
            v = float(iv[end])
            if p == "upload_contention":
                v = min(v, 1.0)
            try:
                alt = predict(hw.replace(**{p: v}))
            except (ValueError, ZeroDivisionError):  # pragma: no cover - an end at 0 of a positive rate
                continue
            for name, t in base.items():
                row[name][j] = (float(alt[name]) / t - 1.0) * 100.0 if t else 0.0
        out[p] = row
    return out


def flag_wide(shifts: Mapping[str, Mapping[str, Sequence[float]]], *, max_shift_pct: float = 1.0) -> dict[str, float]:
    """Parameters whose interval moves some prediction by more than ``max_shift_pct`` %: ``{param: largest |shift|}``."""
    out = {}
    for p, row in shifts.items():
        worst = max((abs(float(v)) for pair in row.values() for v in pair), default=0.0)
        if worst > max_shift_pct:
            out[p] = worst
    return out


# ------------------------------------------------------------------------------------- calibrate
def calibrate(
    *,
    model: ModelSpec,
    n_layers: int | None = None,
    dtype: str = "int8",
    device: str = "cuda",
    cpu_threads: int | None = None,
    reps: int = 20,
    rounds: int = 9,
    dram_gib: float = 2.0,
    max_shift_pct: float = 1.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Run the microbenchmarks; return ``{"profile": HardwareProfile fields, "measurements": raw tables}``.

    ``dtype`` is the engine's host/slot expert dtype; ``n_layers`` defaults to :func:`default_layers` of it.
    ``rounds`` interleaved rounds of ``reps`` timed calls per microbenchmark (module docstring).
    """
    import torch

    from hotexperts.runtime.engine import EngineShape, MoEEngine, default_cpu_threads, default_layers

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if rounds < 1 or reps < 1:
        raise ValueError("rounds and reps must be positive")
    cuda = device == "cuda"
    threads = int(cpu_threads or default_cpu_threads(str(device)))
    torch.set_num_threads(threads)
    n_layers = int(n_layers or default_layers(dtype))
    shape = EngineShape.from_spec(model, n_layers=n_layers, dtype=dtype)
    # NOTE: two layers are enough for the parts; the CPU op's experts are drawn at random from all
    # 2 x n_expert blocks (GBs), so the host's last-level cache cannot hold them
    eng_shape = EngineShape(**{**shape.to_dict(), "n_layers": 2})
    say(f"calibrate: building a 2-layer {model.name} engine ({eng_shape.n_expert} {dtype} experts of "
        f"{shape.expert_bytes / 1e6:.1f} MB per layer, {2 * eng_shape.n_expert * shape.expert_bytes / 1e9:.1f} GB); "
        f"{rounds} rounds x {reps} reps")
    t_start = time.perf_counter()
    eng = MoEEngine(eng_shape, device=device, cpu_threads=threads, distinct_experts=32)
    sync = torch.cuda.synchronize if cuda else None
    meas: dict[str, Any] = {"threads": threads, "engine_shape": shape.to_dict(), "expert_dtype": dtype,
                            "rounds": rounds, "reps": reps, "method": "interleaved rounds, median, order-statistic CI"}
    k, E, b = shape.top_k, shape.n_expert, shape.expert_bytes
    rng = np.random.default_rng(seed)
    round_raw: list[dict[str, Any]] = []
    round_params: list[dict[str, float]] = []
    try:
        # ---- setup shared by every round
        eng.set_slots(np.array([k, k]), np.array([list(range(k)), list(range(k, 2 * k))]))
        free = [int(e) for e in np.flatnonzero(eng.slot_of[0] < 0)]
        x_dev = torch.randn(1, shape.hidden).to(device, eng.dtype)
        a = torch.randn(1, shape.hidden).to(eng.dtype)
        for layer in (0, 1):
            eng._x_host[layer].copy_(a)
        src_p = dst_p = src_g = None
        if cuda:
            src_p = torch.randint(0, 255, (b,), dtype=torch.uint8).pin_memory()
            src_g = torch.randint(0, 255, (b,), dtype=torch.uint8)
            dst_p = torch.empty(b, dtype=torch.uint8, device=device)
        w0 = eng.dense[0]
        gemv_bytes = int(w0.numel() * w0.element_size()) if w0 is not None else 0
        dram_n = max(1 << 20, int(dram_gib * (1 << 30)) // 4)
        big = torch.ones(dram_n)  # fp32
        big.sum()
        up_stream = torch.cuda.Stream() if cuda else None
        up_src = torch.empty(512 << 20, dtype=torch.uint8).pin_memory() if cuda else None
        up_dst = torch.empty_like(up_src, device=device) if up_src is not None else None
        consts = {"k": k, "b": b, "n_layers": n_layers, "gemv_bytes": gemv_bytes,
                  "dense_bytes_total": eng.dense_bytes_per_layer * n_layers, "dram_bytes": dram_n * 4, "cuda": cuda}
        meas["constants"] = dict(consts)

        # ---- informational tables, once: H2D by size, the CPU op at fewer threads
        say("calibrate: host->device bandwidth by size; CPU expert op at 1/4/8 threads (raw tables)")
        h2d: dict[str, dict[str, float]] = {"pinned": {}, "pageable": {}}
        if cuda:
            for n in [1 << 20, 4 << 20, b, 16 << 20, 64 << 20, 256 << 20]:
                dst = torch.empty(n, dtype=torch.uint8, device=device)
                for kind in ("pinned", "pageable"):
                    src = torch.randint(0, 255, (n,), dtype=torch.uint8)
                    if kind == "pinned":
                        src = src.pin_memory()

                    def copy(s: torch.Tensor = src, d: torch.Tensor = dst, p: bool = kind == "pinned") -> None:
                        d.copy_(s, non_blocking=p)

                    h2d[kind][str(n)] = n / _median(copy, max(3, reps // 2), sync=sync) / 1e9
                del dst
        meas["h2d_gbs"] = h2d

        def cold_op(n: int) -> None:
            layer = int(rng.integers(2))
            ids = [int(x) for x in rng.choice(E, n, replace=False)]
            eng._worker.submit(eng._cold, layer, None, ids, [1.0 / n] * n).result()

        cpu_threads_tab: dict[str, dict[str, float]] = {}
        for th in sorted({1, 4, 8} & set(range(1, threads))):
            eng._worker.submit(torch.set_num_threads, th).result()
            cpu_threads_tab[str(th)] = {str(n): _median(lambda n=n: cold_op(n), max(3, reps // 4))  # type: ignore[misc]
                                        for n in (1, k)}
        eng._worker.submit(torch.set_num_threads, threads).result()
        meas["cpu_experts_s_by_threads"] = cpu_threads_tab

        # ---- the benchmarks of one round
        def grouped(n: int) -> None:
            layer = int(rng.integers(2))
            sl = [int(s) for s in rng.choice(k, n, replace=False)]
            ids = [int(eng.table[layer, s]) for s in sl]
            eng._grouped(layer, x_dev, *eng._index(list(range(n)), sl, ids, [1.0 / n] * n))

        def warm() -> None:
            # NOTE: warm the GPU (clocks, allocator) and the CPU threads before every round: an idle GPU
            # clocks down, and the first points of a line timed cold came out slower (second H200 run)
            t_end = time.perf_counter() + (0.2 if cuda else 0.01)
            while time.perf_counter() < t_end:
                grouped(k)
            if sync is not None:
                sync()
            cold_op(k)

        def b_h2d(m: dict[str, Any]) -> None:
            if not cuda:
                return
            assert src_p is not None and dst_p is not None and src_g is not None
            m["pinned_s"] = _median(lambda: dst_p.copy_(src_p, non_blocking=True), reps, sync=sync)
            m["pageable_s"] = _median(lambda: dst_p.copy_(src_g), max(3, reps // 2), sync=sync)
            # NOTE: layer 1, slot 0 re-uploads the expert it holds: the residency of layer 0 (which the
            # cold and miss layers below use) never changes
            e1 = int(eng.table[1, 0])
            m["upload_blocking_s"] = _median(lambda: eng.apply_uploads(np.array([[0, 1, 0, e1]]), blocking=True),
                                             reps, sync=sync)

        def b_cpu(m: dict[str, Any]) -> None:
            row = {}
            for n in rng.permutation(np.arange(1, k + 1)):
                row[int(n)] = _median(lambda n=int(n): cold_op(n), reps)  # type: ignore[misc]
            m["cpu_s"] = [row[n] for n in range(1, k + 1)]

        def b_gpu(m: dict[str, Any]) -> None:
            synced, piped = {}, {}
            for n in rng.permutation(np.arange(1, k + 1)):
                n = int(n)
                grouped(n)
                synced[n] = _median(lambda n=n: grouped(n), reps, sync=sync)  # type: ignore[misc]
                piped[n] = _pipelined(lambda n=n: grouped(n), reps * 2, sync=sync)  # type: ignore[misc]
            m["gpu_synced_s"] = [synced[n] for n in range(1, k + 1)]
            m["gpu_s"] = [piped[n] for n in range(1, k + 1)]

        def b_handoff(m: dict[str, Any]) -> None:
            def handoff() -> None:
                xh, yh = eng._x_host[0], eng._y_host[0]
                xh.copy_(x_dev, non_blocking=cuda)
                ev = None
                if cuda:
                    ev = torch.cuda.Event()
                    ev.record()

                def task() -> torch.Tensor:
                    if ev is not None:
                        ev.synchronize()
                    yh.copy_(xh)
                    return yh

                y = eng._worker.submit(task).result()
                (x_dev + y.to(device, non_blocking=cuda)).sum()

            handoff()
            m["handoff_roundtrip_s"] = _median(handoff, reps * 2, sync=sync)

        def b_dense(m: dict[str, Any]) -> None:
            def dense_layer() -> None:
                a2 = eng._dense(0, x_dev)
                y = eng._shared(0, a2)
                _ = a2 + y if y is not None else a2

            if w0 is not None:
                xv = x_dev.view(-1)
                m["gemv_s"] = _pipelined(lambda: w0 @ xv, reps * 5, sync=sync)
            else:
                m["gemv_s"] = 1.0
            m["dense_layer_s"] = _pipelined(dense_layer, reps * 5, sync=sync)
            ids = [int(eng.table[0, s]) for s in range(k)]
            m["all_hot_s"] = _pipelined(lambda: eng.forward_layer(0, x_dev, ids, [1.0 / k] * k), reps * 2, sync=sync)
            m["token_s"] = _median(lambda: eng.token_input(int(rng.integers(64))), reps * 2, sync=sync)

        def b_dense_beside(m: dict[str, Any]) -> None:
            # diagnostic for issue 12, item 2: the host time to issue one dense part (+ shared expert) alone
            # and while the CPU op of k experts runs on the worker's threads (the decode loop issues it so);
            # no sync between the calls: host issue time, as the instrumented decode loop's host_dense
            def dense_layer() -> None:
                a2 = eng._dense(0, x_dev)
                y = eng._shared(0, a2)
                _ = a2 + y if y is not None else a2

            dense_layer()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                dense_layer()
            m["dense_issue_alone_s"] = (time.perf_counter() - t0) / reps
            if sync is not None:
                sync()
            ids = [int(x) for x in rng.choice(E, k, replace=False)]
            fut = eng._worker.submit(eng._cold, 0, None, ids, [1.0 / k] * k)
            cnt, t0 = 0, time.perf_counter()
            while True:
                dense_layer()
                cnt += 1
                if fut.done() or cnt >= 10 * reps:
                    break
            m["dense_issue_beside_cpu_s"] = (time.perf_counter() - t0) / cnt
            fut.result()
            if sync is not None:
                sync()

        def b_cold_layers(m: dict[str, Any]) -> None:
            out = {}
            for n in rng.permutation(sorted({1, max(1, k // 2), k})):
                n = int(n)

                def cold_layer(n: int = n) -> None:
                    sel = [free[int(i)] for i in rng.choice(len(free), n, replace=False)]
                    eng.forward_layer(0, x_dev, sel, [1.0 / n] * n)

                cold_layer()
                out[n] = _pipelined(cold_layer, reps, sync=sync)
            m["cold_layer_s"] = {str(n): out[n] for n in sorted(out)}

        def b_miss(m: dict[str, Any]) -> None:
            if not cuda:
                return

            def miss_layer() -> None:
                e = free[int(rng.integers(len(free)))]
                eng.forward_layer(0, x_dev, [e], [1.0], mode="fetch-on-miss")

            def hot1_layer() -> None:
                eng.forward_layer(0, x_dev, [int(eng.table[0, int(rng.integers(k))])], [1.0], mode="fetch-on-miss")

            m["miss1_s"] = _pipelined(miss_layer, reps * 2, sync=sync)
            m["hot1_s"] = _pipelined(hot1_layer, reps * 2, sync=sync)

        h2 = max(1, k // 2)

        def b_mixed(m: dict[str, Any]) -> None:
            # a layer with half its experts hot and half cold (diagnostic, not in the profile): the cost
            # model prices it as dense + handoff + max(GPU, CPU)
            def mixed_layer() -> None:
                hot = [int(eng.table[0, int(s)]) for s in rng.choice(k, h2, replace=False)]
                cold = [free[int(i)] for i in rng.choice(len(free), k - h2, replace=False)]
                eng.forward_layer(0, x_dev, hot + cold, [1.0 / k] * k)

            mixed_layer()
            m["mixed_s"] = _pipelined(mixed_layer, reps, sync=sync)

        def b_dram(m: dict[str, Any]) -> None:
            m["dram_s"] = _median(lambda: big.sum(), 5)

        def b_contention(m: dict[str, Any]) -> None:
            if not cuda:
                return
            assert up_stream is not None and up_src is not None and up_dst is not None
            ids = [int(x) for x in rng.choice(E, k, replace=False)]

            def cold_k() -> None:
                eng._worker.submit(eng._cold, 0, None, ids, [1.0 / k] * k).result()

            n_rep = max(3, reps // 2)
            m["cpu_alone_s"] = _median(cold_k, n_rep)
            ts = []
            for _ in range(n_rep):
                with torch.cuda.stream(up_stream):
                    for _ in range(4):
                        up_dst.copy_(up_src, non_blocking=True)
                t0 = time.perf_counter()
                cold_k()
                ts.append(time.perf_counter() - t0)
                up_stream.synchronize()
            m["cpu_busy_s"] = float(statistics.median(ts))

        benches: dict[str, Callable[[dict[str, Any]], None]] = {
            "h2d": b_h2d, "cpu": b_cpu, "gpu": b_gpu, "handoff": b_handoff, "dense": b_dense,
            "dense_beside": b_dense_beside, "cold_layers": b_cold_layers, "miss": b_miss, "mixed": b_mixed, "dram": b_dram, "contention": b_contention,
        }
        names = list(benches)
        for r in range(rounds):
            order = [names[int(i)] for i in rng.permutation(len(names))]
            m: dict[str, Any] = {"order": order}
            warm()
            t_r = time.perf_counter()
            for name in order:
                benches[name](m)
            m["seconds"] = time.perf_counter() - t_r
            p = derive_round(m, consts)
            round_raw.append(m)
            round_params.append(p)
            say(f"calibrate: round {r + 1}/{rounds} ({m['seconds']:.1f} s): CPU {p['cpu_expert_bw']:.1f} GB/s, "
                f"hand-off {p['handoff_us']:.0f} us, GPU {p['gpu_expert_fixed_us']:.0f} us + "
                f"{p['gpu_expert_bw']:.0f} GB/s, pinned {p['pcie_pinned_bw']:.1f} GB/s, dense fixed "
                f"{p['dense_fixed_ms']:.2f} ms")
    finally:
        eng.close()

    intervals = {p: interval([rp[p] for rp in round_params]) for p in PROFILE_PARAMS}
    extras = {q: interval([rp[q] for rp in round_params]) for q in EXTRA_QUANTITIES if q in round_params[0]}
    val = {p: iv["value"] for p, iv in intervals.items()}
    meas["rounds_raw"] = round_raw
    meas["rounds_params"] = round_params
    meas["intervals"] = intervals
    meas["extra_intervals"] = extras
    meas["seconds"] = time.perf_counter() - t_start
    cpu_bw, dram_bw = val["cpu_expert_bw"], val["dram_bw"]
    # issue 6: the CPU path must reach half the host's DRAM read rate in weight bytes per second
    meas["cpu_path_vs_dram"] = {
        "expert_dtype": dtype,
        "threads": threads,
        "cpu_expert_gbs": cpu_bw,
        "dram_read_gbs": dram_bw,
        "half_dram_gbs": dram_bw / 2,
        "met": bool(cpu_bw >= dram_bw / 2),
    }
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    vram = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    rt, cf = extras["handoff_roundtrip_us"]["value"], extras["cpu_op_fixed_us"]["value"]
    profile: dict[str, Any] = {
        "name": f"{name} (hotexperts engine, {dtype} experts, {n_layers} layers, {threads} threads)",
        "vram_bytes": int(vram),
        **{p: round(float(v), 5 if p in ("dense_fixed_ms", "upload_contention") else 3) for p, v in val.items()},
        "cpu_threads": threads,
        "source": (
            f"hotexperts calibrate {datetime.now(timezone.utc).isoformat(timespec='seconds')} on "
            f"{platform.node()}: microbenchmarks of the runtime engine's parts ({dtype} experts of "
            f"{model.name} shape, {threads} CPU threads, torch {torch.__version__}); each field the median "
            f"of {rounds} interleaved rounds (intervals in the .raw.json)"
        ),
        "notes": (
            f"engine-specific: dense_fixed_ms is for {n_layers} engine layers; the CPU op streams {dtype} "
            f"experts ({b} B) with {'torch._weight_int8pack_mm' if dtype == 'int8' else 'F.linear'}; the GPU "
            f"call gathers {dtype} slots. "
            f"handoff_us is a layer with CPU experts minus its dense part and the experts' streaming "
            f"(the parts: round trip {rt:.1f} us + CPU op intercept {cf:.1f} us). gpu_mem_bw is the dense "
            f"mat-vec, gpu_expert_bw the grouped expert call, both issued back to back."
        ),
    }
    # the prediction shifts of each parameter's interval, on reference configurations of this engine
    try:
        from hotexperts.sim.hardware import HardwareProfile

        hw = HardwareProfile.from_dict(profile)
        espec = shape.model_spec(model)
        shifts = prediction_shifts(hw, intervals, lambda h: reference_predictions(espec, h))
        meas["reference_predictions_tok_s"] = reference_predictions(espec, hw)
        meas["prediction_shifts_pct"] = shifts
        wide = flag_wide(shifts, max_shift_pct=max_shift_pct)
        meas["wide"] = {"max_shift_pct": max_shift_pct, "flagged": wide}
        for pname, worst in sorted(wide.items(), key=lambda kv: -kv[1]):
            iv = intervals[pname]
            say(f"calibrate: WIDE {pname}: {iv['value']:.4g} [{iv['lo']:.4g}, {iv['hi']:.4g}] moves a reference "
                f"prediction by up to {worst:.1f} % (limit {max_shift_pct:g} %)")
    except ImportError:  # pragma: no cover - sim/ ships with the package
        pass
    return {"profile": profile, "measurements": meas}


def interval_table(cal: Calibration) -> list[str]:
    """Lines of a table: each profile parameter's value, interval, relative half-width, outliers, largest shift."""
    meas = cal["measurements"]
    shifts = meas.get("prediction_shifts_pct", {})
    lines = [f"{'parameter':24s} {'value':>10s} {'interval':>23s} {'+-%':>6s} {'out':>3s} {'max shift %':>11s}"]
    for p, iv in meas["intervals"].items():
        worst = max((abs(v) for pair in shifts.get(p, {}).values() for v in pair), default=0.0)
        rel = iv["rel_halfwidth"] * 100
        lines.append(f"{p:24s} {iv['value']:10.4g} [{iv['lo']:10.4g}, {iv['hi']:10.4g}] "
                     f"{rel:6.1f} {len(iv['outliers']):3d} {worst:11.2f}")
    return lines


def write_profile(cal: Calibration, out: str | os.PathLike[str]) -> Path:
    """Write the profile JSON (the simulator's input) and the raw tables beside it (``*.raw.json``)."""
    out = Path(out)
    prof = dict(cal["profile"])
    try:  # validate against the simulator's schema when it is importable
        from hotexperts.sim.hardware import HardwareProfile

        prof = HardwareProfile.from_dict(prof).to_dict()
    except ImportError:  # pragma: no cover - sim/ ships with the package
        pass
    write_text_atomic(out, json.dumps(prof, indent=2) + "\n")
    raw = out.with_name(out.stem + ".raw.json")
    write_text_atomic(raw, json.dumps(cal["measurements"], indent=1) + "\n")
    return raw


def load_intervals(hw_path: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | None:
    """The intervals in ``HW.raw.json`` beside a profile written by :func:`write_profile` (None if absent)."""
    p = Path(hw_path)
    raw = p.with_name(p.stem + ".raw.json")
    try:
        data = json.loads(raw.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    iv = data.get("intervals") if isinstance(data, dict) else None
    return iv if isinstance(iv, dict) else None
