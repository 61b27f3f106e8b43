"""Benchmark: importing the two per-request trace sets from their archives; seconds and peak RSS.

Goal (issue 13): the whole DeepSeek-V2-Lite set (2,099 CSV files, 193,566 tokens x 26 layers x top-6,
5.0M rows, 193 MB of CSV in a 31 MB .tar.xz) imports in "reasonable time" with a reasonable peak RSS.
Each import runs in a fresh subprocess, so its peak RSS is its own; the xz decompression alone (Python's
``tarfile``, every member read) is timed beside it, since the importer decompresses in a background
thread while it parses. Needs ../shared/traces.

    python benchmarks/import_perrequest.py [--repeat 3] [--out benchmarks/results/import_perrequest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces"
SETS = {
    "llama4-maverick-mmlu": (TRACES / "llama4-maverick-mmlu" / "requests.tar.xz", 128),
    "deepseek-v2-lite-puffin": (TRACES / "deepseek-v2-lite-puffin" / "prompts-csv.tar.xz", 64),
}

IMPORT_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from hotexperts.tracer.importers import import_trace
t1 = time.perf_counter()
tr = import_trace(sys.argv[1], n_expert=int(sys.argv[2]))
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"import_module_s": t1 - t0, "import_s": t2 - t1, "peak_rss_bytes": rss,
                  "requests": tr.n_requests, "tokens": tr.n_tokens, "layers": tr.n_layers, "top_k": tr.top_k}))
"""

DECOMPRESS_CHILD = r"""
import json, sys, tarfile, time
t0 = time.perf_counter()
n = 0
with tarfile.open(sys.argv[1], "r:*") as tf:
    for m in tf:
        if m.isfile():
            n += len(tf.extractfile(m).read())
print(json.dumps({"decompress_s": time.perf_counter() - t0, "bytes": n}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "import_perrequest.json")
    args = ap.parse_args()
    rows = []
    for name, (path, n_expert) in SETS.items():
        if not path.exists():
            sys.exit(f"{path} not found: this benchmark needs ../shared/traces")
        runs = [_child(IMPORT_CHILD, str(path), str(n_expert)) for _ in range(args.repeat)]
        dec = [_child(DECOMPRESS_CHILD, str(path)) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["import_s"])
        row = {
            "set": name,
            "archive_bytes": path.stat().st_size,
            "uncompressed_bytes": dec[0]["bytes"],
            "import_s": [round(r["import_s"], 2) for r in runs],
            "decompress_only_s": [round(d["decompress_s"], 2) for d in dec],
            "peak_rss_mb": round(max(r["peak_rss_bytes"] for r in runs) / 2**20, 1),
            "requests": best["requests"],
            "tokens": best["tokens"],
            "layers": best["layers"],
            "top_k": best["top_k"],
        }
        rows.append(row)
        print(f"{name:26s} import {min(row['import_s']):6.2f} s (runs {row['import_s']}), decompression alone "
              f"{min(row['decompress_only_s']):5.2f} s, peak RSS {row['peak_rss_mb']:6.1f} MiB, "
              f"{row['requests']} requests, {row['tokens']} tokens x {row['layers']} layers x top-{row['top_k']}")
    result = {
        "benchmark": "import_perrequest",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "sets": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
