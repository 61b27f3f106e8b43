"""Fuzz: random valid-looking CSV, JSONL and .hxt files fed to import, sim and synth never crash.

Every outcome is a trace (and then a simulation and a synthetic fit that finish) or an InputError; any
other exception, a signal or a hang fails the test.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec
from hotexperts.sim.hardware import load_hardware
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.trace import Trace

MB = 1 << 20
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def spec_for(tr: Trace) -> ModelSpec:
    n = max(tr.moe_layers) + 1
    return ModelSpec(name="fuzz", arch="qwen3moe", n_layer=n, moe_layers=tuple(tr.moe_layers), n_expert=tr.n_expert,
                     n_expert_used=tr.top_k, hidden_size=256, expert_ff=128, expert_bytes=(MB,) * tr.n_layers,
                     dense_bytes=32 * MB, n_kv_layers=n, n_head_kv=2, head_dim=64, n_head=4, vocab_size=1000)


def exercise(path) -> None:
    """Import ``path``; on success simulate two policies and sample from a synthetic fit."""
    from hotexperts.policies import make_policy
    from hotexperts.sim.simulate import simulate
    from hotexperts.tracer.synth import fit_synth, sample_synth

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tr = import_trace(path)
        except InputError:
            return
        assert isinstance(tr, Trace)
        m = spec_for(tr)
        hw = load_hardware("rtx4090-7950x")
        k = max(1, tr.n_expert // 2)
        for pol in (make_policy("lru"), make_policy("fork", interval=10)):
            r = simulate(tr, m, hw, pol, k, warm_up=False)
            assert 0.0 <= r.hit_rate <= 1.0 or np.isnan(r.hit_rate)
        try:
            p = fit_synth(tr, n_seeds=1, rounds=1)
        except InputError:
            return
        s = sample_synth(p, n_tokens=64, seed=0)
        assert s.n_tokens == 64


ids = st.integers(min_value=-2, max_value=40)


@st.composite
def csv_text(draw) -> str:
    """A valid llama.cpp CSV stream (ubatches x layers x tokens) with a few random defects."""
    k = draw(st.integers(1, 4))
    n_expert = draw(st.integers(k, 12))
    n_layers = draw(st.integers(1, 3))
    rows = ["# phase,n_tokens,layer,token_idx," + ",".join(f"e{i}" for i in range(k))]
    for u in range(draw(st.integers(0, 12))):
        phase = "prefill" if u == 0 and draw(st.booleans()) else "decode"
        n_tok = draw(st.integers(2, 6)) if phase == "prefill" else 1
        for layer in range(n_layers):
            for t in range(n_tok):
                e = draw(st.permutations(range(n_expert)))[:k]
                rows.append(f"{phase},{n_tok},{layer},{t}," + ",".join(str(x) for x in e))
    for _ in range(draw(st.integers(0, 2))):  # defects: a changed field, a repeated id, a wild count
        if len(rows) < 2:
            break
        i = draw(st.integers(1, len(rows) - 1))
        f = rows[i].split(",")
        j = draw(st.integers(0, len(f) - 1))
        f[j] = draw(st.sampled_from(["-1", "0", "20000000", "junk", "", f[-1], "99"]))
        rows[i] = ",".join(f)
    return "\n".join(rows) + "\n"


@st.composite
def jsonl_text(draw) -> str:
    """A valid vLLM routing JSONL stream with a few random defects (wrong values, a missing field)."""
    k = draw(st.integers(1, 3))
    n_expert = draw(st.integers(k, 10))
    n_layers = draw(st.integers(1, 3))
    recs = []
    for pid in range(draw(st.integers(1, 3))):
        for t in range(draw(st.integers(0, 8))):
            for layer in range(n_layers):
                e = list(draw(st.permutations(range(n_expert)))[:k])
                recs.append({"dataset": "x", "problem_id": pid, "layer": layer, "experts": e,
                             "gating_probs": [1.0 / k] * k, "token_idx": t})
    for _ in range(draw(st.integers(0, 2))):
        if not recs:
            break
        r = recs[draw(st.integers(0, len(recs) - 1))]
        key = draw(st.sampled_from(["layer", "experts", "token_idx", "problem_id"]))
        if draw(st.booleans()):
            r.pop(key, None)
        else:
            r[key] = draw(st.sampled_from([-1, 10**30, "x", None, [1, 1], [99], 3.5]))
    return "\n".join(json.dumps(r) for r in recs) + "\n"


@FUZZ
@given(text=csv_text())
def test_fuzzed_llama_csv(tmp_path, text):
    p = tmp_path / "f.csv"
    p.write_text(text)
    exercise(p)


@FUZZ
@given(text=jsonl_text())
def test_fuzzed_vllm_jsonl(tmp_path, text):
    p = tmp_path / "f.jsonl"
    p.write_text(text)
    exercise(p)


@pytest.fixture(scope="module")
def hxt_bytes(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(0)
    ids_ = np.stack([rng.permutation(16)[:4] for _ in range(60 * 3)]).reshape(60, 3, 4)
    tr = Trace.from_arrays(ids_, n_expert=16, phase=np.r_[np.zeros(20), np.ones(40)],
                           ubatch=np.r_[np.zeros(20), np.arange(1, 41)])
    p = tmp_path_factory.mktemp("h") / "t.hxt"
    tr.save(p)
    return p.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzzed_hxt(tmp_path, hxt_bytes, edits, cut):
    b = bytearray(hxt_bytes)
    for pos, val in edits:
        b[pos % len(b)] = val
    if cut is not None:
        b = b[: cut % len(b)]
    p = tmp_path / "f.hxt"
    p.write_bytes(bytes(b))
    try:
        tr = Trace.load(p)
    except InputError:
        return
    exercise_loaded = spec_for(tr)
    assert exercise_loaded.n_expert == tr.n_expert
