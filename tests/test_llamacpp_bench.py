"""``hotexperts model make`` (random-weight GGUF of a model's expert shapes) and ``hotexperts bench llamacpp``.

Models are tiny (hidden 64) except one check of a real preset's expert bytes with few experts;
expected byte counts are computed by hand from the ggml block sizes (q8_0: 34 B per 32 weights,
f16: 2 B per weight).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotexperts.cli import main

TINY_SPEC = {
    "name": "tiny-moe",
    "arch": "qwen3moe",
    "n_layer": 4,
    "moe_layers": [0, 1, 2, 3],
    "n_expert": 8,
    "n_expert_used": 2,
    "hidden_size": 64,
    "expert_ff": 32,
    "expert_bytes": [12288] * 4,
    "dense_bytes": 100000,
    "n_head": 4,
    "n_head_kv": 2,
    "head_dim": 16,
}


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("spec") / "tiny.json"
    p.write_text(json.dumps(TINY_SPEC))
    return p


def _model_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["model", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("gtype", "per_weight"), [("q8_0", 34 / 32), ("f16", 2.0)])
def test_make_reads_back_expert_shapes(
    tmp_path: Path, tiny_spec: Path, capsys: pytest.CaptureFixture[str], gtype: str, per_weight: float
) -> None:
    out = tmp_path / "m.gguf"
    assert main(["model", "make", "--like", str(tiny_spec), "--layers", "3", "--type", gtype, "--out", str(out)]) == 0
    spec = _model_json(out, capsys)
    assert spec["arch"] == "qwen3moe"
    assert spec["n_layer"] == 3 and spec["moe_layers"] == [0, 1, 2]
    assert (spec["n_expert"], spec["n_expert_used"]) == (8, 2)
    assert (spec["hidden_size"], spec["expert_ff"]) == (64, 32)
    # gate + up + down, each 32 x 64 weights
    assert spec["expert_bytes"] == [int(3 * 32 * 64 * per_weight)] * 3
    assert {v for t in spec["expert_types"] for v in t.values()} == {gtype.upper()}


def test_make_like_preset_has_its_expert_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.gguf"
    rc = main([
        "model", "make", "--like", "qwen3.5-122b-a10b-q4_k_l", "--layers", "1", "--experts", "8",
        "--out", str(out), "--json", "--no-progress",
    ])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    spec = _model_json(out, capsys)
    # calibration.md: hidden 3072, expert ff 1024, top-8; one q8_0 expert = 3 x 3072 x 1024 x 34/32 B
    assert (spec["hidden_size"], spec["expert_ff"], spec["n_expert_used"], spec["n_expert"]) == (3072, 1024, 8, 8)
    assert spec["expert_bytes"] == [3 * 3072 * 1024 * 34 // 32] == [info["expert_bytes"]]
    assert (spec["n_head"], spec["n_head_kv"], spec["head_dim"]) == (32, 2, 256)
    assert info["bytes"] == out.stat().st_size


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "q4_k"], "not supported"),
        (["--layers", "9"], "more than the 4 MoE layers"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--experts", "1"], "--experts must be"),
    ],
)
def test_make_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, tiny_spec: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "bad.gguf"
    args = ["model", "make", "--like", str(tiny_spec), "--layers", "2", "--out", str(out)]
    # later duplicates of an option win in argparse
    assert main(args + extra) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hotexperts: error:") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bench llamacpp

BENCH_KEYS = {
    "model", "placement", "prompt_tokens", "gen_tokens", "threads", "reps", "prefill_tok_s",
    "decode_tok_s", "device", "llama_cpp_python", "date",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_spec: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.gguf"
    assert main(["model", "make", "--like", str(tiny_spec), "--layers", "3", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(autouse=True)
def _no_extra_bufts(monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE: llama.cpp's AMX/repack CPU buffers die with SIGILL for q8_0 in some sandboxes
    # (tracer/capture.py); the plain CPU buffer computes the same thing.
    monkeypatch.setenv("HOTEXPERTS_NO_EXTRA_BUFTS", "1")


def _tensor_names(path: Path) -> list[str]:
    import gguf

    return [t.name for t in gguf.GGUFReader(path, "r").tensors]


def _bench(model: Path, out: Path, placement: str, *extra: str) -> dict:
    args = ["bench", "llamacpp", str(model), "--placement", placement, "--prompt-tokens", "24",
            "--gen-tokens", "5", "--threads", "1", "--reps", "3", "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_bench_all_cpu_json_and_repetitions(tiny_model: Path, tmp_path: Path) -> None:
    import statistics

    r = _bench(tiny_model, tmp_path / "r.json", "all-cpu")
    assert BENCH_KEYS <= set(r)
    assert (r["placement"], r["prompt_tokens"], r["gen_tokens"], r["threads"], r["reps"]) == ("all-cpu", 24, 5, 1, 3)
    assert r["n_gpu_layers"] == 0 and r["overridden_tensors"] == {}
    for key in ("prefill_tok_s", "decode_tok_s"):
        s = r[key]
        assert len(s["all"]) == 3 and all(v > 0 for v in s["all"])
        assert s["median"] == statistics.median(s["all"])
        assert (s["min"], s["max"]) == (min(s["all"]), max(s["all"]))
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_bench_process_carries_no_simulator(tiny_model: Path, tmp_path: Path) -> None:
    # NOTE: a whole `hotexperts bench llamacpp` run, in its own process: numba/LLVM and the simulator
    # stay out of the process that times llama.cpp (see hotexperts/cli.py).
    import subprocess
    import sys

    out = tmp_path / "r.json"
    code = (
        "import sys\n"
        "import llama_cpp\n"
        "seen = []\n"
        "_load = llama_cpp.llama_model_load_from_file\n"
        "def load(*a):\n"
        "    seen.append(','.join(m for m in ('numba', 'llvmlite', 'scipy') if m in sys.modules))\n"
        "    return _load(*a)\n"
        "llama_cpp.llama_model_load_from_file = load\n"
        "from hotexperts.cli import main\n"
        f"rc = main(['bench', 'llamacpp', {str(tiny_model)!r}, '--placement', 'all-cpu', '--prompt-tokens', '8',"
        f" '--gen-tokens', '2', '--reps', '1', '--threads', '1', '--out', {str(out)!r}])\n"
        "print('RC', rc, ','.join(m for m in ('numba', 'llvmlite', 'scipy', 'hotexperts.sim') if m in sys.modules))\n"
        "print('AT LOAD', seen)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert lines[-2].strip() == "RC 0", p.stdout[-500:]
    # ...not even by the time llama.cpp loads the model
    assert lines[-1] == "AT LOAD ['']", p.stdout[-500:]
    assert json.loads(out.read_text())["decode_tok_s"]["all"][0] > 0


def test_bench_override_patterns_are_applied(tiny_model: Path, tmp_path: Path) -> None:
    import re

    names = _tensor_names(tiny_model)
    pattern = r"blk\.[12]\.ffn_(up|gate)_exps"
    r = _bench(tiny_model, tmp_path / "ot.json", f"-ot {pattern}=CPU")
    # llama.cpp's own log lines say which tensors it overrode: exactly those the regex finds
    want = {n for n in names if re.search(pattern, n)}
    assert len(want) == 4
    assert r["overridden_tensors"] == dict.fromkeys(sorted(want), "CPU")
    assert r["n_gpu_layers"] == 999
    # --n-cpu-moe 2 = all three expert tensors of layers 0 and 1
    r = _bench(tiny_model, tmp_path / "moe.json", "n-cpu-moe=2")
    want = {f"blk.{il}.ffn_{w}_exps.weight" for il in (0, 1) for w in ("up", "gate", "down")}
    assert set(r["overridden_tensors"]) == want
    assert len(r["decode_tok_s"]["all"]) == 3


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ("sideways", "unknown --placement"),
        ("n-cpu-moe=4", "N must be in 0..3"),
        ("n-cpu-moe=x", "must be an integer"),
        ("-ot blk[=CPU", "invalid regular expression"),
        ("-ot blk=NOPE", "unknown buffer type 'NOPE'"),
        ("-ot", "no REGEX=BUFFER_TYPE"),
    ],
)
def test_bench_bad_placement_errors_cleanly(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], placement: str, message: str
) -> None:
    out = tmp_path / "r.json"
    assert main(["bench", "llamacpp", str(tiny_model), f"--placement={placement}", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hotexperts: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_bench_capture_is_the_routing_of_the_same_tokens(tiny_model: Path, tmp_path: Path) -> None:
    import numpy as np

    from hotexperts.tracer.capture import run_capture
    from hotexperts.tracer.trace import Trace

    _bench(tiny_model, tmp_path / "c.json", "n-cpu-moe=1", "--capture", str(tmp_path / "c.hxt"), "--seed", "7")
    tr = Trace.load(tmp_path / "c.hxt")
    assert (tr.n_prefill_tokens, tr.n_decode_tokens) == (24, 5)
    # independent run of the tracer on the same prompt ids (numpy default_rng(7), 259-token vocab)
    prompt = [int(t) for t in np.random.default_rng(7).integers(0, 259, 24)]
    ref = run_capture(tiny_model, [prompt], n_predict=0, n_ctx=64, n_ubatch=512, extra_bufts=False).trace
    pre = np.asarray(tr.phase) == 0
    assert ref.n_tokens == 24
    np.testing.assert_array_equal(tr.experts[pre], ref.experts)
    # the last layer routes only the prompt's last token in both runs (llama.cpp's inp_out_ids)
    np.testing.assert_array_equal(tr.present[pre], ref.present)


# --------------------------------------------------------------------------- benchmarks/llamacpp_validate.py
# Fake `bench llamacpp` results of a 6-layer model with Qwen3.5-122B's q8_0 expert shape; the fit and
# the predictions are checked against the closed form of calibration.md's layer-offload model,
# computed here by hand (not through the simulator).

def _validate_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "llamacpp_validate.py"
    spec = importlib.util.spec_from_file_location("llamacpp_validate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


Q8_EXPERT = 3 * 3072 * 1024 * 34 // 32  # 10,027,008 B (calibration.md shapes, q8_0 block size)
VAL_SPEC = {
    "name": "made-6l", "arch": "qwen3moe", "n_layer": 6, "moe_layers": list(range(6)), "n_expert": 256,
    "n_expert_used": 8, "hidden_size": 3072, "expert_ff": 1024, "expert_bytes": [Q8_EXPERT] * 6,
    "dense_bytes": 50_000_000, "embd_bytes": 1_000_000, "n_head": 32, "n_head_kv": 2, "head_dim": 256,
    "vocab_size": 259,
}


def _fake_result(name_placement: str, n_cpu: int | None, decode: float, prefill: float, date: str) -> dict:
    over = {}
    if n_cpu is not None:
        over = {f"blk.{i}.ffn_{w}_exps.weight": "CPU" for i in range(n_cpu) for w in ("up", "down", "gate")}
    s = lambda v: {"median": v, "min": v * 0.99, "max": v * 1.01, "all": [v]}  # noqa: E731
    return {
        "model": "unused.gguf", "placement": name_placement, "prompt_tokens": 64, "gen_tokens": 16, "reps": 3,
        "threads": 16, "prefill_tok_s": s(prefill), "decode_tok_s": s(decode), "n_ubatch": 64,
        "n_gpu_layers": 0 if name_placement == "all-cpu" else 999,
        "overrides": [{"pattern": "x", "buft": "CPU"}] if n_cpu else [], "overridden_tensors": over,
        "device": {"cpu": "Xeon", "backends": ["CPU: Xeon", "CUDA0: NVIDIA H200"]}, "date": date,
    }


def test_llamacpp_validate_fits_two_runs_and_predicts_the_others(tmp_path: Path) -> None:
    mod = _validate_module()
    spec_p = tmp_path / "spec.json"
    spec_p.write_text(json.dumps(VAL_SPEC))
    L, k, b = 6, 8, float(Q8_EXPERT)
    t0, tL = 1.0 / 400.0, 1.0 / 60.0  # seconds per decode token: all experts on GPU / on CPU
    step = 0.4e-3  # a fixed cost the model lacks (CUDA graphs off once any layer has CPU experts)
    truth = {n: t0 + n * (tL - t0) / L + (step if 0 < n < L else 0.0) for n in range(L + 1)}
    runs = {"gpu": ("gpu", 0), "cpu-moe-6": ("n-cpu-moe=6", 6), "all-cpu": ("all-cpu", None)}
    runs.update({f"n-cpu-moe-{n}": (f"n-cpu-moe={n}", n) for n in (1, 3, 5)})
    runs["gpu-again"] = ("gpu", 0)
    pre = {0: 5000.0, 6: 900.0}
    for i, (name, (pl, n)) in enumerate(runs.items()):
        dec = 1.0 / (truth[n] if n is not None else 0.05) * (1.02 if name == "gpu-again" else 1.0)
        r = _fake_result(pl, n, dec, pre.get(n, 1000.0), f"2026-12-01T00:00:{i:02d}+00:00")
        (tmp_path / f"bench-{name}.json").write_text(json.dumps(r))

    v = mod.validate(tmp_path, model=spec_p)
    rows = {r["name"]: r for r in v["configs"]}
    assert {r["role"] for r in v["configs"]} == {"calibration", "check", "repeat", "reference"}
    # the fit reproduces both calibration runs exactly, decode and prefill
    for name in ("gpu", "cpu-moe-6"):
        assert rows[name]["role"] == "calibration"
        assert abs(rows[name]["error_pct"]) < 1e-7
        assert abs(rows[name]["prefill_error_pct"]) < 1e-7
    # cpu_expert_bw by hand: a layer moved to the CPU adds handoff + k b / BW_cpu and removes the GPU
    # layer's gpu_expert_fixed_us + k b / gpu_expert_bw (calibration.md's layer-offload form)
    hw = v["hardware"]
    g = hw["gpu_expert_fixed_us"] * 1e-6 + k * b / (hw["gpu_mem_bw"] * 1e9)
    bw = k * b / ((tL - t0) / L - hw["handoff_us"] * 1e-6 + g) / 1e9
    assert hw["cpu_expert_bw"] == pytest.approx(bw, rel=1e-9)
    assert set(hw["fitted"]) == {"dense_fixed_ms", "cpu_expert_bw", "gpu_prefill_ms_per_token", "pcie_prefill_bw"}
    # predictions of the in-between placements: the model's time at N (equal layers: affine in N)
    errs = []
    for n in (1, 3, 5):
        r = rows[f"n-cpu-moe-{n}"]
        assert r["role"] == "check" and r["policy"] == "layer-offload" and r["params"] == {"n_cpu_moe": n}
        pred = 1.0 / (t0 + n * (tL - t0) / L)
        assert r["predicted_tok_s"] == pytest.approx(pred, rel=1e-9)
        assert r["error_pct"] == pytest.approx((pred - 1.0 / truth[n]) * truth[n] * 100.0, rel=1e-9)
        assert r["predicted_hit_rate"] == pytest.approx((L - n) / L) == r["measured_hit_rate"]
        assert r["predicted_upload_bytes"] == 0.0
        errs.append(abs(r["error_pct"]))
    assert v["median_abs_error_pct"] == pytest.approx(sorted(errs)[1])
    assert v["max_abs_error_pct"] == pytest.approx(max(errs))
    # the repeated gpu run is priced like the first: its error is the drift (-2 %), not in the median
    assert rows["gpu-again"]["role"] == "repeat"
    assert rows["gpu-again"]["error_pct"] == pytest.approx(100.0 / 1.02 - 100.0, rel=1e-9)
    # -ngl 0 is not modelled: measured only
    assert rows["all-cpu"]["role"] == "reference" and rows["all-cpu"]["predicted_tok_s"] is None
    assert rows["all-cpu"]["measured_hit_rate"] == 0.0
    # the sensitivity fit on n-cpu-moe=1 and 6 (both without CUDA graphs) absorbs the step: exact at 3, 5
    sens = {r["name"]: r for r in v["sensitivity"]["rows"]}
    assert v["sensitivity"]["calibrate"] == ["n-cpu-moe-1", "cpu-moe-6"]
    assert abs(sens["n-cpu-moe-1"]["error_pct"]) < 1e-7
    t1 = truth[1]
    pred3 = 1.0 / (t1 + 2 * (tL - t1) / 5)
    assert sens["n-cpu-moe-3"]["predicted_tok_s"] == pytest.approx(pred3, rel=1e-9)
    # the CLI writes the JSON atomically with the runtime's keys
    out = tmp_path / "v.json"
    assert mod.main([str(tmp_path), "--model", str(spec_p), "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    for key in ("machine", "date", "configs", "median_abs_error_pct", "max_abs_error_pct", "hardware"):
        assert key in d
    for key in ("name", "policy", "params", "predicted_tok_s", "measured_tok_s", "error_pct", "predicted_hit_rate",
                "measured_hit_rate", "predicted_upload_bytes", "measured_upload_bytes"):
        assert key in d["configs"][0]


def test_llamacpp_validate_reports_a_missing_calibration_run(tmp_path: Path) -> None:
    mod = _validate_module()
    spec_p = tmp_path / "spec.json"
    spec_p.write_text(json.dumps(VAL_SPEC))
    (tmp_path / "bench-gpu.json").write_text(json.dumps(_fake_result("gpu", 0, 400.0, 5000.0, "d")))
    v = mod.validate(tmp_path, model=spec_p)
    assert "missing" in v["fit_error"] and v["median_abs_error_pct"] is None
    assert v["configs"][0]["measured_tok_s"] == 400.0
    assert mod.main([str(tmp_path / "nothere")]) == 1


def test_measured_hit_rate_reads_host_buffer_names() -> None:
    # NOTE: with a CUDA build, llama.cpp puts experts overridden to "CPU" in the pinned "CUDA_Host" buffer
    # and logs that name (H200 run, 2026-11-29); CPU extra types read "CPU_REPACK"; a GPU name is not host.
    from hotexperts.modelspec import ModelSpec

    mod = _validate_module()
    spec = ModelSpec.from_dict(VAL_SPEC)
    r = _fake_result("n-cpu-moe=3", None, 100.0, 100.0, "2026-12-01T00:00:00+00:00")
    r["overrides"] = [{"pattern": "x", "buft": "CPU"}]
    r["overridden_tensors"] = {f"blk.{i}.ffn_{w}_exps.weight": b for i, b in ((0, "CUDA_Host"), (1, "CPU_REPACK"),
                               (2, "CPU"), (4, "CUDA0")) for w in ("up", "down", "gate")}
    assert mod.measured_hit_rate(r, spec) == pytest.approx(3 / 6)
    r["overridden_tensors"] = {}
    assert mod.measured_hit_rate(r, spec) is None  # patterns given, nothing logged: unknown


def test_h200_llamacpp_preset_reproduces_the_committed_predictions() -> None:
    # NOTE: the preset is the profile fitted in H200 run 2; simulating each --n-cpu-moe check with it must
    # give the predictions committed in that run's llamacpp-validation.json (same trace shape and seed).
    from hotexperts.modelspec import load_model_spec
    from hotexperts.sim.hardware import load_hardware

    mod = _validate_module()
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "2026-11-29-h200"
    v = json.loads((root / "llamacpp-validation.json").read_text())
    spec = load_model_spec(str(root / "llamacpp-run2" / "model.json"))
    hw = load_hardware("h200-llamacpp")
    assert hw.cpu_expert_bw == pytest.approx(v["hardware"]["cpu_expert_bw"])
    b = v["bench"]
    trace = mod.bench_trace(spec, prompt_tokens=b["prompt_tokens"], gen_tokens=b["gen_tokens"], n_ubatch=512)
    checks = [r for r in v["configs"] if r["role"] == "check"]
    assert len(checks) == 5
    for r in checks:
        res = mod._sim(trace, spec, hw, r["placement"])
        assert res.decode_tok_s == pytest.approx(r["predicted_tok_s"], rel=1e-9), r["name"]


# --------------------------------------------------------------------------- benchmarks/llamacpp_placements.py
def _placements_module():
    import importlib.util
    import sys

    bdir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bdir))  # it imports llamacpp_validate from beside it
    try:
        spec = importlib.util.spec_from_file_location("llamacpp_placements", bdir / "llamacpp_placements.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bdir))
    return mod


def test_llamacpp_placements_fits_ms_per_cpu_layer_by_position(tmp_path: Path) -> None:
    mod = _placements_module()
    d = "2026-12-01T00:00:00+00:00"
    # decode ms/token = 1 + 1.5 x CPU layers exactly; 1000 / ms is the tok/s a bench would report
    res = {f"n{n}": _fake_result(f"n-cpu-moe={n}", n, 1000 / (1 + 1.5 * n), 100.0, d) for n in range(5)}
    pos = _fake_result("-ot blk\\.[13]\\.ffn_.*_exps=CPU", None, 1000 / 4.6, 100.0, d)  # 2 layers, 0.6 ms off
    pos["overrides"] = [{"pattern": "x", "buft": "CPU"}]
    pos["overridden_tensors"] = {f"blk.{i}.ffn_{w}_exps.weight": "CUDA_Host" for i in (1, 3) for w in ("up", "down", "gate")}
    res["pos13"] = pos
    res["t8"] = dict(_fake_result("n-cpu-moe=4", 4, 1000 / 20.0, 100.0, d), threads=8)  # other thread count: not fitted
    res["all-cpu"] = dict(_fake_result("all-cpu", None, 1000 / 30.0, 100.0, d), model_info={"moe_layers": [0, 1, 2, 3, 4, 5]})
    src = tmp_path / "bench-all.json"
    src.write_text(json.dumps(res))
    out = tmp_path / "p.json"
    assert mod.main([str(src), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    rows = {r["name"]: r for r in got["runs"]}
    assert rows["pos13"]["cpu_layers"] == [1, 3] and rows["pos13"]["n_cpu_layers"] == 2
    assert rows["all-cpu"]["all_cpu"] and rows["all-cpu"]["n_cpu_layers"] == 6 and "residual_ms" not in rows["all-cpu"]
    assert "residual_ms" not in rows["t8"]
    # least squares by hand over x = 0,1,2,3,4,2 and y = 1,2.5,4,5.5,7,4.6: means 2 and 4.1, Sxx 10,
    # Sxy 15 -> slope 1.5, intercept 4.1 - 3 = 1.1; residuals pos13 4.6 - 4.1 = +0.5, n0 1 - 1.1 = -0.1
    fit = got["fit"]
    assert fit["runs"] == 6 and fit["threads"] == 16
    assert fit["intercept_ms"] == pytest.approx(1.1) and fit["per_cpu_layer_ms"] == pytest.approx(1.5)
    assert rows["pos13"]["residual_ms"] == pytest.approx(0.5) and rows["n0"]["residual_ms"] == pytest.approx(-0.1)


def test_llamacpp_placements_reproduces_the_documented_h200_line() -> None:
    # NOTE: docs/llamacpp.md quotes this fit of the committed run 1: 1.01 + 1.35 ms per CPU-expert layer,
    # n-cpu-moe=5 +0.79 ms and =6 -0.59 ms off the line
    mod = _placements_module()
    src = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "2026-11-29-h200" / "llamacpp-run1" / "bench-all.json"
    rows = mod.rows_of(json.loads(src.read_text()))
    fit = mod.fit_slope(rows)
    assert round(fit["intercept_ms"], 2) == 1.01 and round(fit["per_cpu_layer_ms"], 2) == 1.35
    r = {x["name"]: x for x in rows}
    assert round(r["n-cpu-moe-5"]["residual_ms"], 2) == 0.79 and round(r["cpu-moe-6"]["residual_ms"], 2) == -0.59
