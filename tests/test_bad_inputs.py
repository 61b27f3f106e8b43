"""Bad inputs that used to crash or give numbers: now one line naming the file, exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hotexperts.modelspec import load_model_spec
from hotexperts.studies.tune import default_trace


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if not x.startswith(("/", "  ")) and "Warning" not in x]
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error:"), r.stderr
    for n in needles:
        assert n in lines[0], r.stderr


@pytest.fixture
def dup_csv(tmp_path):
    # the repro: each row repeats expert ids
    rows = ["# phase,n_tokens,layer,token_idx,e0,e1,e2,e3"]
    for t in range(20):
        for layer in range(2):
            rows.append(f"decode,1,{layer},0,{t % 2},{t % 2},{(t + 1) % 2},{(t + 1) % 2}")
    p = tmp_path / "dup.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_repeated_ids_and_top_k_above_n_expert_are_refused(dup_csv, tmp_path):
    one_line_error(cli("trace", "import", str(dup_csv), "--out", str(tmp_path / "a.hxt")), str(dup_csv), "top-4")
    one_line_error(cli("trace", "import", str(dup_csv), "--out", str(tmp_path / "a.hxt"), "--n-expert", "8"),
                   str(dup_csv), "twice")
    one_line_error(cli("trace", "synth", "--like", str(dup_csv), "--tokens", "100", "--out", str(tmp_path / "m.hxt")),
                   str(dup_csv))
    assert not (tmp_path / "a.hxt").exists() and not (tmp_path / "m.hxt").exists()
    # eight identical ids per row, with a plausible expert count
    p = tmp_path / "same.csv"
    p.write_text("# phase,n_tokens,layer,token_idx,e0,e1\n" + "".join("decode,1,0,0,3,3\n" for _ in range(5)))
    one_line_error(cli("sim", str(p), "--model", "mixtral-8x7b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy",
                       "lru", "--hot-k", "2", "--remap"), str(p))


def test_a_flipped_byte_in_a_trace_is_caught_on_every_read(tmp_path):
    m = load_model_spec("qwen3-30b-a3b-q4_k_m")
    p = tmp_path / "t.hxt"
    default_trace(m, n_requests=1, prompt_tokens=32, decode_tokens=32).save(p)
    ok = cli("sim", str(p), "--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy", "lru",
             "--hot-k", "8")
    assert ok.returncode == 0, ok.stderr
    b = bytearray(p.read_bytes())
    b[-100] ^= 0x01
    p.write_bytes(bytes(b))
    one_line_error(cli("sim", str(p), "--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy",
                       "lru", "--hot-k", "8"), str(p), "CRC-32")
    # the documented opt-out reads it anyway
    r = cli("sim", str(p), "--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy", "lru",
            "--hot-k", "8", env={"HOTEXPERTS_NO_VERIFY": "1"})
    assert r.returncode == 0


@pytest.mark.parametrize("change,needle", [
    ({"n_head_kv": -100}, "n_head_kv"),
    ({"head_dim": -1}, "head_dim"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"n_layer": "x"}, "n_layer"),
    ({"n_expert": 70000, "n_expert_used": 8}, "70000"),
    ({"name": None}, "name"),
])
def test_impossible_model_geometry_is_one_line(tmp_path, change, needle):
    d = load_model_spec("qwen3-30b-a3b-q4_k_m").to_dict()
    d.update(change)
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    one_line_error(cli("model", str(p)), str(p), needle)
    one_line_error(cli("tune", "--model", str(p), "--hardware", "rtx4090-7950x", "--vram-gb", "24", "--context", "1024",
                       "--out", str(tmp_path / "o"), "--trials", "2"), needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--vram-gb", "nan"], "--vram-gb"), (["--vram-gb", "0"], "--vram-gb"), (["--vram-gb", "-1"], "--vram-gb"),
    (["--sweep-k", ",,,"], "--sweep-k"), (["--kv-type", "junk"], "--kv-type"), (["--context", "-5"], "--context"),
])
def test_sim_refuses_what_tune_refuses(tmp_path, extra, needle):
    m = load_model_spec("qwen3-30b-a3b-q4_k_m")
    p = tmp_path / "t.hxt"
    default_trace(m, n_requests=1, prompt_tokens=16, decode_tokens=16).save(p)
    one_line_error(cli("sim", str(p), "--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy",
                       "lru", "--hot-k", "8", *extra), needle)


@pytest.mark.parametrize("change,needle", [
    ({"fitted": 5}, "fitted"), ({"name": None}, "name"), ({"pcie_prefill_bw": 0}, "pcie_prefill_bw"),
    ({"gpu_tflops": 0}, "gpu_tflops"),
])
def test_bad_hardware_profiles_are_one_line(tmp_path, change, needle):
    from hotexperts.sim.hardware import load_hardware

    d = load_hardware("rtx4090-7950x").to_dict()
    d.update(change)
    p = tmp_path / "hw.json"
    p.write_text(json.dumps(d))
    one_line_error(cli("hardware", "show", str(p)), str(p), needle)


def test_hardware_profile_that_is_not_utf8(tmp_path):
    p = tmp_path / "hw.json"
    p.write_bytes(b'{"name": "\xff\xfe"}')
    one_line_error(cli("hardware", "show", str(p)), str(p), "UTF-8")


@pytest.mark.parametrize("rec,needle", [
    ({"layer": 10**30}, "implausibly large"),
    ({"token_idx": 10**30}, "implausibly large"),
    ({"token_idx": 10**9}, "leaves most"),
])
def test_huge_integers_in_jsonl_are_one_line(tmp_path, rec, needle):
    base = {"dataset": "x", "problem_id": 0, "layer": 0, "experts": [0, 1], "gating_probs": [0.5, 0.5], "token_idx": 0}
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(base) + "\n" + json.dumps({**base, **rec}) + "\n")
    one_line_error(cli("trace", "import", str(p), "--out", str(tmp_path / "t.hxt"), "--n-expert", "8"), str(p), needle)


def test_csv_promising_millions_of_tokens_is_refused_before_allocation(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text("# phase,n_tokens,layer,token_idx,e0,e1\ndecode,20000000,0,0,1,2\n")
    one_line_error(cli("trace", "import", str(p), "--out", str(tmp_path / "t.hxt"), "--n-expert", "8"), str(p),
                   "n_tokens 20000000")
    assert not (tmp_path / "t.hxt").exists()


def test_every_command_reads_every_format_by_content(tmp_path):
    """A .hxt under another name and a CSV are read by sim, tune and check alike (content, not extension)."""
    m = load_model_spec("qwen3-30b-a3b-q4_k_m")
    tr = default_trace(m, n_requests=2, prompt_tokens=16, decode_tokens=24, ubatch=16)
    odd = tmp_path / "routing.trace"
    tr.save(odd)
    csv = tmp_path / "routing.csv"
    from hotexperts.tracer.export import export_trace

    export_trace(tr, csv, format="csv")
    base = ["--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x"]
    for src in (odd, csv):
        r = cli("sim", str(src), *base, "--policy", "lru", "--hot-k", "8", "--json")
        assert r.returncode == 0, r.stderr
        r = cli("tune", str(src), *base, "--vram-gb", "12", "--context", "4096", "--trials", "4",
                "--out", str(tmp_path / f"t-{src.suffix[1:]}"), "--no-progress")
        assert r.returncode == 0, r.stderr
        r = cli("check", "--trace", str(src), *base, "--vram-gb", "12", "--", "llama-server", "-m", "x.gguf",
                "-ngl", "99", "-c", "4096", "--n-cpu-moe", "40")
        assert r.returncode == 0, r.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(cli("sim", str(fifo), *base, "--policy", "lru", "--hot-k", "8"), "not a regular file")


def test_symlink_loop_and_empty_folder_are_named_as_such(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--model", "qwen3-30b-a3b-q4_k_m", "--hardware", "rtx4090-7950x", "--policy", "lru", "--hot-k", "4"]
    one_line_error(cli("sim", str(a), *base), str(a), "symbolic link loop")
    one_line_error(cli("sim", str(empty), *base), str(empty), "empty folder")
