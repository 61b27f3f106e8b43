"""``hotexperts measure`` against a real llama.cpp-compatible server on loopback.

The server is llama-cpp-python's own (``python -m llama_cpp.server``) on a tiny random-weight
model written by ``hotexperts model make``; it answers ``/v1/completions`` with ``usage`` and no
``timings``, so these tests exercise the wall-time source. The server process is always killed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotexperts.cli import main
from hotexperts.measure import compare_with_best, rates_from_timings

SPEC = {
    "name": "tiny-moe", "arch": "qwen3moe", "n_layer": 2, "moe_layers": [0, 1], "n_expert": 8,
    "n_expert_used": 2, "hidden_size": 64, "expert_ff": 32, "expert_bytes": [12288] * 2,
    "dense_bytes": 100000, "n_head": 4, "n_head_kv": 2, "head_dim": 16,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip(
        "llama_cpp.server.app",
        reason="llama-cpp-python's server extras are not installed (uvicorn, fastapi, pydantic-settings, "
        "sse-starlette, starlette-context, PyYAML)",
    )
    d = tmp_path_factory.mktemp("srv")
    (d / "spec.json").write_text(json.dumps(SPEC))
    model = d / "tiny.gguf"
    # NOTE: f16, not q8_0: llama-cpp-python's server cannot switch off llama.cpp's extra (AMX)
    # CPU buffer types, which die with SIGILL for q8_0 in some sandboxes (tracer/capture.py).
    assert main(["model", "make", "--like", str(d / "spec.json"), "--layers", "2", "--type", "f16",
                 "--out", str(model), "--no-progress"]) == 0
    port = _free_port()
    log = open(d / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {(d / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start within 60 s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_measure_real_server_and_compare(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = tmp_path / "best.json"
    best.write_text(json.dumps({
        "model": "tiny-moe", "hardware": "test",
        "best": {"label": "hot", "decode_tok_s": 100.0, "prefill_tok_s": 1000.0},
        "baselines": {"all-cpu": {"label": "cpu", "decode_tok_s": 50.0, "prefill_tok_s": None}},
    }))
    prompts = tmp_path / "p.txt"
    prompts.write_text("The quick brown fox jumps over the lazy dog.\nHot experts stay in VRAM.\n")
    out = tmp_path / "r.json"
    rc = main(["measure", "--server", server, "--prompts", str(prompts), "--n-predict", "12", "--reps", "2",
               "--timeout", "30", "--compare", str(best), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "numbers from wall" in text and "baseline all-cpu" in text
    r = json.loads(out.read_text())
    assert (r["endpoint"], r["source"], r["prompts"], r["reps"], r["n_predict"]) == ("/v1/completions", "wall", 2, 2, 12)
    # probe of /completion (404 here), warm-up on /v1/completions, then per prompt and repetition
    # one 1-token request and one streamed request
    assert r["requests"] == 2 + 2 * 2 * 2
    rows = r["per_request"]
    assert len(rows) == 4
    for rep in range(2):
        mine = [x for x in rows if x["rep"] == rep]
        pre = sum(x["prompt_n"] for x in mine) / sum(x["prompt_s"] for x in mine)
        dec = sum(x["predicted_n"] for x in mine) / sum(x["predicted_s"] for x in mine)
        assert r["prefill_tok_s"]["all"][rep] == pytest.approx(pre)
        assert r["decode_tok_s"]["all"][rep] == pytest.approx(dec)
    # byte vocabulary: at least one token per UTF-8 byte of each prompt; the server forced 12 tokens
    assert rows[0]["prompt_n"] > len(b"The quick brown fox jumps over the lazy dog.")
    assert rows[1]["prompt_n"] > len(b"Hot experts stay in VRAM.")
    assert all(x["predicted_n"] == 11 for x in rows)
    med = r["decode_tok_s"]["median"]
    cmp_rows = {x["name"]: x for x in r["compare"]["rows"]}
    assert cmp_rows["best"]["decode_error_pct"] == pytest.approx((100.0 - med) / med * 100.0)
    assert cmp_rows["baseline all-cpu"]["decode_error_pct"] == pytest.approx((50.0 - med) / med * 100.0)
    assert cmp_rows["baseline all-cpu"]["prefill_error_pct"] is None


def test_measure_errors_are_one_line(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--server", server + "/no/such/api"], "neither /completion nor /v1/completions"),
        (["--server", f"http://127.0.0.1:{_free_port()}"], "cannot reach the server"),
        (["--server", "ftp://x"], "not an http(s) URL"),
        (["--server", server, "--n-predict", "1"], "--n-predict must be >= 2"),
    ]
    for args, message in cases:
        assert main(["measure", "--timeout", "10", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("hotexperts: error:") and message in err and "\n" not in err


def test_timings_and_compare_by_hand(tmp_path: Path) -> None:
    # llama-server's timings for 100 prompt tokens in 250 ms and 64 tokens in 800 ms
    t = rates_from_timings({"prompt_n": 100, "prompt_ms": 250.0, "predicted_n": 64, "predicted_ms": 800.0,
                            "prompt_per_second": 400.0, "predicted_per_second": 80.0})
    assert t["prompt_n"] / t["prompt_s"] == pytest.approx(400.0)
    assert t["predicted_n"] / t["predicted_s"] == pytest.approx(80.0)
    (tmp_path / "best.json").write_text(json.dumps({"best": {"decode_tok_s": 88.0, "prefill_tok_s": 300.0}}))
    result = {"decode_tok_s": {"median": 80.0}, "prefill_tok_s": {"median": 400.0}}
    c = compare_with_best(result, tmp_path)  # a tune output folder works too
    assert c["rows"][0]["decode_error_pct"] == pytest.approx(10.0)
    assert c["rows"][0]["prefill_error_pct"] == pytest.approx(-25.0)
