"""Stable calibration (issue 12, item 0): intervals, the per-round derivation, prediction shifts, the wide
flag, and validation with repeated, interleaved runs. CPU only: the GPU runs are in benchmarks/results/."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the test extras; the runtime needs it")

from hotexperts.runtime.calibrate import (  # noqa: E402
    PROFILE_PARAMS,
    derive_round,
    flag_wide,
    interval,
    load_intervals,
    prediction_shifts,
    reference_predictions,
)
from hotexperts.runtime.validate import LiveConfig, default_configs, family, spearman  # noqa: E402
from hotexperts.sim.hardware import HardwareProfile  # noqa: E402


# ------------------------------------------------------------------------------------ interval()
def test_interval_order_statistics_and_coverage():
    iv = interval([5, 3, 9, 1, 7, 2, 8, 4, 6])
    # n = 9: [x_(2), x_(8)] covers the median with 1 - 2 * (1 + 9) / 512 = 96.1 %; [x_(3), x_(7)] only 82 %
    assert (iv["value"], iv["lo"], iv["hi"], iv["n"]) == (5.0, 2.0, 8.0, 9)
    assert iv["coverage"] == pytest.approx(1 - 20 / 512, abs=1e-4)
    assert iv["rel_halfwidth"] == pytest.approx(3.0 / 5.0)
    # five values cannot reach 95 %: the whole range, and the coverage says so (1 - 2/32)
    iv5 = interval([1, 2, 3, 4, 50])
    assert (iv5["lo"], iv5["hi"]) == (1.0, 50.0) and iv5["coverage"] == pytest.approx(0.9375)
    # 11 values: j = 2 (98.8 %), not 3 (93.5 %)
    iv11 = interval(list(range(11)))
    assert (iv11["lo"], iv11["hi"]) == (1.0, 9.0)


def test_interval_reports_outliers_without_moving_the_median():
    vals = [9, 10, 11, 10, 9, 11, 10, 10, 50]
    iv = interval(vals)
    assert iv["outliers"] == [8] and iv["value"] == 10.0
    assert interval([10.0] * 7)["outliers"] == [] and interval([10.0] * 7)["rel_halfwidth"] == 0.0
    assert math.isinf(interval([0.0, 0.0, 0.0, 1.0, -1.0])["rel_halfwidth"])
    with pytest.raises(ValueError):
        interval([])
    with pytest.raises(ValueError):
        interval([1.0, float("nan")])


# ------------------------------------------------------------------------------- derive_round()
def _synthetic_round(p: dict[str, float], c: dict[str, float]) -> dict[str, object]:
    """Timings a machine with the parameters ``p`` would give (the inverse of derive_round's formulas)."""
    k, b = int(c["k"]), c["b"]
    t_dense = 150e-6
    gpu_bw = p["gpu_mem_bw"]
    token_s = 40e-6
    # dense_fixed_ms = token + L * t_dense - dense bytes at gpu_mem_bw  (c chosen so this is positive)
    cpu_fixed = 100e-6
    pinned = p["pcie_pinned_bw"]
    return {
        "cpu_s": [cpu_fixed + n * b / (p["cpu_expert_bw"] * 1e9) for n in range(1, k + 1)],
        "gpu_s": [p["gpu_expert_fixed_us"] * 1e-6 + n * b / (p["gpu_expert_bw"] * 1e9) for n in range(1, k + 1)],
        "gpu_synced_s": [300e-6] * k,
        "gemv_s": c["gemv_bytes"] / (gpu_bw * 1e9),
        "dense_layer_s": t_dense,
        "all_hot_s": t_dense + 1e-6,  # below dense + the k-expert grouped call: the dense time is used
        "token_s": token_s,
        "cold_layer_s": {str(n): t_dense + p["handoff_us"] * 1e-6 + n * b / (p["cpu_expert_bw"] * 1e9)
                         for n in (1, k // 2, k)},
        "handoff_roundtrip_s": 90e-6,
        "mixed_s": 2e-3,
        "dram_s": c["dram_bytes"] / (p["dram_bw"] * 1e9),
        "pinned_s": b / (pinned * 1e9),
        "pageable_s": b / (p["pcie_pageable_bw"] * 1e9),
        "upload_blocking_s": b / (pinned * 1e9) + p["upload_layer_fixed_us"] * 1e-6,
        "hot1_s": 200e-6,
        "miss1_s": 200e-6 + b / (pinned * 1e9) + p["miss_sync_us"] * 1e-6,
        "cpu_alone_s": 5e-3,
        "cpu_busy_s": 5e-3 / (1 - p["upload_contention"]),
    }


def test_derive_round_recovers_the_parameters_it_was_built_from():
    c = {"k": 8, "b": 37_748_736, "n_layers": 6, "gemv_bytes": 75_000_000, "dense_bytes_total": 6 * 78_000_000,
         "dram_bytes": 1 << 31, "cuda": True}
    p = {"gpu_mem_bw": 3300.0, "pcie_pinned_bw": 52.0, "pcie_pageable_bw": 8.0, "cpu_expert_bw": 62.0,
         "dram_bw": 90.0, "handoff_us": 700.0, "miss_sync_us": 12.0, "gpu_expert_bw": 800.0,
         "gpu_expert_fixed_us": 120.0, "upload_layer_fixed_us": 30.0, "upload_contention": 0.3}
    got = derive_round(_synthetic_round(p, c), c)
    for key, v in p.items():
        assert got[key] == pytest.approx(v, rel=1e-6), key
    want_dense = (40e-6 + 6 * 150e-6) * 1e3 - 6 * 78_000_000 / (3300.0e9) * 1e3
    assert got["dense_fixed_ms"] == pytest.approx(want_dense, rel=1e-9)
    assert set(PROFILE_PARAMS) <= set(got)
    # the in-layer line of the cold layers has the isolated op's slope here, and the hand-off as intercept
    assert got["cpu_bw_in_layer"] == pytest.approx(62.0, rel=1e-6)
    assert got["handoff_intercept_us"] == pytest.approx(700.0, rel=1e-6)
    assert "dense_issue_beside_cpu_us" not in got  # a round without that microbenchmark
    with_issue = derive_round({**_synthetic_round(p, c), "dense_issue_alone_s": 2e-4, "dense_issue_beside_cpu_s": 6e-4}, c)
    assert (with_issue["dense_issue_alone_us"], with_issue["dense_issue_beside_cpu_us"]) == pytest.approx((200.0, 600.0))
    # without a GPU the GPU-only parts take the documented defaults
    cpu = derive_round(_synthetic_round(p, c), {**c, "cuda": False})
    assert (cpu["pcie_pinned_bw"], cpu["upload_contention"], cpu["miss_sync_us"]) == (50.0, 0.0, 0.0)


# ------------------------------------------------------------------------ prediction shifts, flag
def _hw() -> HardwareProfile:
    from hotexperts.sim.hardware import load_hardware

    return load_hardware("h200-host").replace(cpu_expert_bw=62.0, handoff_us=700.0, gpu_expert_bw=800.0,
                                              gpu_expert_fixed_us=120.0, upload_contention=0.3)


def _engine_spec():
    from hotexperts.modelspec import load_model_spec
    from hotexperts.runtime.engine import EngineShape

    spec = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    return EngineShape.from_spec(spec, n_layers=6, dtype="fp32").model_spec(spec)


def test_reference_predictions_rank_as_the_cost_model_says():
    ref = reference_predictions(_engine_spec(), _hw())
    assert set(ref) >= {"all-cpu", "hot-50%", "all-hot", "hot-50%-fetch-on-miss", "hot-50%-blocking-uploads"}
    # more hot experts, faster; uploads cost time
    assert ref["all-cpu"] < ref["hot-25%"] < ref["hot-50%"] < ref["hot-75%"] < ref["all-hot"]
    assert ref["hot-50%-blocking-uploads"] < ref["hot-50%"]


def test_prediction_shifts_move_only_the_predictions_a_parameter_enters():
    hw, spec = _hw(), _engine_spec()
    ivs = {
        "cpu_expert_bw": {"lo": 55.0, "hi": 62.0},  # slower CPU at lo: CPU-bound predictions fall
        "handoff_us": {"lo": 700.0, "hi": 700.0},  # a zero-width interval moves nothing
    }
    sh = prediction_shifts(hw, ivs, lambda h: reference_predictions(spec, h))
    assert sh["cpu_expert_bw"]["all-cpu"][0] < -5.0 and sh["cpu_expert_bw"]["all-cpu"][1] == 0.0
    # no CPU expert: the CPU rate cannot move the all-hot prediction
    assert sh["cpu_expert_bw"]["all-hot"] == [0.0, 0.0]
    assert all(v == [0.0, 0.0] for v in sh["handoff_us"].values())
    # all-cpu: T = dense + L * (handoff + k b / bw): the shift is the time ratio
    t = 1 / reference_predictions(spec, hw)["all-cpu"]
    t_lo = 1 / reference_predictions(spec, hw.replace(cpu_expert_bw=55.0))["all-cpu"]
    assert sh["cpu_expert_bw"]["all-cpu"][0] == pytest.approx((t / t_lo - 1) * 100)
    flagged = flag_wide(sh, max_shift_pct=1.0)
    assert set(flagged) == {"cpu_expert_bw"} and flagged["cpu_expert_bw"] > 5.0
    assert flag_wide(sh, max_shift_pct=100.0) == {}


# --------------------------------------------------------------------------- calibrate on the CPU
def _tiny_spec():
    from hotexperts.modelspec import ModelSpec

    return ModelSpec(name="tiny", arch="test", n_layer=3, moe_layers=(0, 1, 2), n_expert=12, n_expert_used=3,
                     hidden_size=32, expert_ff=16, expert_bytes=(1536,) * 3, dense_bytes=3 * 32 * 32 * 4,
                     n_shared_expert=1, shared_ff=8)


def test_calibrate_writes_intervals_rounds_and_shifts(tmp_path):
    from hotexperts.runtime.calibrate import calibrate, write_profile

    lines: list[str] = []
    cal = calibrate(model=_tiny_spec(), n_layers=3, dtype="fp32", device="cpu", cpu_threads=1, reps=2, rounds=5,
                    dram_gib=1 / 64, max_shift_pct=0.0, log=lines.append)
    hw_path = tmp_path / "hw.json"
    write_profile(cal, hw_path)
    prof = json.loads(hw_path.read_text())
    raw = json.loads((tmp_path / "hw.raw.json").read_text())
    assert raw["rounds"] == 5 and len(raw["rounds_raw"]) == 5 and len(raw["rounds_params"]) == 5
    # every round ran every microbenchmark once, in its own order
    assert all(sorted(r["order"]) == sorted(raw["rounds_raw"][0]["order"]) for r in raw["rounds_raw"])
    for p in PROFILE_PARAMS:
        iv = raw["intervals"][p]
        assert iv["lo"] <= iv["value"] <= iv["hi"] and iv["n"] == 5, p
        # the profile holds each parameter's median over the rounds (rounded for the file)
        assert prof[p] == pytest.approx(float(np.median([rp[p] for rp in raw["rounds_params"]])), rel=1e-3, abs=1e-3)
    assert set(raw["prediction_shifts_pct"]) == set(PROFILE_PARAMS)
    # limit 0 %: every parameter whose interval moves any prediction is flagged, and printed
    flagged = raw["wide"]["flagged"]
    moved = {p for p, row in raw["prediction_shifts_pct"].items() if any(v != 0 for pair in row.values() for v in pair)}
    assert set(flagged) == moved and moved
    assert any(line.startswith("calibrate: WIDE ") for line in lines)
    assert load_intervals(hw_path) == raw["intervals"]
    # the diagnostics, e.g. the dense part's host issue alone and beside the running CPU op, have intervals too
    for q in ("dense_issue_alone_us", "dense_issue_beside_cpu_us", "layer_mixed_half_hot_us", "cpu_bw_in_layer"):
        assert raw["extra_intervals"][q]["n"] == 5 and raw["extra_intervals"][q]["value"] > 0, q
    assert load_intervals(tmp_path / "other.json") is None


# ------------------------------------------------------------------------------------- validate
def _trace(n_decode: int):
    """6 prefill + ``n_decode`` decode tokens over the tiny model's 3 layers, skewed routing, gate weights."""
    from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

    rng = np.random.default_rng(0)
    n_pre, E, k, L = 6, 12, 3, 3
    n = n_pre + n_decode
    p = 1.0 / np.arange(1, E + 1) ** 1.2
    p /= p.sum()
    ids = np.stack([np.stack([rng.choice(E, k, replace=False, p=p) for _ in range(L)]) for _ in range(n)])
    phase = np.array([PHASE_PREFILL] * n_pre + [PHASE_DECODE] * n_decode, np.uint8)
    ubatch = np.concatenate([np.zeros(n_pre, np.int32), np.arange(1, n_decode + 1, dtype=np.int32)])
    w = rng.dirichlet(np.ones(k), size=(n, L)).astype(np.float16)
    return Trace.from_arrays(ids, n_expert=E, phase=phase, ubatch=ubatch, weights=w)


def test_default_configs_have_several_k_for_every_family():
    cfgs = default_configs(6)
    assert len(cfgs) >= 16 and len({c.name for c in cfgs}) == len(cfgs)
    by_fam: dict[str, set[int]] = {}
    for c in cfgs:
        if isinstance(c.slots, int) and c.slots:
            by_fam.setdefault(family(c), set()).add(c.slots)
    for fam in ("fork", "lru", "decay", "static", "window", "fetch-on-miss-lru"):
        assert len(by_fam[fam]) >= 2, fam
    mix = default_configs(12, n_expert=8)
    assert {c.slots for c in mix if c.policy == "lru" and c.mode == "cold-cpu"} == {1, 3, 5}


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert math.isnan(spearman([1], [1])) and math.isnan(spearman([1, 1], [1, 2]))


def test_validate_repeats_interleaved_with_spread_and_profiles(tmp_path):
    """Three repetitions in three shuffled orders; the mean, SD and runs are reported; a second profile's
    predictions sit beside the first's; the calibration's intervals give per-configuration shifts."""
    from hotexperts.runtime.calibrate import calibrate, write_profile
    from hotexperts.runtime.validate import validate

    spec = _tiny_spec()
    cal = calibrate(model=spec, n_layers=3, dtype="fp32", device="cpu", cpu_threads=1, reps=2, rounds=3,
                    dram_gib=1 / 64, log=lambda m: None)
    hw_path = tmp_path / "hw.json"
    write_profile(cal, hw_path)
    slow = HardwareProfile.load(hw_path).replace(cpu_expert_bw=HardwareProfile.load(hw_path).cpu_expert_bw / 2)
    slow_path = tmp_path / "slow.json"
    slow.save(slow_path)
    cfgs = [LiveConfig("all-cpu", "all-cpu"), LiveConfig("fork", "fork", {"interval": 5}, 4),
            LiveConfig("lru-fom", "lru", {}, 4, "fetch-on-miss"), LiveConfig("static", "static", {}, 6)]
    res = validate(trace=_trace(12), model=spec, hardware=str(hw_path), out=tmp_path / "v", configs=cfgs,
                   n_layers=3, dtype="fp32", tokens=8, warmup=2, device="cpu", cpu_threads=1, repeats=3, seed=1,
                   compare_hardware=[str(slow_path)], log=lambda m: None)
    saved = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert saved["repeats"] == 3 and len(saved["run_order"]) == 3
    assert all(sorted(o) == sorted(c.name for c in cfgs) for o in saved["run_order"])
    assert len({tuple(o) for o in saved["run_order"]}) > 1  # the orders differ
    for r in saved["configs"]:
        runs = r["measured_runs_tok_s"]
        assert len(runs) == 3
        assert r["measured_tok_s"] == pytest.approx(np.mean(runs))
        assert r["measured_sd_tok_s"] == pytest.approx(np.std(runs, ddof=1))
        assert r["error_pct"] == pytest.approx((r["predicted_tok_s"] / r["measured_tok_s"] - 1) * 100)
        # the main profile's prediction through the counts equals the simulator's
        assert r["predicted_by_profile_tok_s"]["main"] == pytest.approx(r["predicted_tok_s"], rel=1e-9)
        assert r["measured_hit_rates_equal"] and r["predicted_hit_rate"] == r["measured_hit_rate"]
        assert set(r["interval_shift_pct"]) == set(PROFILE_PARAMS)
    by = {r["name"]: r for r in saved["configs"]}
    # halving the CPU rate slows the all-CPU prediction, and the spread between profiles says by how much
    all_cpu = by["all-cpu"]["predicted_by_profile_tok_s"]
    assert all_cpu[str(slow_path)] < all_cpu["main"]
    assert by["all-cpu"]["profile_spread_pct"] == pytest.approx(
        (all_cpu["main"] - all_cpu[str(slow_path)]) / np.median(list(all_cpu.values())) * 100)
    assert by["lru-fom"]["predicted_by_profile_tok_s"][str(slow_path)] == pytest.approx(
        by["lru-fom"]["predicted_by_profile_tok_s"]["main"])  # no CPU expert in fetch-on-miss
    assert saved["spearman"] == pytest.approx(spearman([r["predicted_tok_s"] for r in saved["configs"]],
                                                       [r["measured_tok_s"] for r in saved["configs"]]))
    assert set(saved["family_mean_error_pct"]) == {"all-cpu", "fork", "fetch-on-miss-lru", "static"}
    assert res["hit_rates_equal"]


def test_offline_predictions_equal_validate_and_the_cli_passes_the_profile_path(tmp_path, monkeypatch):
    """The engine-free predictions equal validate's for every configuration (and so do the interval shifts);
    `hotexperts validate` hands validate the profile's path, beside which the intervals are."""
    from hotexperts.cli import main
    from hotexperts.runtime.calibrate import calibrate, write_profile
    from hotexperts.runtime.validate import offline_predictions, validate

    spec = _tiny_spec()
    cal = calibrate(model=spec, n_layers=3, dtype="int8", device="cpu", cpu_threads=1, reps=2, rounds=3,
                    dram_gib=1 / 64, log=lambda m: None)
    hw_path = tmp_path / "hw.json"
    write_profile(cal, hw_path)
    cfgs = [LiveConfig("all-cpu", "all-cpu"), LiveConfig("fork", "fork", {"interval": 5}, 4),
            LiveConfig("lru", "lru", {}, 4), LiveConfig("lru-fom", "lru", {}, 4, "fetch-on-miss")]
    tr = _trace(12)
    res = validate(trace=tr, model=spec, hardware=str(hw_path), out=tmp_path / "v", configs=cfgs, n_layers=3,
                   dtype="int8", tokens=8, warmup=3, device="cpu", cpu_threads=1, log=lambda m: None)
    off = offline_predictions(trace=tr, model=spec, hardware=[str(hw_path)], configs=cfgs, n_layers=3, dtype="int8",
                              tokens=8, warmup=3, intervals=cal["measurements"]["intervals"])
    for r in res["configs"]:
        assert off["by_profile"][str(hw_path)][r["name"]] == pytest.approx(r["predicted_tok_s"], rel=1e-12)
        assert off["shifts"]["cpu_expert_bw"][r["name"]] == pytest.approx(r["interval_shift_pct"]["cpu_expert_bw"])
    # the CLI passes the profile's path on (not the loaded profile), so validate finds the intervals beside it
    tr.save(tmp_path / "t.hxt")
    seen = {}

    def fake_validate(**kw):
        seen.update(kw)
        raise SystemExit(0)

    import hotexperts.runtime.validate as vmod

    monkeypatch.setattr(vmod, "validate", fake_validate)
    with pytest.raises(SystemExit):
        main(["validate", str(tmp_path / "t.hxt"), "--model", "qwen3.5-122b-a10b-q4_k_l", "--hardware", str(hw_path),
              "--out", str(tmp_path / "o"), "--device", "cpu", "--repeats", "3", "--compare-hardware", str(hw_path)])
    assert seen["hardware"] == str(hw_path) and seen["repeats"] == 3 and seen["compare_hardware"] == [str(hw_path)]


def test_instrumented_run_computes_the_same_and_records_every_layer():
    """Per-layer instrumentation (issue 12, item 1; CPU here, so host timestamps only): the same outputs and
    counters as an uninstrumented run, one record per computed layer, CPU-op times exactly where a layer has
    cold experts, and step totals that are the sums of the layer records."""
    from hotexperts.policies import make_policy
    from hotexperts.runtime.engine import PROFILE_KEYS, EngineShape, MoEEngine, Schedule
    from hotexperts.sim.replay import replay

    shape = EngineShape(hidden=32, expert_ff=16, n_expert=12, top_k=3, n_layers=3, shared_ff=8,
                        dense_bytes_per_layer=32 * 32 * 4 * 2, dtype="fp32")
    tr = _trace(10)
    rr = replay(tr, make_policy("lru"), 4, record_events=True)
    sched = Schedule.from_replay(tr, rr)
    eng = MoEEngine(shape, device="cpu", compute_dtype=torch.float32, cpu_threads=1, seed=3)
    try:
        plain = eng.run(sched, warmup=2)
        x = eng.token_input(5)
        ref, _ = eng.forward_layer(0, x, [0, 5, 9], [0.5, 0.3, 0.2])
        eng.instrument = True
        got, _ = eng.forward_layer(0, x, [0, 5, 9], [0.5, 0.3, 0.2])
        assert torch.equal(got, ref)
        eng._prof = []
        inst = eng.run(sched, warmup=2)
    finally:
        eng.close()
    assert plain.layer_profile == [] and len(inst.layer_profile) == len(inst.steps)
    for name in ("sel", "hit_sel", "hot_distinct", "cold_distinct", "uploads", "upload_bytes"):
        assert np.array_equal(getattr(inst, name), getattr(plain, name)), name
    for step, cold in zip(inst.layer_profile, inst.cold_distinct):
        layers = step["layers"]
        assert len(layers) == 3 and sum(r["cold"] for r in layers) == cold
        for r in layers:
            assert r["host_layer_us"] > 0 and "events" not in r
            assert ("cold_us" in r) == (r["cold"] > 0)
            if r["cold"]:
                assert r["cold_us"] > 0 and r["cold_start_latency_us"] >= 0 and r["wait_cold_us"] >= 0
        for k in PROFILE_KEYS:
            assert step["totals"][k] == pytest.approx(sum(r.get(k, 0.0) for r in layers))
        assert step["upload_issue_us"] >= 0


def test_validate_instrument_writes_measured_parts(tmp_path):
    from hotexperts.runtime.calibrate import calibrate, write_profile
    from hotexperts.runtime.validate import validate

    spec = _tiny_spec()
    cal = calibrate(model=spec, n_layers=3, dtype="fp32", device="cpu", cpu_threads=1, reps=2, rounds=3,
                    dram_gib=1 / 64, log=lambda m: None)
    write_profile(cal, tmp_path / "hw.json")
    cfgs = [LiveConfig("all-cpu", "all-cpu"), LiveConfig("lru", "lru", {}, 4)]
    res = validate(trace=_trace(10), model=spec, hardware=str(tmp_path / "hw.json"), out=tmp_path / "v",
                   configs=cfgs, n_layers=3, dtype="fp32", tokens=6, warmup=2, device="cpu", cpu_threads=1,
                   instrument=True, log=lambda m: None)
    for r in res["configs"]:
        parts = r["measured_parts_ms_per_token"]
        assert parts["cold"] > 0 and parts["host_layer"] >= parts["cold"] and r["instrumented_tok_s"] > 0
    assert res["configs"][0]["measured_parts_ms_per_token"]["host_hot_issue"] < \
        res["configs"][0]["measured_parts_ms_per_token"]["cold"]  # all-cpu issues no grouped call
