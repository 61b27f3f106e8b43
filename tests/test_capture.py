"""Routing capture from llama.cpp: exactness against a numpy recomputation of the router.

A tiny random-weight qwen3moe GGUF is written inside each test session (``hotexperts.ggufmake``),
with layer 0's attention output weights zero: that layer's MoE input is then
``rmsnorm(token embedding) * ffn_norm`` and its top-k can be recomputed from the model's weights.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hotexperts.cli import main
from hotexperts.errors import InputError
from hotexperts.ggufmake import write_test_moe_gguf
from hotexperts.tracer.capture import capture, gguf_moe_header, read_prompt_file, run_capture
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

pytest.importorskip("llama_cpp", reason="llama-cpp-python is a dependency of hotexperts; capture needs it")

N_LAYER = 3
PROMPTS = ["The quick brown fox jumps", "ünïcode ✓ and more"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path, weights) of an f32 model; the weights are what write_test_moe_gguf returned."""
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    w = write_test_moe_gguf(path, n_layer=N_LAYER, seed=3)
    return path, w


def router_reference(w: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer 0 router of every vocabulary token, computed in float64 from the model's own weights.

    Returns (top-k ids in descending order, their softmax probabilities, the sorted logit gaps).
    """
    emb = w["token_embd"].astype(np.float64)
    h = emb / np.sqrt(np.mean(emb * emb, axis=1, keepdims=True) + w["rms_eps"])
    h = h * w["ffn_norm"][0].astype(np.float64)
    logits = h @ w["ffn_gate_inp"][0].astype(np.float64).T  # (n_vocab, n_expert)
    k = w["n_expert_used"]
    order = np.argsort(-logits, axis=1, kind="stable")
    top = order[:, :k]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    srt = -np.sort(-logits, axis=1)
    gaps = srt[:, :k] - srt[:, 1 : k + 1]  # gaps inside the top-k and to the first one left out
    return top, np.take_along_axis(p, top, axis=1), gaps


def prompt_tokens(text: str) -> list[int]:
    """What llama.cpp's SentencePiece tokenizer makes of ``text`` with the byte vocabulary: <s>, then
    the UTF-8 bytes of the text with every space escaped as U+2581 (byte b is token 3 + b)."""
    return [1] + [3 + b for b in text.replace(" ", "\u2581").encode()]


def check_layer0(res, w) -> None:
    top, probs, gaps = router_reference(w)
    tokens = res.tokens
    # NOTE: the comparison is only meaningful without near-ties; float32 vs float64 differ ~1e-5.
    assert gaps[tokens].min() > 1e-4, "test model has a near-tie in the router: change the seed"
    tr = res.trace
    got = tr.experts[:, 0, :].astype(np.int64)
    want = top[tokens]
    for phase in (PHASE_PREFILL, PHASE_DECODE):
        sel = tr.phase == phase
        assert sel.any()
        np.testing.assert_array_equal(got[sel], want[sel])  # exact, in descending-probability order
    assert tr.weights is not None
    np.testing.assert_allclose(tr.weights[:, 0, :].astype(np.float64), probs[tokens], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_layer0_matches_numpy_router(tmp_path, dtype):
    path = tmp_path / f"m_{dtype}.gguf"
    w = write_test_moe_gguf(path, n_layer=2, seed=3, dtype=dtype)
    # NOTE: extra_bufts=False keeps llama.cpp off its AMX/repack CPU paths, which some sandboxes
    # kill with SIGILL for q8_0 weights; the routing computed is the same.
    res = run_capture(path, PROMPTS, n_predict=12, n_ctx=256, extra_bufts=False)
    tr = res.trace
    assert tr.n_decode_tokens == 24 and tr.n_prefill_tokens == len(res.tokens) - 24
    check_layer0(res, w)
    # decode rows are the sampled tokens: greedy decoding, so they are the generated ids
    for req, gen in enumerate(res.generated):
        sel = (tr.request == req) & (tr.phase == PHASE_DECODE)
        assert res.tokens[sel].tolist() == gen


def test_prompt_tokens_are_the_text_bytes(tiny):
    path, _ = tiny
    res = run_capture(path, ["Hi ✓"], n_predict=0, n_ctx=64)
    # byte vocabulary: <s> = 1, byte b = 3 + b
    assert res.tokens.tolist() == prompt_tokens("Hi ✓")


def test_seeded_sampling_is_reproducible_and_exact(tiny):
    path, w = tiny
    a = run_capture(path, PROMPTS[:1], n_predict=16, n_ctx=128, seed=7, temp=1.5)
    b = run_capture(path, PROMPTS[:1], n_predict=16, n_ctx=128, seed=7, temp=1.5)
    g = run_capture(path, PROMPTS[:1], n_predict=16, n_ctx=128)
    assert a.generated == b.generated
    np.testing.assert_array_equal(a.trace.experts, b.trace.experts)
    assert a.generated != g.generated  # sampling at temperature 1.5 leaves the greedy path
    check_layer0(a, w)
    assert a.trace.meta["source"]["seed"] == 7


def test_prefill_and_token_by_token_decode_route_the_same(tiny):
    path, _ = tiny
    gen = run_capture(path, PROMPTS[:1], n_predict=20, n_ctx=128)
    tokens = gen.tokens.tolist()
    # the same token sequence as one prefill (all outputs, so the last layer routes every row) ...
    pre = run_capture(path, [tokens], n_predict=0, n_ctx=128, output_all=True)
    # ... and fed one token per llama_decode call
    one = run_capture(path, [tokens], n_predict=0, n_ctx=128, n_ubatch=1, output_all=True)
    assert pre.trace.present is None and one.trace.present is None
    assert pre.trace.n_steps == 1 and one.trace.n_steps == len(tokens)
    np.testing.assert_array_equal(pre.trace.experts, one.trace.experts)
    # and the original run (prefill, then real decode steps) agrees wherever it recorded a row
    present = gen.trace.present
    assert present is not None
    np.testing.assert_array_equal(gen.trace.experts[present], pre.trace.experts[present])
    assert np.array_equal(gen.trace.phase == PHASE_DECODE, np.arange(len(tokens)) >= len(tokens) - 20)


def test_last_layer_rows_and_present_mask(tiny):
    path, _ = tiny
    res = run_capture(path, ["abcdefghij"], n_predict=3, n_ctx=64, n_ubatch=4)
    tr = res.trace
    n_prompt = 11  # <s> + 10 bytes
    assert tr.ubatch.tolist() == [0] * 4 + [1] * 4 + [2] * 3 + [3, 4, 5]
    assert tr.present is not None
    # every layer but the last routes every token
    assert tr.present[:, :-1].all()
    # the last layer routes only tokens with an output: the prompt's last token and decode tokens
    want = np.zeros(tr.n_tokens, bool)
    want[n_prompt - 1 :] = True
    np.testing.assert_array_equal(tr.present[:, -1], want)
    assert np.isfinite(tr.step_seconds).all() and (tr.step_seconds > 0).all()
    # one timing per ubatch
    for a, b in tr.iter_steps():
        assert np.unique(tr.step_seconds[a:b]).size == 1


def test_two_prompts_two_requests(tiny):
    path, _ = tiny
    res = run_capture(path, PROMPTS, n_predict=5, n_ctx=128)
    tr = res.trace
    assert tr.n_requests == 2
    for req, text in enumerate(PROMPTS):
        sel = tr.request == req
        n_prompt = len(prompt_tokens(text))
        assert tr.pos[sel].tolist() == list(range(n_prompt + 5))
        assert tr.phase[sel].tolist() == [PHASE_PREFILL] * n_prompt + [PHASE_DECODE] * 5
    assert np.all(np.diff(tr.ubatch) >= 0)
    assert tr.n_steps == 2 * (1 + 5)
    # a request does not see the previous one: capturing the second prompt alone gives the same rows
    alone = run_capture(path, PROMPTS[1:], n_predict=5, n_ctx=128)
    np.testing.assert_array_equal(alone.trace.experts, tr.experts[tr.request == 1])
    assert tr.meta["source"]["kind"] == "capture" and tr.meta["source"]["prompts"] == 2
    assert tr.meta["model"]["n_expert"] == 16 and tr.moe_layers == tuple(range(N_LAYER))


def test_prompt_too_long_and_other_bad_input(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(InputError, match="more than the 256-token context"):
        capture(path, ["x" * 300], n_predict=1, n_ctx=256)
    with pytest.raises(InputError, match="no such file"):
        capture(tmp_path / "nope.gguf", ["a"], n_predict=1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(InputError, match="not a GGUF"):
        capture(bad, ["a"], n_predict=1)
    with pytest.raises(InputError, match="empty"):
        capture(path, [""], n_predict=1)
    with pytest.raises(InputError, match="outside the vocabulary"):
        capture(path, [[1, 5000]], n_predict=1)


def _dense_gguf(path) -> None:
    import gguf

    wr = gguf.GGUFWriter(path, "llama")
    wr.add_block_count(1)
    wr.add_embedding_length(8)
    wr.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def test_model_without_moe_layers(tmp_path):
    p = tmp_path / "dense.gguf"
    _dense_gguf(p)
    with pytest.raises(InputError, match="not a mixture-of-experts"):
        gguf_moe_header(p)


def test_prompt_file_forms(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    assert read_prompt_file(lines) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"prompt": s, "id": i}) for i, s in enumerate(["a\nb", "c"])) + "\n")
    assert read_prompt_file(jl) == ["a\nb", "c"]
    jl.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(InputError, match="line 2"):
        read_prompt_file(jl)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        read_prompt_file(empty)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_capture_writes_a_loadable_trace(tiny, tmp_path):
    path, w = tiny
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "t.hxt"
    proc = subprocess.run(
        [sys.executable, "-m", "hotexperts", "trace", "capture", str(path), "--prompt-file", str(pf),
         "--n-predict", "6", "--ctx", "128", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tr = Trace.load(out, verify=True)
    assert tr.n_requests == 2 and tr.n_decode_tokens == 12
    assert tr.meta["source"]["model"] == str(path)
    # the same capture through the API gives the same routing (timings differ)
    api = capture(path, PROMPTS, n_predict=6, n_ctx=128)
    for name in ("experts", "phase", "request", "ubatch", "pos"):
        np.testing.assert_array_equal(getattr(tr, name), getattr(api, name))


@pytest.mark.parametrize("case", ["missing_model", "empty_prompt_file", "not_gguf", "too_long"])
def test_cli_bad_input_one_line_exit_1(tiny, tmp_path, capsys, case):
    path, _ = tiny
    out = tmp_path / "t.hxt"
    args = ["trace", "capture", str(path), "--prompt", "hello", "--out", str(out), "--no-progress", "--ctx", "64"]
    if case == "missing_model":
        args[2] = str(tmp_path / "missing.gguf")
    elif case == "empty_prompt_file":
        pf = tmp_path / "empty.txt"
        pf.write_text("")
        args[3:5] = ["--prompt-file", str(pf)]
    elif case == "not_gguf":
        junk = tmp_path / "junk.gguf"
        junk.write_text("hello")
        args[2] = str(junk)
    else:
        args[4] = "y" * 300  # llama.cpp rounds the context up to 256
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error: "), err
    assert not out.exists()
    assert not list(tmp_path.glob(".t.hxt.*"))
