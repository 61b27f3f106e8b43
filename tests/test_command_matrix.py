"""Every command that takes a trace x every format hotexperts reads x bad inputs.

Good inputs: a ``.hxt`` under a name without its extension, the llama.cpp CSV and vLLM routing JSONL of the
same routing, and MOET v1. Each command must accept each format (read by content). Bad inputs: a missing path, an
empty file, garbage bytes, a folder of nothing, a FIFO: one line naming the path, exit status 1, no output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hotexperts.modelspec import load_model_spec
from hotexperts.studies.tune import default_trace

MODEL = "qwen3-30b-a3b-q4_k_m"
HW = ["--hardware", "rtx4090-7950x"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    m = load_model_spec(MODEL)
    # decode only: the vLLM format records decode tokens alone, so all three files hold the same routing
    tr = default_trace(m, seed=2, n_requests=2, prompt_tokens=0, decode_tokens=80, ubatch=16)
    out = {"hxt": d / "routing.trace"}
    tr.save(out["hxt"])
    from hotexperts.tracer.export import export_trace

    out["csv"] = d / "routing.csv"
    export_trace(tr, out["csv"], format="csv")
    lines = []
    for t in range(tr.n_tokens):
        for li, il in enumerate(tr.moe_layers):
            lines.append(json.dumps({"dataset": "x", "problem_id": int(tr.request[t]), "layer": int(il),
                                     "experts": [int(x) for x in tr.experts[t, li]], "token_idx": int(tr.pos[t])}))
    out["jsonl"] = d / "routing.jsonl"
    out["jsonl"].write_text("\n".join(lines) + "\n")
    # MOET v1 (the turboquant fork's binary trace): one record per decode token, the request as its sequence
    from tests.test_readers import moet_file, moet_record

    recs = [moet_record(t + 1, 0, [int(tr.request[t])],
                        [(int(il), tr.experts[t, li][None, :], None) for li, il in enumerate(tr.moe_layers)])
            for t in range(tr.n_tokens)]
    out["moet"] = d / "routing.moet"
    out["moet"].write_bytes(moet_file(recs, n_expert=tr.n_expert))
    return out


def commands(src: Path, out: Path) -> dict[str, list[str]]:
    return {
        "trace info": ["trace", "info", str(src), "--json"],
        "trace export": ["trace", "export", str(src), "--format", "csv", "--out", str(out / "e.csv")],
        "trace split": ["trace", "split", str(src), "--by", "request", "--train", "0.5", "--out-train",
                        str(out / "a.hxt"), "--out-eval", str(out / "b.hxt")],
        "trace synth": ["trace", "synth", "--like", str(src), "--tokens", "64", "--out", str(out / "s.hxt")],
        "sim": ["sim", str(src), "--model", MODEL, *HW, "--policy", "lru", "--hot-k", "8", "--json"],
        "tune": ["tune", str(src), "--model", MODEL, *HW, "--vram-gb", "12", "--context", "4096", "--trials", "3",
                 "--out", str(out / "tune"), "--no-progress"],
        "check": ["check", "--trace", str(src), "--model", MODEL, *HW, "--vram-gb", "12", "--json", "--",
                  "llama-server", "-m", "x.gguf", "-ngl", "99", "-c", "4096", "--n-cpu-moe", "40"],
    }


@pytest.mark.parametrize("fmt", ["hxt", "csv", "jsonl", "moet"])
def test_every_command_reads_every_format(sources, tmp_path, fmt):
    results = {}
    for name, args in commands(sources[fmt], tmp_path).items():
        r = cli(*args)
        assert r.returncode == 0, f"{name} on {fmt}: {r.stderr}"
        results[name] = r
    # the same routing, whatever the format: trace info and sim agree across formats
    info = json.loads(results["trace info"].stdout)
    assert info["n_tokens"] == 160 and info["n_requests"] == 2
    sim = json.loads(results["sim"].stdout)
    ref = json.loads(cli(*commands(sources["hxt"], tmp_path / "ref")["sim"]).stdout)
    assert sim["hit_rate"] == pytest.approx(ref["hit_rate"], abs=1e-12)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {"missing": d / "nope.hxt", "empty": d / "empty.csv", "garbage": d / "garbage.bin", "folder": d / "folder",
           "fifo": d / "fifo"}
    out["empty"].write_bytes(b"")
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["folder"].mkdir()
    os.mkfifo(out["fifo"])
    return out


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "folder", "fifo"])
def test_every_command_refuses_bad_inputs_in_one_line(bad, tmp_path, kind):
    for name, args in commands(bad[kind], tmp_path).items():
        r = cli(*args)
        assert r.returncode == 1, f"{name} on {kind}: rc {r.returncode} {r.stderr}"
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("hotexperts: error:") and str(bad[kind]) in lines[0], \
            f"{name} on {kind}: {r.stderr}"
    assert not any(tmp_path.iterdir()), "a refused command left output behind"


def test_bad_output_paths_are_one_line(sources, tmp_path):
    src = str(sources["hxt"])
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for out in ("", str(tmp_path / "file" / "sub.hxt"), str(tmp_path / "dir")):
        for args in (["trace", "export", src, "--format", "csv", "--out", out],
                     ["trace", "synth", "--like", src, "--tokens", "32", "--out", out],
                     ["trace", "synth", "--like", src, "--tokens", "32", "--out", str(tmp_path / "ok.hxt"),
                      "--save-params", out],
                     ["sim", src, "--model", MODEL, *HW, "--policy", "lru", "--hot-k", "4", "--timeline", out],
                     ["trace", "import", str(sources["csv"]), "--out", out]):
            r = cli(*args)
            assert r.returncode == 1 and r.stderr.count("\n") == 1 and "error" in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]
