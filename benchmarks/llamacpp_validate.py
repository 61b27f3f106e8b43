"""Calibrate a ``llamacpp`` hardware profile on two llama.cpp runs and predict the others with the simulator.

Issue 7. Input: a folder of ``hotexperts bench llamacpp`` results (``bench-<name>.json``), all of one
model (a ``hotexperts model make`` GGUF). Method, as ``benchmarks/calibrate_rtx4090.py`` fits the 4090:

1. Fixed machine facts (``BASE_H200``: measured on the H200 host, calibration.md and the engine's
   ``hotexperts calibrate`` of 2026-11-29; estimates are marked) fill every field but four.
2. FIT on two calibration runs only (default ``gpu``, i.e. every expert on the GPU, and
   ``n-cpu-moe=L``, every expert on the CPU with the rest on the GPU, the simulator's ``all-cpu``):
   decode tok/s -> ``dense_fixed_ms`` and ``cpu_expert_bw``, then prefill tok/s ->
   ``gpu_prefill_ms_per_token`` and ``pcie_prefill_bw``. Each pair is two equations in two unknowns;
   the step time the simulator predicts is affine in (x, 1/y) for layer placements (a layer's experts
   are either all on the GPU or all on the CPU, so the ``max(gpu, cpu)`` of a layer never switches
   sides), so three evaluations give the coefficients and the fit reproduces both runs exactly.
3. PREDICT every other ``n-cpu-moe=N`` run with ``simulate()`` (policy ``layer-offload``, the GGUF's
   own spec from ``spec_from_gguf``) on a routing trace of the bench's shape: one prompt of
   ``prompt_tokens`` in ubatches of ``n_ubatch``, then ``gen_tokens`` decode steps, ``k`` distinct
   random experts per token and layer (the made model's random routers route near uniformly; for
   layer placements only the counts matter, not which experts).

The prediction is the simulator's: with equal expert sizes in every layer its ``layer-offload`` step
time is affine in N, so the calibrated prediction lies on the line through the two calibration runs in
ms per token; what the check measures is whether llama.cpp's time follows that structure (CUDA graphs
are off as soon as one layer has CPU experts, which the all-GPU calibration run does not see). A
sensitivity fit on ``n-cpu-moe=1`` and ``n-cpu-moe=L`` (both without CUDA graphs) is reported beside it
when those runs exist. ``all-cpu`` (``-ngl 0``: dense weights on the CPU too) and ``-ot`` placements
are not modelled by the simulator; they are listed as measured references without a prediction.

Output (``--out``, default ``DIR/llamacpp-validation.json``): the keys of the runtime's
``validation.json`` (``machine, date, configs: [{name, policy, params, predicted_tok_s,
measured_tok_s, error_pct, predicted_hit_rate, measured_hit_rate, predicted_upload_bytes,
measured_upload_bytes, ...}], median_abs_error_pct, max_abs_error_pct``; the medians are over the
``check`` rows only) plus ``hardware`` (the fitted profile), ``fit``, ``model`` and ``sensitivity``.

Usage: ``python benchmarks/llamacpp_validate.py DIR [--model M.gguf] [--calibrate gpu,n-cpu-moe=L]
[--base-hw HW.json] [--out R.json]``; prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec, load_model_spec
from hotexperts.sim.hardware import HardwareProfile
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = [
    "BASE_H200",
    "KV_TYPE",
    "bench_trace",
    "fit_profile",
    "load_results",
    "main",
    "policy_of",
    "predict",
    "validate",
    "warm_up",
]

# llama.cpp's default KV cache type (the bench does not change it)
KV_TYPE = "f16"

# Machine facts of the H200 host. Measured: vram (nvidia-smi 143771 MiB), pcie rates and dram_bw
# (calibration.md; the engine's calibrate of 2026-11-29, benchmarks/results/2026-11-29-h200/hw.json),
# gpu_mem_bw (the engine's dense mat-vec, 3300.7 GB/s). Estimates: handoff_us (calibration.md's
# published 50-100 us for llama.cpp; for layer placements it does not change the predictions, only
# how the fitted cpu_expert_bw is split from it), gpu_expert_fixed_us, gpu_expert_bw (= gpu_mem_bw),
# gpu_tflops. The four fitted fields get placeholders here.
BASE_H200: dict[str, Any] = {
    "name": "h200-llamacpp",
    "vram_bytes": 143771 * 2**20,
    "gpu_mem_bw": 3300.0,
    "pcie_pinned_bw": 51.5,
    "pcie_pageable_bw": 13.4,
    "dram_bw": 94.0,
    "cpu_threads": 16,
    "handoff_us": 70.0,
    "gpu_expert_fixed_us": 15.0,
    "gpu_expert_bw": None,
    "gpu_tflops": 400.0,
    "cpu_expert_bw": 1.0,
    "dense_fixed_ms": 0.0,
    "gpu_prefill_ms_per_token": 0.0,
    "pcie_prefill_bw": 1.0,
}
FITTED = ("dense_fixed_ms", "cpu_expert_bw", "gpu_prefill_ms_per_token", "pcie_prefill_bw")


# ------------------------------------------------------------------------------------------ inputs
def load_results(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``bench-<name>.json`` files of ``folder`` as ``{name: result}``, in the order they were run (date)."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(d, "no such folder")
    out: list[tuple[str, float, str, dict[str, Any]]] = []
    for p in sorted(d.glob("bench-*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(p, f"cannot read a bench result: {exc}") from None
        if not isinstance(r, dict) or "placement" not in r or "decode_tok_s" not in r:
            raise InputError(p, "not a `hotexperts bench llamacpp` result (no placement / decode_tok_s)")
        out.append((str(r.get("date", "")), p.stat().st_mtime, p.stem[len("bench-"):], r))
    if not out:
        raise InputError(d, "no bench-*.json results")
    # NOTE: the results' dates have 1 s resolution; the file time orders runs within one second
    out.sort(key=lambda t: (t[0], t[1]))
    return {name: r for _, _, name, r in out}


def policy_of(placement: str, n_layer: int) -> tuple[str, dict[str, Any]] | None:
    """The simulator policy of a bench placement: ``gpu`` -> layer-offload N=0, ``n-cpu-moe=N`` ->
    layer-offload N; ``None`` for placements the simulator does not model (``all-cpu``, ``-ot``)."""
    s = placement.strip()
    if s == "gpu":
        return "layer-offload", {"n_cpu_moe": 0}
    if s.startswith("n-cpu-moe="):
        n = int(s.split("=", 1)[1])
        return "layer-offload", {"n_cpu_moe": min(n, n_layer)}
    return None


def cpu_expert_layers(result: dict[str, Any]) -> set[int] | None:
    """The layers whose expert tensors llama.cpp put in host memory under the placement it applied
    (from its own log lines); every layer for ``-ngl 0``, ``None`` when patterns were given but no
    log line was seen (unknown)."""
    if int(result.get("n_gpu_layers", 999)) == 0:
        return set((result.get("model_info") or {}).get("moe_layers") or [])
    over = result.get("overridden_tensors") or {}
    if result.get("overrides") and not over:
        return None
    cpu_layers = set()
    for name, buft in over.items():
        parts = name.split(".")
        # NOTE: an expert tensor overridden to the CPU lands in the GPU backend's pinned host buffer
        # ("CUDA_Host") when llama.cpp has one, else in "CPU" (or a CPU extra type such as "CPU_REPACK").
        b = str(buft).upper()
        if len(parts) > 2 and parts[0] == "blk" and "_exps" in name and (b.startswith("CPU") or b.endswith("_HOST")):
            cpu_layers.add(int(parts[1]))
    return cpu_layers


def measured_hit_rate(result: dict[str, Any], spec: ModelSpec) -> float | None:
    """Share of expert selections llama.cpp served from VRAM under the placement it applied: the MoE
    layers whose expert tensors were not overridden to the CPU (from llama.cpp's own log lines)."""
    if int(result.get("n_gpu_layers", 999)) == 0:
        return 0.0
    cpu_layers = cpu_expert_layers(result)
    if cpu_layers is None:
        return None
    moe = set(int(x) for x in spec.moe_layers)
    return (len(moe) - len(moe & cpu_layers)) / max(len(moe), 1)


def bench_trace(spec: ModelSpec, *, prompt_tokens: int, gen_tokens: int, n_ubatch: int, seed: int = 0) -> Trace:
    """A routing trace of a bench run's shape: the prompt in ubatches, then single-token decode steps;
    ``k`` distinct uniformly random experts per token and layer."""
    rng = np.random.default_rng(seed)
    n = prompt_tokens + gen_tokens
    L, k, E = spec.n_moe_layers, spec.n_expert_used, spec.n_expert
    experts = np.argsort(rng.random((n, L, E)), axis=2)[:, :, :k] if n else np.zeros((0, L, k), np.int64)
    phase = np.r_[np.full(prompt_tokens, PHASE_PREFILL), np.full(gen_tokens, PHASE_DECODE)]
    ub_prompt = np.arange(prompt_tokens) // max(n_ubatch, 1)
    n_ub = int(ub_prompt[-1]) + 1 if prompt_tokens else 0
    ubatch = np.r_[ub_prompt, n_ub + np.arange(gen_tokens)]
    return Trace.from_arrays(
        experts, n_expert=E, phase=phase, ubatch=ubatch, pos=np.arange(n), moe_layers=spec.moe_layers,
        meta={"source": {"kind": "llamacpp_validate", "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens}},
    )


# ------------------------------------------------------------------------------------------ model
def _sim(trace: Trace, spec: ModelSpec, hw: HardwareProfile, placement: str) -> Any:
    from hotexperts.policies import make_policy
    from hotexperts.sim.simulate import simulate

    pol = policy_of(placement, spec.n_moe_layers)
    if pol is None:
        raise ValueError(f"placement {placement!r} is not modelled")
    return simulate(trace, spec, hw, make_policy(pol[0], **pol[1]), 0, kv_type=KV_TYPE, warm_up=False)


def _seconds_per_token(res: Any, phase: int) -> float:
    cb = res.cost
    return cb.decode_seconds / cb.decode_tokens if phase == PHASE_DECODE else cb.prefill_seconds / cb.prefill_tokens


def _affine(f: Callable[[float, float], float]) -> tuple[float, float, float]:
    """``(cx, cy, c0)`` with ``f(x, y) = cx x + cy y + c0`` (f is affine; evaluated at three points)."""
    y0, y1 = 1.0 / 50.0, 1.0 / 25.0
    f0 = f(0.0, y0)
    cx = f(1.0, y0) - f0
    cy = (f(0.0, y1) - f0) / (y1 - y0)
    return cx, cy, f0 - cy * y0


def fit_profile(
    results: dict[str, dict[str, Any]],
    spec: ModelSpec,
    *,
    calibrate: Sequence[str],
    base: dict[str, Any] | None = None,
    trace: Trace,
) -> tuple[HardwareProfile, dict[str, Any]]:
    """Fit ``dense_fixed_ms, cpu_expert_bw`` on the decode and ``gpu_prefill_ms_per_token,
    pcie_prefill_bw`` on the prefill of the two runs named in ``calibrate``; return the profile and a
    record. Raises InputError if a run is missing or the fit gives a non-physical value."""
    if len(calibrate) != 2 or calibrate[0] == calibrate[1]:
        raise InputError(None, f"--calibrate needs two different runs, got {list(calibrate)}")
    runs = []
    for name in calibrate:
        if name not in results:
            raise InputError(None, f"calibration run {name!r} missing (have: {', '.join(results)})")
        if policy_of(results[name]["placement"], spec.n_moe_layers) is None:
            raise InputError(None, f"calibration run {name!r} ({results[name]['placement']}) is not modelled")
        runs.append(results[name])
    hw0 = HardwareProfile.from_dict({**BASE_H200, **(base or {})})

    def system(field_x: str, field_y: str, phase: int, hw: HardwareProfile) -> tuple[np.ndarray, np.ndarray]:
        a, rhs = [], []
        for r in runs:
            def f(x: float, y: float, r: dict[str, Any] = r) -> float:
                h = hw.replace(**{field_x: x, field_y: 1.0 / y})
                return _seconds_per_token(_sim(trace, spec, h, r["placement"]), phase)

            cx, cy, c0 = _affine(f)
            key = "decode_tok_s" if phase == PHASE_DECODE else "prefill_tok_s"
            a.append([cx, cy])
            rhs.append(1.0 / float(r[key]["median"]) - c0)
        return np.array(a), np.array(rhs)

    rec: dict[str, Any] = {"calibrate": list(calibrate)}
    A, b = system("dense_fixed_ms", "cpu_expert_bw", PHASE_DECODE, hw0)
    try:
        x, y = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        raise InputError(None, f"decode fit is singular on {list(calibrate)}: one run needs CPU experts") from None
    rec["decode_system"] = {"A": A.tolist(), "rhs_s_per_token": b.tolist()}
    if x < 0 or y <= 0:
        raise InputError(None, f"decode fit is not physical: dense_fixed_ms {x:.4f}, 1/cpu_expert_bw {y:.5f}")
    hw = hw0.replace(dense_fixed_ms=float(x), cpu_expert_bw=float(1.0 / y))
    if all(r.get("prefill_tok_s") for r in runs) and _has_prefill(trace):
        P, q = system("gpu_prefill_ms_per_token", "pcie_prefill_bw", PHASE_PREFILL, hw)
        rec["prefill_system"] = {"A": P.tolist(), "rhs_s_per_token": q.tolist()}
        try:
            px, py = np.linalg.solve(P, q)
        except np.linalg.LinAlgError:
            px = py = float("nan")
        if px >= 0 and py > 0:
            hw = hw.replace(gpu_prefill_ms_per_token=float(px), pcie_prefill_bw=float(1.0 / py))
            rec["prefill_fit"] = "ok"
        else:
            rec["prefill_fit"] = f"not physical (gpu_prefill_ms_per_token {px}, 1/pcie_prefill_bw {py}); not used"
    hw = hw.replace(
        fitted=tuple(f for f in FITTED if f in ("dense_fixed_ms", "cpu_expert_bw") or rec.get("prefill_fit") == "ok"),
        source=f"benchmarks/llamacpp_validate.py: fitted on llama.cpp runs {', '.join(calibrate)}; other fields BASE_H200",
    )
    rec["fitted"] = {f: getattr(hw, f) for f in hw.fitted}
    return hw, rec


def _has_prefill(trace: Trace) -> bool:
    return bool(np.any(trace.phase == PHASE_PREFILL))


def predict(
    results: dict[str, dict[str, Any]], spec: ModelSpec, hw: HardwareProfile, *, trace: Trace, calibrate: Sequence[str]
) -> list[dict[str, Any]]:
    """One config row per run (validation.json keys); roles ``calibration``, ``check``, ``repeat``
    (a later run of a calibration placement: its error is drift) and ``reference`` (not modelled)."""
    rows = []
    cal_places = {results[c]["placement"] for c in calibrate}
    for name, r in results.items():
        pol = policy_of(r["placement"], spec.n_moe_layers)
        meas = r["decode_tok_s"]["median"] if r.get("decode_tok_s") else None
        role = "calibration" if name in calibrate else "repeat" if r["placement"] in cal_places else "check"
        row: dict[str, Any] = {
            "name": name,
            "placement": r["placement"],
            "policy": pol[0] if pol else None,
            "params": pol[1] if pol else {},
            "role": role if pol else "reference",
            "predicted_tok_s": None,
            "measured_tok_s": meas,
            "error_pct": None,
            "predicted_hit_rate": None,
            "measured_hit_rate": measured_hit_rate(r, spec),
            "predicted_upload_bytes": None,
            # NOTE: llama.cpp moves no expert during decode under a fixed placement
            "measured_upload_bytes": 0,
            "measured_spread_tok_s": [r["decode_tok_s"]["min"], r["decode_tok_s"]["max"]] if meas else None,
            "predicted_prefill_tok_s": None,
            "measured_prefill_tok_s": r["prefill_tok_s"]["median"] if r.get("prefill_tok_s") else None,
            "prefill_error_pct": None,
        }
        if pol is not None:
            res = _sim(trace, spec, hw, r["placement"])
            row["predicted_tok_s"] = res.decode_tok_s
            row["predicted_hit_rate"] = res.hit_rate
            row["predicted_upload_bytes"] = res.upload_bytes
            row["predicted_prefill_tok_s"] = res.prefill_tok_s
            row["predicted_terms_ms_per_token"] = res.terms_ms_per_decode_token
            if meas and res.decode_tok_s:
                row["error_pct"] = (res.decode_tok_s - meas) / meas * 100.0
            mp = row["measured_prefill_tok_s"]
            if mp and res.prefill_tok_s:
                row["prefill_error_pct"] = (res.prefill_tok_s - mp) / mp * 100.0
        rows.append(row)
    return rows


def _errors(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    errs = [abs(r["error_pct"]) for r in rows if r["role"] == "check" and r["error_pct"] is not None]
    return (statistics.median(errs), max(errs)) if errs else (None, None)


def validate(
    folder: str | Path,
    *,
    model: str | Path | None = None,
    calibrate: Sequence[str] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit on the calibration runs of ``folder``, predict the rest; return the validation dict."""
    results = load_results(folder)
    first = next(iter(results.values()))
    spec = load_model_spec(str(model if model is not None else first["model"]))
    L = spec.n_moe_layers
    cal = list(calibrate) if calibrate else ["gpu", f"cpu-moe-{L}"]
    if not calibrate:
        # default: the first runs placed `gpu` and `n-cpu-moe=L`, whatever their file names
        by_place: dict[str, str] = {}
        for name, r in results.items():
            by_place.setdefault(r["placement"], name)
        cal = [by_place.get("gpu", "gpu"), by_place.get(f"n-cpu-moe={L}", f"cpu-moe-{L}")]
    r0 = results[cal[0]] if cal[0] in results else first
    trace = bench_trace(spec, prompt_tokens=int(r0["prompt_tokens"]), gen_tokens=int(r0["gen_tokens"]),
                        n_ubatch=int(r0.get("n_ubatch", 512)))
    out: dict[str, Any] = {
        "machine": _machine(first),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": spec.name, "n_layer": spec.n_layer, "n_expert": spec.n_expert,
                  "n_expert_used": spec.n_expert_used, "expert_bytes": spec.mean_expert_bytes,
                  "path": str(model if model is not None else first["model"])},
        "bench": {"prompt_tokens": r0["prompt_tokens"], "gen_tokens": r0["gen_tokens"], "reps": r0.get("reps"),
                  "threads": r0.get("threads"), "llama_cpp_python": r0.get("llama_cpp_python")},
        "method": "fit dense_fixed_ms+cpu_expert_bw (decode) and gpu_prefill_ms_per_token+pcie_prefill_bw "
                  "(prefill) on the two calibration runs; predict the others with simulate(), policy layer-offload",
        "goal": "median |error| <= 10 % for decode tok/s on the check rows (issue 7)",
    }
    try:
        hw, rec = fit_profile(results, spec, calibrate=cal, base=base, trace=trace)
    except InputError as exc:
        out.update({"fit_error": str(exc), "configs": predict_none(results, spec),
                    "median_abs_error_pct": None, "max_abs_error_pct": None})
        return out
    rows = predict(results, spec, hw, trace=trace, calibrate=cal)
    med, mx = _errors(rows)
    out.update({"hardware": hw.to_dict(), "fit": rec, "configs": rows,
                "median_abs_error_pct": med, "max_abs_error_pct": mx})
    # sensitivity: calibrate on two runs that both have CPU experts (no CUDA graphs in either)
    by_place = {r["placement"]: n for n, r in reversed(list(results.items()))}
    alt = [by_place.get("n-cpu-moe=1"), by_place.get(f"n-cpu-moe={L}")]
    if all(alt) and L > 2 and alt != cal:
        try:
            hw_b, rec_b = fit_profile(results, spec, calibrate=alt, base=base, trace=trace)
            rows_b = predict(results, spec, hw_b, trace=trace, calibrate=alt)
            mb, xb = _errors(rows_b)
            out["sensitivity"] = {
                "calibrate": alt, "fitted": rec_b["fitted"], "median_abs_error_pct": mb, "max_abs_error_pct": xb,
                "rows": [{k: r[k] for k in ("name", "role", "predicted_tok_s", "measured_tok_s", "error_pct")}
                         for r in rows_b],
            }
        except InputError as exc:
            out["sensitivity"] = {"calibrate": alt, "fit_error": str(exc)}
    return out


def predict_none(results: dict[str, dict[str, Any]], spec: ModelSpec) -> list[dict[str, Any]]:
    return [{"name": n, "placement": r["placement"], "measured_tok_s": (r.get("decode_tok_s") or {}).get("median"),
             "measured_hit_rate": measured_hit_rate(r, spec), "predicted_tok_s": None, "error_pct": None}
            for n, r in results.items()]


def _machine(r: dict[str, Any]) -> str:
    dev = r.get("device") or {}
    gpus = [b for b in dev.get("backends", []) if not b.upper().startswith("CPU")]
    return f"{'; '.join(gpus) or 'no GPU backend'}; CPU {dev.get('cpu', '?')}, {r.get('threads')} threads"


def format_table(v: dict[str, Any]) -> str:
    """The short table the GPU script prints."""
    lines = [f"{'run':<16} {'role':<11} {'pred tok/s':>10} {'meas tok/s':>10} {'err %':>7} {'hit p/m':>11}"
             f" {'prefill p/m':>15}"]

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in v["configs"]:
        hit = f"{f(r.get('predicted_hit_rate'), '.2f')}/{f(r.get('measured_hit_rate'), '.2f')}"
        pre = f"{f(r.get('predicted_prefill_tok_s'), '.0f')}/{f(r.get('measured_prefill_tok_s'), '.0f')}"
        lines.append(f"{r['name']:<16} {r.get('role', '-'):<11} {f(r.get('predicted_tok_s'), '10.2f'):>10} "
                     f"{f(r.get('measured_tok_s'), '10.2f'):>10} {f(r.get('error_pct'), '+7.1f'):>7} {hit:>11} {pre:>15}")
    if "fit_error" in v:
        lines.append(f"FIT FAILED: {v['fit_error']}")
    else:
        fit = v["fit"]["fitted"]
        lines.append("fitted: " + ", ".join(f"{k} {val:.4g}" for k, val in fit.items()))
        lines.append(f"median |error| {f(v['median_abs_error_pct'], '.1f')} %, max {f(v['max_abs_error_pct'], '.1f')} %"
                     " (check rows; goal <= 10 %)")
        s = v.get("sensitivity")
        if s and "fit_error" not in s:
            lines.append(f"sensitivity, calibrated on {', '.join(s['calibrate'])}: median |error| "
                         f"{f(s['median_abs_error_pct'], '.1f')} %, max {f(s['max_abs_error_pct'], '.1f')} %")
    return "\n".join(lines)


def warm_up() -> None:
    """Compile the kernels ``predict`` needs on a tiny model (numba caches them), e.g. during a build."""
    spec = ModelSpec.from_dict({
        "name": "warm-up", "arch": "qwen3moe", "n_layer": 2, "moe_layers": [0, 1], "n_expert": 8, "n_expert_used": 2,
        "hidden_size": 64, "expert_ff": 32, "expert_bytes": [6528, 6528], "dense_bytes": 100000,
        "n_head": 4, "n_head_kv": 2, "head_dim": 16,
    })
    trace = bench_trace(spec, prompt_tokens=8, gen_tokens=4, n_ubatch=8)
    _sim(trace, spec, HardwareProfile.from_dict(BASE_H200), "n-cpu-moe=1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="?", help="folder with bench-<name>.json results")
    ap.add_argument("--warm-up", action="store_true", help="only compile the simulator's kernels (numba cache)")
    ap.add_argument("--model", default=None, help="GGUF (or spec) of the runs (default: the path in the results)")
    ap.add_argument("--calibrate", default=None, help="two run names, comma-separated (default: gpu, n-cpu-moe=L)")
    ap.add_argument("--base-hw", type=Path, default=None, help="JSON object overriding BASE_H200 fields")
    ap.add_argument("--out", type=Path, default=None, help="default FOLDER/llamacpp-validation.json")
    args = ap.parse_args(argv)
    if args.warm_up:
        warm_up()
        return 0
    if args.folder is None:
        ap.error("FOLDER is required")
    try:
        base = json.loads(args.base_hw.read_text()) if args.base_hw else None
        v = validate(args.folder, model=args.model, base=base,
                     calibrate=args.calibrate.split(",") if args.calibrate else None)
    except InputError as exc:
        print(f"llamacpp_validate: error: {exc}", file=sys.stderr)
        return 1
    out = args.out or args.folder / "llamacpp-validation.json"
    write_text_atomic(out, json.dumps(v, indent=2) + "\n")
    print(format_table(v))
    print(f"wrote {out}")
    return 0 if "fit_error" not in v else 2


if __name__ == "__main__":
    sys.exit(main())
