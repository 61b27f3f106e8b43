"""One-pass curves: full textbook LRU and OPT hit curves (every K from 0 to n_expert, every layer) of a
1M-token x 48-layer x top-8 trace, on 1 and on 2 numba threads, beside the per-K replays they replace.

Goal (issue 14): each curve in <= 5 s on one core. The trace comes from the built-in synthetic generator
(Qwen3.5-122B-A10B parameters: 256 experts, top-8, 48 layers; its generation time is printed apart).
For scale, the same run times one ``lru-textbook`` and one ``belady-textbook`` replay at K = 64 (one
point of the curve; a per-K sweep would take n_expert of them) and checks that the curve's column 64
equals those replays' hits. Prints a table and writes ``benchmarks/results/curves_speed.json``.

Run: ``python benchmarks/curves_speed.py [--tokens 1000000] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.policies import BeladyTextbook, LruTextbook
from hotexperts.sim.curves import lru_curve, opt_curve
from hotexperts.sim.replay import replay
from hotexperts.tracer.synth import builtin_params, sample_synth

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "curves_speed.json")
    args = ap.parse_args()
    load = os.getloadavg()
    t0 = time.perf_counter()
    tr = sample_synth(builtin_params("qwen3.5-122b-a10b"), n_tokens=args.tokens, seed=0)
    gen_s = time.perf_counter() - t0
    n_sel = tr.n_tokens * tr.n_layers * tr.top_k
    small = tr.select(np.arange(tr.n_tokens) < 100)
    lru_curve(small)
    opt_curve(small)
    for pol in (LruTextbook(), BeladyTextbook()):
        replay(small, pol, args.slots, threads=1)
    rows = []
    curves = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        for name, fn in (("lru_curve", lru_curve), ("opt_curve", opt_curve)):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                curves[name] = fn(tr)
                best = min(best, time.perf_counter() - t)
            rows.append({"what": name, "threads": threads, "seconds": best, "selections_per_s": n_sel / best,
                         "goal_s": GOAL_S if threads == 1 else None})
    numba.set_num_threads(1)
    for pol, name in ((LruTextbook(), "lru_curve"), (BeladyTextbook(), "opt_curve")):
        r = replay(tr, pol, args.slots, threads=1)
        hits = r.hit_sel.sum(axis=0, dtype=np.int64)
        assert np.array_equal(hits, curves[name][:, args.slots]), f"{name} column {args.slots} != {pol.name} replay"
        rows.append({"what": f"{pol.name} replay, K={args.slots} only", "threads": 1, "seconds": r.replay_seconds,
                     "selections_per_s": n_sel / r.replay_seconds, "goal_s": None})
    print(f"trace: {tr.n_tokens:,} tokens x {tr.n_layers} layers x top-{tr.top_k} = {n_sel / 1e6:.0f}M selections, "
          f"{tr.n_expert} experts (generated in {gen_s:.1f} s); load average before the run {load[0]:.2f}; "
          f"best of {args.repeat}")
    print(f"{'what':<36}{'threads':>8}{'seconds':>10}{'M sel/s':>10}")
    for r in rows:
        print(f"{r['what']:<36}{r['threads']:>8}{r['seconds']:>10.2f}{r['selections_per_s'] / 1e6:>10.1f}")
    result = {
        "machine": {"python": platform.python_version(), "numba": numba.__version__, "cpu": platform.processor(),
                    "cpus": os.cpu_count(), "loadavg_before": load},
        "trace": {"tokens": tr.n_tokens, "layers": tr.n_layers, "top_k": tr.top_k, "n_expert": tr.n_expert,
                  "selections": n_sel, "generator": "sample_synth(qwen3.5-122b-a10b, seed=0)",
                  "generation_seconds": gen_s},
        "timing": {"repeats": args.repeat, "statistic": "best (minimum)"},
        "rows": rows,
        "goal_seconds_one_core": GOAL_S,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
