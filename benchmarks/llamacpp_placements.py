"""Tabulate a set of ``hotexperts bench llamacpp`` runs by where the experts were: which layers' experts
llama.cpp kept in host memory, and the decode/prefill speed each placement measured.

Written for the question the issue-7 validation left open: on the 6-layer model ``n-cpu-moe=5``
decoded as fast as ``n-cpu-moe=6``. The runs (``benchmarks/gpu_llamacpp.sh`` with ``PLACEMENTS``)
put the same number of layers on the CPU in different positions (``-ot``) and repeat placements, so
a position effect and run-to-run drift can be told apart. Input: ``bench-all.json`` (name -> result)
or a folder of ``bench-<name>.json``. Output: a table on stdout, and ``--out`` JSON with one row per
run: ``name, placement, threads, cpu_layers, n_cpu_layers, decode_ms_per_token`` (median, min, max
over the repetitions), ``decode_tok_s``, ``prefill_tok_s`` (medians), and ``per_cpu_layer_ms``: the
least-squares slope of decode ms/token on the number of CPU-expert layers over the runs that used the
default thread count, with the residual of each such run (``residual_ms``).

Usage: ``python benchmarks/llamacpp_placements.py bench-all.json|DIR [--out R.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp_validate import cpu_expert_layers, load_results  # noqa: E402

from hotexperts._atomic import write_text_atomic  # noqa: E402


def rows_of(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, r in results.items():
        if "decode_tok_s" not in r:
            continue
        tok = r["decode_tok_s"]
        layers = cpu_expert_layers(r)
        rows.append({
            "name": name,
            "placement": r.get("placement"),
            "threads": r.get("threads"),
            "cpu_layers": sorted(layers) if layers is not None else None,
            "n_cpu_layers": len(layers) if layers is not None else None,
            "all_cpu": int(r.get("n_gpu_layers", 999)) == 0,
            "decode_ms_per_token": {"median": 1000.0 / tok["median"], "min": 1000.0 / tok["max"],
                                    "max": 1000.0 / tok["min"]},
            "decode_tok_s": tok["median"],
            "prefill_tok_s": (r.get("prefill_tok_s") or {}).get("median"),
        })
    return rows


def fit_slope(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Decode ms/token = a + b * (CPU-expert layers), least squares over the runs with the most common
    thread count whose dense layers stayed on the GPU; each run's residual is stored on it."""
    threads = [r["threads"] for r in rows]
    common = max(set(threads), key=threads.count) if threads else None
    use = [r for r in rows if r["threads"] == common and r["n_cpu_layers"] is not None and not r["all_cpu"]]
    if len({r["n_cpu_layers"] for r in use}) < 2:
        return None
    x = np.array([r["n_cpu_layers"] for r in use], float)
    y = np.array([r["decode_ms_per_token"]["median"] for r in use])
    b, a = np.polyfit(x, y, 1)
    for r, res in zip(use, y - (a + b * x)):
        r["residual_ms"] = float(res)
    return {"threads": common, "intercept_ms": float(a), "per_cpu_layer_ms": float(b), "runs": len(use)}


def format_table(rows: list[dict[str, Any]], fit: dict[str, Any] | None) -> str:
    head = f"{'run':<16} {'CPU-expert layers':<18} {'thr':>3} {'decode ms/tok [min-max]':>24} {'resid':>6} {'tok/s':>7} {'prefill':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        d = r["decode_ms_per_token"]
        cl = "all (-ngl 0)" if r["all_cpu"] else ("?" if r["cpu_layers"] is None else ",".join(map(str, r["cpu_layers"])) or "-")
        res = f"{r['residual_ms']:+.2f}" if "residual_ms" in r else ""
        pre = f"{r['prefill_tok_s']:.0f}" if r["prefill_tok_s"] else ""
        lines.append(f"{r['name']:<16} {cl:<18} {r['threads'] or '':>3} "
                     f"{d['median']:>7.2f} [{d['min']:.2f}-{d['max']:.2f}]{'':>5} {res:>6} {r['decode_tok_s']:>7.1f} {pre:>8}")
    if fit:
        lines.append(f"fit over {fit['runs']} runs ({fit['threads']} threads): decode ms/token = "
                     f"{fit['intercept_ms']:.2f} + {fit['per_cpu_layer_ms']:.2f} x CPU-expert layers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="bench-all.json, or a folder of bench-<name>.json")
    ap.add_argument("--out", help="write the rows and the fit as JSON here")
    a = ap.parse_args(argv)
    src = Path(a.src)
    results = json.loads(src.read_text()) if src.is_file() else load_results(src)
    rows = rows_of(results)
    fit = fit_slope(rows)
    print(format_table(rows, fit))
    if a.out:
        write_text_atomic(Path(a.out), json.dumps({"source": str(src), "fit": fit, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
