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
