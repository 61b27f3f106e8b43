"""Synthetic routing traces (hotexperts.tracer.synth): validity, determinism, fitted statistics, poor-fit
detection, the CLI, and fidelity of hit-rate curves against real held-out traces."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest

from hotexperts.errors import InputError
from hotexperts.tracer.synth import (
    SynthParams,
    builtin_params,
    fit_synth,
    params_for_model,
    sample_synth,
    synth_layout,
    trace_summary,
)
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

KS = (8, 16, 32, 48, 64, 96, 128)


def _next_token_reuse_ref(tr: Trace) -> np.ndarray:
    """Plain-Python reference: per layer, share of decode picks that the previous token (same request) used."""
    out = []
    for layer in range(tr.n_layers):
        hit = n = 0
        for t in range(tr.n_tokens):
            if tr.phase[t] != PHASE_DECODE:
                continue
            cur = [int(e) for e in tr.experts[t, layer]]
            prev = set() if t == 0 or tr.request[t - 1] != tr.request[t] else {int(e) for e in tr.experts[t - 1, layer]}
            hit += sum(e in prev for e in cur)
            n += len(cur)
        out.append(hit / n)
    return np.array(out)


def _lru_ref(sets: list[list[int]], k: int) -> float:
    """Plain-Python LRU (one insert per miss, no throttle) hit rate over a list of steps."""
    from collections import OrderedDict

    c: OrderedDict[int, None] = OrderedDict()
    h = n = 0
    for s in sets:
        for e in s:
            n += 1
            h += e in c
        for e in s:
            if e in c:
                c.move_to_end(e)
            else:
                c[e] = None
                if len(c) > k:
                    c.popitem(last=False)
    return h / n


@pytest.fixture(scope="module")
def qwen() -> SynthParams:
    return builtin_params("qwen3.5-122b-a10b")


def test_layout_structure():
    phase, request, ub, pos = synth_layout(n_tokens=25, n_requests=2, prompt_tokens=5, ubatch=2)
    # request 0: 5 prompt + 8 decode, request 1: 5 prompt + 7 decode
    assert request.tolist() == [0] * 13 + [1] * 12
    assert pos[:13].tolist() == list(range(13)) and pos[13:].tolist() == list(range(12))
    assert phase.tolist() == ([0] * 5 + [1] * 8 + [0] * 5 + [1] * 7)
    # prompt ubatches of 2, 2, 1 tokens; decode one step per token
    steps = np.diff(np.flatnonzero(np.r_[True, ub[1:] != ub[:-1], True]))
    assert steps.tolist() == [2, 2, 1] + [1] * 8 + [2, 2, 1] + [1] * 7
    with pytest.raises(InputError, match="cannot hold"):
        synth_layout(n_tokens=10, n_requests=2, prompt_tokens=5)


def test_sample_valid_and_deterministic(qwen):
    a = sample_synth(qwen, n_tokens=600, n_requests=2, prompt_tokens=100, ubatch=64, seed=7)
    b = sample_synth(qwen, n_tokens=600, n_requests=2, prompt_tokens=100, ubatch=64, seed=7)
    c = sample_synth(qwen, n_tokens=600, n_requests=2, prompt_tokens=100, ubatch=64, seed=8)
    assert a.equals(b)
    assert not np.array_equal(a.experts, c.experts)
    assert a.experts.shape == (600, 48, 8) and a.n_expert == 256
    a.validate()
    srt = np.sort(a.experts.astype(np.int64), axis=2)
    assert np.all(np.diff(srt, axis=2) > 0), "ids within a token's top-k must be distinct"
    assert a.n_requests == 2 and a.n_prefill_tokens == 200 and a.n_decode_tokens == 400
    # every expert id in range and the routing not degenerate
    assert int(a.experts.max()) < 256 and np.unique(a.experts[:, 0]).size > 64


def test_shape_overrides_and_scaling(qwen):
    tr = sample_synth(qwen, n_tokens=300, n_layers=7, n_expert=64, top_k=4, seed=1)
    assert tr.experts.shape == (300, 7, 4) and tr.n_expert == 64
    assert np.all(np.diff(np.sort(tr.experts.astype(int), axis=2), axis=2) > 0)
    big = sample_synth(qwen, n_tokens=50, n_expert=512, top_k=10, seed=1)
    assert big.experts.dtype == np.uint16 and int(big.experts.max()) < 512
    p = qwen.for_layers(26)
    assert p.n_layers == 26 and any("relative depth" in n for n in p.notes)
    # end layers keep their fitted values; interpolation stays inside the fitted range
    assert p.layers[0] == qwen.layers[0] and p.layers[-1] == qwen.layers[-1]
    vals = np.array([x.copy_next_decode for x in qwen.layers])
    got = np.array([x.copy_next_decode for x in p.layers])
    assert got.min() >= vals.min() - 1e-12 and got.max() <= vals.max() + 1e-12


def test_params_roundtrip_and_bad_file(qwen, tmp_path):
    f = tmp_path / "p.json"
    qwen.save(f)
    assert SynthParams.load(f) == qwen
    f.write_text('{"format": "hotexperts-synth-params", "n_expert": 4, "top_k": 9, "layers": [], "depth": []}')
    with pytest.raises(InputError, match="impossible shape"):
        SynthParams.load(f)


def test_params_for_model_exact_and_scaled():
    pytest.importorskip("hotexperts.presets")
    exact = params_for_model("qwen3.5-122b-a10b-q4_k_l")
    assert exact.n_layers == 48 and not any("scaled" in n for n in exact.notes)
    scaled = params_for_model("mixtral-8x7b-q4_k_m")
    assert (scaled.n_expert, scaled.top_k, scaled.n_layers) == (8, 2, 32)
    assert any("scaled from" in n for n in scaled.notes)


def test_short_trace_refused(qwen):
    short = sample_synth(qwen, n_tokens=20, n_layers=4, seed=0)
    with pytest.raises(InputError, match="only 20 decode tokens: fitting the generator needs at least 64"):
        fit_synth(short)


def test_fit_recovers_statistics_of_a_synthetic_source(qwen):
    # a source with known parameters; the refit trace must reproduce its statistics
    src_params = qwen.for_shape(n_layers=4)
    src = sample_synth(src_params, n_tokens=700, prompt_tokens=100, seed=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_synth(src, n_seeds=2, rounds=2)
    assert any("one request" in str(w.message) for w in caught)
    again = sample_synth(fitted, n_tokens=0, layout=src, seed=12)
    s_src, s_new = trace_summary(src), trace_summary(again)
    # next-token reuse checked against the plain-Python reference, then compared
    assert np.allclose(s_src["next_token_reuse"], _next_token_reuse_ref(src), atol=1e-9)
    assert np.allclose(s_new["next_token_reuse"], _next_token_reuse_ref(again), atol=1e-9)
    assert np.max(np.abs(np.subtract(s_src["next_token_reuse"], s_new["next_token_reuse"]))) < 0.06
    assert np.max(np.abs(np.subtract(s_src["top8_share"], s_new["top8_share"]))) < 0.08
    assert np.max(np.abs(np.subtract(s_src["top32_share"], s_new["top32_share"]))) < 0.08
    assert fitted.quality["n_decode_tokens"] == 600


def test_request_boundary_shifts_hot_set(qwen):
    tr = sample_synth(qwen, n_tokens=2000, n_requests=2, prompt_tokens=0, n_layers=6, seed=3)
    r0 = tr.select(tr.request == 0).counts()
    r1 = tr.select(tr.request == 1).counts()
    first, second = tr.select((tr.request == 0) & (tr.pos < 500)).counts(), tr.select(
        (tr.request == 0) & (tr.pos >= 500)
    ).counts()

    def ov(a, b):
        return np.mean([len(set(np.argsort(-a[i])[:32]) & set(np.argsort(-b[i])[:32])) / 32 for i in range(6)])

    # within a request the hot set persists more than across requests
    assert ov(first, second) > ov(r0, r1) + 0.1


def test_synthetic_lru_curve_matches_reference_shape(qwen):
    # the replay engine's unthrottled-enough LRU is not needed here: a plain LRU on decode steps shows
    # the temporal locality (hit rate well above the uniform-random expectation k/n_expert)
    tr = sample_synth(qwen, n_tokens=400, n_layers=3, seed=5)
    for layer in range(3):
        sets = [list(map(int, tr.experts[t, layer])) for t in range(tr.n_tokens)]
        h32 = _lru_ref(sets, 32)
        assert h32 > 0.3, h32  # uniform random routing would give about 32/256 = 0.125


# ------------------------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", "trace", "synth", *args], capture_output=True, text=True)


def test_cli_model_and_params(tmp_path):
    pytest.importorskip("hotexperts.presets")
    out = tmp_path / "s.hxt"
    pj = tmp_path / "p.json"
    r = _cli("--model", "qwen3.5-122b-a10b-q4_k_l", "--tokens", "300", "--out", str(out), "--seed", "4",
             "--requests", "2", "--prompt-tokens", "50", "--ubatch", "32", "--save-params", str(pj))
    assert r.returncode == 0, r.stderr
    tr = Trace.load(out)
    assert tr.n_layers == 48 and tr.n_requests == 2 and tr.n_prefill_tokens == 100
    assert tr.meta["synth"]["seed"] == 4 and tr.meta["model"]["name"] == "qwen3.5-122b-a10b-q4_k_l"
    assert np.max(tr.ubatch_size[tr.phase == PHASE_PREFILL]) == 32
    out2 = tmp_path / "s2.hxt"
    r = _cli("--params", str(pj), "--tokens", "300", "--out", str(out2), "--seed", "4",
             "--requests", "2", "--prompt-tokens", "50", "--ubatch", "32")
    assert r.returncode == 0, r.stderr
    assert Trace.load(out2).equals(tr)


def test_cli_like_and_errors(tmp_path, qwen):
    src = sample_synth(qwen, n_tokens=20, n_layers=3, seed=0)
    f = tmp_path / "short.hxt"
    src.save(f)
    out = tmp_path / "o.hxt"
    r = _cli("--like", str(f), "--tokens", "100", "--out", str(out))
    assert r.returncode == 1 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error:") and "64" in lines[0]
    r = _cli("--like", str(tmp_path / "missing.hxt"), "--tokens", "100", "--out", str(out))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no such file" in r.stderr
    r = _cli("--params", str(f), "--tokens", "100", "--out", str(out))  # not a JSON file
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    # a fit that works: 3 layers, 100 decode tokens
    good = sample_synth(qwen, n_tokens=150, n_layers=3, prompt_tokens=50, seed=2)
    g = tmp_path / "good.hxt"
    good.save(g)
    r = _cli("--like", str(g), "--tokens", "120", "--prompt-tokens", "20", "--out", str(out), "--seed", "1")
    assert r.returncode == 0, r.stderr
    tr = Trace.load(out)
    assert tr.experts.shape == (120, 3, 8) and "noisy" in r.stderr


# ------------------------------------------------------------------------------- fidelity (real)
def test_fidelity_on_real_heldout(kimi_coding_csv, kimi_alt_csv):
    """Fit on the prompt + first 60 % of the coding run's decode; compare decode hit-rate curves of the
    replay engine (lru, fork, belady; 8..128 slots) on the held-out 40 % (warm cache, as in the run)
    and on a different conversation (alt-conv), synthetic = mean of seeds with the same layout.

    The 3-point goal is asserted where it holds (every curve on the held-out part); on alt-conv the
    bounds are the measured gaps (docs/synthetic-traces.md) plus a margin, so a regression shows.
    """
    from hotexperts.sim.replay import replay
    from hotexperts.tracer.importers import import_trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coding = import_trace(kimi_coding_csv, n_expert=256)
        alt = import_trace(kimi_alt_csv, n_expert=256)
        dec = np.flatnonzero(coding.phase == PHASE_DECODE)
        cut = int(round(0.6 * dec.size))
        keep = np.ones(coding.n_tokens, bool)
        keep[dec[cut:]] = False
        params = fit_synth(coding.select(keep), n_seeds=3, rounds=3)

    def rates(tr: Trace, policy: str, first: int) -> np.ndarray:
        out = []
        for k in KS:
            r = replay(tr, policy, k)
            d = np.flatnonzero(r.step_phase == PHASE_DECODE)[first:]
            out.append(r.hit_sel[d].sum() / r.sel[d].sum())
        return np.array(out) * 100

    seeds = range(3)
    gaps = {}
    for name, real, first in (("coding", coding, cut), ("alt", alt, 0)):
        syn = [sample_synth(params, n_tokens=0, layout=real, seed=s) for s in seeds]
        for pol in ("lru", "fork", "belady"):
            gaps[name, pol] = np.mean([rates(t, pol, first) for t in syn], 0) - rates(real, pol, first)
    # the 3-point goal, where it holds: the held-out coding part (max |gap| with 8 seeds: LRU 2.7,
    # fork 2.9, Belady 2.2; with these 3 seeds 2.6, 2.8, 2.2)
    assert np.abs(gaps["coding", "belady"]).max() <= 3.0, gaps["coding", "belady"]
    assert np.abs(gaps["coding", "lru"]).max() <= 3.0, gaps["coding", "lru"]
    assert np.abs(gaps["coding", "fork"]).max() <= 3.0, gaps["coding", "fork"]
    # measured gaps + margin where it does not hold: alt-conv, a less local conversation than the one
    # the parameters were fitted on (8 seeds: LRU 9.2, fork 14.6, Belady 4.1)
    assert np.abs(gaps["alt", "belady"]).max() <= 5.5, gaps["alt", "belady"]
    assert np.abs(gaps["alt", "lru"]).max() <= 10.5, gaps["alt", "lru"]
    assert np.abs(gaps["alt", "fork"]).max() <= 15.5, gaps["alt", "fork"]
    # alt-conv's synthetic curves lie above the real ones: the conversation is less local, not the
    # model noisier (docs/synthetic-traces.md, "alt-conv")
    assert gaps["alt", "lru"].min() > 0 and gaps["alt", "belady"].min() > 0


def test_fit_on_real_trace_reports_quality(kimi_coding_csv):
    from hotexperts.tracer.importers import import_trace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = import_trace(kimi_coding_csv, n_expert=256)
    p = replace(builtin_params("qwen3.5-122b-a10b"))
    q = p.quality
    assert q["n_decode_tokens"] == tr.n_decode_tokens and q["n_prefill_tokens"] == tr.n_prefill_tokens
    # the built-in parameters reproduce the real trace's per-layer statistics they were fitted to
    real = np.array(q["real_stats"])
    assert real.shape == (tr.n_layers, len(q["stat_names"]))
    s = trace_summary(tr)
    assert np.allclose(real[:, 0], s["next_token_reuse"], atol=1e-3)
    assert max(q["max_stat_gap_per_layer"]) < 0.2
