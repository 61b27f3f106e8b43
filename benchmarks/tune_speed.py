"""Wall time and peak memory of a ``hotexperts tune`` run (issue 14: 500 trials on a 10,000-token 48-layer
trace in <= 30 s wall on 2 cores, peak RSS <= 1.5 GB).

Samples a synthetic 10,000-token trace for the Qwen3.5-122B-A10B preset (4 requests of 1,024 prompt tokens,
the rest decode, seed 0), then runs ``hotexperts tune`` on it in a child process (RTX 4090 profile, 24 GiB,
8,192 context, the default SQLite storage and families) and reports its wall time and peak RSS
(``getrusage(RUSAGE_CHILDREN)``). Prints a line and writes ``benchmarks/results/tune_speed.json``.

Run: ``python benchmarks/tune_speed.py [--trials 500]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hotexperts._atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
MODEL = "qwen3.5-122b-a10b-q4_k_l"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune_speed.json")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "hotexperts.cli"]
    with tempfile.TemporaryDirectory(prefix="hx-tune-") as tmp:
        trace = Path(tmp) / "t.hxt"
        subprocess.run([*exe, "trace", "synth", "--model", MODEL, "--tokens", str(args.tokens), "--requests", "4",
                        "--prompt-tokens", "1024", "--out", str(trace)], check=True, capture_output=True)
        load = os.getloadavg()
        t0 = time.perf_counter()
        subprocess.run([*exe, "tune", str(trace), "--model", MODEL, "--hardware", "rtx4090-7950x", "--vram-gb", "24",
                        "--context", "8192", "--trials", str(args.trials), "--out", str(Path(tmp) / "run"),
                        "--no-progress"], check=True, capture_output=True)
        wall = time.perf_counter() - t0
    # NOTE: the largest RSS of any finished child: the tune process (the synth child is far smaller)
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"hotexperts tune, {args.trials} trials, {args.tokens}-token 48-layer synthetic trace: {wall:.1f} s wall, "
          f"peak RSS {rss_mib:.0f} MiB (load average before: {load[0]:.2f}; goals <= 30 s, <= 1536 MiB)")
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_before": load},
        "trials": args.trials, "tokens": args.tokens, "model": MODEL, "hardware": "rtx4090-7950x",
        "wall_seconds": wall, "peak_rss_mib": rss_mib, "goals": {"wall_seconds": 30, "peak_rss_mib": 1536},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
