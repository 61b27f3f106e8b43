"""Benchmark: save and load a large trace; time and peak memory of the load.

Goal (issue 2): a 1M-token x 48-layer x top-8 trace (384M expert ids) loads in under 2 s and under
1.5 GB of RAM. The load runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/trace_io.py [--tokens 1000000] [--layers 48] [--top-k 8] [--out benchmarks/results/trace_io.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

LOAD_CHILD = r"""
import resource, sys, time, json
t0 = time.perf_counter()
from hotexperts.tracer.trace import Trace
t1 = time.perf_counter()
tr = Trace.load(sys.argv[1], mmap=sys.argv[2] == "1")
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "peak_rss_bytes": rss, "n_ids": int(tr.experts.size)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--n-expert", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "trace_io.json"))
    args = ap.parse_args()

    from hotexperts._atomic import write_text_atomic
    from hotexperts.tracer.trace import Trace

    rng = np.random.default_rng(0)
    n, nl, k = args.tokens, args.layers, args.top_k
    ids = rng.integers(0, args.n_expert, size=(n, nl, k), dtype=np.uint16 if args.n_expert > 256 else np.uint8)
    tr = Trace.from_arrays(ids, n_expert=args.n_expert, validate=False)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.hxt"
        t0 = time.perf_counter()
        tr.save(path)
        save_s = time.perf_counter() - t0
        size = path.stat().st_size
        del tr, ids
        rows = []
        for mmap in (False, True):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run(
                    [sys.executable, "-c", LOAD_CHILD, str(path), "1" if mmap else "0"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                runs.append(json.loads(out.stdout))
            best = min(runs, key=lambda r: r["load_s"])
            rows.append({"mode": "mmap" if mmap else "read", "load_s_best": best["load_s"],
                         "load_s_all": [r["load_s"] for r in runs], "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs)})
    print(f"trace: {n:,} tokens x {nl} layers x top-{k} = {n * nl * k:,} ids, file {size / 2**20:.0f} MiB, save {save_s:.2f} s")
    print(f"{'mode':<6} {'load s (best)':>14} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['mode']:<6} {r['load_s_best']:>14.3f} {r['peak_rss_bytes'] / 2**20:>13.0f}")
    result = {
        "benchmark": "trace_io",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "tokens": n, "layers": nl, "top_k": k, "n_ids": n * nl * k,
        "file_bytes": size, "save_s": save_s, "loads": rows,
        "goal": {"load_s": 2.0, "peak_rss_bytes": 1.5e9},
        "meets_goal": all(r["load_s_best"] < 2.0 and r["peak_rss_bytes"] < 1.5e9 for r in rows),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
