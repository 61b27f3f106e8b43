"""Readers of foreign trace formats: real traces, hand-built files, and bad input of every kind."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotexperts.cli import main
from hotexperts.errors import InputError
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.profile import load_moeprof
from hotexperts.tracer.readers import TraceImportWarning, detect_format
from hotexperts.tracer.readers.forklog import read_fork_log
from hotexperts.tracer.readers.moet import read_moet
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL

# ----------------------------------------------------------------------------- helpers


def moet_record(step, flags, seq, layers):
    """One MOET v1 record, written from the layout in sirxsniper/llama-cpp-turboquant tools/moe-trace/moet.py.

    ``layers``: list of (il, ids (T, k) array, weights (T, k) array or None).
    """
    body = struct.pack("<IHBB", step, len(seq), flags, len(layers))
    body += struct.pack(f"<{len(seq)}H", *seq)
    for il, ids, w in layers:
        ids = np.asarray(ids, np.uint16)
        T, k = ids.shape
        body += struct.pack("<HHBBHH", il, T, k, 0, 0, 0)
        body += ids.astype("<u2").tobytes()
        body += (np.zeros((T, k)) if w is None else np.asarray(w)).astype("<f2").tobytes()
    return struct.pack("<I", len(body)) + body


def moet_file(records, n_expert=16, version=1, magic=b"MOET"):
    return magic + struct.pack("<II", version, n_expert) + b"".join(records)


def _sample_moet_records(rng, n_expert=16, k=2, layers=(1, 2, 3)):
    recs, truth = [], []
    # a 10-token prefill ubatch whose last layer only has the output row (T = 1)
    ids = [rng.permuted(np.tile(np.arange(n_expert), (10, 1)), axis=1)[:, :k] for _ in layers]
    w = [rng.random((10, k)).astype(np.float16) for _ in layers]
    recs.append(moet_record(1, 1, [0] * 10, [(il, ids[j] if j < len(layers) - 1 else ids[j][-1:],
                                               w[j] if j < len(layers) - 1 else w[j][-1:])
                                              for j, il in enumerate(layers)]))
    truth.append(("prefill", ids, w))
    for s in range(4):
        ids = [rng.permuted(np.arange(n_expert))[:k][None, :] for _ in layers]
        w = [rng.random((1, k)).astype(np.float16) for _ in layers]
        recs.append(moet_record(2 + s, 0, [0], [(il, ids[j], w[j]) for j, il in enumerate(layers)]))
        truth.append(("decode", ids, w))
    return recs, truth


def _one_warning(record) -> str:
    msgs = [str(w.message) for w in record if issubclass(w.category, TraceImportWarning)]
    return " | ".join(msgs)


def _run_cli(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ----------------------------------------------------------------------------- real traces


def test_kimi_coding_csv_counts(kimi_coding_csv):
    tr = import_trace(kimi_coding_csv, n_expert=256)
    # README: 2 warm-up + 233 + 4 prefill tokens, then 255 decode tokens; MoE layers 1..26, top-8 of 256
    assert tr.n_prefill_tokens == 233 + 4
    assert tr.n_decode_tokens == 255
    assert tr.moe_layers == tuple(range(1, 27))
    assert (tr.n_expert, tr.top_k, tr.n_requests) == (256, 8, 1)
    sizes = np.diff(tr.step_bounds())
    assert sizes[:2].tolist() == [233, 4] and bool((sizes[2:] == 1).all())
    # llama.cpp skipped the last MoE layer for the 233-token ubatch and for 3 of the 4 tokens
    assert tr.present is not None
    absent = ~tr.present
    assert absent[:, :-1].sum() == 0
    assert absent[:, -1].sum() == 233 + 3
    assert bool(tr.present[236, -1]) and not bool(tr.present[235, -1])
    assert tr.pos.tolist() == list(range(tr.n_tokens))
    # the row count of the file is the number of present entries plus the warm-up's 51 rows
    assert int(tr.present.sum()) + 51 == 12607


def test_kimi_csv_keep_warmup(kimi_coding_csv):
    tr = import_trace(kimi_coding_csv, n_expert=256, keep_warmup=True)
    assert tr.n_prefill_tokens == 2 + 233 + 4
    assert tr.n_requests == 2  # the warm-up is a cleared sequence of its own
    assert tr.pos[:4].tolist() == [0, 1, 0, 1]
    # warm-up: the last layer has one row, for the second token
    assert tr.present[:2, -1].tolist() == [False, True]


def test_kimi_alt_csv_two_warmups_and_start_pos(kimi_alt_csv):
    tr = import_trace(kimi_alt_csv, n_expert=256)
    assert tr.meta["source"]["warmup_ubatches"] == 2
    assert (tr.n_prefill_tokens, tr.n_decode_tokens) == (242 + 4, 31)
    assert np.diff(tr.step_bounds())[:2].tolist() == [242, 4]
    # positions from start_pos: prompt 0..245, decode 246..276
    assert tr.pos.tolist() == list(range(277))
    kept = import_trace(kimi_alt_csv, n_expert=256, keep_warmup=True)
    assert kept.n_requests == 3 and kept.n_prefill_tokens == 250


def test_mixtral_humaneval_gaps(mixtral_humaneval_jsonl):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tr = import_trace(mixtral_humaneval_jsonl, n_expert=8)
    assert np.bincount(tr.request).tolist() == [83, 255]
    assert tr.n_decode_tokens == 338 and tr.n_prefill_tokens == 0
    assert (tr.n_layers, tr.top_k, tr.n_expert) == (32, 2, 8)
    absent = ~tr.present
    assert int(absent.sum()) == 37
    assert int(absent[tr.request == 0].sum()) == 8 and int(absent[tr.request == 1].sum()) == 29
    assert int(tr.present.sum()) == 10779
    assert "37" in _one_warning(rec)
    # gate weights kept, and they sum to ~1 per (token, layer) as softmax probabilities of the top-2
    s = tr.weights.astype(np.float32).sum(axis=2)[tr.present]
    assert np.allclose(s, 1.0, atol=2e-3)


def test_mixtral_gsm8k_counts_and_inferred_n_expert(mixtral_gsm8k_jsonl):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tr = import_trace(mixtral_gsm8k_jsonl)
    assert np.bincount(tr.request).tolist() == [168, 79]
    assert tr.n_expert == 8 and tr.meta["n_expert_inferred"] is True
    assert "n_expert=8" in _one_warning(rec)
    assert int(tr.present.sum()) == 7889


def test_mixtral_rows_match_file(mixtral_gsm8k_jsonl):
    """Every row of the file is where the trace says (independent line-by-line check)."""
    # NOTE: the file lacks 15 (token, layer) rows (10 and 5 per request); the reader says so and masks them
    with pytest.warns(TraceImportWarning, match=r"15 \(token, layer\) rows are missing \(per request: \[10, 5\]\)"):
        tr = import_trace(mixtral_gsm8k_jsonl, n_expert=8)
    assert int((~np.asarray(tr.present)).sum()) >= 15
    starts = {0: 0, 1: 168}
    for line in Path(mixtral_gsm8k_jsonl).read_text().splitlines()[::97]:
        o = json.loads(line)
        t = starts[o["problem_id"]] + o["token_idx"]
        assert tr.experts[t, o["layer"]].tolist() == o["experts"]
        assert np.allclose(tr.weights[t, o["layer"]].astype(np.float64), o["gating_probs"], atol=1e-3)


def test_detect_format_real(kimi_alt_csv, mixtral_gsm8k_jsonl):
    assert detect_format(kimi_alt_csv) == "csv"
    assert detect_format(mixtral_gsm8k_jsonl) == "vllm-jsonl"


# ----------------------------------------------------------------------------- hand-built CSV

CSV_SMALL = """# phase,n_tokens,layer,token_idx,e0,e1
prefill,2,1,0,1,2
prefill,2,1,1,3,4
prefill,2,3,0,5,6
prefill,3,1,0,0,1
prefill,3,1,1,1,2
prefill,3,1,2,2,3
prefill,3,3,0,7,6
decode,1,1,0,4,5
decode,1,3,0,6,7
decode,1,1,0,5,4
decode,1,3,0,3,2
"""


def test_csv_hand_built(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(CSV_SMALL)
    tr = import_trace(p, n_expert=8)
    assert tr.moe_layers == (1, 3)
    assert tr.phase.tolist() == [PHASE_PREFILL] * 3 + [PHASE_DECODE] * 2
    assert tr.ubatch.tolist() == [0, 0, 0, 1, 2]
    assert tr.pos.tolist() == [0, 1, 2, 3, 4]
    # the one row of layer 3 in the 3-token ubatch is the last token's
    assert tr.present[:, 1].tolist() == [False, False, True, True, True]
    assert tr.experts[2, 1].tolist() == [7, 6]
    assert tr.experts[:, 0].tolist() == [[0, 1], [1, 2], [2, 3], [4, 5], [5, 4]]
    assert tr.experts[4, 1].tolist() == [3, 2]
    kept = import_trace(p, n_expert=8, keep_warmup=True)
    assert kept.n_tokens == 7 and kept.present[:2, 1].tolist() == [False, True]
    assert kept.experts[1, 1].tolist() == [5, 6]


def test_csv_requests_from_start_pos(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "# phase,n_tokens,layer,token_idx,e0,start_pos\n"
        "prefill,2,0,0,1,0\nprefill,2,0,1,2,0\ndecode,1,0,0,3,2\n"
        "prefill,2,0,0,1,0\nprefill,2,0,1,2,0\ndecode,1,0,0,3,2\ndecode,1,0,0,0,3\n"
    )
    tr = import_trace(p, n_expert=4)
    # a 2-token prefill followed by decode is a prompt, not a warm-up
    assert tr.request.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert tr.pos.tolist() == [0, 1, 2, 0, 1, 2, 3]


# ----------------------------------------------------------------------------- MOET


def test_moet_hand_built(tmp_path):
    rng = np.random.default_rng(1)
    recs, truth = _sample_moet_records(rng)
    draft = moet_record(99, 2, [0], [(il, [[1, 2]], None) for il in (1, 2, 3)])
    p = tmp_path / "t.moet"
    p.write_bytes(moet_file(recs[:3] + [draft] + recs[3:]))
    tr = read_moet(p)
    assert tr.moe_layers == (1, 2, 3) and tr.n_expert == 16 and tr.top_k == 2
    assert tr.phase.tolist() == [PHASE_PREFILL] * 10 + [PHASE_DECODE] * 4
    assert tr.ubatch.tolist() == [0] * 10 + [1, 2, 3, 4]
    assert tr.pos.tolist() == list(range(14))
    assert tr.meta["source"]["draft_records_skipped"] == 1
    ph, ids, w = truth[0]
    assert np.array_equal(tr.experts[:10, 0], ids[0]) and np.array_equal(tr.experts[:10, 1], ids[1])
    assert np.array_equal(tr.experts[9, 2], ids[2][-1]) and np.array_equal(tr.weights[9, 2], w[2][-1])
    assert tr.present[:9, 2].sum() == 0 and tr.present[9:].all()
    for s in range(4):
        _, ids, w = truth[1 + s]
        for j in range(3):
            assert np.array_equal(tr.experts[10 + s, j], ids[j][0])
            assert np.array_equal(tr.weights[10 + s, j], w[j][0])


def test_moet_truncated_keeps_complete_records(tmp_path):
    rng = np.random.default_rng(2)
    recs, _ = _sample_moet_records(rng)
    full = moet_file(recs)
    cut = len(full) - len(recs[-1]) + 7  # in the middle of the last record
    p = tmp_path / "t.moet"
    p.write_bytes(full[:cut])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tr = read_moet(p)
    assert "truncated" in _one_warning(rec)
    whole = tmp_path / "w.moet"
    whole.write_bytes(moet_file(recs[:-1]))
    assert tr.equals(read_moet(whole))
    assert tr.n_decode_tokens == 3


def test_moet_multi_sequence(tmp_path):
    recs = [
        moet_record(1, 4, [0, 1], [(0, [[1, 2], [3, 4]], None)]),
        moet_record(2, 4, [0, 1], [(0, [[5, 6], [7, 0]], None)]),
    ]
    p = tmp_path / "m.moet"
    p.write_bytes(moet_file(recs, n_expert=8))
    tr = read_moet(p)
    assert tr.request.tolist() == [0, 1, 0, 1]
    assert tr.pos.tolist() == [0, 0, 1, 1]
    assert tr.weights is None  # the writer had no weights (all zero)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_moet_fuzz_only_input_errors(tmp_path, data):
    rng = np.random.default_rng(3)
    recs, _ = _sample_moet_records(rng)
    blob = bytearray(moet_file(recs))
    n_mut = data.draw(st.integers(0, 6))
    for _ in range(n_mut):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    p = tmp_path / "f.moet"
    p.write_bytes(bytes(blob[:cut]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tr = read_moet(p)
        except InputError as exc:
            assert str(p) in str(exc)
        else:
            tr.validate()


# ----------------------------------------------------------------------------- fork log

FORK_LOG = """\
llama_moe_hot_cache_init: detected 48 MoE layers (48 merged, 0 split tensor format)
llama_moe_hot_cache_post_decode: hot cache FILLING → STEADY at decode #12 (window_counts zeroed for clean first window)
hot_cache_rebalance: rebalance #1 at decode 40 (window reset) swap_sum=812 swap_max=31 hit_rate=61.5% (9446/15360) entropy=5.2 stable=3/48
some unrelated line
hot_cache_rebalance: rebalance #2 at decode 80 (window reset) swap_sum=301 swap_max=12 hit_rate=70.0% (10752/15360) entropy=5.1 stable=10/48
{"type":"header","n_expert":128,"K":32,"timestamp":"2026-04-12T12:00:00Z"}
{"type":"token","decode":81,"hits":[1,2]}
{"type":"token","decode":82,"hits":[2,2],"extra":true}
"""


def test_fork_log_summary(tmp_path):
    p = tmp_path / "server.log"
    p.write_text(FORK_LOG, encoding="utf-8")
    s = read_fork_log(p)
    assert s["filling_to_steady_decode"] == 12
    assert [r["n"] for r in s["rebalances"]] == [1, 2]
    assert s["rebalances"][0] == {
        "n": 1, "decode": 40, "swap_sum": 812, "swap_max": 31, "hit_rate": 0.615, "hits": 9446, "obs": 15360,
        "entropy": 5.2, "stable_layers": 3, "n_layers": 48,
    }
    assert s["hit_rate"]["hits"] == 9446 + 10752 and s["hit_rate"]["obs"] == 2 * 15360
    assert s["swaps"] == {"sum_logged": 812 + 301, "max": 31}
    assert s["telemetry"]["header"]["K"] == 32
    assert s["telemetry"]["unknown_types"] == ["token"]
    assert s["telemetry"]["unknown"]["token"]["fields"] == ["type", "decode", "hits", "extra"]
    assert s["unrecognised_lines"] == 2
    assert detect_format(p) == "fork-log"


def test_fork_log_cli_writes_summary(tmp_path, capsys):
    p = tmp_path / "server.log"
    p.write_text(FORK_LOG, encoding="utf-8")
    out = tmp_path / "summary.json"
    rc, _, err = _run_cli(["trace", "import", str(p), "--out", str(out)], capsys)
    assert rc == 0
    assert "summary" in err and "not a trace" in err
    assert json.loads(out.read_text())["n_rebalances_logged"] == 2


# ----------------------------------------------------------------------------- moeprof loading

MOEPROF = """moeprof v1 n_layer=4 n_expert=3 steps=2 decode_tokens=2 prefill_tokens=5 draft_ubatches=0 source=x
# a comment
decode_union 1 1 0 2
decode_union 3 0 2 1
decode_tokens 1 1 0 3
decode_tokens 3 0 2 2
"""


def test_load_moeprof(tmp_path):
    p = tmp_path / "a.moeprof"
    p.write_text(MOEPROF)
    prof = load_moeprof(p)
    assert (prof.n_layer, prof.n_expert, prof.layers) == (4, 3, (1, 3))
    assert prof.header == {"steps": "2", "decode_tokens": "2", "prefill_tokens": "5", "draft_ubatches": "0",
                           "source": "x"}
    assert prof.sections["decode_union"].tolist() == [[0, 0, 0], [1, 0, 2], [0, 0, 0], [0, 2, 1]]
    assert prof.sections["decode_union"].dtype == np.int64
    hot = tmp_path / "h.moeprof"
    hot.write_text("moeprof v1 n_layer=2 n_expert=2 tokens=9 source=moe-hot-save policy=decay\n"
                   "decode_union 1 1000000000.5 0.25\n")
    hp = load_moeprof(hot)
    assert hp.sections["decode_union"].dtype == np.float64 and hp.sections["decode_union"][1, 1] == 0.25


# ----------------------------------------------------------------------------- bad input, every reader


def _csv_ok():
    return CSV_SMALL


def _vllm_line(pid=0, layer=0, experts=(1, 2), tok=0):
    return json.dumps({"dataset": "d", "problem_id": pid, "layer": layer, "experts": list(experts),
                       "gating_probs": [0.6, 0.4], "token_idx": tok})


def _vllm_ok():
    return "\n".join(_vllm_line(0, layer, (layer, layer + 1), t) for t in range(3) for layer in range(2)) + "\n"


def _moet_ok():
    recs, _ = _sample_moet_records(np.random.default_rng(4))
    return moet_file(recs)


BAD_INPUTS = {
    # name: (format, file bytes or text, what the message must mention, where)
    "csv-empty": ("csv", "", "empty", None),
    "csv-truncated": ("csv", _csv_ok()[:-6], "fields", "line 12"),
    "csv-wrong-magic": ("csv", _csv_ok().replace("# phase", "phase", 1), "header", "line 1"),
    "csv-wrong-version": ("csv", _csv_ok().replace("# phase,n_tokens", "# phase,n_tok", 1), "header", "line 1"),
    "csv-out-of-range": ("csv", _csv_ok().replace("decode,1,1,0,4,5", "decode,1,1,0,4,9"), "out of range", "line 9"),
    "csv-inconsistent-layer": ("csv", _csv_ok().replace("prefill,3,1,2,2,3\n", ""), "inconsistent layers", "line 5"),
    "csv-bad-phase": ("csv", _csv_ok().replace("decode,1,3,0,6,7", "decoded,1,3,0,6,7"), "phase", "line 10"),
    "vllm-empty": ("vllm-jsonl", "", "empty", None),
    "vllm-truncated": ("vllm-jsonl", _vllm_ok()[:-20], "JSON", "line 6"),
    "vllm-wrong-magic": ("vllm-jsonl", "hello\n", "JSON", "line 1"),
    "vllm-wrong-version": ("vllm-jsonl", '{"problem_id": 0, "layer": 0, "token_idx": 0}\n', "missing field", "line 1"),
    "vllm-out-of-range": ("vllm-jsonl", _vllm_ok().replace('"experts": [1, 2]', '"experts": [1, 9]'),
                          "out of range", "line 2"),
    "vllm-inconsistent-layer": ("vllm-jsonl", _vllm_ok() + _vllm_line(0, 1, (3, 4), 2) + "\n", "duplicate", "line 7"),
    "vllm-topk-changes": ("vllm-jsonl", _vllm_ok() + _vllm_line(1, 0, (1, 2, 3), 0) + "\n", "top-k", "line 7"),
    "moet-empty": ("moet", b"", "empty", None),
    "moet-truncated-header": ("moet", b"MOET\x01\x00", "truncated", None),
    "moet-wrong-magic": ("moet", b"MOEX" + _moet_ok()[4:], "not a MOET", None),
    "moet-wrong-version": ("moet", b"MOET" + struct.pack("<I", 2) + _moet_ok()[8:], "version 2", None),
    "moet-out-of-range": ("moet", moet_file([moet_record(1, 0, [0], [(0, [[1, 20]], None)])]), "out of range",
                          "record 0"),
    "moet-inconsistent-layer": ("moet", moet_file([moet_record(1, 0, [0], [(0, [[1, 2]], None)]),
                                                   moet_record(2, 0, [0], [(1, [[1, 2]], None)])]),
                                "inconsistent layers", "record 1"),
    "moet-bad-length": ("moet", moet_file([struct.pack("<I", 3) + b"abc"]), "shorter", "record 0"),
    "moet-only-truncated": ("moet", _moet_ok()[:20], "no complete record", None),
    "fork-log-empty": ("fork-log", "", "not a fork log", None),
    "fork-log-truncated": ("fork-log", FORK_LOG + '{"type":"tok', "JSON", "line 9"),
    "fork-log-wrong-magic": ("fork-log", "just some text\n", "not a fork log", None),
    "fork-log-bad-header": ("fork-log", '{"type":"header","n_expert":-1}\n', "positive", "line 1"),
    "fork-log-inconsistent": ("fork-log", FORK_LOG.replace("(9446/15360)", "(19446/15360)"), "hits", "line 3"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_library(tmp_path, name):
    fmt, content, what, where = BAD_INPUTS[name]
    p = tmp_path / f"bad-{name}"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as ei:
            if fmt == "fork-log":
                read_fork_log(p)
            else:
                import_trace(p, format=fmt, n_expert=8 if fmt != "moet" else None)
    msg = str(ei.value)
    assert str(p) in msg
    assert what.lower() in msg.lower(), msg
    if where:
        assert where in msg, msg


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_cli(tmp_path, capsys, name):
    fmt, content, _, _ = BAD_INPUTS[name]
    p = tmp_path / f"bad-{name}"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    out = tmp_path / "out.hxt"
    argv = ["trace", "import", str(p), "--out", str(out), "--format", fmt]
    if fmt != "moet" and fmt != "fork-log":
        argv += ["--n-expert", "8"]
    rc, stdout, err = _run_cli(argv, capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotexperts: error: ") and str(p) in lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".out")] == []


BAD_MOEPROF = {
    "empty": ("", "empty"),
    "wrong-magic": ("moeprofile v1 n_layer=2 n_expert=2\n", "not a .moeprof"),
    "wrong-version": ("moeprof v2 n_layer=2 n_expert=2\n", "version v2"),
    "truncated": ("moeprof v1 n_layer=2 n_expert=3\ndecode_union 0 1 2 3\ndecode_union 1 1 2\n", "truncated"),
    "out-of-range": ("moeprof v1 n_layer=2 n_expert=2\ndecode_union 2 1 2\n", "out of range"),
    "inconsistent-layer": ("moeprof v1 n_layer=2 n_expert=2\ndecode_union 1 1 2\ndecode_union 1 1 2\n", "twice"),
    "no-header-field": ("moeprof v1 n_expert=2\ndecode_union 1 1 2\n", "n_layer"),
}


@pytest.mark.parametrize("name", sorted(BAD_MOEPROF))
def test_bad_moeprof(tmp_path, name):
    content, what = BAD_MOEPROF[name]
    p = tmp_path / "p.moeprof"
    p.write_text(content)
    with pytest.raises(InputError) as ei:
        load_moeprof(p)
    assert str(p) in str(ei.value) and what in str(ei.value)


def test_missing_file_and_directory(tmp_path, capsys):
    rc, _, err = _run_cli(["trace", "import", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.hxt")], capsys)
    assert rc == 1 and "no such file" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run_cli(["trace", "import", str(tmp_path), "--format", "csv", "--out", str(tmp_path / "o.hxt")],
                          capsys)
    assert rc == 1 and "directory" in err


def test_cli_import_warnings_and_output(tmp_path, capsys):
    rng = np.random.default_rng(5)
    recs, _ = _sample_moet_records(rng)
    full = moet_file(recs)
    p = tmp_path / "t.moet"
    p.write_bytes(full[:-5])
    out = tmp_path / "t.hxt"
    rc, _, err = _run_cli(["trace", "import", str(p), "--out", str(out)], capsys)
    assert rc == 0 and out.exists()
    assert any(line.startswith("hotexperts: warning:") and "truncated" in line for line in err.splitlines())


def test_model_preset_supplies_and_checks(kimi_alt_csv, tmp_path):
    tr = import_trace(kimi_alt_csv, model="kimi-linear-48b-a3b-q4_k_m")
    assert tr.n_expert == 256 and "n_expert_inferred" not in tr.meta
    assert tr.meta["model"]["n_expert"] == 256
    with pytest.raises(InputError, match="differs"):
        import_trace(kimi_alt_csv, model="kimi-linear-48b-a3b-q4_k_m", n_expert=128)
    with pytest.raises(InputError, match="out of range for n_expert=8"):
        import_trace(kimi_alt_csv, model="mixtral-8x7b-q4_k_m", n_expert=None)
