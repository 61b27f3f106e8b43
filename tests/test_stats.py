"""``trace info`` statistics against a plain-Python reference and hand-computed cases."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from hotexperts.cli import main
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.stats import format_stats, trace_stats
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace


def reference_layer_stats(tr: Trace, li: int) -> dict:
    """Token-by-token Python loops, written from the definitions in the stats module docstring."""
    present = (lambda t: True) if tr.present is None else (lambda t: bool(tr.present[t, li]))
    counts = [0] * tr.n_expert
    for t in range(tr.n_tokens):
        if present(t):
            for e in tr.experts[t, li].tolist():
                counts[e] += 1
    total = sum(counts)
    n_top = max(1, math.ceil(tr.n_expert / 10))
    top = sum(sorted(counts, reverse=True)[:n_top])
    # decode tokens of each request in order
    per_req: dict[int, list[int]] = {}
    for t in range(tr.n_tokens):
        if tr.phase[t] == PHASE_DECODE:
            per_req.setdefault(int(tr.request[t]), []).append(t)
    hit = n_sel = 0
    dists: list[int] = []
    for toks in per_req.values():
        last_seen: dict[int, int] = {}
        for i, t in enumerate(toks):
            if i > 0 and present(t) and present(toks[i - 1]):
                prev = set(tr.experts[toks[i - 1], li].tolist())
                for e in tr.experts[t, li].tolist():
                    n_sel += 1
                    hit += e in prev
            if present(t):
                for e in tr.experts[t, li].tolist():
                    if e in last_seen:
                        dists.append(i - last_seen[e])
                for e in tr.experts[t, li].tolist():
                    last_seen[e] = i
    return {
        "distinct_experts": sum(1 for c in counts if c),
        "top10pct_share": top / total if total else None,
        "next_token_reuse": hit / n_sel if n_sel else None,
        "median_reuse_distance": float(statistics.median(dists)) if dists else None,
    }


def _random_trace(seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    n, L, k, E = 120, 3, 2, 12
    phase = np.r_[np.full(10, PHASE_PREFILL), np.full(n - 10, PHASE_DECODE)]
    # two requests interleaved during decode
    request = np.r_[np.zeros(10, int), rng.integers(0, 2, n - 10)]
    ubatch = np.r_[np.zeros(10, int), np.arange(1, n - 9)]
    # skewed routing so reuse happens
    p = np.arange(1, E + 1, dtype=float) ** -1.2
    p /= p.sum()
    ids = np.stack([np.stack([rng.choice(E, size=k, replace=False, p=p) for _ in range(L)]) for _ in range(n)])
    present = rng.random((n, L)) > 0.1
    ids[~present] = 0
    return Trace.from_arrays(ids, n_expert=E, phase=phase, request=request, ubatch=ubatch, moe_layers=[1, 4, 7],
                             present=present)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stats_match_reference(seed):
    tr = _random_trace(seed)
    st = trace_stats(tr)
    assert (st["n_tokens"], st["n_prefill_tokens"], st["n_decode_tokens"]) == (120, 10, 110)
    assert st["n_requests"] == len(set(tr.request.tolist()))
    assert st["n_steps"] == 111 and st["n_layers"] == 3 and st["moe_layers"] == [1, 4, 7]
    for li, p in enumerate(st["per_layer"]):
        ref = reference_layer_stats(tr, li)
        assert p["layer"] == tr.moe_layers[li]
        assert p["distinct_experts"] == ref["distinct_experts"]
        for key in ("top10pct_share", "next_token_reuse", "median_reuse_distance"):
            assert p[key] == pytest.approx(ref[key]), key
    json.dumps(st)  # JSON-serialisable


def test_stats_hand_computed():
    # one layer, 4 experts, top-2; decode only, one request
    ids = np.array([[[0, 1]], [[1, 2]], [[1, 0]], [[3, 2]]])
    tr = Trace.from_arrays(ids, n_expert=4)
    p = trace_stats(tr)["per_layer"][0]
    assert p["distinct_experts"] == 4
    # counts 0:2 1:3 2:2 3:1; top ceil(0.4)=1 expert holds 3 of 8
    assert p["top10pct_share"] == pytest.approx(3 / 8)
    # pairs: (01->12) 1 hit, (12->10) 1 hit, (10->32) 0 hits: 2 of 6
    assert p["next_token_reuse"] == pytest.approx(2 / 6)
    # reuse distances: 1@1 (1), 1@2 (1), 0@2 (2), 2@3 (2) -> median 1.5
    assert p["median_reuse_distance"] == pytest.approx(1.5)


def test_stats_real_trace_and_text(kimi_coding_csv):
    tr = import_trace(kimi_coding_csv, n_expert=256)
    st = trace_stats(tr)
    assert (st["n_prefill_tokens"], st["n_decode_tokens"], st["n_expert"], st["top_k"]) == (237, 255, 256, 8)
    # spot-check two layers against the reference (the full loop over 26 layers is slow-ish in Python)
    for li in (0, 25):
        ref = reference_layer_stats(tr, li)
        p = st["per_layer"][li]
        assert p["distinct_experts"] == ref["distinct_experts"]
        assert p["next_token_reuse"] == pytest.approx(ref["next_token_reuse"])
        assert p["median_reuse_distance"] == pytest.approx(ref["median_reuse_distance"])
    text = format_stats(st)
    assert "237 prefill" in text and "255 decode" in text and "1..26" in text
    assert len(text.splitlines()) == 8 + 1 + 26 + 1


def test_cli_info(tmp_path, capsys, mixtral_gsm8k_jsonl):
    hxt = tmp_path / "g.hxt"
    assert main(["trace", "import", str(mixtral_gsm8k_jsonl), "--out", str(hxt), "--n-expert", "8"]) == 0
    capsys.readouterr()
    assert main(["trace", "info", str(hxt), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for key in ("n_tokens", "n_prefill_tokens", "n_decode_tokens", "n_layers", "n_expert", "top_k", "n_requests",
                "source", "per_layer"):
        assert key in st
    assert st["n_decode_tokens"] == 247 and st["n_requests"] == 2 and st["absent_entries"] == 15
    assert main(["trace", "info", str(hxt)]) == 0
    assert "top-2 of 8" in capsys.readouterr().out
