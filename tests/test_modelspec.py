"""Model specs: header-only GGUF reading, exact expert bytes from ggml block sizes, presets, CLI.

Independent references: byte sizes are recomputed here from the block sizes stated in
calibration.md (Q4_K 144 B / 256, Q6_K 210 B / 256, Q8_0 34 B / 32), dense bytes from the raw
arrays written into the test files, the header parse is cross-checked against gguf.GGUFReader,
and preset numbers against calibration.md's published figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from hotexperts import modelspec
from hotexperts.cli import main
from hotexperts.errors import InputError
from hotexperts.modelspec import ModelSpec, load_model_spec, read_gguf_header, spec_from_gguf
from hotexperts.presets import PRESETS, get_preset

Q = gguf.GGMLQuantizationType
# bytes per block and weights per block, as calibration.md states them
BLOCK = {"Q4_K": (256, 144), "Q6_K": (256, 210), "Q8_0": (32, 34), "F32": (1, 4)}


def nbytes(n_weights: int, t: str) -> int:
    per, size = BLOCK[t]
    assert n_weights % per == 0
    return n_weights // per * size


E, FF, N_EXP, TOPK, VOCAB, N_HEAD, N_HEAD_KV, HD = 256, 256, 4, 2, 64, 4, 2, 64


class _Model:
    """Builds a tiny qwen2moe-style GGUF: layer 0 dense FFN, layers 1-2 MoE with a shared expert."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, np.ndarray, tuple[int, ...], str]] = []
        self.dense_bytes = 0
        self.expert_bytes = 0

    def add(self, name: str, shape: tuple[int, ...], t: str, *, expert: bool = False) -> None:
        """``shape`` in ggml order (ne0 first)."""
        np_shape = tuple(reversed(shape))
        if t == "F32":
            arr = np.zeros(np_shape, dtype=np.float32)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(np_shape, Q[t])
            arr = np.zeros(byte_shape, dtype=np.uint8)
        self.tensors.append((name, arr, shape, t))
        if expert:
            self.expert_bytes += arr.nbytes
        else:
            self.dense_bytes += arr.nbytes

    def write(self, path: Path, *, arch: str = "qwen2moe", moe: bool = True, kv_extra: bool = True) -> Path:
        w = gguf.GGUFWriter(str(path), arch)
        w.add_name("tiny test moe")
        w.add_block_count(3)
        w.add_embedding_length(E)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(N_HEAD_KV)
        w.add_key_length(HD)
        w.add_value_length(HD)
        if moe and kv_extra:
            w.add_expert_count(N_EXP)
            w.add_expert_used_count(TOPK)
            w.add_uint32(f"{arch}.expert_shared_count", 1)
        w.add_token_list([f"t{i}" for i in range(VOCAB)])
        for name, arr, _shape, t in self.tensors:
            if t == "F32":
                w.add_tensor(name, arr)
            else:
                w.add_tensor(name, arr, raw_dtype=Q[t])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path


def build_model(*, moe: bool = True) -> _Model:
    m = _Model()
    m.add("token_embd.weight", (E, VOCAB), "Q8_0")
    m.add("output_norm.weight", (E,), "F32")
    m.add("output.weight", (E, VOCAB), "Q6_K")
    for il in range(3):
        p = f"blk.{il}."
        m.add(p + "attn_norm.weight", (E,), "F32")
        m.add(p + "attn_q.weight", (E, N_HEAD * HD), "Q4_K")
        m.add(p + "attn_k.weight", (E, N_HEAD_KV * HD), "Q4_K")
        m.add(p + "attn_v.weight", (E, N_HEAD_KV * HD), "Q6_K")
        m.add(p + "attn_output.weight", (N_HEAD * HD, E), "Q4_K")
        m.add(p + "ffn_norm.weight", (E,), "F32")
        if il == 0 or not moe:
            m.add(p + "ffn_gate.weight", (E, FF), "Q4_K")
            m.add(p + "ffn_up.weight", (E, FF), "Q4_K")
            m.add(p + "ffn_down.weight", (FF, E), "Q6_K")
            continue
        gate_up = "Q4_K" if il == 1 else "Q8_0"
        down = "Q6_K" if il == 1 else "Q4_K"
        m.add(p + "ffn_gate_inp.weight", (E, N_EXP), "F32")
        m.add(p + "ffn_gate_exps.weight", (E, FF, N_EXP), gate_up, expert=True)
        m.add(p + "ffn_up_exps.weight", (E, FF, N_EXP), gate_up, expert=True)
        m.add(p + "ffn_down_exps.weight", (FF, E, N_EXP), down, expert=True)
        m.add(p + "ffn_gate_inp_shexp.weight", (E,), "F32")
        m.add(p + "ffn_gate_shexp.weight", (E, FF), "Q4_K")
        m.add(p + "ffn_up_shexp.weight", (E, FF), "Q4_K")
        m.add(p + "ffn_down_shexp.weight", (FF, E), "Q6_K")
    return m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Model]:
    m = build_model()
    return m.write(tmp_path_factory.mktemp("gguf") / "tiny.gguf"), m


# --------------------------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------------------------


def test_expert_bytes_per_layer_from_block_sizes(tiny: tuple[Path, _Model]) -> None:
    path, _m = tiny
    spec = spec_from_gguf(path)
    w = E * FF  # weights of one expert's gate (= up = down)
    layer1 = 2 * nbytes(w, "Q4_K") + nbytes(w, "Q6_K")  # Q6_K down
    layer2 = 2 * nbytes(w, "Q8_0") + nbytes(w, "Q4_K")  # Q4_K down
    assert spec.moe_layers == (1, 2)
    assert spec.expert_bytes == (layer1, layer2)
    assert layer1 == 2 * 36_864 + 53_760 and layer2 == 2 * 69_632 + 36_864
    assert spec.expert_types == (
        {"gate": "Q4_K", "up": "Q4_K", "down": "Q6_K"},
        {"gate": "Q8_0", "up": "Q8_0", "down": "Q4_K"},
    )
    assert spec.n_expert == N_EXP and spec.n_expert_used == TOPK
    assert spec.expert_ff == FF and spec.hidden_size == E
    assert spec.total_expert_bytes == N_EXP * (layer1 + layer2)


def test_dense_bytes_are_all_other_tensors(tiny: tuple[Path, _Model]) -> None:
    path, m = tiny
    spec = spec_from_gguf(path)
    assert spec.dense_bytes == m.dense_bytes
    assert spec.total_expert_bytes == m.expert_bytes
    assert spec.embd_bytes == nbytes(E * VOCAB, "Q8_0")


def test_geometry_shared_experts_and_kv(tiny: tuple[Path, _Model]) -> None:
    spec = spec_from_gguf(tiny[0])
    assert spec.arch == "qwen2moe" and spec.n_layer == 3
    assert spec.n_shared_expert == 1 and spec.shared_ff == FF
    assert spec.n_kv_layers == 3 and spec.n_head_kv == N_HEAD_KV and spec.head_dim == HD and spec.n_head == N_HEAD
    assert spec.vocab_size == VOCAB
    assert spec.kv_bytes_per_token("f16") == 3 * 2 * N_HEAD_KV * HD * 2
    assert spec.state_bytes == 0


def test_header_matches_gguf_reader(tiny: tuple[Path, _Model]) -> None:
    path, _m = tiny
    ours = read_gguf_header(path)
    ref = gguf.GGUFReader(str(path))
    assert ours.data_offset == ref.data_offset
    assert len(ours.tensors) == len(ref.tensors)
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.name == b.name
        assert a.shape == tuple(int(x) for x in b.shape)
        assert a.ggml_type == b.tensor_type.name
        assert a.n_bytes == b.n_bytes
        assert ours.data_offset + a.offset == b.data_offset
    assert ours.kv["qwen2moe.expert_count"] == ref.fields["qwen2moe.expert_count"].contents()
    assert ours.kv["general.name"] == ref.fields["general.name"].contents()


def test_reads_header_only_not_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF with 8 GiB of (sparse) expert data reads in a few header bytes."""
    n_exp, ff, e = 128, 2048, 4096  # 3 x 4096 x 2048 x 128 Q4_K = 1.5 GiB per layer
    path = tmp_path / "big.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    w.add_block_count(6)
    w.add_embedding_length(e)
    w.add_expert_count(n_exp)
    w.add_expert_used_count(8)
    w.add_head_count(32)
    for il in range(6):
        for part, shape in (("gate", (e, ff, n_exp)), ("up", (e, ff, n_exp)), ("down", (ff, e, n_exp))):
            byte_shape = gguf.quant_shape_to_byte_shape(tuple(reversed(shape)), Q.Q4_K)
            nb = nbytes(shape[0] * shape[1] * shape[2], "Q4_K")
            w.add_tensor_info(f"blk.{il}.ffn_{part}_exps.weight", byte_shape, np.dtype(np.uint8), nb, raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header_size = path.stat().st_size
    per_layer = 3 * nbytes(e * ff * n_exp, "Q4_K")
    data_offset = read_gguf_header(path, allow_partial=True).data_offset
    # header-only file: complete spec with allow_partial, a clear error without
    spec_partial = spec_from_gguf(path, allow_partial=True)
    with pytest.raises(InputError, match="truncated GGUF file"):
        spec_from_gguf(path)
    with open(path, "r+b") as fh:  # extend with a hole: 9 GiB of tensor data nobody wrote
        fh.truncate(data_offset + 6 * per_layer)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def read(self, n: int = -1) -> bytes:
            b = self.f.read(n)
            read.append(len(b))
            return b

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *a) -> None:  # type: ignore[no-untyped-def]
            self.f.close()

    monkeypatch.setattr(modelspec, "open", lambda p, mode="r", **kw: Counting(real_open(p, mode, **kw)), raising=False)
    spec = spec_from_gguf(path)
    monkeypatch.undo()
    assert path.stat().st_size > 9 * 2**30
    assert read, "the reader did not go through the counting wrapper"
    assert sum(read) <= header_size + (1 << 20)  # the header plus at most one read-ahead chunk
    assert spec.expert_bytes == (per_layer // n_exp,) * 6 == spec_partial.expert_bytes
    assert spec.expert_bytes[0] == 3 * e * ff * 144 // 256


def test_json_round_trip(tmp_path: Path, tiny: tuple[Path, _Model], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", str(tiny[0]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("arch", "n_layer", "moe_layers", "n_expert", "n_expert_used", "expert_bytes", "dense_bytes"):
        assert k in d
    assert d["moe_layers"] == [1, 2] and len(d["expert_bytes"]) == 2
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(d))
    assert load_model_spec(str(p)) == spec_from_gguf(tiny[0])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error: ")
    return lines[0]


def test_bad_inputs_fail_with_one_line(tmp_path: Path, tiny: tuple[Path, _Model], capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.gguf"
    assert "no such file" in _cli_error(["model", str(missing)], capsys)

    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGML" + tiny[0].read_bytes()[4:200])
    assert "not a GGUF file" in _cli_error(["model", str(wrong)], capsys)

    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in _cli_error(["model", str(empty)], capsys)

    data = tiny[0].read_bytes()
    data_offset = read_gguf_header(tiny[0]).data_offset
    for cut in (10, 30, data_offset // 2, data_offset - 40):  # (padding before the data is < 32 B)
        trunc = tmp_path / f"trunc{cut}.gguf"
        trunc.write_bytes(data[:cut])
        assert "truncated GGUF header" in _cli_error(["model", str(trunc)], capsys)
    short = tmp_path / "short.gguf"
    short.write_bytes(data[: len(data) - 100])
    assert "truncated GGUF file" in _cli_error(["model", str(short)], capsys)
    assert main(["model", str(short), "--header-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["moe_layers"] == [1, 2]

    v1 = tmp_path / "v1.gguf"
    v1.write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    assert "unsupported GGUF version 1" in _cli_error(["model", str(v1)], capsys)

    dense = build_model(moe=False).write(tmp_path / "dense.gguf", moe=False)
    assert "no MoE layers" in _cli_error(["model", str(dense)], capsys)

    assert "known presets: " in _cli_error(["model", "no-such-preset"], capsys)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"name": "x"}')
    assert "lacks" in _cli_error(["model", str(bad_json)], capsys)


def test_expert_count_mismatch_is_an_input_error(tmp_path: Path) -> None:
    m = build_model()
    path = tmp_path / "mismatch.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2moe")
    w.add_block_count(3)
    w.add_expert_count(N_EXP + 1)
    w.add_expert_used_count(TOPK)
    for name, arr, _shape, t in m.tensors:
        w.add_tensor(name, arr, raw_dtype=None if t == "F32" else Q[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="expert_count is 5 but expert tensors hold 4"):
        spec_from_gguf(path)


# --------------------------------------------------------------------------------------------
# presets against published numbers
# --------------------------------------------------------------------------------------------


def test_qwen35_preset_matches_calibration() -> None:
    s = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    assert (s.arch, s.n_layer, s.moe_layers) == ("qwen35moe", 48, tuple(range(48)))
    assert (s.n_expert, s.n_expert_used, s.hidden_size, s.expert_ff) == (256, 8, 3072, 1024)
    assert (s.n_shared_expert, s.shared_ff, s.n_head, s.vocab_size) == (1, 1024, 32, 248_320)
    w = 3072 * 1024
    all_q4k, q6k_down = 3 * nbytes(w, "Q4_K"), 2 * nbytes(w, "Q4_K") + nbytes(w, "Q6_K")
    assert (all_q4k, q6k_down) == (5_308_416, 6_119_424)  # calibration.md
    # calibration.md: Q6_K down in layers 0-5, 8, 11, ..., 41, 42-47
    q6k_layers = set(range(0, 6)) | set(range(8, 42, 3)) | set(range(42, 48))
    assert len(q6k_layers) == 24
    for layer, b, t in zip(s.moe_layers, s.expert_bytes, s.expert_types):
        assert b == (q6k_down if layer in q6k_layers else all_q4k)
        assert t == {"gate": "Q4_K", "up": "Q4_K", "down": "Q6_K" if layer in q6k_layers else "Q4_K"}
    # calibration.md: K=42 x 48 layers x 5.31 MB = 9.97 GiB ("~9.9 GB")
    assert 9.9 <= 42 * 48 * min(s.expert_bytes) / 2**30 <= 10.0
    # with the per-layer Q6_K mix, 42 slots in every layer take 42 x sum of per-layer bytes
    assert 42 * sum(s.expert_bytes) == 42 * (24 * all_q4k + 24 * q6k_down)
    # KV: 12 full-attention layers x 2 heads x 256 x (K+V) at q8_0 = 13,056 B/token
    assert (s.n_kv_layers, s.n_head_kv, s.head_dim) == (12, 2, 256)
    assert s.kv_bytes_per_token("q8_0") == 12 * 2 * 256 * 2 * 34 / 32 == 13_056
    assert 0.14e9 < s.state_bytes < 0.17e9  # "~0.15 GB"
    # 122B parameters in total, 115.96B of them routed experts
    assert 121.5e9 < s.extra["n_params"] < 122.5e9
    assert 48 * 256 * 9_437_184 == 115_964_116_992
    assert s.extra["routed_expert_bytes"] == s.total_expert_bytes


def test_qwen35_dense_bytes_fit_the_measured_vram() -> None:
    """Hot-cache run: 22.2 GB VRAM = non-expert weights on GPU + 44 slots x 48 layers + 131K KV + buffers."""
    s = get_preset("qwen3.5-122b-a10b-q4_k_l")
    hot = 44 * sum(s.expert_bytes)
    kv = 131_072 * s.kv_bytes_per_token("q8_0")
    assert abs(kv - 1.71e9) < 0.01e9
    on_gpu_dense = s.dense_bytes - s.embd_bytes  # llama.cpp keeps the token embedding in host RAM
    rest = 22.2e9 - hot - kv - on_gpu_dense - s.state_bytes
    # what is left is the compute buffer (ubatch 3072 x 248,320-entry logits alone is 3.05 GB)
    assert 3.0e9 < rest < 6.0e9
    # non-expert weights: Q8_0 embedding + output (0.81 GB each) and ~2.9 GB of layers
    assert s.embd_bytes == nbytes(3072 * 248_320, "Q8_0")
    assert 4.0e9 < s.dense_bytes < 5.0e9


def test_trace_model_presets() -> None:
    kimi = get_preset("kimi-linear-48b-a3b-q4_k_m")
    assert kimi.moe_layers == tuple(range(1, 27)) and kimi.n_layer == 27
    assert (kimi.n_expert, kimi.n_expert_used) == (256, 8)
    assert kimi.mean_expert_bytes == 4_285_440  # the published expert size (a mean over layers)
    assert kimi.dense_bytes + kimi.total_expert_bytes == kimi.extra["total_bytes"]
    mix = get_preset("mixtral-8x7b-q4_k_m")
    assert (mix.n_expert, mix.n_expert_used, mix.n_layer, mix.hidden_size, mix.expert_ff) == (8, 2, 32, 4096, 14_336)
    assert set(mix.expert_bytes) == {3 * nbytes(4096 * 14_336, "Q4_K"), 2 * nbytes(4096 * 14_336, "Q4_K") + nbytes(4096 * 14_336, "Q6_K")}
    assert 46.0e9 < mix.extra["n_params"] < 47.5e9  # Mixtral-8x7B: 46.7B
    q3 = get_preset("qwen3-30b-a3b-q4_k_m")
    assert (q3.n_expert, q3.n_expert_used, q3.n_layer, q3.hidden_size, q3.expert_ff) == (128, 8, 48, 2048, 768)
    assert 30.0e9 < q3.extra["n_params"] < 31.0e9  # Qwen3-30B-A3B: 30.5B
    assert q3.kv_bytes_per_token("f16") == 48 * 4 * 128 * 2 * 2


def test_per_request_trace_presets_hand_computed() -> None:
    """Expert bytes of the Maverick / DeepSeek presets, computed here from the HF shapes and ggml block sizes
    (Q4_K 144 B, Q6_K 210 B per 256; Q5_0 22 B, Q8_0 34 B per 32)."""
    mav = get_preset("llama4-maverick-17b-128e-q4_k_m")
    w = 5120 * 8192
    assert mav.moe_layers == tuple(range(1, 48, 2)) and (mav.n_expert, mav.n_expert_used) == (128, 1)
    q6_layers = {1, 3, 5, 11, 17, 23, 29, 35, 41, 43, 45, 47}  # use_more_bits(i, 48), odd i
    for il, b in zip(mav.moe_layers, mav.expert_bytes):
        assert b == (2 * w // 256 * 144 + w // 256 * (210 if il in q6_layers else 144)), il
    assert 395e9 < mav.extra["n_params"] < 405e9  # 400B total
    lite = get_preset("deepseek-v2-lite-q4_k_m")
    w = 2048 * 1408
    assert lite.moe_layers == tuple(range(1, 27)) and (lite.n_expert, lite.n_expert_used) == (64, 6)
    assert (lite.n_shared_expert, lite.shared_ff, lite.head_dim, lite.head_dim_v) == (2, 1408, 576, 512)
    assert set(lite.expert_bytes) == {2 * w // 256 * 144 + w // 32 * 22, 2 * w // 256 * 144 + w // 32 * 34}
    assert lite.expert_types[0]["down"] == "Q8_0" and lite.expert_types[2]["down"] == "Q5_0"  # layers 1, 3
    assert 15.5e9 < lite.extra["n_params"] < 16.0e9  # 15.7B
    v3 = get_preset("deepseek-v3-q4_k_m")
    w = 7168 * 2048
    assert v3.moe_layers == tuple(range(3, 61)) and (v3.n_expert, v3.n_expert_used) == (256, 8)
    assert set(v3.expert_bytes) == {3 * w // 256 * 144, 2 * w // 256 * 144 + w // 256 * 210}
    assert 665e9 < v3.extra["n_params"] < 675e9  # 671B without the MTP layer


def test_every_preset_is_consistent_and_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
        s = get_preset(name)
        assert isinstance(s, ModelSpec) and s.validate() is s
        assert ModelSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert main(["model", "qwen3.5-122b-a10b-q4_k_l"]) == 0
    text = capsys.readouterr().out
    assert "13,056 B/token q8_0" in text and "GiB" in text


def test_load_model_spec_unknown_preset_lists_known() -> None:
    with pytest.raises(InputError) as exc:
        load_model_spec("qwen9-1t")
    for name in PRESETS:
        assert name in str(exc.value)
    assert os.sep not in "qwen9-1t"


def test_hybrid_linear_attention_model(tmp_path: Path) -> None:
    """qwen35moe-style: DeltaNet layers' fused attn_qkv is no KV cache; merged gate_up experts."""
    e, ff, n_exp, d_state, n_group, n_v, d_conv = 256, 256, 4, 32, 2, 8, 4
    inner = d_state * n_v
    conv_dim = 2 * d_state * n_group + inner
    m = _Model()
    m.add("token_embd.weight", (e, VOCAB), "Q8_0")
    for il in range(4):
        p = f"blk.{il}."
        if il == 3:
            m.add(p + "attn_q.weight", (e, 2 * N_HEAD * HD), "Q4_K")
            m.add(p + "attn_k.weight", (e, N_HEAD_KV * HD), "Q4_K")
            m.add(p + "attn_v.weight", (e, N_HEAD_KV * HD), "Q4_K")
        else:
            m.add(p + "attn_qkv.weight", (e, conv_dim), "Q4_K")
            m.add(p + "ssm_conv1d.weight", (d_conv, conv_dim), "F32")
            m.add(p + "ssm_out.weight", (inner, e), "Q4_K")
        m.add(p + "ffn_gate_inp.weight", (e, n_exp), "F32")
        m.add(p + "ffn_gate_up_exps.weight", (e, 2 * ff, n_exp), "Q4_K", expert=True)
        m.add(p + "ffn_down_exps.weight", (ff, e, n_exp), "Q6_K", expert=True)
    path = tmp_path / "hybrid.gguf"
    w = gguf.GGUFWriter(str(path), "qwen35moe")
    w.add_block_count(4)
    w.add_embedding_length(e)
    w.add_expert_count(n_exp)
    w.add_expert_used_count(2)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HD)
    w.add_uint32("qwen35moe.ssm.conv_kernel", d_conv)
    w.add_uint32("qwen35moe.ssm.state_size", d_state)
    w.add_uint32("qwen35moe.ssm.group_count", n_group)
    w.add_uint32("qwen35moe.ssm.inner_size", inner)
    for name, arr, _shape, t in m.tensors:
        w.add_tensor(name, arr, raw_dtype=None if t == "F32" else Q[t])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    s = spec_from_gguf(path)
    assert s.moe_layers == (0, 1, 2, 3) and s.expert_ff == ff
    assert s.expert_types[0] == {"gate_up": "Q4_K", "down": "Q6_K"}
    assert s.expert_bytes == (nbytes(2 * e * ff, "Q4_K") + nbytes(e * ff, "Q6_K"),) * 4
    assert s.dense_bytes == m.dense_bytes
    assert s.n_kv_layers == 1 and s.extra["kv_layers"] == [3] and s.extra["recurrent_layers"] == [0, 1, 2]
    # llama.cpp: conv state (d_conv - 1) x conv_dim + recurrent state d_state x inner, f32, per layer
    assert s.state_bytes == 3 * 4 * ((d_conv - 1) * conv_dim + d_state * inner)
    assert "state_bytes" in s.extra["estimates"]
