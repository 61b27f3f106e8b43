"""``hotexperts calibrate`` and ``hotexperts validate``: argument parsing only (work in calibrate.py, validate.py).

torch is imported only when one of these commands runs, so ``hotexperts --help`` works without it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]

DEFAULT_MODEL = "qwen3.5-122b-a10b-q4_k_l"
# NOTE: fp32 is the default host dtype: the one CPU op the H200 probe measured well above half the host's DRAM
# read rate (issue 6); int8 (the first engine's) calibrated at 31-36 GB/s against a 45-49 GB/s goal
# (docs/runtime.md has the measurements, run 4 the calibrated fp32 rate)
DEFAULT_DTYPE = "fp32"
DTYPES = ("int8", "fp32", "bf16", "fp16")
_DTYPE_HELP = (f"host and VRAM-slot dtype of the routed experts (default {DEFAULT_DTYPE}); calibrate and validate "
               "must be given the same one")
_LAYERS_HELP = "engine MoE layers (default by dtype so the experts fit in host RAM: int8 12, bf16/fp16 8, fp32 6)"


def register(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate",
        help="microbenchmark this GPU host with the live engine and write a hardware profile (needs torch)",
        description=(
            "Time the runtime engine's parts in isolation (host->device copies by size, CPU expert op vs "
            "experts and threads, GPU grouped call vs experts, hand-off, dense part, DRAM) and write a "
            "hardware profile JSON the simulator reads (plus OUT.raw.json with the raw tables)."
        ),
    )
    c.add_argument("--out", required=True, metavar="HW.json", help="hardware profile to write")
    c.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help=f"model preset or GGUF (default {DEFAULT_MODEL})")
    c.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES, help=_DTYPE_HELP)
    c.add_argument("--layers", type=int, default=None, metavar="L", help=_LAYERS_HELP)
    c.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for the cold experts (default: all cores, less one on a GPU for the thread issuing GPU work)")
    c.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="GPU side device (default cuda)")
    c.add_argument("--reps", type=int, default=20, metavar="N", help="timed calls per microbenchmark and round (median; default 20)")
    c.add_argument("--rounds", type=int, default=9, metavar="N",
                   help="interleaved rounds of all microbenchmarks; each parameter is the median over rounds with a "
                        "confidence interval in OUT.raw.json (default 9)")
    c.add_argument("--max-shift-pct", type=float, default=1.0, metavar="P",
                   help="flag a parameter as WIDE when its interval moves a reference prediction by more than P %% "
                        "(default 1)")
    c.set_defaults(func=_calibrate)

    v = sub.add_parser(
        "validate",
        help="run caching configurations live on the GPU and compare with the simulator's predictions",
        description=(
            "Replay TRACE with each configuration twice through the same policy code: live in the runtime "
            "engine (real weights, real transfers, timed) and in the simulator with HW.json; write "
            "validation.json and a predicted-vs-measured plot into DIR."
        ),
    )
    v.add_argument("trace", metavar="TRACE", help="routing trace (.hxt or an importable format)")
    v.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help=f"model preset or GGUF (default {DEFAULT_MODEL})")
    v.add_argument("--hardware", required=True, metavar="HW.json", help="hardware profile (from hotexperts calibrate)")
    v.add_argument("--out", required=True, metavar="DIR", help="output folder")
    v.add_argument("--configs", metavar="FILE", help="JSON list of {name, policy, params, slots, mode} (default: 22 built in)")
    v.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES, help=_DTYPE_HELP)
    v.add_argument("--layers", type=int, default=None, metavar="L", help=_LAYERS_HELP)
    v.add_argument("--tokens", type=int, default=200, metavar="N", help="measured decode tokens per config (default 200)")
    v.add_argument("--warmup", type=int, default=16, metavar="N", help="decode tokens run before measuring (default 16)")
    v.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for the cold experts (default: all cores, less one on a GPU for the thread issuing GPU work)")
    v.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="GPU side device (default cuda)")
    v.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="run every configuration N times, interleaved (each repetition in its own random order); "
                        "measured tok/s = mean, with SD and range (default 1)")
    v.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the repetitions' orders (default 0)")
    v.add_argument("--compare-hardware", nargs="+", default=[], metavar="HW.json",
                   help="further profiles (e.g. other calibrations) to predict every configuration with, side by side")
    v.add_argument("--instrument", action="store_true",
                   help="after the timed runs, one more run per configuration with per-layer CUDA events and host "
                        "timestamps: measured parts in ms per token beside the predicted terms")
    v.set_defaults(func=_validate)


def _need_torch() -> None:
    from hotexperts.errors import HotExpertsError

    try:
        import torch  # noqa: F401
    except ImportError:
        raise HotExpertsError("the runtime needs torch: pip install 'hotexperts[runtime]'") from None


def _check_positive(**kw: int | None) -> None:
    from hotexperts.errors import InputError

    for k, v in kw.items():
        if v is not None and v <= 0:
            raise InputError(None, f"--{k} must be positive, got {v}")


def _calibrate(args: argparse.Namespace) -> int:
    _check_positive(layers=args.layers, threads=args.threads, reps=args.reps, rounds=args.rounds)
    _need_torch()
    from hotexperts.modelspec import load_model_spec
    from hotexperts.runtime.calibrate import calibrate, interval_table, write_profile

    spec = load_model_spec(args.model)
    cal = calibrate(model=spec, n_layers=args.layers, dtype=args.dtype, device=args.device, cpu_threads=args.threads,
                    reps=args.reps, rounds=args.rounds, max_shift_pct=args.max_shift_pct)
    raw = write_profile(cal, args.out)
    p = cal["profile"]
    for line in interval_table(cal):
        print(line)
    wide = cal["measurements"].get("wide", {}).get("flagged", {})
    print(f"wide intervals (moving a reference prediction by > {args.max_shift_pct:g} %): "
          + (", ".join(f"{k} ({v:.1f} %)" for k, v in sorted(wide.items(), key=lambda kv: -kv[1])) or "none"))
    print(
        f"wrote {args.out} (raw tables {raw}): pcie {p['pcie_pinned_bw']:.1f} GB/s pinned, CPU experts "
        f"{p['cpu_expert_bw']:.1f} GB/s, GPU experts {(p.get('gpu_expert_bw') or p['gpu_mem_bw']):.0f} GB/s, hand-off {p['handoff_us']:.0f} us, "
        f"dense {p['dense_fixed_ms']:.2f} ms/token"
    )
    cv = cal["measurements"].get("cpu_path_vs_dram")
    if cv:
        print(f"CPU path ({cv['expert_dtype']}, {cv['threads']} threads) {cv['cpu_expert_gbs']:.1f} GB/s vs half the "
              f"DRAM read rate {cv['half_dram_gbs']:.1f} GB/s: {'met' if cv['met'] else 'NOT met'}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    _check_positive(layers=args.layers, threads=args.threads, tokens=args.tokens, repeats=args.repeats)
    if args.warmup < 0:
        from hotexperts.errors import InputError

        raise InputError(None, "--warmup must be >= 0")
    _need_torch()
    from hotexperts.modelspec import load_model_spec
    from hotexperts.runtime.validate import load_any_trace, load_configs, validate
    from hotexperts.sim.hardware import load_hardware

    spec = load_model_spec(args.model)
    load_hardware(args.hardware)  # a bad profile fails before the trace is read
    trace = load_any_trace(args.trace, n_expert=spec.n_expert)
    cfgs = load_configs(args.configs) if args.configs else None
    # NOTE: the path, not the loaded profile: validate reads the calibration's intervals from HW.raw.json beside it
    res = validate(trace=trace, model=spec, hardware=args.hardware, out=args.out, configs=cfgs, n_layers=args.layers,
                   dtype=args.dtype, tokens=args.tokens, warmup=args.warmup, device=args.device, cpu_threads=args.threads,
                   repeats=args.repeats, seed=args.seed, compare_hardware=args.compare_hardware,
                   instrument=args.instrument)
    print(f"{'config':30s} {'measured':>9s} {'sd':>6s} {'predicted':>9s} {'error':>7s} {'hit':>6s} {'profiles':>8s}",
          file=sys.stdout)
    for r in res["configs"]:
        print(f"{r['name']:30s} {r['measured_tok_s']:9.2f} {r['measured_sd_tok_s']:6.2f} {r['predicted_tok_s']:9.2f} "
              f"{r['error_pct']:+6.1f}% {r['measured_hit_rate']:6.3f} {r['profile_spread_pct']:7.1f}%")
    cv = res["cpu_path_vs_dram"]
    print(f"CPU path ({cv['expert_dtype']}) {cv['cpu_expert_gbs']:.1f} GB/s vs half DRAM {cv['half_dram_gbs']:.1f} GB/s: "
          f"{'met' if cv['met'] else 'NOT met'}")
    print(f"median |error| {res['median_abs_error_pct']:.1f} %, max {res['max_abs_error_pct']:.1f} %, Spearman "
          f"{res['spearman']:.3f}; simulated best {res['simulated_best']}, measured best {res['measured_best']}")
    print("family mean signed error: " + ", ".join(f"{f} {e:+.1f} %" for f, e in res["family_mean_error_pct"].items()))
    return 0
