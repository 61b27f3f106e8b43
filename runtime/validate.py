"""``hotexperts validate``: run caching configurations live and put the simulator's prediction beside each.

For every configuration (policy, parameters, slots, mode) the same routing trace is replayed by the
same policies/ code twice: once by :func:`hotexperts.sim.simulate.simulate` (cost model + the
calibrated hardware profile) and once with ``record_events=True`` to drive the live
:class:`~hotexperts.runtime.engine.MoEEngine`, which computes every decode step for real and times it.
The model the simulator sees is the one the engine built (:meth:`EngineShape.model_spec`: the engine's
layer count, expert bytes in its host dtype, dense bytes, no attention); trace layers are mapped onto engine layers
with the simulator's own :func:`~hotexperts.sim.simulate.map_trace_to_model`.

Measured and predicted numbers cover the same decode steps: the first ``warmup`` decode steps are run
but left out of both. Output (atomically): ``validation.json`` and ``validation.png`` / ``.svg``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path, write_text_atomic
from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["LiveConfig", "default_configs", "load_configs", "load_any_trace", "prepare_trace", "validate"]


@dataclass(frozen=True)
class LiveConfig:
    """One configuration to run live and simulate."""

    name: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    slots: int | list[int] = 0
    mode: str = "cold-cpu"


def default_configs(n_layers: int) -> list[LiveConfig]:
    """The 15 default configurations: all-cpu, layer-offload, fork at 3 slot counts x 2 intervals, lru,
    decay, static, window, and fetch-on-miss with lru and fork."""
    gpu_quarter = max(1, n_layers // 4)
    cfgs = [
        LiveConfig("all-cpu", "all-cpu"),
        LiveConfig(f"layer-offload-{gpu_quarter}gpu", "layer-offload", {"n_cpu_moe": n_layers - gpu_quarter}),
    ]
    for k in (16, 44, 96):
        for interval in (20, 60):
            cfgs.append(LiveConfig(f"fork-K{k}-I{interval}", "fork", {"interval": interval, "pp_bypass": 64}, k))
    cfgs += [
        LiveConfig("lru-K44", "lru", {}, 44),
        LiveConfig("decay-K44", "decay", {}, 44),
        LiveConfig("static-K44", "static", {}, 44),
        LiveConfig("window-K44", "window", {}, 44),
        LiveConfig("fetch-on-miss-lru-K44", "lru", {}, 44, "fetch-on-miss"),
        LiveConfig("fetch-on-miss-fork-K44-I60", "fork", {"interval": 60, "pp_bypass": 64}, 44, "fetch-on-miss"),
    ]
    return cfgs


def load_configs(path: str | os.PathLike[str]) -> list[LiveConfig]:
    """A JSON list of ``{name, policy, params?, slots?, mode?}`` objects."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such configs file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON: {exc.msg}", where=f"line {exc.lineno}") from None
    if not isinstance(data, list) or not data:
        raise InputError(path, "expected a non-empty JSON list of configurations")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict) or "policy" not in d:
            raise InputError(path, "each configuration needs at least 'policy'", where=f"item {i}")
        unknown = set(d) - {"name", "policy", "params", "slots", "mode"}
        if unknown:
            raise InputError(path, f"unknown key(s) {sorted(unknown)}", where=f"item {i}")
        out.append(LiveConfig(str(d.get("name", d["policy"])), str(d["policy"]), dict(d.get("params", {})),
                              d.get("slots", 0), str(d.get("mode", "cold-cpu"))))
    return out


def load_any_trace(path: str | os.PathLike[str], *, n_expert: int) -> Trace:
    """A ``.hxt`` trace, or any format the tracer's importers read."""
    p = Path(path)
    if not p.exists():
        raise InputError(path, "no such trace file")
    if p.suffix == ".hxt":
        return Trace.load(p)
    from hotexperts.tracer.importers import import_trace

    return import_trace(p, n_expert=n_expert)


def prepare_trace(trace: Trace, *, decode_steps: int) -> Trace:
    """Cut ``trace`` after its ``decode_steps``-th decode step; if it has fewer, append copies of its
    decode steps (same order, positions continued) until it has enough."""
    b = trace.step_bounds()
    dec_steps = np.flatnonzero(trace.phase[b[:-1]] == PHASE_DECODE)
    if dec_steps.size == 0:
        raise InputError(None, "the trace has no decode steps")
    if dec_steps.size >= decode_steps:
        end = int(b[dec_steps[decode_steps - 1] + 1])
        return trace.select(np.arange(trace.n_tokens) < end)
    dec_tok = trace.phase == PHASE_DECODE
    part = trace.select(dec_tok)
    parts = [trace]
    have = dec_steps.size
    while have < decode_steps:
        parts.append(part)
        have += part.n_steps
    ex = np.concatenate([p.experts for p in parts])
    offs = np.cumsum([0] + [int(p.ubatch.max() - p.ubatch.min()) + 1 for p in parts[:-1]])
    ub = np.concatenate([p.ubatch - p.ubatch.min() + o for p, o in zip(parts, offs)]).astype(np.int32)
    pos = np.arange(ex.shape[0], dtype=np.int32)
    w = None if trace.weights is None else np.concatenate([p.weights for p in parts])
    pr = None if trace.present is None else np.concatenate([p.present for p in parts])
    tr = Trace.from_arrays(ex, n_expert=trace.n_expert, phase=np.concatenate([p.phase for p in parts]),
                           request=np.zeros(ex.shape[0], np.int32), ubatch=ub, pos=pos,
                           moe_layers=trace.moe_layers, weights=w, present=pr, meta=dict(trace.meta))
    return prepare_trace(tr, decode_steps=decode_steps)


def validate(
    *,
    trace: Trace,
    model: ModelSpec,
    hardware: Any,
    out: str | os.PathLike[str],
    configs: Sequence[LiveConfig] | None = None,
    n_layers: int | None = None,
    dtype: str = "int8",
    tokens: int = 200,
    warmup: int = 16,
    device: str = "cuda",
    cpu_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every configuration live and simulated; write ``validation.json`` and the plot into ``out``."""
    import torch

    from hotexperts.policies import make_policy
    from hotexperts.runtime.engine import EngineShape, MoEEngine, Schedule, default_layers
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.sim.replay import replay
    from hotexperts.sim.simulate import map_trace_to_model, simulate

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    hw = load_hardware(hardware)
    n_layers = int(n_layers or default_layers(dtype))
    shape = EngineShape.from_spec(model, n_layers=n_layers, dtype=dtype)
    espec = shape.model_spec(model)
    if trace.n_expert != model.n_expert or trace.top_k != model.n_expert_used:
        raise InputError(None, f"trace routes top-{trace.top_k} of {trace.n_expert} experts, model "
                               f"{model.name} top-{model.n_expert_used} of {model.n_expert}")
    tr = prepare_trace(trace, decode_steps=warmup + tokens)
    mtr, lmap = map_trace_to_model(tr, espec, remap=True)
    cfgs = list(configs) if configs is not None else default_configs(n_layers)
    pols = []
    for c in cfgs:
        try:
            pols.append(make_policy(c.policy, **c.params))
        except (ValueError, TypeError) as exc:
            raise InputError(None, f"configuration {c.name}: {exc}") from None
    say(f"validate: building the engine: {n_layers} layers of {model.name} "
        f"({shape.n_expert} x {shape.expert_bytes / 1e6:.1f} MB {dtype} experts per layer, "
        f"{n_layers * shape.n_expert * shape.expert_bytes / 1e9:.1f} GB host)")
    t0 = time.perf_counter()
    eng = MoEEngine(shape, device=device, cpu_threads=cpu_threads, distinct_experts=16)
    pinned = eng.pinned  # NOTE: read now: close() unregisters the host memory and clears the flag
    say(f"validate: engine ready in {time.perf_counter() - t0:.1f} s (pinned={pinned})")
    rows = []
    try:
        for i, (c, pol) in enumerate(zip(cfgs, pols)):
            sim = simulate(mtr, espec, hw, pol, c.slots, mode=c.mode)
            rr = replay(mtr, pol, c.slots, record_events=True)
            run = eng.run(Schedule.from_replay(mtr, rr), mode=c.mode, warmup=warmup)
            steps = run.steps[run.measured]
            total = np.asarray(sim.cost.total)
            pred_tok_s = float(run.tokens[run.measured].sum() / total[steps].sum())
            sel = np.asarray(rr.sel)[steps].sum()
            pred_hit = float(np.asarray(rr.hit_sel)[steps].sum() / sel) if sel else 0.0
            pred_bytes = float((np.asarray(sim.cost.upload_bytes) + np.asarray(sim.cost.fetch_bytes))[steps].sum())
            meas = run.tok_s
            err = (pred_tok_s - meas) / meas * 100.0
            rows.append({
                "name": c.name,
                "policy": c.policy,
                "params": _jsonable(sim.params),
                "label": sim.label,
                "mode": c.mode,
                "slots": [int(x) for x in rr.slots],
                "predicted_tok_s": pred_tok_s,
                "measured_tok_s": meas,
                "error_pct": err,
                "predicted_hit_rate": pred_hit,
                "measured_hit_rate": run.hit_rate,
                "predicted_upload_bytes": pred_bytes,
                "measured_upload_bytes": run.measured_upload_bytes,
                "decode_tokens": int(run.tokens[run.measured].sum()),
                "measured_median_ms": float(np.median(run.wall_s[run.measured]) * 1e3),
                "predicted_terms_ms_per_token": {
                    k: float(np.asarray(v)[steps].sum() * 1e3 / max(1, len(steps))) for k, v in sim.cost.terms.items()
                },
            })
            say(f"validate: [{i + 1}/{len(cfgs)}] {c.name:28s} measured {meas:7.2f} tok/s  predicted "
                f"{pred_tok_s:7.2f} ({err:+6.1f} %)  hit {run.hit_rate:.3f}/{pred_hit:.3f}")
    finally:
        eng.close()
    errs = np.abs([r["error_pct"] for r in rows])
    # issue 6: the CPU path (calibrated cpu_expert_bw, weight bytes/s of this dtype) vs half the DRAM read rate
    cpu_path = {
        "expert_dtype": dtype,
        "cpu_expert_gbs": float(hw.cpu_expert_bw),
        "dram_read_gbs": float(hw.dram_bw),
        "half_dram_gbs": float(hw.dram_bw) / 2,
        "met": bool(hw.cpu_expert_bw >= hw.dram_bw / 2),
        "source": "hardware profile (hotexperts calibrate with the same --dtype)",
    }
    best_pred = max(rows, key=lambda r: r["predicted_tok_s"])
    best_meas = max(rows, key=lambda r: r["measured_tok_s"])
    result = {
        "machine": _machine(device, torch),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": espec.name,
        "engine": {**shape.to_dict(), "expert_dtype": dtype, "compute_dtype": str(eng.dtype),
                   "cpu_threads": eng.cpu_threads, "pinned": pinned},
        "trace": {"n_tokens": int(mtr.n_tokens), "decode_steps": int(warmup + tokens), "warmup": int(warmup),
                  "layer_map": [int(x) for x in lmap], "source": str(trace.meta.get("source", ""))},
        "hardware": hw.to_dict(),
        "cpu_path_vs_dram": cpu_path,
        "configs": rows,
        "median_abs_error_pct": float(np.median(errs)),
        "max_abs_error_pct": float(errs.max()),
        "hit_rates_equal": all(abs(r["predicted_hit_rate"] - r["measured_hit_rate"]) < 1e-12 for r in rows),
        "simulated_best": best_pred["name"],
        "measured_best": best_meas["name"],
        "simulated_best_measured_gap_pct": (best_meas["measured_tok_s"] - best_pred["measured_tok_s"])
        / best_meas["measured_tok_s"] * 100.0,
    }
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(outdir / "validation.json", json.dumps(result, indent=1) + "\n")
    _plot(rows, outdir, title=f"{espec.name} on {result['machine']}")
    say(f"validate: CPU path ({dtype}) {cpu_path['cpu_expert_gbs']:.1f} GB/s vs half DRAM "
        f"{cpu_path['half_dram_gbs']:.1f} GB/s: {'met' if cpu_path['met'] else 'NOT met'}")
    say(f"validate: median |error| {result['median_abs_error_pct']:.1f} %, max {result['max_abs_error_pct']:.1f} %; "
        f"wrote {outdir / 'validation.json'}")
    return result


def _machine(device: str, torch: Any) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "no GPU"
    return f"{gpu}, {os.cpu_count()} CPU threads ({cpu}), {platform.node()}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return f"<array {x.shape}>"
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def _plot(rows: list[dict[str, Any]], outdir: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas = np.array([r["measured_tok_s"] for r in rows])
    pred = np.array([r["predicted_tok_s"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 6))
    lo, hi = 0.0, float(max(meas.max(), pred.max())) * 1.1
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, "k-", lw=1, label="predicted = measured")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="±10 %")
    ax.scatter(meas, pred, zorder=3)
    for r in rows:
        ax.annotate(r["name"], (r["measured_tok_s"], r["predicted_tok_s"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured decode tok/s (live engine)")
    ax.set_ylabel("predicted decode tok/s (hotexperts sim)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        with atomic_path(outdir / f"validation.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
    plt.close(fig)


def config_dict(c: LiveConfig) -> dict[str, Any]:
    return asdict(c)
