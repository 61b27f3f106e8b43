"""Replay speed: routed selections per second per policy on one core, the speed-up over the plain-Python
reference (tests/reference_policies.py) measured side by side, Belady on a 1M-token trace, and the JIT
warm-up time apart.

Run: ``python benchmarks/replay_speed.py [--tokens 10000] [--ref-tokens 200]``. Prints a table and writes
``benchmarks/results/replay_speed.json``. Targets (issue 3): >= 100M selections/s/core for lru and fork
(10K tokens x 48 layers x top-8 = 3.84M selections in < 40 ms) and >= 100x the reference. Issue 14 adds
the textbook pair and a 2-thread column (``replay(..., threads=2)``: chunks of layers in parallel for
policies that declare ``layer_independent``; target >= 1.7x on 2 cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.reference_policies

import numba  # noqa: E402

from hotexperts._atomic import write_text_atomic  # noqa: E402
from hotexperts.policies import Belady, BeladyTextbook, Decay, Fork, Lru, LruTextbook, Window, prepare  # noqa: E402
from hotexperts.sim.replay import replay, warmup  # noqa: E402
from hotexperts.tracer.trace import Trace  # noqa: E402
from tests.reference_policies import reference_replay  # noqa: E402


def synthetic(n_tokens: int, n_layers: int, top_k: int, n_expert: int, seed: int = 0) -> Trace:
    """Zipf-popular experts per layer whose ranking drifts every 500 tokens, drawn without replacement
    per token (Gumbel top-k), all decode, one token per step."""
    rng = np.random.default_rng(seed)
    ids = np.empty((n_tokens, n_layers, top_k), np.uint8 if n_expert <= 256 else np.uint16)
    logw = -1.1 * np.log(np.arange(1, n_expert + 1))
    for ly in range(n_layers):
        for a in range(0, n_tokens, 500):
            b = min(n_tokens, a + 500)
            perm = rng.permutation(n_expert)
            g = logw[perm][None, :] + rng.gumbel(size=(b - a, n_expert))
            ids[a:b, ly] = np.argpartition(-g, top_k, axis=1)[:, :top_k]
    return Trace.from_arrays(ids, n_expert=n_expert)


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--ref-tokens", type=int, default=200, help="tokens of the subset the Python reference replays")
    ap.add_argument("--belady-tokens", type=int, default=1_000_000)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=15, help="timed repeats per policy; the best is reported")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replay_speed.json")
    args = ap.parse_args()
    numba.set_num_threads(1)

    t0 = time.perf_counter()
    jit_s = warmup()
    print(f"JIT warm-up (compile or load from cache): {jit_s:.2f} s (first call in this process: {time.perf_counter() - t0:.2f} s)")

    tr = synthetic(args.tokens, args.layers, 8, 256)
    prep = prepare(tr)
    n_sel = tr.n_tokens * tr.n_layers * tr.top_k
    sub = tr.select(np.arange(tr.n_tokens) < args.ref_tokens)
    sub_sel = sub.n_tokens * sub.n_layers * sub.top_k
    policies = [Lru(), Fork(interval=40), Window(), Decay(), Belady(), LruTextbook(), BeladyTextbook()]
    for pol in policies:  # untimed: every kernel once on the full trace (allocator and caches warm)
        replay(prep, pol, args.slots, threads=1)
    rows = []
    # NOTE: the garbage collector is off while timing (as in timeit): the reference's many Python objects
    # otherwise make a collection land inside a timed kernel call now and then.
    gc.collect()
    gc.disable()
    for pol in policies:
        # NOTE: best of --repeat runs: the development box is a shared 2-core VM, so single timings are
        # inflated by other processes; the minimum is the closest to the code's own cost.
        full = best_of(lambda pol=pol: replay(prep, pol, args.slots, threads=1), repeat=args.repeat)
        kern = min(replay(prep, pol, args.slots, threads=1).replay_seconds for _ in range(args.repeat))
        # two threads: chunks of layers in parallel for layer-independent policies (the others run on one)
        kern2 = min(replay(prep, pol, args.slots, threads=2).replay_seconds for _ in range(args.repeat))
        ref_s = best_of(lambda pol=pol: reference_replay(sub, pol, args.slots), repeat=2)
        sub_kernel = min(replay(sub, pol, args.slots, threads=1).replay_seconds for _ in range(args.repeat))
        rows.append(
            {
                "policy": pol.label(args.slots),
                "selections": n_sel,
                "kernel_seconds": kern,
                "replay_call_seconds": full,
                "selections_per_s": n_sel / kern,
                "kernel_seconds_2_threads": kern2,
                "selections_per_s_2_threads": n_sel / kern2,
                "speedup_2_threads": kern / kern2,
                "layer_parallel": type(pol).layer_independent,
                "reference_selections_per_s": sub_sel / ref_s,
                "speedup_vs_reference": (n_sel / kern) / (sub_sel / ref_s),
                "speedup_same_subset": ref_s / sub_kernel,
                "hit_rate": replay(prep, pol, args.slots, threads=1).hit_rate,
            }
        )

    gc.enable()
    gc.collect()

    # Belady on a long one-layer trace: time and peak memory
    long_tr = synthetic(args.belady_tokens, 1, 8, 256, seed=1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rb = replay(long_tr, Belady(), args.slots, threads=1)
    belady_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    belady = {
        "tokens": args.belady_tokens,
        "selections": args.belady_tokens * 8,
        "slots": args.slots,
        "kernel_seconds": rb.replay_seconds,
        "call_seconds": belady_s,
        "peak_rss_mib": rss1 / 1024.0,
        "peak_rss_growth_mib": (rss1 - rss0) / 1024.0,
        "trace_mib": long_tr.experts.nbytes / 2**20,
        "hit_rate": rb.hit_rate,
    }

    print(f"\ntrace: {tr.n_tokens} tokens x {tr.n_layers} layers x top-{tr.top_k} = {n_sel / 1e6:.2f}M selections, "
          f"K={args.slots}, numba threads=1; reference on the first {args.ref_tokens} tokens; "
          f"best of {args.repeat} runs (reference: best of 2) on a shared machine, garbage collector off")
    print(f"{'policy':<26}{'kernel ms':>10}{'Msel/s':>9}{'ref Msel/s':>12}{'speedup':>9}{'hit rate':>10}"
          f"{'2 thr Msel/s':>14}{'x 1 thr':>9}")
    for r in rows:
        print(f"{r['policy']:<26}{r['kernel_seconds'] * 1e3:>10.1f}{r['selections_per_s'] / 1e6:>9.1f}"
              f"{r['reference_selections_per_s'] / 1e6:>12.3f}{r['speedup_vs_reference']:>8.0f}x{r['hit_rate']:>10.3f}"
              f"{r['selections_per_s_2_threads'] / 1e6:>14.1f}{r['speedup_2_threads']:>8.2f}x")
    print(f"\nbelady, {belady['tokens']:,} tokens x 1 layer x top-8, K={args.slots}: {belady['kernel_seconds']:.2f} s, "
          f"peak RSS {belady['peak_rss_mib']:.0f} MiB (+{belady['peak_rss_growth_mib']:.0f} MiB during the call), "
          f"hit rate {belady['hit_rate']:.3f}")
    result = {
        "machine": {"python": platform.python_version(), "numba": numba.__version__, "cpu": platform.processor(),
                    "numba_threads": numba.get_num_threads()},
        "jit_warmup_seconds": jit_s,
        "trace": {"tokens": tr.n_tokens, "layers": tr.n_layers, "top_k": tr.top_k, "n_expert": tr.n_expert,
                  "selections": n_sel, "slots": args.slots, "reference_tokens": args.ref_tokens},
        "timing": {"repeats": args.repeat, "reference_repeats": 2, "statistic": "best (minimum) of the repeats",
                   "gc": "disabled while timing"},
        "policies": rows,
        "belady_long": belady,
        "targets": {"selections_per_s_lru_fork": 100e6, "speedup_vs_reference": 100},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
