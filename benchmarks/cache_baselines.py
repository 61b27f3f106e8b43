"""hotexperts vs libCacheSim vs a plain-Python OrderedDict LRU on the same request stream, side by side in
one run: textbook per-layer LRU and OPT at one cache size, and whole curves (every K) in one pass.

The stream: a synthetic trace (benchmarks/replay_speed.py's generator: Zipf-popular experts whose ranking
drifts, top-8 of 256, 48 layers, all decode); per layer, every routed selection is one request in trace
order (the request model of ``lru-textbook`` / ``belady-textbook``), one cache of K slots per layer.

- Python: ``collections.OrderedDict`` LRU per layer (``move_to_end`` / ``popitem``), the fair plain-Python
  baseline.
- libCacheSim 0.3.5 (pip ``libcachesim``): its C ``LRU`` / ``Belady`` per layer, fed by its C reader from
  one ``oracleGeneral`` binary file per layer (written before timing; ``process_trace`` is timed, so the
  C reader's decoding is included, the Python loop is not used).
- hotexperts: ``lru-textbook`` / ``belady-textbook`` kernels (``replay_seconds``: the numba kernel with its
  per-step statistics), and :func:`hotexperts.sim.curves.lru_curve` / ``opt_curve`` (every K from 0 to
  256 in one pass), on 1 and on 2 numba threads.

Every engine's hit count is checked equal before any time is printed. Each timing is the best of
``--repeat`` runs (Python: best of 2) with the garbage collector off. Prints a table and writes
``benchmarks/results/cache_baselines.json``.

Run: ``python benchmarks/cache_baselines.py [--tokens 10000] [--slots 64]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for benchmarks.replay_speed

import numba  # noqa: E402

from benchmarks.replay_speed import synthetic  # noqa: E402
from hotexperts._atomic import write_text_atomic  # noqa: E402
from hotexperts.policies import BeladyTextbook, LruTextbook, prepare  # noqa: E402
from hotexperts.sim.curves import lru_curve, opt_curve  # noqa: E402
from hotexperts.sim.replay import replay  # noqa: E402

ORACLE_DTYPE = np.dtype([("clock", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_vtime", "<i8")])
NEVER = np.iinfo(np.int64).max


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def py_lru(streams: list[list[int]], k: int) -> int:
    hits = 0
    for seq in streams:
        cache: OrderedDict[int, None] = OrderedDict()
        for e in seq:
            if e in cache:
                cache.move_to_end(e)
                hits += 1
            else:
                cache[e] = None
                if len(cache) > k:
                    cache.popitem(last=False)
    return hits


def write_oracle(path: Path, ids: np.ndarray) -> None:
    n = ids.size
    rec = np.zeros(n, ORACLE_DTYPE)
    rec["clock"] = np.arange(n, dtype=np.uint32)
    rec["obj_id"] = ids.astype(np.uint64) + 1
    rec["obj_size"] = 1
    nxt = np.full(n, NEVER, np.int64)
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):  # plain loop: not timed
        e = int(ids[i])
        nxt[i] = last.get(e, NEVER)
        last[e] = i
    rec["next_vtime"] = nxt
    rec.tofile(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache_baselines.json")
    args = ap.parse_args()
    import libcachesim as lcs

    k = args.slots
    tr = synthetic(args.tokens, args.layers, 8, 256)
    prep = prepare(tr)
    n_req = tr.n_tokens * tr.n_layers * tr.top_k
    streams = [tr.experts[:, ly].ravel() for ly in range(tr.n_layers)]
    tmp = Path(tempfile.mkdtemp(prefix="hx-lcs-"))
    files = []
    for ly, ids in enumerate(streams):
        f = tmp / f"layer{ly}.oracleGeneral"
        write_oracle(f, ids)
        files.append(str(f))

    readers = [lcs.TraceReader(f, lcs.TraceType.ORACLE_GENERAL_TRACE) for f in files]

    def lcs_run(cls) -> int:
        # NOTE: hashpower 12 (4096 buckets) for 256 objects per cache: the default 2^24 buckets make each
        # cache's creation (one per layer and run) cost more than its replay
        hits = 0
        for reader, ids in zip(readers, streams):
            miss_ratio, _ = cls(k, hashpower=12).process_trace(reader)
            hits += int(round((1.0 - miss_ratio) * ids.size))
        return hits

    # untimed warm-up of every kernel (compiled or loaded from numba's cache)
    numba.set_num_threads(1)
    small = tr.select(np.arange(tr.n_tokens) < 50)
    for pol in (LruTextbook(), BeladyTextbook()):
        replay(small, pol, k, threads=1)
    lru_curve(small)
    opt_curve(small)

    gc.collect()
    gc.disable()
    rows: list[dict] = []

    def row(name: str, what: str, seconds: float, hits: int, threads: int | None = None, note: str = "") -> None:
        rows.append({"engine": name, "what": what, "seconds": seconds, "requests": n_req,
                     "requests_per_s": n_req / seconds, "hits": hits, "numba_threads": threads, "note": note})

    py_list = [s.tolist() for s in streams]
    t, h = best_of(lambda: py_lru(py_list, k), 2)
    row("python OrderedDict", f"LRU K={k}", t, int(h))  # type: ignore[arg-type]
    t, h = best_of(lambda: lcs_run(lcs.LRU), args.repeat)
    row("libCacheSim 0.3.5", f"LRU K={k}", t, int(h))  # type: ignore[arg-type]
    t, h = best_of(lambda: lcs_run(lcs.Belady), args.repeat)
    row("libCacheSim 0.3.5", f"Belady K={k}", t, int(h))  # type: ignore[arg-type]
    curves: dict[str, np.ndarray] = {}
    for threads in (1, 2):
        numba.set_num_threads(threads)
        for pol, what in ((LruTextbook(), "LRU"), (BeladyTextbook(), "Belady")):
            best = min(replay(prep, pol, k, threads=threads).replay_seconds for _ in range(args.repeat))
            hits = int(replay(prep, pol, k, threads=threads).hit_sel.sum())
            row("hotexperts", f"{what} K={k} ({pol.name} replay)", best, hits, threads)
        t, c = best_of(lambda: lru_curve(tr), max(2, args.repeat // 2))
        curves["lru"] = c  # type: ignore[assignment]
        row("hotexperts", "LRU, every K 0..256 (lru_curve)", t, int(curves["lru"][:, k].sum()), threads)
        t, c = best_of(lambda: opt_curve(tr), 2)
        curves["opt"] = c  # type: ignore[assignment]
        row("hotexperts", "OPT, every K 0..256 (opt_curve)", t, int(curves["opt"][:, k].sum()), threads)
    gc.enable()
    for f in files:
        os.remove(f)
    os.rmdir(tmp)

    lru_hits = {r["hits"] for r in rows if r["what"].startswith("LRU")}
    opt_hits = {r["hits"] for r in rows if r["what"].startswith(("Belady", "OPT"))}
    assert len(lru_hits) == 1, f"LRU hit counts differ between engines: {lru_hits}"
    assert len(opt_hits) == 1, f"OPT hit counts differ between engines: {opt_hits}"

    def secs(engine: str, what: str, threads: int | None = None) -> float:
        return next(r["seconds"] for r in rows if r["engine"] == engine and r["what"].startswith(what)
                    and r["numba_threads"] == threads)

    py_s, lcs_lru_s, lcs_opt_s = secs("python OrderedDict", "LRU"), secs("libCacheSim 0.3.5", "LRU"), secs(
        "libCacheSim 0.3.5", "Belady")
    hx_lru_s = secs("hotexperts", "LRU K", 1)
    hx_opt_s = secs("hotexperts", "Belady K", 1)
    # NOTE: threads = numba threads for the curves, replay threads (chunks of layers) for the replays
    n_k = 256  # the curves give K = 1 .. 256; libCacheSim needs one run per K
    ratios = {
        "lru_textbook_vs_python": py_s / hx_lru_s,
        "lru_textbook_vs_libcachesim": lcs_lru_s / hx_lru_s,
        "belady_textbook_vs_libcachesim": lcs_opt_s / hx_opt_s,
        "lru_curve_1t_vs_libcachesim_per_k_sweep": n_k * lcs_lru_s / secs("hotexperts", "LRU, every K", 1),
        "opt_curve_1t_vs_libcachesim_per_k_sweep": n_k * lcs_opt_s / secs("hotexperts", "OPT, every K", 1),
        "lru_textbook_2t_vs_1t": hx_lru_s / secs("hotexperts", "LRU K", 2),
        "lru_curve_2t_vs_1t": secs("hotexperts", "LRU, every K", 1) / secs("hotexperts", "LRU, every K", 2),
        "opt_curve_2t_vs_1t": secs("hotexperts", "OPT, every K", 1) / secs("hotexperts", "OPT, every K", 2),
    }
    load = os.getloadavg()
    print(f"stream: {tr.n_tokens} tokens x {tr.n_layers} layers x top-{tr.top_k} = {n_req / 1e6:.2f}M requests, "
          f"one cache of K={k} per layer; load average before the run {load[0]:.2f}; best of {args.repeat} "
          "(python: best of 2), gc off; hit counts equal across engines")
    print(f"{'engine':<20}{'what':<40}{'thr':>4}{'seconds':>10}{'M req/s':>10}{'hits':>10}")
    for r in rows:
        thr = "" if r["numba_threads"] is None else str(r["numba_threads"])
        print(f"{r['engine']:<20}{r['what']:<40}{thr:>4}{r['seconds']:>10.4f}{r['requests_per_s'] / 1e6:>10.1f}{r['hits']:>10}")
    print("\nratios (same run):")
    for name, v in ratios.items():
        print(f"  {name:<44}{v:>9.1f}x")
    result = {
        "machine": {"python": platform.python_version(), "numba": numba.__version__, "cpu": platform.processor(),
                    "cpus": os.cpu_count(), "loadavg_before": load},
        "stream": {"tokens": tr.n_tokens, "layers": tr.n_layers, "top_k": tr.top_k, "n_expert": tr.n_expert,
                   "requests": n_req, "slots": k, "generator": "benchmarks/replay_speed.py synthetic(seed=0)"},
        "timing": {"repeats": args.repeat, "python_repeats": 2, "statistic": "best (minimum)", "gc": "off"},
        "rows": rows,
        "ratios": ratios,
        "targets": {"vs_python": 200, "vs_libcachesim": 20},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
