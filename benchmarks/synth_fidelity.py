"""Fidelity of synthetic traces: decode hit-rate curves of real held-out traces vs synthetic ones.

Fits the generator (:func:`hotexperts.tracer.synth.fit_synth`) on the prompt and the first 60 % of the
decode tokens of ``kimi-linear-48b/phase-03-coding-lru.csv``, then compares, with the product's replay
engine (``hotexperts.sim.replay``), the decode hit rates of the policies ``lru``, ``fork`` and
``belady`` at 8..128 slots per layer between

* ``coding-heldout``: the real trace's last 40 % of decode tokens (hits counted on those steps only,
  the cache warmed by everything before, as in the real run), and synthetic traces with the same
  token layout, counted on the same steps;
* ``alt-conv``: a different conversation of the same model (``phase-05-alt-conv.csv``, 31 decode
  tokens), and synthetic traces with its layout.

Each synthetic figure is the mean over ``--seeds`` seeds; the spread (standard deviation, min, max) is
reported too. Prints a table and writes ``benchmarks/results/synth_fidelity.json``. Needs
``../shared/traces``.

Usage: python benchmarks/synth_fidelity.py [--seeds 8] [--out benchmarks/results/synth_fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.policies import make_policy
from hotexperts.sim.replay import replay
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.synth import SynthParams, fit_synth, sample_synth
from hotexperts.tracer.trace import PHASE_DECODE, Trace

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces" / "kimi-linear-48b"
KS = (8, 16, 32, 48, 64, 96, 128)
POLICIES = ("lru", "fork", "belady")
TRAIN_FRACTION = 0.6


def load(name: str) -> Trace:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_trace(TRACES / name, n_expert=256)


def split_decode(tr: Trace, fraction: float = TRAIN_FRACTION) -> tuple[Trace, int]:
    """The trace cut after the first ``fraction`` of its decode tokens, and that cut as a decode-step index."""
    dec = np.flatnonzero(tr.phase == PHASE_DECODE)
    n_train = int(round(fraction * dec.size))
    keep = np.ones(tr.n_tokens, bool)
    keep[dec[n_train:]] = False
    return tr.select(keep), n_train


def decode_hit_rates(tr: Trace, policy: str, ks: tuple[int, ...], first_decode_step: int = 0) -> np.ndarray:
    """Decode hit rate per slot count, counting decode steps from ``first_decode_step`` on."""
    pol = make_policy(policy)
    out = []
    for k in ks:
        r = replay(tr, pol, k)
        dec = np.flatnonzero(r.step_phase == PHASE_DECODE)[first_decode_step:]
        out.append(r.hit_sel[dec].sum() / max(1, r.sel[dec].sum()))
    return np.array(out, float)


def compare(
    real: Trace, params: SynthParams, *, seeds: int, first_decode_step: int = 0
) -> dict[str, Any]:
    res: dict[str, Any] = {"decode_tokens_scored": int(real.n_decode_tokens - first_decode_step)}
    synth = [sample_synth(params, n_tokens=0, layout=real, seed=s) for s in range(seeds)]
    for pol in POLICIES:
        r = decode_hit_rates(real, pol, KS, first_decode_step) * 100
        s = np.array([decode_hit_rates(t, pol, KS, first_decode_step) for t in synth]) * 100
        gap = s.mean(0) - r
        res[pol] = {
            "real": r.round(2).tolist(),
            "synth_mean": s.mean(0).round(2).tolist(),
            "synth_std": s.std(0).round(2).tolist(),
            "synth_min": s.min(0).round(2).tolist(),
            "synth_max": s.max(0).round(2).tolist(),
            "gap": gap.round(2).tolist(),
            "max_abs_gap": float(np.abs(gap).max().round(2)),
            "within_3pp": bool(np.all(np.abs(gap) <= 3.0)),
        }
    return res


def run(seeds: int) -> dict[str, Any]:
    coding = load("phase-03-coding-lru.csv")
    alt = load("phase-05-alt-conv.csv")
    train, cut = split_decode(coding)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = fit_synth(train, name="kimi-coding-train", source="phase-03-coding-lru.csv, first 60% of decode")
    fit_s = time.perf_counter() - t0
    return {
        "slots": list(KS),
        "policies": list(POLICIES),
        "seeds": seeds,
        "fit": {
            "trace": "phase-03-coding-lru.csv",
            "decode_tokens_used": cut,
            "prefill_tokens_used": train.n_prefill_tokens,
            "seconds": round(fit_s, 2),
            "sigma_z": params.sigma_z,
        },
        "traces": {
            "coding-heldout": compare(coding, params, seeds=seeds, first_decode_step=cut),
            "alt-conv": compare(alt, params, seeds=seeds),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synth_fidelity.json"))
    args = ap.parse_args(argv)
    if not TRACES.is_dir():
        print(f"skipped: {TRACES} not found (../shared/traces is absent beside this checkout)")
        return 0
    res = run(args.seeds)
    for name, r in res["traces"].items():
        print(f"\n{name} ({r['decode_tokens_scored']} decode tokens scored; synthetic: mean of {args.seeds} seeds)")
        print(f"{'policy':8s} {'':10s} " + " ".join(f"{k:>6d}" for k in KS))
        for pol in POLICIES:
            x = r[pol]
            print(f"{pol:8s} {'real':10s} " + " ".join(f"{v:6.1f}" for v in x["real"]))
            print(f"{'':8s} {'synth':10s} " + " ".join(f"{v:6.1f}" for v in x["synth_mean"]))
            print(f"{'':8s} {'+-sd':10s} " + " ".join(f"{v:6.1f}" for v in x["synth_std"]))
            print(f"{'':8s} {'gap':10s} " + " ".join(f"{v:+6.1f}" for v in x["gap"])
                  + f"   max |gap| {x['max_abs_gap']:.1f} pp {'OK' if x['within_3pp'] else 'OVER 3 pp'}")
    write_text_atomic(args.out, json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
