"""Per-request importers (Chaos JSON, moe-beyond CSV) from directories, tar archives and folders in them,
and ``trace split``. Fixtures are written by the tests; expected arrays are written out by hand."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_TRACES, shared_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotexperts.cli import main
from hotexperts.errors import InputError
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.readers import TraceImportWarning, detect_format
from hotexperts.tracer.split import parse_ranges, split_trace
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

MAVERICK = SHARED_TRACES / "llama4-maverick-mmlu" / "requests.tar.xz"
DEEPSEEK = SHARED_TRACES / "deepseek-v2-lite-puffin" / "prompts-csv.tar.xz"

P, D = PHASE_PREFILL, PHASE_DECODE


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceImportWarning)
        return fn(*a, **kw)


# ----------------------------------------------------------------------------------- Chaos JSON

# request 0: prefill of 3 tokens, then 2 decode steps; layers 0 and 2 dense; top-2 of 8
REQ0 = [
    {"0": None, "1": [[1, 2], [3, 4], [5, 6]], "2": None, "3": [[0, 7], [2, 1], [6, 5]]},
    {"0": None, "1": [[1, 3]], "2": None, "3": [[4, 0]]},
    {"0": None, "1": [[2, 3]], "2": None, "3": [[5, 7]]},
]
# request 1: prefill of 1 token, 1 decode step
REQ1 = [
    {"0": None, "1": [[7, 6]], "2": None, "3": [[1, 0]]},
    {"0": None, "1": [[6, 5]], "2": None, "3": [[2, 3]]},
]
# request 5 (subject "b"): prefill of 2 tokens, no decode
REQ5 = [{"0": None, "1": [[4, 5], [0, 1]], "2": None, "3": [[3, 2], [7, 6]]}]

# the trace these three make, in request order 0, 1, 5 (hand-written)
CHAOS_EXPERTS = np.array([
    [[1, 2], [0, 7]], [[3, 4], [2, 1]], [[5, 6], [6, 5]], [[1, 3], [4, 0]], [[2, 3], [5, 7]],   # request 0
    [[7, 6], [1, 0]], [[6, 5], [2, 3]],                                                           # request 1
    [[4, 5], [3, 2]], [[0, 1], [7, 6]],                                                           # request 5
])
CHAOS_PHASE = [P, P, P, D, D, P, D, P, P]
CHAOS_REQUEST = [0, 0, 0, 0, 0, 1, 1, 5, 5]
CHAOS_UBATCH = [0, 0, 0, 1, 2, 3, 4, 5, 5]
CHAOS_POS = [0, 1, 2, 3, 4, 0, 1, 0, 1]


def _chaos_dir(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "0.json").write_text(json.dumps(REQ0))
    (root / "a" / "1.json").write_text(json.dumps(REQ1, separators=(",", ":")))
    (root / "b" / "5.json").write_text(json.dumps(REQ5, indent=1))
    (root / "a" / "README.txt").write_text("not a request\n")
    return root


def _tar(src_dir: Path, out: Path, mode: str = "w:xz") -> Path:
    with tarfile.open(out, mode) as tf:
        for p in sorted(src_dir.rglob("*")):
            tf.add(p, arcname=p.relative_to(src_dir).as_posix(), recursive=False)
    return out


def _check_chaos(tr: Trace) -> None:
    assert tr.n_expert == 8 and tr.moe_layers == (1, 3) and tr.top_k == 2
    np.testing.assert_array_equal(tr.experts, CHAOS_EXPERTS)
    assert tr.phase.tolist() == CHAOS_PHASE
    assert tr.request.tolist() == CHAOS_REQUEST
    assert tr.ubatch.tolist() == CHAOS_UBATCH
    assert tr.pos.tolist() == CHAOS_POS
    assert tr.present is None and tr.weights is None


def test_chaos_directory(tmp_path):
    src = _chaos_dir(tmp_path / "reqs")
    assert detect_format(src) == "chaos-json"
    tr = _quiet(import_trace, src, n_expert=8)
    _check_chaos(tr)
    assert [(s["name"], s["n_requests"], s["request_ranges"]) for s in tr.meta["subjects"]] == [
        ("a", 2, [[0, 1]]), ("b", 1, [[5, 5]])]
    assert tr.meta["source"]["format"] == "chaos-json" and tr.meta["source"]["skipped_files"] == 1


def test_chaos_tar_and_folder_inside(tmp_path):
    arch = _tar(_chaos_dir(tmp_path / "reqs"), tmp_path / "reqs.tar.xz")
    assert detect_format(arch) == "chaos-json"
    _check_chaos(_quiet(import_trace, arch, n_expert=8))
    assert detect_format(arch / "b") == "chaos-json"
    tr = _quiet(import_trace, arch / "b", n_expert=8)
    np.testing.assert_array_equal(tr.experts, CHAOS_EXPERTS[7:])
    assert tr.request.tolist() == [5, 5] and tr.phase.tolist() == [P, P]
    assert tr.meta["subjects"][0]["name"] == "b" and tr.meta["source"]["member"] == "b"
    tr = _quiet(import_trace, arch / "a" / "1.json", n_expert=8)  # one file inside the archive
    np.testing.assert_array_equal(tr.experts, CHAOS_EXPERTS[5:7])
    with pytest.raises(InputError, match="no folder or file 'c'"):
        import_trace(arch / "c", n_expert=8)
    # gzip and plain tar as well
    for mode, name in (("w:gz", "r.tgz"), ("w", "r.tar")):
        _check_chaos(_quiet(import_trace, _tar(tmp_path / "reqs", tmp_path / name, mode), n_expert=8))


def test_chaos_single_file_by_content(tmp_path):
    f = tmp_path / "7.data"  # any name: the content tells the format
    f.write_text(json.dumps(REQ1))
    assert detect_format(f) == "chaos-json"
    tr = _quiet(import_trace, f, n_expert=8)
    np.testing.assert_array_equal(tr.experts, CHAOS_EXPERTS[5:7])
    assert tr.request.tolist() == [7, 7]


def test_missing_request_number_warns(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    for n in (1, 2, 4, 7):
        (root / f"{n}.json").write_text(json.dumps(REQ1))
    with pytest.warns(TraceImportWarning, match=r"3 request number\(s\) missing between 1 and 7: 3, 5, 6 "):
        tr = import_trace(root, n_expert=8)
    assert tr.meta["subjects"][0]["missing"] == [3, 5, 6]
    assert sorted(set(tr.request.tolist())) == [1, 2, 4, 7]


def test_colliding_numbers_get_an_offset(tmp_path):
    root = tmp_path / "r"
    for sub, nums in (("big", (1, 2, 3)), ("small", (2, 3))):
        (root / sub).mkdir(parents=True)
        for n in nums:
            (root / sub / f"prompt_{n}.json").write_text(json.dumps(REQ5))
    tr = _quiet(import_trace, root, n_expert=8)
    subj = {s["name"]: s for s in tr.meta["subjects"]}
    # the largest subject keeps its numbers; the other moves by 10 ** (digits of the largest number)
    assert subj["big"]["request_offset"] == 0 and subj["big"]["request_ranges"] == [[1, 3]]
    assert subj["small"]["request_offset"] == 10 and subj["small"]["request_ranges"] == [[12, 13]]
    assert sorted(set(tr.request.tolist())) == [1, 2, 3, 12, 13]


def test_chaos_cli_import_and_info(tmp_path, capsys):
    arch = _tar(_chaos_dir(tmp_path / "reqs"), tmp_path / "reqs.tar.xz")
    out = tmp_path / "t.hxt"
    rc, _, err = _run(["trace", "import", str(arch / "a"), "--out", str(out), "--n-expert", "8"], capsys)
    assert rc == 0 and "2 requests" in err and "chaos-json" in err
    back = Trace.load(out)
    np.testing.assert_array_equal(back.experts, CHAOS_EXPERTS[:7])
    rc, text, _ = _run(["trace", "info", str(arch), "--n-expert", "8"], capsys)  # info reads a source directly
    assert rc == 0
    assert "requests      3" in text and "9 (6 prefill, 3 decode)" in text.replace("tokens        ", "")
    assert "subjects      2: a (2 req, 7 tok), b (1 req, 2 tok)" in text
    rc, js, _ = _run(["trace", "info", str(out), "--json"], capsys)
    d = json.loads(js)
    assert d["n_prefill_steps"] == 2 and d["n_decode_steps"] == 3 and d["moe_layers"] == [1, 3]
    # layer 1, decode pairs of request 0: (1,3)->(2,3) shares 1 of 2; request 1 has one decode token
    assert d["per_layer"][0]["next_token_reuse"] == pytest.approx(0.5)


def _bad_chaos(req):
    return json.dumps(req)


BAD_CHAOS = {
    # name: (file content, what the message says, where)
    "truncated": (json.dumps(REQ0)[:-7], "not valid JSON", None),
    "not-a-list": ('{"0": null}', "non-empty JSON list", None),
    "null-changes": (_bad_chaos([REQ0[0], {**REQ0[1], "2": [[1, 2]]}]), "layer 2 is not null here", "step 1"),
    "tokens-differ": (_bad_chaos([{**REQ0[0], "3": [[0, 7], [2, 1]]}]), "2 tokens but 3", "step 0, layer 3"),
    "topk-changes": (_bad_chaos([REQ0[0], {**REQ0[1], "3": [[4, 0, 1]]}]), "top-k must not change",
                     "step 1, layer 3"),
    "negative-id": (_bad_chaos([REQ0[0], {**REQ0[1], "1": [[-1, 3]]}]), "out of range", "step 1, layer 1"),
    "float-id": (_bad_chaos([REQ0[0], {**REQ0[1], "1": [[1.5, 3]]}]), "integer expert ids", "step 1, layer 1"),
    "duplicate-expert": (_bad_chaos([REQ0[0], {**REQ0[1], "1": [[3, 3]]}]), "same expert twice", "step 1, layer 1"),
    "no-moe-layer": (_bad_chaos([{"0": None, "1": None}]), "no MoE layer", None),
    "layer-key": (_bad_chaos([{"x": [[1, 2]]}]), "not a layer number", "step 0"),
    "layers-differ": (_bad_chaos([REQ0[0], {"0": None, "1": [[1, 3]]}]), "differ from step 0", "step 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_CHAOS))
def test_bad_chaos_file_in_archive(tmp_path, capsys, name):
    content, what, where = BAD_CHAOS[name]
    src = _chaos_dir(tmp_path / "reqs")
    (src / "b" / "6.json").write_text(content)
    arch = _tar(src, tmp_path / "reqs.tar.xz")
    with pytest.raises(InputError) as ei:
        _quiet(import_trace, arch, format="chaos-json", n_expert=8)
    msg = str(ei.value)
    assert f"{arch}/b/6.json" in msg and what in msg, msg
    if where:
        assert where in msg, msg
    # the archive is read in a background thread: it must have stopped with the error
    assert not [t for t in threading.enumerate() if t.name == "hotexperts-tar-reader"]
    out = tmp_path / "o.hxt"
    rc, _, err = _run(["trace", "import", str(arch), "--out", str(out), "--n-expert", "8"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("hotexperts: error: ") and "6.json" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.hxt")]


def test_chaos_layer_set_differs_between_files(tmp_path):
    src = _chaos_dir(tmp_path / "reqs")
    (src / "b" / "6.json").write_text(json.dumps([{"0": [[1, 2]], "1": None}]))
    with pytest.raises(InputError, match=r"6.json: MoE layers \[0\] differ from \[1, 3\]"):
        _quiet(import_trace, src, n_expert=8)


def test_mixed_formats_and_unnumbered_names(tmp_path):
    src = _chaos_dir(tmp_path / "reqs")
    (src / "b" / "prompt_9_data.csv").write_text("Layer ID,Batch Number,Token,Activated Expert IDs\n")
    with pytest.raises(InputError, match="prompt_9_data.csv: a .csv file among chaos-json"):
        _quiet(import_trace, src, n_expert=8)
    src2 = _chaos_dir(tmp_path / "reqs2")
    (src2 / "b" / "extra.json").write_text(json.dumps(REQ5))
    with pytest.raises(InputError, match="extra.json: cannot tell the request number"):
        _quiet(import_trace, src2, n_expert=8)


def test_expert_id_beyond_n_expert(tmp_path):
    src = _chaos_dir(tmp_path / "reqs")
    with pytest.raises(InputError, match="out of range for n_expert=6"):
        _quiet(import_trace, src, n_expert=6)


def test_empty_directory_and_archive(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    arch = _tar(d, tmp_path / "e.tar.xz")
    with pytest.raises(InputError, match="holds no per-request routing files"):
        detect_format(arch)
    with pytest.raises(InputError, match="no request files"):
        import_trace(arch, format="chaos-json")
    bad = tmp_path / "broken.tar.xz"
    bad.write_bytes(arch.read_bytes()[:40])
    with pytest.raises(InputError, match="broken.tar.xz"):
        import_trace(bad, format="chaos-json")


# ----------------------------------------------------------------------------------- moe-beyond CSV

HEADER = "Layer ID,Batch Number,Token,Activated Expert IDs"
# 3 tokens, layers 1 and 2, top-3 of 16; tokens with a comma, a quote and a bracket (CSV-quoted)
TOKENS = ['<｜begin▁of▁sentence｜>', '"Ġa,b"', '""""']
ROUTING = {1: [[8, 2, 5], [0, 15, 3], [1, 2, 4]], 2: [[9, 10, 11], [12, 1, 0], [4, 3, 2]]}


def _mb_text(tokens=TOKENS, routing=ROUTING, header=HEADER, crlf=False) -> str:
    rows = [header]
    for layer, ids in routing.items():
        for tok, e in zip(tokens, ids):
            rows.append(f'{layer},0,{tok},"[{", ".join(str(x) for x in e)}]"')
    nl = "\r\n" if crlf else "\n"
    return nl.join(rows) + nl


# hand-written (token, layer, slot) array of _mb_text()
MB_EXPERTS = np.array([[[8, 2, 5], [9, 10, 11]], [[0, 15, 3], [12, 1, 0]], [[1, 2, 4], [4, 3, 2]]])


def test_moebeyond_tokens_with_commas_and_quotes(tmp_path):
    root = tmp_path / "training_data_eamc"
    root.mkdir()
    (root / "prompt_3_data.csv").write_text(_mb_text(), encoding="utf-8")
    (root / "prompt_4_data.csv").write_text(_mb_text(crlf=True), encoding="utf-8")
    # the csv module agrees that the token column holds the strings we meant (independent check of the fixture)
    rows = list(csv.reader(io.StringIO(_mb_text())))
    assert rows[2][2] == "Ġa,b" and rows[3][2] == '"' and len(rows[2]) == 4
    assert detect_format(root) == "moe-beyond-csv"
    tr = _quiet(import_trace, root, n_expert=16)
    assert tr.moe_layers == (1, 2) and tr.top_k == 3
    np.testing.assert_array_equal(tr.experts, np.concatenate([MB_EXPERTS, MB_EXPERTS]))
    assert tr.phase.tolist() == [P] * 6 and tr.request.tolist() == [3, 3, 3, 4, 4, 4]
    assert tr.ubatch.tolist() == [0, 0, 0, 1, 1, 1] and tr.pos.tolist() == [0, 1, 2, 0, 1, 2]
    assert tr.meta["subjects"][0]["name"] == "training_data_eamc"


def test_moebeyond_prompt_tokens(tmp_path, capsys):
    f = tmp_path / "prompt_3_data.csv"
    f.write_text(_mb_text())
    tr = _quiet(import_trace, f, n_expert=16, prompt_tokens=1)
    assert tr.phase.tolist() == [P, D, D] and tr.ubatch.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(tr.experts, MB_EXPERTS)
    tr = _quiet(import_trace, f, n_expert=16, prompt_tokens=0)
    assert tr.phase.tolist() == [D, D, D] and tr.ubatch.tolist() == [0, 1, 2]
    assert _quiet(import_trace, f, n_expert=16, prompt_tokens=5).phase.tolist() == [P, P, P]
    out = tmp_path / "t.hxt"
    rc, _, err = _run(["trace", "import", str(f), "--out", str(out), "--n-expert", "16", "--prompt-tokens", "2"], capsys)
    assert rc == 0 and Trace.load(out).phase.tolist() == [P, P, D]
    with pytest.raises(InputError, match="--prompt-tokens applies to teacher-forced"):
        _quiet(import_trace, _chaos_dir(tmp_path / "c"), n_expert=8, prompt_tokens=1)


def _swap_layer2_rows(text: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[4], lines[5] = lines[5], lines[4]
    return "".join(lines)


BAD_MB = {
    # name: (file text, what the message says, where)
    "empty": ("", "empty file", None),
    "header": (_mb_text().replace("Layer ID", "Layer"), "header must be", "line 1"),
    "only-header": (HEADER + "\n", "no rows", None),
    "truncated": (_mb_text()[:-6], "quoted expert list", "line 7"),
    "topk-changes": (_mb_text().replace('"[4, 3, 2]"', '"[4, 3]"'), "top-k must not change", "line 7"),
    "not-an-int": (_mb_text().replace('"[12, 1, 0]"', '"[12, x, 0]"'), "integer ids", "line 6"),
    "huge-id": (_mb_text().replace('"[12, 1, 0]"', '"[12, 123456, 0]"'), "0..65535", "line 6"),
    "duplicate": (_mb_text().replace('"[12, 1, 0]"', '"[12, 1, 12]"'), "same expert twice", "line 6"),
    "layer-not-int": (_mb_text().replace("\n2,0,", "\nx,0,", 1), "must be integers", "line 5"),
    "short-layer": (_mb_text().rsplit("\n", 2)[0] + "\n", "layer 2 has 2 rows but layer 1 has 3", "line 5"),
    "not-layer-major": (_mb_text() + '1,0,tok,"[1, 2, 3]"\n', "not layer-major", "line 8"),
    "misaligned-token": (_swap_layer2_rows(_mb_text()), "token 0 of layer 2 differs", "line 5"),
    "two-batches": (_mb_text().replace("\n2,0,", "\n2,1,"), "one batch per file", "line 5"),
    "blank-line": (_mb_text().replace("\n2,0,", "\n\n2,0,", 1), "empty or truncated", "line 5"),
    "no-lists-at-all": (HEADER + "\n1,0,tok,5 6 7\n1,0,tok,1 2 3\n", "quoted expert list", "line 2"),
    "plain-csv": ("a,b\n1,2\n", "header must be", "line 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_MB))
def test_bad_moebeyond_file(tmp_path, capsys, name):
    text, what, where = BAD_MB[name]
    root = tmp_path / "d"
    root.mkdir()
    (root / "prompt_1_data.csv").write_text(_mb_text())
    bad = root / "prompt_2_data.csv"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as ei:
        _quiet(import_trace, root, format="moe-beyond-csv", n_expert=16)
    msg = str(ei.value)
    assert str(bad) in msg and what in msg, msg
    if where:
        assert where in msg, msg
    out = tmp_path / "o.hxt"
    rc, _, err = _run(["trace", "import", str(root), "--format", "moe-beyond-csv", "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and lines[-1].startswith("hotexperts: error: ") and str(bad) in lines[-1]
    assert all(x.startswith("hotexperts: warning:") for x in lines[:-1])
    assert not out.exists()


# ----------------------------------------------------------------------------------- split


def _four_requests() -> Trace:
    # requests 10, 11 (subject x), 20, 21 (subject y); 2 tokens each (prefill + decode)
    ids = np.arange(8).reshape(8, 1, 1) % 4
    return Trace.from_arrays(
        ids, n_expert=4, phase=[P, D] * 4, request=[10, 10, 11, 11, 20, 20, 21, 21], ubatch=[0, 1, 2, 3, 4, 5, 6, 7],
        meta={"subjects": [{"name": "x", "n_requests": 2, "request_ranges": [[10, 11]], "request_offset": 0},
                           {"name": "y", "n_requests": 2, "request_ranges": [[20, 21]], "request_offset": 0}]},
    )


def test_parse_ranges():
    assert parse_ranges("1-1000,1500") == [(1, 1000), (1500, 1500)]
    for bad in ("1-", "a", "5-3", ""):
        with pytest.raises(ValueError):
            parse_ranges(bad)


def test_split_by_request_ranges_and_subject():
    tr = _four_requests()
    a, b = split_trace(tr, by="request", train="10-11", eval="21")
    assert a.request.tolist() == [10, 10, 11, 11] and b.request.tolist() == [21, 21]
    assert a.experts[:, 0, 0].tolist() == [0, 1, 2, 3] and b.experts[:, 0, 0].tolist() == [2, 3]
    assert a.pos.tolist() == [0, 1, 0, 1] and a.ubatch.tolist() == [0, 1, 2, 3]
    assert [s["name"] for s in a.meta["subjects"]] == ["x"]
    assert b.meta["subjects"] == [{"name": "y", "n_requests": 1, "request_ranges": [[21, 21]], "request_offset": 0}]
    assert b.meta["split"]["side"] == "eval" and b.meta["split"]["n_requests"] == 1
    a, b = split_trace(tr, by="subject", train="y")
    assert a.request.tolist() == [20, 20, 21, 21] and b.request.tolist() == [10, 10, 11, 11]


def test_split_by_share_is_seeded_and_complete():
    tr = _four_requests()
    a, b = split_trace(tr, by="request", train="0.5", seed=3)
    a2, _ = split_trace(tr, by="request", train="0.5", seed=3)
    ra, rb = set(a.request.tolist()), set(b.request.tolist())
    assert len(ra) == 2 and len(rb) == 2 and ra | rb == {10, 11, 20, 21} and not ra & rb
    assert a.equals(a2)
    seen = {frozenset(split_trace(tr, by="request", train="0.5", seed=s)[0].request.tolist()) for s in range(20)}
    assert len(seen) > 1  # the seed matters
    a, b = split_trace(tr, by="subject", train="0.5", seed=1)
    assert {frozenset(a.request.tolist()), frozenset(b.request.tolist())} == {frozenset({10, 11}), frozenset({20, 21})}


@pytest.mark.parametrize("kw, what", [
    (dict(by="request", train="30-40"), "no request with an id in 30-40"),
    (dict(by="request", train="10-11", eval="11-20"), "on both sides"),
    (dict(by="request", train="1.5"), "strictly between 0 and 1"),
    (dict(by="request", train="0.1"), "leaves one side empty"),
    (dict(by="request", train="0.5", eval="10"), "not with a share"),
    (dict(by="subject", train="z"), "unknown subject"),
    (dict(by="request", train="10-21"), "eval side without requests"),
])
def test_split_errors(kw, what):
    with pytest.raises(InputError, match=what):
        split_trace(_four_requests(), **kw)


def test_split_subject_needs_subjects():
    tr = _four_requests()
    tr.meta = {}
    with pytest.raises(InputError, match="no subjects"):
        split_trace(tr, by="subject", train="x")


def test_split_cli(tmp_path, capsys):
    src = tmp_path / "t.hxt"
    _four_requests().save(src)
    a, b = tmp_path / "a.hxt", tmp_path / "b.hxt"
    rc, _, err = _run(["trace", "split", str(src), "--by", "subject", "--train", "x", "--out-train", str(a),
                       "--out-eval", str(b)], capsys)
    assert rc == 0 and Trace.load(a).request.tolist() == [10, 10, 11, 11] and Trace.load(b).n_requests == 2
    a.unlink()
    b.unlink()
    rc, _, err = _run(["trace", "split", str(src), "--by", "subject", "--train", "nope", "--out-train", str(a),
                       "--out-eval", str(b)], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and str(src) in err and "unknown subject" in err
    assert not a.exists() and not b.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["t.hxt"]
    rc, _, err = _run(["trace", "split", str(src), "--by", "request", "--train", "10", "--out-train", str(a),
                       "--out-eval", str(a)], capsys)
    assert rc == 1 and "same file" in err


# ----------------------------------------------------------------------------------- the real sets


def test_maverick_archive_real():
    arch = shared_file(MAVERICK)
    tr = _quiet(import_trace, arch, n_expert=128)
    assert (tr.n_requests, tr.n_prefill_tokens, tr.n_decode_tokens) == (387, 7255, 48834)  # PROVENANCE.md
    assert tr.moe_layers == tuple(range(1, 48, 2)) and tr.top_k == 1 and tr.n_expert == 128
    assert [(s["name"], s["n_requests"]) for s in tr.meta["subjects"]] == [
        ("abstract_algebra", 100), ("anatomy", 135), ("astronomy", 152)]
    assert int((tr.phase == P).sum()) == 7255 and tr.n_steps == 387 + 48834
    # one request against the json module: request 17's prefill and its 5th decode step, layers 1 and 47
    with tarfile.open(arch) as tf:
        fh = tf.extractfile("abstract_algebra/17.json")
        assert fh is not None
        steps = json.load(fh)
    r = tr.select(tr.request == 17)
    n_pre = len(steps[0]["1"])
    assert r.n_prefill_tokens == n_pre and r.n_decode_tokens == len(steps) - 1
    assert r.experts[:n_pre, 0, 0].tolist() == [t[0] for t in steps[0]["1"]]
    assert r.experts[n_pre + 4, -1, 0] == steps[5]["47"][0][0]
    sub = _quiet(import_trace, arch / "anatomy", n_expert=128)
    assert sub.n_requests == 135 and set(sub.request.tolist()) == set(range(100, 235))


def test_deepseek_archive_real():
    arch = shared_file(DEEPSEEK)
    with pytest.warns(TraceImportWarning, match="missing between 1 and 1000: 317"):
        tr = import_trace(arch, n_expert=64)
    assert (tr.n_requests, tr.n_tokens, tr.n_prefill_tokens) == (2099, 193_566, 193_566)  # PROVENANCE.md
    assert tr.moe_layers == tuple(range(1, 27)) and tr.top_k == 6 and tr.n_steps == 2099
    subj = {s["name"]: s for s in tr.meta["subjects"]}
    assert subj["training_data_eamc"]["request_ranges"] == [[1, 316], [318, 1000]]
    assert subj["expert_activation_scripts/training_data_eamc"]["request_ranges"] == [[1001, 2000]]
    assert subj["test_datasets/formatted_csvs"]["request_offset"] == 10000
    # one prompt against the csv module
    with tarfile.open(arch) as tf:
        fh = tf.extractfile("./training_data_eamc/prompt_2_data.csv")
        assert fh is not None
        rows = list(csv.reader(io.TextIOWrapper(fh, encoding="utf-8")))[1:]
    r = tr.select(tr.request == 2)
    n = r.n_tokens
    assert len(rows) == 26 * n
    want = np.array([json.loads(row[3]) for row in rows]).reshape(26, n, 6).transpose(1, 0, 2)
    np.testing.assert_array_equal(r.experts, want)
    assert int(np.count_nonzero(np.isin(tr.request, np.arange(1001, 2001)))) == 97_858  # PROVENANCE.md


# ----------------------------------------------------------------------------------- sim on imported sets


def test_sim_runs_on_imported_sets_with_their_presets(tmp_path, capsys):
    """`sim` takes a Chaos archive directly (Maverick's shape) and a moe-beyond import made with --model."""
    rng = np.random.default_rng(0)
    src = tmp_path / "mmlu" / "anatomy"
    src.mkdir(parents=True)
    for n, (n_pre, n_dec) in enumerate([(4, 3), (2, 5)]):
        steps = []
        for size in [n_pre] + [1] * n_dec:
            step: dict[str, object] = {}
            for il in range(48):
                step[str(il)] = None if il % 2 == 0 else [[int(x)] for x in rng.integers(0, 128, size)]
            steps.append(step)
        steps[0]["47"][0] = [127]  # type: ignore[index]  # the largest id occurs: n_expert inferred as 128
        (src / f"{n}.json").write_text(json.dumps(steps))
    arch = _tar(tmp_path / "mmlu", tmp_path / "mmlu.tar.xz")
    rc, out, err = _run(["sim", str(arch), "--model", "llama4-maverick-17b-128e-q4_k_m", "--hardware", "h200-llamacpp",
                         "--policy", "lru", "--hot-k", "4", "--json"], capsys)
    assert rc == 0, err
    r = json.loads(out)
    assert (r["prefill_tokens"], r["decode_tokens"], r["n_steps"]) == (6, 8, 2 + 8)
    assert r["selections"] == 14 * 24 and r["decode_selections"] == 8 * 24 and not r["remapped"]

    rows = ["Layer ID,Batch Number,Token,Activated Expert IDs"]
    ids = np.stack([rng.permutation(64)[:6] for _ in range(26 * 5)]).reshape(26, 5, 6)
    ids[0, 0] = [63, 0, 1, 2, 3, 4]
    for li in range(26):
        for t in range(5):
            rows.append(f'{li + 1},0,tok{t},"[{", ".join(str(int(x)) for x in ids[li, t])}]"')
    (tmp_path / "prompt_1_data.csv").write_text("\n".join(rows) + "\n")
    hxt = tmp_path / "ds.hxt"
    rc, _, err = _run(["trace", "import", str(tmp_path / "prompt_1_data.csv"), "--model", "deepseek-v2-lite-q4_k_m",
                       "--prompt-tokens", "2", "--out", str(hxt)], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(Trace.load(hxt).experts, ids.transpose(1, 0, 2))
    rc, out, err = _run(["sim", str(hxt), "--model", "deepseek-v2-lite-q4_k_m", "--hardware", "rtx4090-7950x",
                         "--policy", "lru", "--hot-k", "8", "--json"], capsys)
    assert rc == 0, err
    r = json.loads(out)
    assert (r["prefill_tokens"], r["decode_tokens"], r["n_steps"], r["decode_selections"]) == (2, 3, 4, 3 * 26 * 6)


def test_deepseek_r1_shaped_chaos_file_with_the_v3_preset(tmp_path):
    """The dataset's DeepSeek-R1 files: 61 layers, 0-2 dense (null), top-8 of 256: the V3 preset fits them."""
    rng = np.random.default_rng(1)
    steps = []
    for size in (3, 1, 1):
        steps.append({str(il): None if il < 3 else [sorted(rng.permutation(256)[:8].tolist()) for _ in range(size)]
                      for il in range(61)})
    f = tmp_path / "0.json"
    f.write_text(json.dumps(steps))
    tr = import_trace(f, model="deepseek-v3-q4_k_m")
    assert tr.n_expert == 256 and tr.moe_layers == tuple(range(3, 61)) and tr.top_k == 8
    assert tr.experts[3, 57].tolist() == steps[1]["60"][0] and tr.phase.tolist() == [P, P, P, D, D]
    assert tr.meta["model"]["name"] == "deepseek-v3-q4_k_m"
    with pytest.raises(InputError, match="0.json: expert id 255 out of range for n_expert=64"):
        import_trace(f, model="deepseek-v2-lite-q4_k_m")  # the wrong preset: 64 experts


# ----------------------------------------------------------------------------------- fuzz: only InputErrors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_per_request_files_only_input_errors(tmp_path, data):
    """Random byte changes and truncations of a valid file: a trace or an InputError naming the file."""
    fmt = data.draw(st.sampled_from(["chaos-json", "moe-beyond-csv"]))
    blob = bytearray((json.dumps(REQ0) if fmt == "chaos-json" else _mb_text()).encode())
    alphabet = list(b'0123456789[]{},":nul \n\r-.x') + [0xC3, 0xFF]
    for _ in range(data.draw(st.integers(0, 5))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.sampled_from(alphabet))
    cut = data.draw(st.integers(0, len(blob)))
    p = tmp_path / ("1.json" if fmt == "chaos-json" else "prompt_1_data.csv")
    p.write_bytes(bytes(blob[:cut]))
    try:
        tr = _quiet(import_trace, p, format=fmt, n_expert=256)
    except InputError as exc:
        assert str(p) in str(exc)
    else:
        tr.validate()
        assert tr.n_tokens == int(tr.experts.shape[0]) and tr.present is None
