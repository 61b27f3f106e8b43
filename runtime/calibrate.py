"""``hotexperts calibrate``: microbenchmarks of the live engine's parts -> a hardware profile for the simulator.

Microbenchmarks only, never a fit to end-to-end runs: each field of
:class:`~hotexperts.sim.hardware.HardwareProfile` comes from timing one part of
:class:`~hotexperts.runtime.engine.MoEEngine` in isolation (straight lines fitted to one part's
time vs its size are the only fits):

- host->device copies from pinned and pageable memory by transfer size -> ``pcie_pinned_bw`` and
  ``pcie_pageable_bw`` (at the size of one expert, the unit of an upload), ``upload_layer_fixed_us``
  (a one-expert copy plus stream synchronize, minus its bytes at the pinned rate);
- the CPU expert op (:meth:`MoEEngine._cold`) with 1..top_k experts at several thread counts ->
  ``cpu_expert_bw`` (slope at the engine's thread count) and its per-layer fixed cost (intercept);
- the GPU grouped call (:meth:`MoEEngine._grouped` with its index upload) with 1..top_k experts, issued
  back to back as the decode loop issues it -> ``gpu_expert_bw`` (slope) and ``gpu_expert_fixed_us``
  (intercept); the synced latencies are kept in the raw tables;
- the dense mat-vec alone, back to back -> ``gpu_mem_bw`` (the dense weights' streaming rate: a plain
  bf16 GEMV, much faster per byte than the grouped call's gather + dequantise + bmm);
- the dense part of one layer (dense mat-vec, norm, shared expert) and the per-token fixed work ->
  ``dense_fixed_ms`` = per-token work + layers x dense-layer time - the dense bytes at ``gpu_mem_bw``
  (the cost model adds that streaming term back);
- a whole layer with 1, k/2, k CPU experts (``forward_layer``, cold-cpu) -> ``handoff_us`` = its time
  minus the dense-layer time minus the experts' bytes at ``cpu_expert_bw`` (mean over the three): the
  copies, the worker's wake-up, the CPU op's fixed cost, as the engine runs them (the isolated round
  trip + CPU intercept is kept in the raw tables as ``handoff_parts_us``);
- a fetch-on-miss layer with one miss minus one with one hot expert minus one expert at the pinned rate
  -> ``miss_sync_us`` (the engine takes routing from the trace, so this is launch cost, no readback);
- host DRAM read rate (a sum over 2 GiB) -> ``dram_bw``; the CPU expert op while pinned uploads stream ->
  ``upload_contention``.

The experts are built in the chosen host dtype (``--dtype``: int8, fp32, bf16, fp16), so every rate is in
bytes of that dtype. The raw tables record ``cpu_path_vs_dram``: the CPU expert op's weight bytes per second
against half the measured DRAM read rate (issue 6's requirement for the CPU path), met or not.

The profile describes this engine with ``--layers`` layers on this machine (``dense_fixed_ms`` scales
with the layer count); ``hotexperts validate`` must be given the same layer count.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hotexperts._atomic import write_text_atomic
from hotexperts.modelspec import ModelSpec
from hotexperts.runtime.engine import EngineShape, MoEEngine, default_layers

__all__ = ["calibrate", "Calibration"]

Calibration = dict[str, Any]


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


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    slope, icpt = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    # NOTE: a non-positive slope means the part is all fixed cost at these sizes; keep the rate finite
    return float(icpt), max(float(slope), 1e-9)


def calibrate(
    *,
    model: ModelSpec,
    n_layers: int | None = None,
    dtype: str = "int8",
    device: str = "cuda",
    cpu_threads: int | None = None,
    reps: int = 20,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Run the microbenchmarks; return ``{"profile": HardwareProfile fields, "measurements": raw tables}``.

    ``dtype`` is the engine's host/slot expert dtype; ``n_layers`` defaults to :func:`default_layers` of it.
    """
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    cuda = device == "cuda"
    from hotexperts.runtime.engine import default_cpu_threads

    threads = int(cpu_threads or default_cpu_threads(str(device)))
    torch.set_num_threads(threads)
    n_layers = int(n_layers or default_layers(dtype))
    shape = EngineShape.from_spec(model, n_layers=n_layers, dtype=dtype)
    # NOTE: two layers are enough for the parts; the CPU op's experts are drawn at random from all
    # 2 x n_expert blocks (GBs), so the host's last-level cache cannot hold them
    eng_shape = EngineShape(**{**shape.to_dict(), "n_layers": 2})
    say(f"calibrate: building a 2-layer {model.name} engine ({eng_shape.n_expert} {dtype} experts of "
        f"{shape.expert_bytes / 1e6:.1f} MB per layer, {2 * eng_shape.n_expert * shape.expert_bytes / 1e9:.1f} GB)")
    eng = MoEEngine(eng_shape, device=device, cpu_threads=threads, distinct_experts=32)
    sync = torch.cuda.synchronize if cuda else None
    meas: dict[str, Any] = {"threads": threads, "engine_shape": shape.to_dict(), "expert_dtype": dtype}
    k, E, b = shape.top_k, shape.n_expert, shape.expert_bytes
    rng = np.random.default_rng(0)
    try:
        # ---- 1. host -> device copies
        say("calibrate: [1/7] host->device bandwidth by size (pinned, pageable)")
        h2d: dict[str, dict[str, float]] = {"pinned": {}, "pageable": {}}
        sizes = [1 << 20, 4 << 20, b, 16 << 20, 64 << 20, 256 << 20]
        if cuda:
            for n in sizes:
                dst = torch.empty(n, dtype=torch.uint8, device=device)
                for kind in ("pinned", "pageable"):
                    src = torch.randint(0, 255, (n,), dtype=torch.uint8)
                    if kind == "pinned":
                        src = src.pin_memory()
                    def copy(s: torch.Tensor = src, d: torch.Tensor = dst, p: bool = kind == "pinned") -> None:
                        d.copy_(s, non_blocking=p)

                    t = _median(copy, reps, sync=sync)
                    h2d[kind][str(n)] = n / t / 1e9
                del dst
            eng.set_slots(np.array([1, 1]))
            t1 = _median(lambda: eng.apply_uploads(np.array([[0, 0, 0, int(rng.integers(E))]]), blocking=True),
                         reps, sync=sync)
            meas["upload_one_expert_blocking_us"] = t1 * 1e6
        meas["h2d_gbs"] = h2d
        pinned_bw = h2d["pinned"].get(str(b), 50.0)
        pageable_bw = h2d["pageable"].get(str(b), 10.0)

        # ---- 2. CPU experts vs count and threads
        say("calibrate: [2/7] CPU expert op vs experts and threads")
        cpu: dict[str, dict[str, float]] = {}
        a = torch.randn(1, shape.hidden).to(eng.dtype)
        for layer in (0, 1):
            eng._x_host[layer].copy_(a)
        for th in sorted({1, 4, 8, threads} & set(range(1, threads + 1))):
            eng._worker.submit(torch.set_num_threads, th).result()
            row = {}
            for n in range(1, k + 1):
                def one(n: int = n) -> None:
                    layer = int(rng.integers(2))
                    ids = [int(x) for x in rng.choice(E, n, replace=False)]
                    eng._worker.submit(eng._cold, layer, None, ids, [1.0 / n] * n).result()

                one()
                row[str(n)] = _median(one, max(5, reps // (2 if th < 4 else 1)))
            cpu[str(th)] = row
            i0, sl = _line(list(range(1, k + 1)), list(row.values()))
            say(f"  {th:3d} threads: {k} experts {row[str(k)] * 1e3:.2f} ms, {b / sl / 1e9:.1f} GB/s, fixed {i0 * 1e6:.0f} us")
        eng._worker.submit(torch.set_num_threads, threads).result()
        meas["cpu_experts_s"] = cpu
        cpu_fixed, cpu_slope = _line(list(range(1, k + 1)), list(cpu[str(threads)].values()))
        cpu_bw = b / cpu_slope / 1e9

        # ---- 3. GPU grouped call vs count
        say("calibrate: [3/7] GPU grouped experts vs experts")
        eng.set_slots(np.array([k, k]), np.array([list(range(k)), list(range(k, 2 * k))]))
        x_dev = torch.randn(1, shape.hidden).to(device, eng.dtype)
        gpu_t: dict[str, float] = {}
        gpu_sync_t: dict[str, float] = {}
        # NOTE: warm the GPU first (clocks, allocator, pinned index buffers): on the second H200 run the
        # 1..3-expert points, timed first, came out slower than the 4-expert one and skewed the line
        full = [int(eng.table[0, s]) for s in range(k)]
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:
            eng._grouped(0, x_dev, *eng._index(list(range(k)), list(range(k)), full, [1.0 / k] * k))
        if sync is not None:
            sync()
        for n in range(1, k + 1):
            def grouped(n: int = n) -> None:
                layer = int(rng.integers(2))
                sl = [int(s) for s in rng.choice(k, n, replace=False)]
                ids = [int(eng.table[layer, s]) for s in sl]
                eng._grouped(layer, x_dev, *eng._index(list(range(n)), sl, ids, [1.0 / n] * n))

            grouped()
            gpu_sync_t[str(n)] = _median(grouped, reps, sync=sync)
            gpu_t[str(n)] = _pipelined(grouped, reps * 2, sync=sync)
        meas["gpu_grouped_synced_s"] = gpu_sync_t
        meas["gpu_grouped_s"] = gpu_t
        # NOTE: the back-to-back times price the call: the decode loop never syncs after it (the synced
        # latency adds the host's launch and wake-up time, which overlaps GPU work in a real step)
        gpu_fixed, gpu_slope = _line(list(range(1, k + 1)), list(gpu_t.values()))
        gpu_expert_bw = b / gpu_slope / 1e9 if gpu_slope > 0 else 1000.0
        say(f"  {k} experts {gpu_t[str(k)] * 1e6:.0f} us back to back ({gpu_sync_t[str(k)] * 1e6:.0f} synced); "
            f"slope {gpu_expert_bw:.0f} GB/s, fixed {gpu_fixed * 1e6:.0f} us")

        # ---- 4. hand-off
        say("calibrate: [4/7] hand-off round trip")

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
        t_hand = _median(handoff, reps * 5, sync=sync)
        meas["handoff_roundtrip_us"] = t_hand * 1e6
        meas["handoff_parts_us"] = t_hand * 1e6 + max(cpu_fixed, 0.0) * 1e6

        # ---- 5. dense part per layer, per-token fixed work
        say("calibrate: [5/7] dense part")

        def dense_layer() -> None:
            a2 = eng._dense(0, x_dev)
            y = eng._shared(0, a2)
            _ = a2 + y if y is not None else a2

        # the dense mat-vec alone, back to back: the VRAM streaming rate of dense weights (gpu_mem_bw)
        w0 = eng.dense[0]
        gpu_bw = 1000.0
        if w0 is not None:
            xv = x_dev.view(-1)
            t_gemv = _pipelined(lambda: w0 @ xv, reps * 5, sync=sync)
            gpu_bw = w0.numel() * w0.element_size() / t_gemv / 1e9
            meas["dense_gemv_us"], meas["dense_gemv_gbs"] = t_gemv * 1e6, gpu_bw
        dense_layer()
        meas["dense_layer_synced_us"] = _median(dense_layer, reps * 2, sync=sync) * 1e6
        t_dense = _pipelined(dense_layer, reps * 5, sync=sync)
        # the whole layer call (bookkeeping, launches, dense, shared) with every expert hot, minus the
        # grouped call timed above: the per-layer work that is neither experts nor hand-off
        ids = list(range(k))
        eng.forward_layer(0, x_dev, ids, [1.0 / k] * k)
        t_allhot = _pipelined(lambda: eng.forward_layer(0, x_dev, ids, [1.0 / k] * k), reps * 2, sync=sync)
        meas["layer_all_hot_us"] = t_allhot * 1e6
        meas["dense_part_us"] = t_dense * 1e6
        t_dense = max(t_dense, t_allhot - gpu_t[str(k)])
        t_token = _median(lambda: eng.token_input(int(rng.integers(64))), reps * 2, sync=sync)
        meas["dense_layer_us"] = t_dense * 1e6
        meas["token_fixed_us"] = t_token * 1e6
        dense_bytes_total = eng.dense_bytes_per_layer * n_layers
        dense_fixed_ms = max(0.0, (t_token + n_layers * t_dense) * 1e3 - dense_bytes_total / (gpu_bw * 1e9) * 1e3)
        say(f"  dense mat-vec {gpu_bw:.0f} GB/s; dense layer {t_dense * 1e6:.0f} us back to back")

        # ---- 5b. whole layers with cold experts (the hand-off as the engine runs it) and with misses
        say("calibrate: [5b] layers with CPU experts (hand-off) and with fetched misses")
        free = [int(e) for e in np.flatnonzero(eng.slot_of[0] < 0)]
        cold_t: dict[str, float] = {}
        resid = []
        for n in sorted({1, max(1, k // 2), k}):
            def cold_layer(n: int = n) -> None:
                sel = [free[int(i)] for i in rng.choice(len(free), n, replace=False)]
                eng.forward_layer(0, x_dev, sel, [1.0 / n] * n)

            cold_layer()
            cold_t[str(n)] = _pipelined(cold_layer, reps, sync=sync)
            resid.append(cold_t[str(n)] - t_dense - n * b / (cpu_bw * 1e9))
        meas["layer_cold_cpu_s"] = cold_t
        # NOTE: the hand-off is what a layer with n CPU experts takes beyond its dense part and the n
        # experts' streaming: the copies, the worker's wake-up and barrier, the CPU op's fixed cost
        handoff_layer_us = max(0.0, float(np.mean(resid))) * 1e6
        meas["handoff_in_layer_us"] = handoff_layer_us
        miss_sync_us = 0.0
        if cuda:
            def miss_layer() -> None:
                e = free[int(rng.integers(len(free)))]
                eng.forward_layer(0, x_dev, [e], [1.0], mode="fetch-on-miss")

            def hot1_layer() -> None:
                eng.forward_layer(0, x_dev, [int(eng.table[0, int(rng.integers(k))])], [1.0], mode="fetch-on-miss")

            t_miss1 = _pipelined(miss_layer, reps * 2, sync=sync)
            t_hot1 = _pipelined(hot1_layer, reps * 2, sync=sync)
            meas["layer_fetch_one_miss_us"], meas["layer_one_hot_us"] = t_miss1 * 1e6, t_hot1 * 1e6
            # NOTE: a one-miss layer minus a one-hot layer minus the expert's copy at the pinned rate
            miss_sync_us = max(0.0, (t_miss1 - t_hot1) * 1e6 - b / (pinned_bw * 1e9) * 1e6)
        say(f"  hand-off in a layer {handoff_layer_us:.0f} us; fetch-on-miss fixed {miss_sync_us:.0f} us")
        # a layer with half its experts hot and half cold, for the record (not used by the profile): the
        # cost model prices it as dense + handoff + max(GPU, CPU); a longer time means the host issuing
        # the grouped call slows the CPU op running beside it (open item, docs/runtime.md)
        h2 = max(1, k // 2)

        def mixed_layer() -> None:
            hot = [int(eng.table[0, int(s)]) for s in rng.choice(k, h2, replace=False)]
            cold = [free[int(i)] for i in rng.choice(len(free), k - h2, replace=False)]
            eng.forward_layer(0, x_dev, hot + cold, [1.0 / k] * k)

        mixed_layer()
        meas["layer_mixed_half_hot_s"] = _pipelined(mixed_layer, reps, sync=sync)

        # ---- 6. DRAM
        say("calibrate: [6/7] host DRAM read rate")
        big = torch.ones(1 << 29)  # 2 GiB fp32
        big.sum()
        dram_bw = big.numel() * 4 / _median(lambda: big.sum(), 5) / 1e9
        meas["dram_read_gbs"] = dram_bw
        # issue 6: the CPU path must reach half the host's DRAM read rate in weight bytes per second
        meas["cpu_path_vs_dram"] = {
            "expert_dtype": dtype,
            "threads": threads,
            "cpu_expert_gbs": cpu_bw,
            "dram_read_gbs": dram_bw,
            "half_dram_gbs": dram_bw / 2,
            "met": bool(cpu_bw >= dram_bw / 2),
        }
        say(f"  DRAM read {dram_bw:.1f} GB/s; CPU path ({dtype}) {cpu_bw:.1f} GB/s vs half DRAM {dram_bw / 2:.1f}: "
            f"{'met' if cpu_bw >= dram_bw / 2 else 'NOT met'}")

        # ---- 7. CPU experts while uploads stream
        say("calibrate: [7/7] CPU experts during pinned uploads (DRAM contention)")
        contention = None
        if cuda:
            src = torch.empty(512 << 20, dtype=torch.uint8).pin_memory()
            dst = torch.empty_like(src, device=device)
            stream = torch.cuda.Stream()
            ids = [int(x) for x in rng.choice(E, k, replace=False)]

            def cold_k() -> None:
                eng._worker.submit(eng._cold, 0, None, ids, [1.0 / k] * k).result()

            alone = _median(cold_k, reps)
            ts = []
            for _ in range(reps):
                with torch.cuda.stream(stream):
                    for _ in range(4):
                        dst.copy_(src, non_blocking=True)
                t0 = time.perf_counter()
                cold_k()
                ts.append(time.perf_counter() - t0)
                stream.synchronize()
            busy = float(statistics.median(ts))
            meas["cpu_experts_alone_s"], meas["cpu_experts_during_upload_s"] = alone, busy
            # NOTE: capped below 1: the cost model divides by (1 - contention)
            contention = max(0.0, min(0.9, 1.0 - alone / busy))
            del src, dst
    finally:
        eng.close()

    upload_fixed_us = None
    if "upload_one_expert_blocking_us" in meas:
        upload_fixed_us = max(0.0, meas["upload_one_expert_blocking_us"] - b / (pinned_bw * 1e9) * 1e6)
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    vram = torch.cuda.get_device_properties(0).total_memory if cuda else 0
    profile = {
        "name": f"{name} (hotexperts engine, {dtype} experts, {n_layers} layers, {threads} threads)",
        "vram_bytes": int(vram),
        "gpu_mem_bw": round(gpu_bw, 3),
        "pcie_pinned_bw": round(pinned_bw, 3),
        "cpu_expert_bw": round(cpu_bw, 3),
        "pcie_pageable_bw": round(pageable_bw, 3),
        "dram_bw": round(dram_bw, 3),
        "cpu_threads": threads,
        "handoff_us": round(handoff_layer_us, 3),
        "miss_sync_us": round(miss_sync_us, 3),
        "gpu_expert_bw": round(gpu_expert_bw, 3),
        "dense_fixed_ms": round(dense_fixed_ms, 5),
        "gpu_expert_fixed_us": round(max(gpu_fixed, 0.0) * 1e6, 3),
        "upload_layer_fixed_us": round(upload_fixed_us if upload_fixed_us is not None else 20.0, 3),
        # NOTE: no GPU, no uploads to contend with: 0 rather than the derived default
        "upload_contention": 0.0 if contention is None else round(contention, 4),
        "source": (
            f"hotexperts calibrate {datetime.now(timezone.utc).isoformat(timespec='seconds')} on "
            f"{platform.node()}: microbenchmarks of the runtime engine's parts ({dtype} experts of "
            f"{model.name} shape, {threads} CPU threads, torch {torch.__version__})"
        ),
        "notes": (
            f"engine-specific: dense_fixed_ms is for {n_layers} engine layers; the CPU op streams {dtype} "
            f"experts ({b} B) with {'torch._weight_int8pack_mm' if dtype == 'int8' else 'F.linear'}; the GPU "
            f"call gathers {dtype} slots. "
            f"handoff_us is a layer with CPU experts minus its dense part and the experts' streaming "
            f"(the parts: round trip {meas['handoff_roundtrip_us']:.1f} us + CPU op intercept "
            f"{cpu_fixed * 1e6:.1f} us = {meas['handoff_parts_us']:.1f} us). gpu_mem_bw is the dense "
            f"mat-vec, gpu_expert_bw the grouped expert call, both issued back to back."
        ),
    }
    return {"profile": profile, "measurements": meas}


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
