"""The live engine on the CPU: every hot/cold split computes the dense reference, and live counters equal
the replay's. The "GPU" side runs on the CPU (device="cpu"), so CI checks the logic without a GPU.

The reference is independent of the engine's compute code: plain numpy float64 on the engine's host
weights (int8 blocks x per-row scales, or the float blocks as stored), all top-k experts with their gate
weights, the dense part, the RMS norm and the shared expert written out from the engine's documented layer
function. Every expert dtype the engine offers is checked (the engine fixture is parametrised by dtype).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the test extras; the runtime needs it")

from hotexperts.policies import REGISTRY, make_policy  # noqa: E402
from hotexperts.runtime.engine import EXPERT_DTYPES, EngineShape, MoEEngine, Schedule, default_layers  # noqa: E402
from hotexperts.sim.replay import replay  # noqa: E402
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace  # noqa: E402

SHAPE = EngineShape(hidden=32, expert_ff=16, n_expert=12, top_k=3, n_layers=3, shared_ff=8,
                    dense_bytes_per_layer=32 * 32 * 4 * 2)


# NOTE: relative tolerance of a layer against the float64 reference. int8 and fp32 compute in float32
# throughout; bf16/fp16 experts run their CPU op with activations rounded to that dtype (8 and 11 mantissa
# bits), so a cold expert is exact only to ~2^-8 relative.
TOL = {"int8": 1e-5, "fp32": 1e-5, "bf16": 2e-2, "fp16": 4e-3}


@pytest.fixture(scope="module", params=sorted(EXPERT_DTYPES))
def engine(request):
    import dataclasses

    eng = MoEEngine(dataclasses.replace(SHAPE, dtype=request.param), device="cpu", compute_dtype=torch.float32,
                    cpu_threads=1, seed=3)
    yield eng
    eng.close()


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def reference_layer(eng: MoEEngine, layer: int, x: np.ndarray, ids, ws) -> np.ndarray:
    """Dense float64 reference of one layer: dense part + RMS norm, shared expert, all top-k experts."""
    h, ff = eng.shape.hidden, eng.shape.expert_ff
    a = x.copy()
    if eng.dense[layer] is not None:
        a = a + (_np(eng.dense[layer]) @ a).reshape(-1, h).sum(0)
    a = a / np.sqrt(np.mean(a * a) + 1e-6)
    out = a.copy()
    sf = eng.shape.shared_ff
    if sf:
        gu = _np(eng.shared_gu[layer]) @ a
        out += _np(eng.shared_d[layer]) @ (gu[:sf] / (1 + np.exp(-gu[:sf])) * gu[sf:])
    q = _np(eng.q[layer])
    for e, w in zip(ids, ws):
        wgu = q[e, : 2 * ff * h].reshape(2 * ff, h)
        wd = q[e, 2 * ff * h :].reshape(h, ff)
        if eng.shape.dtype == "int8":
            wgu = wgu * _np(eng.sgu[layer])[e][:, None]
            wd = wd * _np(eng.sd[layer])[e][:, None]
        gu = wgu @ a
        out += w * (wd @ (gu[:ff] / (1 + np.exp(-gu[:ff])) * gu[ff:]))
    return out


def _check_layer(eng, layer, x, ids, ws, mode):
    out, c = eng.forward_layer(layer, torch.tensor(x, dtype=torch.float32).view(1, -1), ids, ws, mode=mode)
    ref = reference_layer(eng, layer, x, ids, ws)
    got = _np(out).ravel()
    assert np.all(np.isfinite(got))
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < TOL[eng.shape.dtype], (layer, ids, mode, eng.shape.dtype, err)
    return c


@pytest.mark.parametrize("mode", ["cold-cpu", "fetch-on-miss"])
def test_every_split_matches_dense_reference(engine, mode):
    rng = np.random.default_rng(7)
    E, k = SHAPE.n_expert, SHAPE.top_k
    for layer in range(SHAPE.n_layers):
        ids = rng.choice(E, size=k, replace=False)
        ws = rng.dirichlet(np.ones(k))
        x = rng.standard_normal(SHAPE.hidden)
        # every subset of the routed experts resident: all 2^k hot/cold splits
        for mask in range(1 << k):
            hot = [int(ids[j]) for j in range(k) if mask >> j & 1]
            slots = np.full(SHAPE.n_layers, 4)
            init = np.full((SHAPE.n_layers, 4), -1)
            # fill the unused slots with other experts, so residency is not just "the routed ones"
            others = [e for e in range(E) if e not in ids]
            init[layer, : len(hot)] = hot
            init[layer, len(hot) : 4] = others[: 4 - len(hot)]
            engine.set_slots(slots, init)
            c = _check_layer(engine, layer, x, ids, ws, mode)
            assert c["hit_sel"] == len(hot) and c["sel"] == k
            assert c["cold_distinct"] == k - len(hot)
            eb = engine.shape.expert_bytes
            assert c["fetch_bytes"] == (eb * (k - len(hot)) if mode == "fetch-on-miss" else 0)


def test_duplicate_selection_and_bypass(engine):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE.hidden)
    init = np.full((SHAPE.n_layers, 2), -1)
    init[0] = [5, 2]
    engine.set_slots(np.full(SHAPE.n_layers, 2), init)
    ids, ws = [5, 5, 9], [0.5, 0.25, 0.25]  # a repeated id must count twice, as llama.cpp would compute it
    c = _check_layer(engine, 0, x, ids, ws, "cold-cpu")
    assert (c["hit_sel"], c["hot_distinct"], c["cold_distinct"]) == (2, 1, 1)
    out, c = engine.forward_layer(0, torch.tensor(x, dtype=torch.float32).view(1, -1), [5, 2, 9], [0.2, 0.3, 0.5],
                                  bypass=True)
    assert c["hit_sel"] == 0 and c["cold_distinct"] == 3
    ref = reference_layer(engine, 0, x, [5, 2, 9], [0.2, 0.3, 0.5])
    got = _np(out).ravel()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < TOL[engine.shape.dtype]


def test_uploads_put_the_right_weights_in_the_right_slot(engine):
    engine.set_slots(np.array([3, 0, 1]))
    events = np.array([[0, 0, 1, 7], [0, 0, 0, 4], [0, 2, 0, 11], [1, 0, 1, 2]])
    n, nbytes = engine.apply_uploads(events, blocking=True)
    assert n == 4 and nbytes == 4 * engine.shape.expert_bytes
    assert engine.pool[0].dtype == engine.q[0].dtype  # the slots hold the host dtype: an upload is a plain copy
    assert engine.resident(0).tolist() == [4, 2, -1]
    assert engine.resident(1).tolist() == []
    assert engine.resident(2).tolist() == [11]
    for layer, slot, e in ((0, 0, 4), (0, 1, 2), (2, 0, 11)):
        assert torch.equal(engine.pool[layer][slot], engine.q[layer][e])
    with pytest.raises(ValueError):
        engine.apply_uploads(np.array([[0, 1, 0, 3]]), blocking=True)  # layer 1 has no slots


def _trace(seed: int = 0, n_decode: int = 40) -> Trace:
    """A small trace with a prefill ubatch, skewed routing and gate weights."""
    rng = np.random.default_rng(seed)
    n_pre = 6
    n = n_pre + n_decode
    p = 1.0 / np.arange(1, SHAPE.n_expert + 1) ** 1.2
    p /= p.sum()
    ids = np.stack([
        np.stack([rng.choice(SHAPE.n_expert, SHAPE.top_k, replace=False, p=p) for _ in range(SHAPE.n_layers)])
        for _ in range(n)
    ])
    phase = np.array([PHASE_PREFILL] * n_pre + [PHASE_DECODE] * n_decode, np.uint8)
    ubatch = np.concatenate([np.zeros(n_pre, np.int32), np.arange(1, n_decode + 1, dtype=np.int32)])
    w = rng.dirichlet(np.ones(SHAPE.top_k), size=(n, SHAPE.n_layers)).astype(np.float16)
    return Trace.from_arrays(ids, n_expert=SHAPE.n_expert, phase=phase, ubatch=ubatch, weights=w)


def _small_params(name: str) -> dict:
    """Parameters that make every policy act within a 40-step trace."""
    return {
        "fork": {"interval": 5},
        "layer-offload": {"n_cpu_moe": 1},
    }.get(name, {})


def _make(name: str):
    return make_policy(name, **_small_params(name))


# NOTE: lru-textbook (request model, merged with issue 14) inserts a miss at once, so a later request of the
# same step can find the expert it evicted gone; the engine applies a step's uploads after its compute and
# serves that request from VRAM: its live hits differ (more) until the engine runs request-order residency.
# strict: the test fails as soon as the engine and the replay agree, so the mark cannot hide a fix.
_REQUEST_MODEL = {"lru-textbook"}
_LIVE_POLICIES = [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="in-step eviction is not run by the engine"))
    if n in _REQUEST_MODEL else n
    for n in sorted(REGISTRY)
]


@pytest.mark.parametrize("name", _LIVE_POLICIES)
@pytest.mark.parametrize("mode", ["cold-cpu", "fetch-on-miss"])
def test_live_run_matches_replay_for_every_policy(engine, name, mode):
    tr = _trace(seed=sum(map(ord, name)))
    pol = _make(name)
    slots = 4
    res = replay(tr, pol, slots, record_events=True)
    sched = Schedule.from_replay(tr, res)
    run = engine.run(sched, mode=mode, warmup=0)
    dec = np.flatnonzero(res.step_phase == PHASE_DECODE)
    assert run.steps.tolist() == dec.tolist()
    assert run.sel.tolist() == res.sel[dec].sum(axis=1).tolist()
    assert run.hit_sel_layers.tolist() == res.hit_sel[dec].tolist()
    assert run.cold_distinct.tolist() == res.cold_distinct[dec].sum(axis=1).tolist()
    assert run.uploads.tolist() == res.uploads[dec].sum(axis=1).tolist()
    eb = engine.shape.expert_bytes
    if mode == "cold-cpu":
        want = res.uploads[dec].sum(axis=1) * eb
    else:
        want = (res.cold_distinct[dec] + res.uploads[dec] - res.uploads_missed[dec]).sum(axis=1) * eb
    assert run.upload_bytes.tolist() == want.tolist()
    # the final slot table is the replay's, and every slot holds its expert's weights
    for layer in range(SHAPE.n_layers):
        want_tab = res.resident_final[layer, : int(res.slots[layer])]
        assert engine.resident(layer).tolist() == want_tab.tolist()
        for slot, e in enumerate(want_tab):
            if e >= 0:
                assert torch.equal(engine.pool[layer][slot], engine.q[layer][int(e)])
    assert run.hit_rate == pytest.approx(res.hit_rate)


def test_live_outputs_match_reference_along_a_run(engine):
    """Token outputs of a whole run (all layers chained) equal the reference chain under a fork schedule."""
    tr = _trace(seed=11, n_decode=12)
    res = replay(tr, _make("fork"), 4, record_events=True)
    sched = Schedule.from_replay(tr, res)
    engine.set_slots(sched.slots, sched.initial_resident)
    ev = sched.events
    b = sched.step_bounds
    for s in range(sched.n_steps):
        for t in range(int(b[s]), int(b[s + 1])):
            if sched.step_phase[s] != PHASE_DECODE:
                continue
            x = engine.token_input(t)
            xr = _np(x).ravel()
            for layer in range(SHAPE.n_layers):
                x, _ = engine.forward_layer(layer, x, sched.experts[t, layer], sched.weights[t, layer])
                xr = reference_layer(engine, layer, xr, sched.experts[t, layer], sched.weights[t, layer])
            assert np.linalg.norm(_np(x).ravel() - xr) / np.linalg.norm(xr) < TOL[engine.shape.dtype]
        engine.apply_uploads(ev[ev[:, 0] == s], blocking=False)


def test_shape_from_spec_and_engine_model_spec():
    from hotexperts.modelspec import load_model_spec

    spec = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    sh = EngineShape.from_spec(spec, n_layers=12)
    assert (sh.hidden, sh.expert_ff, sh.n_expert, sh.top_k) == (3072, 1024, 256, 8)
    assert sh.expert_bytes == 3 * 3072 * 1024
    assert sh.dense_bytes_per_layer == (spec.dense_bytes - spec.embd_bytes) // spec.n_layer
    m = sh.model_spec(spec)
    assert m.n_layer == 12 and m.moe_layers == tuple(range(12))
    assert set(m.expert_bytes) == {3 * 3072 * 1024}
    # the dense part the engine builds is within one row-block of the requested bytes
    assert abs(m.dense_bytes / 12 - sh.dense_bytes_per_layer) <= 3072 * 3072 * 2
    json.dumps(m.to_dict())
    # the simulator prices exactly the bytes the engine moves: weights x bytes per weight of the dtype
    for dtype, elem in (("int8", 1), ("fp32", 4), ("bf16", 2), ("fp16", 2)):
        n = default_layers(dtype)
        sd = EngineShape.from_spec(spec, n_layers=n, dtype=dtype)
        md = sd.model_spec(spec)
        assert sd.expert_bytes == 3 * 3072 * 1024 * elem and set(md.expert_bytes) == {sd.expert_bytes}
        assert md.n_layer == n and dtype in md.name
        # the default layer count keeps the experts within 60 GB of a 125 GB host
        assert n * 256 * sd.expert_bytes <= 60e9
    assert EngineShape.from_spec(spec, n_layers=6, dtype="fp32").expert_bytes == 37_748_736
    with pytest.raises(ValueError):
        EngineShape.from_spec(spec, n_layers=6, dtype="int4")


# ------------------------------------------------------------------ validate / calibrate on the CPU
def _tiny_spec():
    from hotexperts.modelspec import ModelSpec

    return ModelSpec(name="tiny", arch="test", n_layer=3, moe_layers=(0, 1, 2), n_expert=SHAPE.n_expert,
                     n_expert_used=SHAPE.top_k, hidden_size=32, expert_ff=16, expert_bytes=(1536,) * 3,
                     dense_bytes=3 * 32 * 32 * 4, n_shared_expert=1, shared_ff=8)


def test_prepare_trace_cuts_and_extends():
    from hotexperts.runtime.validate import prepare_trace

    tr = _trace(n_decode=10)
    cut = prepare_trace(tr, decode_steps=4)
    assert cut.n_decode_tokens == 4 and cut.n_prefill_tokens == tr.n_prefill_tokens
    assert np.array_equal(cut.experts, tr.experts[: tr.n_prefill_tokens + 4])
    ext = prepare_trace(tr, decode_steps=25)
    dec = ext.experts[ext.phase == PHASE_DECODE]
    assert dec.shape[0] == 25
    # the decode routing repeats in order: 10 original steps, then the same 10, then 5 more
    base = tr.experts[tr.phase == PHASE_DECODE]
    assert np.array_equal(dec, np.concatenate([base, base, base[:5]]))


def test_load_configs_refuses_bad_files(tmp_path):
    from hotexperts.errors import InputError
    from hotexperts.runtime.validate import load_configs

    p = tmp_path / "c.json"
    p.write_text('[{"policy": "fork", "slots": 4, "params": {"interval": 5}}]')
    (c,) = load_configs(p)
    assert (c.policy, c.slots, c.params, c.mode) == ("fork", 4, {"interval": 5}, "cold-cpu")
    for text, msg in (("[", "not valid JSON"), ("{}", "non-empty JSON list"), ('[{"slots": 2}]', "policy"),
                      ('[{"policy": "lru", "sluts": 2}]', "unknown key")):
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            load_configs(p)
    with pytest.raises(InputError, match="no such"):
        load_configs(tmp_path / "missing.json")


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_validate_end_to_end_on_cpu(tmp_path, dtype):
    """Calibrate and validate the tiny engine on the CPU: files, keys, and the live counters equal the sim's;
    the simulated model's expert bytes follow the dtype, and the CPU-path line compares the calibrated rates."""
    from hotexperts.runtime.calibrate import calibrate, write_profile
    from hotexperts.runtime.validate import LiveConfig, validate

    spec = _tiny_spec()
    cal = calibrate(model=spec, n_layers=3, dtype=dtype, device="cpu", cpu_threads=1, reps=2, rounds=3,
                    dram_gib=1 / 64, log=lambda m: None)
    hw_path = tmp_path / "hw.json"
    write_profile(cal, hw_path)
    hw = json.loads(hw_path.read_text())
    assert hw["cpu_expert_bw"] > 0 and hw["gpu_mem_bw"] > 0 and hw["handoff_us"] >= 0
    cfgs = [LiveConfig("all-cpu", "all-cpu"), LiveConfig("fork", "fork", {"interval": 5}, 4),
            LiveConfig("lru-fom", "lru", {}, 4, "fetch-on-miss")]
    res = validate(trace=_trace(n_decode=14), model=spec, hardware=str(hw_path), out=tmp_path / "v", configs=cfgs,
                   n_layers=3, dtype=dtype, tokens=10, warmup=2, device="cpu", cpu_threads=1, log=lambda m: None)
    saved = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert (tmp_path / "v" / "validation.png").stat().st_size > 0 and (tmp_path / "v" / "validation.svg").exists()
    for key in ("machine", "date", "configs", "median_abs_error_pct", "max_abs_error_pct"):
        assert key in saved
    assert [r["name"] for r in saved["configs"]] == ["all-cpu", "fork", "lru-fom"]
    for r in saved["configs"]:
        assert r["predicted_hit_rate"] == r["measured_hit_rate"]
        assert r["predicted_upload_bytes"] == r["measured_upload_bytes"]
        assert r["decode_tokens"] == 10
        assert r["error_pct"] == pytest.approx((r["predicted_tok_s"] / r["measured_tok_s"] - 1) * 100)
    assert saved["configs"][0]["measured_hit_rate"] == 0.0
    assert saved["configs"][2]["measured_upload_bytes"] > 0
    errs = [abs(r["error_pct"]) for r in saved["configs"]]
    assert res["max_abs_error_pct"] == pytest.approx(max(errs))
    elem = {"int8": 1, "fp32": 4}[dtype]
    assert saved["engine"]["expert_dtype"] == dtype and dtype in saved["model"]
    # fetch-on-miss moves whole experts: its bytes are a multiple of the dtype's expert size
    assert saved["configs"][2]["measured_upload_bytes"] % (3 * 32 * 16 * elem) == 0
    cv, raw = saved["cpu_path_vs_dram"], cal["measurements"]["cpu_path_vs_dram"]
    assert cv["cpu_expert_gbs"] == hw["cpu_expert_bw"] and cv["dram_read_gbs"] == hw["dram_bw"]
    assert cv["half_dram_gbs"] == pytest.approx(hw["dram_bw"] / 2)
    assert cv["met"] == (hw["cpu_expert_bw"] >= hw["dram_bw"] / 2)
    assert raw["met"] == (raw["cpu_expert_gbs"] >= raw["dram_read_gbs"] / 2) and raw["expert_dtype"] == dtype


def test_cli_refuses_bad_input(tmp_path, capsys):
    from hotexperts.cli import main

    rc = main(["validate", str(tmp_path / "nope.hxt"), "--hardware", "h200-host", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "no such trace file" in err and "Traceback" not in err
    assert main(["calibrate", "--out", str(tmp_path / "hw.json"), "--layers", "0"]) == 1
