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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path, write_text_atomic
from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = ["LiveConfig", "default_configs", "family", "load_configs", "load_any_trace", "offline_predictions",
           "prepare_trace", "spearman", "validate"]


@dataclass(frozen=True)
class LiveConfig:
    """One configuration to run live and simulate."""

    name: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    slots: int | list[int] = 0
    mode: str = "cold-cpu"


def default_configs(n_layers: int, n_expert: int = 256) -> list[LiveConfig]:
    """The default configurations, several slot counts K for every family (issue 12, item 3):

    all-cpu; layer-offload with a quarter and a half of the layers on the GPU; fork at K = 16, 44, 96
    (interval 60; K = 44 also interval 20); lru, decay, static and window at K = 16, 44, 96; fetch-on-miss
    with lru at K = 44 and 96 and with fork at K = 44. K = 16, 44, 96 are for 256 experts; with another
    expert count they become 1/8, 3/8 and 5/8 of it (Mixtral's 8 experts: 1, 3, 5).
    """
    if n_expert == 256:
        ks = [16, 44, 96]
    else:
        ks = sorted({max(1, min(n_expert - 1, round(n_expert * f))) for f in (1 / 8, 3 / 8, 5 / 8)})
    mid, top = ks[len(ks) // 2], ks[-1]
    quarter, half = max(1, n_layers // 4), max(1, n_layers // 2)
    cfgs = [LiveConfig("all-cpu", "all-cpu")]
    for g in sorted({quarter, half}):
        cfgs.append(LiveConfig(f"layer-offload-{g}gpu", "layer-offload", {"n_cpu_moe": n_layers - g}))
    for k in ks:
        cfgs.append(LiveConfig(f"fork-K{k}-I60", "fork", {"interval": 60, "pp_bypass": 64}, k))
    cfgs.append(LiveConfig(f"fork-K{mid}-I20", "fork", {"interval": 20, "pp_bypass": 64}, mid))
    for fam in ("lru", "decay", "static", "window"):
        for k in ks:
            cfgs.append(LiveConfig(f"{fam}-K{k}", fam, {}, k))
    for k in sorted({mid, top}):
        cfgs.append(LiveConfig(f"fetch-on-miss-lru-K{k}", "lru", {}, k, "fetch-on-miss"))
    cfgs.append(LiveConfig(f"fetch-on-miss-fork-K{mid}-I60", "fork", {"interval": 60, "pp_bypass": 64}, mid,
                           "fetch-on-miss"))
    return cfgs


def family(c: LiveConfig) -> str:
    """A configuration's family for the per-family error: the policy, with the mode when not cold-cpu."""
    return c.policy if c.mode == "cold-cpu" else f"{c.mode}-{c.policy}"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 2 points or a constant side."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.size < 2:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(v.size, float)
        r[order] = np.arange(v.size, dtype=float)
        for val in np.unique(v):  # average the ranks of ties
            m = v == val
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


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
    repeats: int = 1,
    seed: int = 0,
    compare_hardware: Sequence[Any] = (),
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
    instrument: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every configuration live and simulated; write ``validation.json`` and the plot into ``out``.

    ``instrument``: after the timed repetitions, one more run of every configuration with the engine's
    per-layer instrumentation (CUDA events and host timestamps, :func:`hotexperts.runtime.engine._resolve_profile`);
    its per-token means are written as ``measured_parts_ms_per_token`` beside the predicted terms (that run
    is not in the measured tok/s: timing every layer perturbs it; its own tok/s is ``instrumented_tok_s``).

    ``repeats`` runs of every configuration, interleaved: each repetition runs all configurations in its
    own random order (seeded by ``seed``), so a drift of the machine spreads over all of them; the measured
    tok/s is the mean over repetitions, with its standard deviation, range and each run kept.
    ``compare_hardware``: further profiles (e.g. other calibrations of the same machine) whose predictions
    are written beside the main one's, with their spread per configuration. ``intervals`` (a calibration's
    ``intervals``; by default read from ``HW.raw.json`` beside a ``hardware`` path): each parameter's
    interval's shift of each prediction (:func:`hotexperts.runtime.calibrate.prediction_shifts`).
    """
    import torch

    from hotexperts.policies import make_policy
    from hotexperts.runtime.calibrate import flag_wide, load_intervals, prediction_shifts
    from hotexperts.runtime.engine import EngineShape, MoEEngine, Schedule, default_layers
    from hotexperts.sim.cost import StepCounts, evaluate
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.sim.replay import replay
    from hotexperts.sim.simulate import map_trace_to_model, simulate

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if repeats < 1:
        raise InputError(None, "repeats must be >= 1")
    hw = load_hardware(hardware)
    if intervals is None and isinstance(hardware, (str, os.PathLike)):
        intervals = load_intervals(hardware)
    others = [(str(h), load_hardware(h)) for h in compare_hardware]
    n_layers = int(n_layers or default_layers(dtype))
    shape = EngineShape.from_spec(model, n_layers=n_layers, dtype=dtype)
    espec = shape.model_spec(model)
    if trace.n_expert != model.n_expert or trace.top_k != model.n_expert_used:
        raise InputError(None, f"trace routes top-{trace.top_k} of {trace.n_expert} experts, model "
                               f"{model.name} top-{model.n_expert_used} of {model.n_expert}")
    tr = prepare_trace(trace, decode_steps=warmup + tokens)
    mtr, lmap = map_trace_to_model(tr, espec, remap=True)
    cfgs = list(configs) if configs is not None else default_configs(n_layers, model.n_expert)
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise InputError(None, "configuration names must be unique")
    pols = []
    for c in cfgs:
        try:
            pols.append(make_policy(c.policy, **c.params))
        except (ValueError, TypeError) as exc:
            raise InputError(None, f"configuration {c.name}: {exc}") from None
    # the simulator's side first (no engine needed): prediction, replay with events, counts
    prep = []
    for c, pol in zip(cfgs, pols):
        sim = simulate(mtr, espec, hw, pol, c.slots, mode=c.mode)
        rr = replay(mtr, pol, c.slots, record_events=True)
        prep.append((sim, rr, StepCounts.from_replay(rr), Schedule.from_replay(mtr, rr)))
    say(f"validate: building the engine: {n_layers} layers of {model.name} "
        f"({shape.n_expert} x {shape.expert_bytes / 1e6:.1f} MB {dtype} experts per layer, "
        f"{n_layers * shape.n_expert * shape.expert_bytes / 1e9:.1f} GB host); {len(cfgs)} configurations x "
        f"{repeats} interleaved repetition(s)")
    t0 = time.perf_counter()
    eng = MoEEngine(shape, device=device, cpu_threads=cpu_threads, distinct_experts=16)
    pinned = eng.pinned  # NOTE: read now: close() unregisters the host memory and clears the flag
    say(f"validate: engine ready in {time.perf_counter() - t0:.1f} s (pinned={pinned})")
    runs: list[list[Any]] = [[] for _ in cfgs]
    rng = np.random.default_rng(seed)
    run_order: list[list[str]] = []
    try:
        for rep in range(repeats):
            order = [int(i) for i in rng.permutation(len(cfgs))]
            run_order.append([cfgs[i].name for i in order])
            for j, i in enumerate(order):
                c = cfgs[i]
                run = eng.run(prep[i][3], mode=c.mode, warmup=warmup)
                runs[i].append(run)
                say(f"validate: rep {rep + 1}/{repeats} [{j + 1}/{len(cfgs)}] {c.name:28s} measured "
                    f"{run.tok_s:7.2f} tok/s")
        parts: dict[int, dict[str, Any]] = {}
        if instrument:
            eng.instrument = True
            for i, c in enumerate(cfgs):
                run = eng.run(prep[i][3], mode=c.mode, warmup=warmup)
                prof = [p for p, m in zip(run.layer_profile, run.measured) if m]
                ntok = max(1, int(run.tokens[run.measured].sum()))
                keys = list(prof[0]["totals"]) if prof else []
                per = {k: sum(p["totals"][k] for p in prof) / ntok / 1e3 for k in keys}
                per["upload_issue_us"] = sum(p["upload_issue_us"] for p in prof) / ntok / 1e3
                parts[i] = {"instrumented_tok_s": run.tok_s, "ms_per_token": per}
                say(f"validate: instrumented {c.name:28s} {run.tok_s:7.2f} tok/s")
            eng.instrument = False
    finally:
        eng.close()

    def steps_of(i: int) -> np.ndarray:
        r0 = runs[i][0]
        return np.asarray(r0.steps[r0.measured])

    def predict_all(h: Any) -> dict[str, float]:
        """tok/s over the measured steps of every configuration under profile ``h``."""
        outp = {}
        for i, c in enumerate(cfgs):
            st = steps_of(i)
            cb = evaluate(prep[i][2], espec, h, mode=c.mode)
            outp[c.name] = float(runs[i][0].tokens[runs[i][0].measured].sum() / np.asarray(cb.total)[st].sum())
        return outp

    by_profile = {"main": predict_all(hw), **{label: predict_all(h) for label, h in others}}
    shifts = prediction_shifts(hw, intervals, predict_all) if intervals else None
    rows = []
    for i, c in enumerate(cfgs):
        sim, rr = prep[i][0], prep[i][1]
        rs = runs[i]
        run = rs[0]
        steps = steps_of(i)
        total = np.asarray(sim.cost.total)
        pred_tok_s = float(run.tokens[run.measured].sum() / total[steps].sum())
        sel = np.asarray(rr.sel)[steps].sum()
        pred_hit = float(np.asarray(rr.hit_sel)[steps].sum() / sel) if sel else 0.0
        pred_bytes = float((np.asarray(sim.cost.upload_bytes) + np.asarray(sim.cost.fetch_bytes))[steps].sum())
        vals = np.array([r.tok_s for r in rs])
        meas = float(vals.mean())
        sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        preds = {label: by[c.name] for label, by in by_profile.items()}
        pv = np.array(list(preds.values()))
        row: dict[str, Any] = {
            "name": c.name,
            "policy": c.policy,
            "family": family(c),
            "params": _jsonable(sim.params),
            "label": sim.label,
            "mode": c.mode,
            "slots": [int(x) for x in rr.slots],
            "predicted_tok_s": pred_tok_s,
            "measured_tok_s": meas,
            "measured_runs_tok_s": [float(v) for v in vals],
            "measured_sd_tok_s": sd,
            "measured_cv_pct": sd / meas * 100.0 if meas else 0.0,
            "measured_range_pct": float((vals.max() - vals.min()) / meas * 100.0) if meas else 0.0,
            "error_pct": (pred_tok_s - meas) / meas * 100.0,
            "error_pct_runs": [float((pred_tok_s - v) / v * 100.0) for v in vals],
            "predicted_by_profile_tok_s": preds,
            "profile_spread_pct": float((pv.max() - pv.min()) / np.median(pv) * 100.0),
            "predicted_hit_rate": pred_hit,
            "measured_hit_rate": run.hit_rate,
            "measured_hit_rates_equal": all(r.hit_rate == run.hit_rate for r in rs),
            "predicted_upload_bytes": pred_bytes,
            "measured_upload_bytes": run.measured_upload_bytes,
            "decode_tokens": int(run.tokens[run.measured].sum()),
            "measured_median_ms": float(np.median(np.concatenate([r.wall_s[r.measured] for r in rs])) * 1e3),
            "predicted_terms_ms_per_token": {
                k: float(np.asarray(v)[steps].sum() * 1e3 / max(1, len(steps))) for k, v in sim.cost.terms.items()
            },
        }
        if shifts is not None:
            row["interval_shift_pct"] = {p: shifts[p][c.name] for p in shifts}
        if i in parts:
            row["instrumented_tok_s"] = parts[i]["instrumented_tok_s"]
            row["measured_parts_ms_per_token"] = {k.replace("_us", ""): v for k, v in parts[i]["ms_per_token"].items()}
        rows.append(row)
        say(f"validate: [{i + 1}/{len(cfgs)}] {c.name:28s} measured {meas:7.2f} +- {sd:5.2f} tok/s  predicted "
            f"{pred_tok_s:7.2f} ({row['error_pct']:+6.1f} %)  hit {run.hit_rate:.3f}/{pred_hit:.3f}")
    errs = np.abs([r["error_pct"] for r in rows])
    fams: dict[str, list[float]] = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r["error_pct"])
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
        "compare_hardware": [label for label, _ in others],
        "cpu_path_vs_dram": cpu_path,
        "repeats": int(repeats),
        "run_order": run_order,
        "configs": rows,
        "median_abs_error_pct": float(np.median(errs)),
        "max_abs_error_pct": float(errs.max()),
        "spearman": spearman([r["predicted_tok_s"] for r in rows], [r["measured_tok_s"] for r in rows]),
        "family_mean_error_pct": {f: float(np.mean(v)) for f, v in fams.items()},
        "median_measured_cv_pct": float(np.median([r["measured_cv_pct"] for r in rows])),
        "max_profile_spread_pct": float(max(r["profile_spread_pct"] for r in rows)),
        "hit_rates_equal": all(abs(r["predicted_hit_rate"] - r["measured_hit_rate"]) < 1e-12
                               and r["measured_hit_rates_equal"] for r in rows),
        "simulated_best": best_pred["name"],
        "measured_best": best_meas["name"],
        "simulated_best_measured_gap_pct": (best_meas["measured_tok_s"] - best_pred["measured_tok_s"])
        / best_meas["measured_tok_s"] * 100.0,
    }
    if shifts is not None:
        result["interval_wide"] = flag_wide(shifts)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(outdir / "validation.json", json.dumps(result, indent=1) + "\n")
    _plot(rows, outdir, title=f"{espec.name} on {result['machine']}")
    say(f"validate: CPU path ({dtype}) {cpu_path['cpu_expert_gbs']:.1f} GB/s vs half DRAM "
        f"{cpu_path['half_dram_gbs']:.1f} GB/s: {'met' if cpu_path['met'] else 'NOT met'}")
    say(f"validate: median |error| {result['median_abs_error_pct']:.1f} %, max {result['max_abs_error_pct']:.1f} %, "
        f"Spearman {result['spearman']:.3f}, median CV of repeats {result['median_measured_cv_pct']:.1f} %; "
        f"wrote {outdir / 'validation.json'}")
    return result


def offline_predictions(
    *,
    trace: Trace,
    model: ModelSpec,
    hardware: Sequence[Any],
    configs: Sequence[LiveConfig] | None = None,
    n_layers: int | None = None,
    dtype: str = "int8",
    tokens: int = 200,
    warmup: int = 16,
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The simulator's side of :func:`validate` without the engine: every configuration's predicted tok/s over
    the decode steps ``validate`` measures (the ``tokens`` after the first ``warmup``), under each profile of
    ``hardware`` (paths or profiles; labelled by ``str``), and, with ``intervals``, each parameter interval's
    shift of the first profile's predictions. Returns ``{"by_profile": {label: {config: tok/s}}, "shifts"}``."""
    from hotexperts.runtime.calibrate import prediction_shifts
    from hotexperts.runtime.engine import EngineShape, default_layers
    from hotexperts.sim.cost import StepCounts, evaluate
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.sim.replay import replay
    from hotexperts.sim.simulate import map_trace_to_model

    n_layers = int(n_layers or default_layers(dtype))
    espec = EngineShape.from_spec(model, n_layers=n_layers, dtype=dtype).model_spec(model)
    mtr, _ = map_trace_to_model(prepare_trace(trace, decode_steps=warmup + tokens), espec, remap=True)
    cfgs = list(configs) if configs is not None else default_configs(n_layers, model.n_expert)
    from hotexperts.policies import make_policy

    counts = [StepCounts.from_replay(replay(mtr, make_policy(c.policy, **c.params), c.slots)) for c in cfgs]

    def predict(h: Any) -> dict[str, float]:
        outp = {}
        for c, cnt in zip(cfgs, counts):
            steps = np.flatnonzero(cnt.step_phase == 1)[warmup:]
            cb = evaluate(cnt, espec, h, mode=c.mode)
            outp[c.name] = float(cnt.step_tokens[steps].sum() / np.asarray(cb.total)[steps].sum())
        return outp

    profs = [(str(h), load_hardware(h)) for h in hardware]
    res: dict[str, Any] = {"by_profile": {label: predict(h) for label, h in profs}}
    if intervals and profs:
        res["shifts"] = prediction_shifts(profs[0][1], intervals, predict)
    return res


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
    sd = np.array([r.get("measured_sd_tok_s", 0.0) for r in rows])
    ax.errorbar(meas, pred, xerr=sd, fmt="o", zorder=3, ms=4, capsize=2)
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
