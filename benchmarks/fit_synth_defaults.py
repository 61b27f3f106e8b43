"""Produce the built-in synthetic-trace parameters ``tracer/synth_params/qwen3.5-122b-a10b.json``.

Nobody has published a Qwen3.5-122B-A10B routing trace; the closest real traces are the Kimi-Linear-48B
ones (same expert count and top-k: 256 experts, top-8; 26 MoE layers). This script

1. fits :func:`hotexperts.tracer.synth.fit_synth` on ``kimi-linear-48b/phase-03-coding-lru.csv``
   (237 prompt + 255 decode tokens; ``phase-03-coding-long.csv`` is a prefix of the same run and
   ``phase-05-alt-conv.csv`` has only 31 decode tokens, too few to fit);
2. fits the share of the popularity ranking redrawn at a request start (``request_share``): the real
   overlap of the 32 hottest experts of the coding conversation's decode and of the alt-conv
   conversation (same layer) is matched by a two-request synthetic trace, over a grid;
3. maps the 26 fitted layer parameter sets onto Qwen3.5-122B-A10B's 48 MoE layers by relative depth
   (linear interpolation: trace layer i sits at depth i/25, target layer j at j/47);
4. writes the JSON (fitted parameters only, no trace content).

Usage: python benchmarks/fit_synth_defaults.py [--out tracer/synth_params/qwen3.5-122b-a10b.json]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.synth import fit_synth, sample_synth
from hotexperts.tracer.trace import PHASE_DECODE, Trace

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO.parent / "shared" / "traces" / "kimi-linear-48b"
TARGET_LAYERS = 48  # Qwen3.5-122B-A10B: 48 MoE layers, 256 experts, top-8


def load(name: str) -> Trace:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_trace(TRACES / name, n_expert=256)


def top_overlap(a: np.ndarray, b: np.ndarray, n: int = 32) -> float:
    """Mean over layers of |top-n of counts a & top-n of counts b| / n (``a``, ``b``: (layers, experts))."""
    return float(np.mean([len(set(np.argsort(-a[i])[:n]) & set(np.argsort(-b[i])[:n])) / n for i in range(a.shape[0])]))


def two_request_overlap(params, layout: Trace, seed: int) -> float:
    """Top-32 overlap between request 0's decode and request 1's tokens in a synthetic 2-request trace."""
    n = layout.n_tokens
    tr = sample_synth(params, n_tokens=2 * n, n_requests=2, prompt_tokens=layout.n_prefill_tokens,
                      ubatch=max(1, layout.n_prefill_tokens), seed=seed)
    r0 = (tr.request == 0) & (tr.phase == PHASE_DECODE)
    r1 = tr.request == 1
    c0 = tr.select(r0).counts()
    c1 = tr.select(r1).counts()
    return top_overlap(c0, c1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "tracer" / "synth_params" / "qwen3.5-122b-a10b.json"))
    args = ap.parse_args(argv)
    if not TRACES.is_dir():
        print(f"error: {TRACES} not found (../shared/traces is needed to fit)", file=sys.stderr)
        return 1
    coding = load("phase-03-coding-lru.csv")
    alt = load("phase-05-alt-conv.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = fit_synth(coding, name="qwen3.5-122b-a10b", source="kimi-linear-48b/phase-03-coding-lru.csv")
    for w in caught:
        print(f"fit note: {w.message}")
    # request share: real cross-conversation overlap of hot sets (last layer: prefill not recorded)
    L = coding.n_layers - 1
    real = top_overlap(coding.counts(phase=PHASE_DECODE)[:L], alt.counts()[:L])
    best, share = np.inf, p.request_share
    for s in np.linspace(0.5, 1.0, 11):
        q = replace(p, request_share=float(s))
        sim = float(np.mean([two_request_overlap(q, coding, seed) for seed in range(3)]))
        print(f"request_share {s:.2f}: synthetic top-32 overlap {sim:.3f} (real {real:.3f})")
        if abs(sim - real) < best:
            best, share = abs(sim - real), float(s)
    p = replace(
        p,
        request_share=share,
        notes=(
            *[n for n in p.notes if not n.startswith("one request")],
            f"request_share fitted on the top-32 hot-set overlap between two conversations "
            f"(coding decode vs alt-conv, real {real:.3f})",
        ),
    )
    p = p.for_layers(TARGET_LAYERS)
    q = dict(p.quality)
    q["request_share_fit"] = {"real_top32_overlap": round(real, 4), "request_share": share}
    p = replace(
        p,
        source="fitted on kimi-linear-48b/phase-03-coding-lru.csv (256 experts, top-8, 26 MoE layers) "
        "by benchmarks/fit_synth_defaults.py; layers mapped to 48 by relative depth",
        quality=q,
    )
    p.save(args.out)
    print(f"wrote {args.out}: {p.n_layers} layers, sigma_z={p.sigma_z}, request_share={p.request_share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
