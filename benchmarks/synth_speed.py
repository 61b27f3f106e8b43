"""Speed of the synthetic routing generator (goal: 100K tokens x 48 layers x top-8 in under 5 s).

Samples traces with the built-in Qwen3.5-122B-A10B parameters (256 experts, top-8, 48 layers) at a
few sizes, after one small warm-up call (numba compilation, cached on disk after the first run), and
reports the best of ``--repeat`` wall times. Prints a table and writes
``benchmarks/results/synth_speed.json``.

Usage: python benchmarks/synth_speed.py [--repeat 3] [--out benchmarks/results/synth_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hotexperts._atomic import write_text_atomic
from hotexperts.tracer.synth import builtin_params, sample_synth

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 5.0
CASES = [  # (tokens, requests, prompt tokens)
    (10_000, 1, 0),
    (100_000, 1, 0),
    (100_000, 20, 512),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synth_speed.json"))
    args = ap.parse_args(argv)
    p = builtin_params("qwen3.5-122b-a10b")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    sample_synth(p, n_tokens=100, seed=0)
    warm = time.perf_counter() - t0
    rows = []
    for n, r, pt in CASES:
        best = cpu = float("inf")
        for i in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            tr = sample_synth(p, n_tokens=n, n_requests=r, prompt_tokens=pt, seed=i)
            if time.perf_counter() - t0 < best:
                best, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({
            "tokens": n, "requests": r, "prompt_tokens": pt, "layers": tr.n_layers, "top_k": tr.top_k,
            "n_expert": tr.n_expert, "seconds": round(best, 3), "cpu_seconds": round(cpu, 3),
            "tokens_per_s": round(n / best), "meets_goal": (n < 100_000) or best < GOAL_S,
        })
    print(f"warm-up (compile or load numba cache): {warm:.2f} s; CPUs: {os.cpu_count()}")
    print(f"load average at start: {load:.2f} (wall times on a shared machine are inflated; CPU seconds less so)")
    print(f"{'tokens':>8s} {'req':>4s} {'prompt':>6s} {'layers':>6s} {'top-k':>5s} {'seconds':>8s} {'CPU s':>7s} {'tok/s':>9s}")
    for x in rows:
        print(f"{x['tokens']:8d} {x['requests']:4d} {x['prompt_tokens']:6d} {x['layers']:6d} {x['top_k']:5d} "
              f"{x['seconds']:8.3f} {x['cpu_seconds']:7.2f} {x['tokens_per_s']:9d}")
    res = {"goal": f"100K tokens x 48 layers x top-8 < {GOAL_S} s", "warmup_seconds": round(warm, 3),
           "cpus": os.cpu_count(), "load_average": round(load, 2), "cases": rows}
    write_text_atomic(args.out, json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
