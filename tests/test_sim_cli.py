"""``hotexperts sim`` and ``hotexperts hardware``: JSON keys, sweeps, refusals as one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hotexperts.cli import main
from hotexperts.tracer.trace import Trace

QWEN = "qwen3.5-122b-a10b-q4_k_l"
KEYS = ("policy", "params", "hit_rate", "hit_rate_per_layer", "decode_tok_s", "prefill_tok_s", "upload_bytes",
        "vram_bytes", "fits", "selections", "replay_seconds", "mode", "label", "vram_breakdown", "terms")


def _trace(path, n_layers: int, *, n_tokens: int = 30, top_k: int = 8, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    ids = np.stack([np.stack([rng.choice(256, top_k, replace=False) for _ in range(n_layers)]) for _ in range(n_tokens)])
    # a 40-token prompt ubatch, then one decode step per token
    phase = np.r_[np.zeros(10, np.uint8), np.ones(n_tokens - 10, np.uint8)]
    ubatch = np.r_[np.zeros(10, np.int32), np.arange(1, n_tokens - 9, dtype=np.int32)]
    Trace.from_arrays(ids, n_expert=256, phase=phase, ubatch=ubatch).save(path)
    return str(path)


@pytest.fixture
def trace48(tmp_path):
    return _trace(tmp_path / "t48.hxt", 48)


@pytest.fixture
def trace26(tmp_path):
    return _trace(tmp_path / "t26.hxt", 26)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sim_json_keys(capsys, trace48, tmp_path):
    tl = tmp_path / "timeline.csv"
    rc, out, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "fork",
                       "--hot-k", 44, "--interval", 5, "--pp-bypass", 64, "--json", "--timeline", tl)
    assert rc == 0, err
    j = json.loads(out)
    for k in KEYS:
        assert k in j, k
    assert j["policy"] == "fork" and j["params"]["interval"] == 5 and j["params"]["pp_bypass"] == 64
    assert j["selections"] == 30 * 48 * 8
    assert len(j["hit_rate_per_layer"]) == 48 and 0 <= j["hit_rate"] <= 1
    assert j["decode_tok_s"] > 0 and isinstance(j["fits"], bool)
    rows = list(csv.DictReader(tl.open()))
    assert len(rows) == j["n_steps"]
    assert float(rows[1]["total"]) == pytest.approx(
        sum(float(rows[1][k]) for k in ("dense", "attention", "experts", "handoff", "upload_blocking", "upload_stall",
                                        "contention", "prefill_copy", "prefill_compute")))


def test_sim_layer_offload_and_summary(capsys, trace48):
    rc, out, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x",
                       "--policy", "layer-offload", "--n-cpu-moe", 40)
    assert rc == 0, err
    assert "layer-offload-N40" in out and "tok/s" in out and "fits" in out


def test_sim_refuses_mismatched_trace(capsys, trace26):
    rc, out, err = run(capsys, "sim", trace26, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "belady",
                       "--hot-k", 16)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error:") and "--remap" in lines[0]
    assert out == ""
    rc, out, err = run(capsys, "sim", trace26, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "belady",
                       "--hot-k", 16, "--remap", "--json")
    assert rc == 0, err
    assert json.loads(out)["remapped"] is True


def test_sim_sweep_json(capsys, trace48):
    rc, out, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "lru",
                       "--inserts", 2, "--sweep-k", "8,32,128", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["K"] for r in rows] == [8, 32, 128]
    for r in rows:
        assert {"K", "hit_rate", "decode_tok_s"} <= set(r)
    hits = [r["hit_rate"] for r in rows]
    assert hits == sorted(hits)  # LRU hit rate never falls with more slots (inclusion property)


def test_sim_sweep_threads_equal_single_runs(capsys, trace48):
    """A fork sweep (K values in parallel threads) gives the numbers of one run per K."""
    rc, out, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "fork",
                       "--interval", 5, "--sweep-k", "4,16,32,64", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["K"] for r in rows] == [4, 16, 32, 64]
    for r in rows:
        rc, out, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x", "--policy", "fork",
                           "--interval", 5, "--hot-k", r["K"], "--json")
        one = json.loads(out)
        assert rc == 0 and (one["hit_rate"], one["decode_tok_s"], one["upload_bytes"]) == (
            r["hit_rate"], r["decode_tok_s"], r["upload_bytes"])


def test_sim_option_errors(capsys, trace48):
    base = ["sim", trace48, "--model", QWEN, "--hardware", "rtx4090-7950x"]
    rc, _, err = run(capsys, *base, "--policy", "lru", "--hot-k", 8, "--interval", 3)
    assert rc == 1 and "no option --interval" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, *base, "--policy", "fork")
    assert rc == 1 and "--hot-k" in err
    rc, _, err = run(capsys, "sim", trace48, "--model", QWEN, "--hardware", "nope.json", "--policy", "all-cpu")
    assert rc == 1 and err.startswith("hotexperts: error:")
    rc, out, err = run(capsys, *base, "--policy", "fork", "--hot-k", 64, "--vram-gb", 6, "--json")
    assert rc == 0 and json.loads(out)["fits"] is False
    for bad in ("300", "3,4"):
        rc, out, err = run(capsys, *base, "--policy", "lru", "--hot-k", bad)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "slots" in err and out == ""


def test_sim_fetch_on_miss_mode(capsys, trace48):
    base = ["sim", trace48, "--model", QWEN, "--hardware", "h200-host", "--policy", "lru", "--hot-k", 16, "--json"]
    rc, out, err = run(capsys, *base, "--mode", "fetch-on-miss")
    assert rc == 0, err
    j = json.loads(out)
    assert j["mode"] == "fetch-on-miss" and j["fetch_bytes"] > 0
    rc, out, err = run(capsys, *base)
    j2 = json.loads(out)
    assert j2["mode"] == "cold-cpu" and j2["fetch_bytes"] == 0 and j2["hit_rate"] == j["hit_rate"]


def test_hardware_commands(capsys):
    rc, out, _ = run(capsys, "hardware", "list")
    assert rc == 0 and "rtx4090-7950x" in out and "h200-host" in out
    rc, out, _ = run(capsys, "hardware", "show", "rtx4090-7950x")
    assert rc == 0 and "cpu_expert_bw" in out and "(fitted)" in out
    rc, out, _ = run(capsys, "hardware", "show", "h200-host", "--json")
    assert rc == 0 and json.loads(out)["name"] == "h200-host"


def test_upload_batches_add_up_to_the_totals():
    """Uploads grouped per step (rebalances for the fork) sum to the run's upload totals."""
    import numpy as np

    from hotexperts.modelspec import load_model_spec
    from hotexperts.policies import make_policy
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.sim.simulate import simulate
    from hotexperts.tracer.trace import Trace

    model = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    rng = np.random.default_rng(5)
    n = 300
    ids = np.stack([rng.choice(64, size=8, replace=False) for _ in range(n * model.n_moe_layers)])
    ids = ids.reshape(n, model.n_moe_layers, 8)
    tr = Trace.from_arrays(ids, n_expert=256, moe_layers=model.moe_layers)
    res = simulate(tr, model, load_hardware("rtx4090-7950x"), make_policy("fork", interval=20), 16)
    ub = res.to_json()["upload_batches"]
    assert ub["count"] == len(ub["items"]) > 1
    assert sum(i["experts"] for i in ub["items"]) == res.upload_experts
    assert sum(i["bytes"] for i in ub["items"]) == pytest.approx(res.upload_bytes)
    # after FILLING, the fork only uploads at rebalances: decode calls that are multiples of the interval
    steady = [i for i in ub["items"] if i["decode_call"] > 40]
    assert steady and all(i["decode_call"] % 20 == 0 for i in steady)
