"""Exporters: CSV and .moeprof round trips, the exact header lines, and profile counts vs a plain-Python reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from hotexperts.cli import main
from hotexperts.errors import InputError
from hotexperts.tracer.export import export_trace
from hotexperts.tracer.importers import import_trace
from hotexperts.tracer.profile import Profile, load_moeprof, profile_from_trace, write_moeprof
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace


def random_trace(seed: int, *, n_expert=16, k=3, layers=(0, 2, 5), weights=True, gaps=True) -> Trace:
    """Two requests (each a prompt ubatch or two, then decode), a warm-up-like first request, random gaps."""
    rng = np.random.default_rng(seed)
    phase, request, ubatch, pos = [], [], [], []
    u = 0
    for r, (prompt, n_dec) in enumerate([(2, 0), (7, 5), (4, 6)]):
        chunks = [prompt] if prompt < 5 else [prompt - 2, 2]
        p = 0
        for c in chunks:
            phase += [PHASE_PREFILL] * c
            request += [r] * c
            ubatch += [u] * c
            pos += list(range(p, p + c))
            p += c
            u += 1
        for _ in range(n_dec):
            phase.append(PHASE_DECODE)
            request.append(r)
            ubatch.append(u)
            pos.append(p)
            p += 1
            u += 1
    n = len(phase)
    ids = np.stack([np.stack([rng.permutation(n_expert)[:k] for _ in layers]) for _ in range(n)])
    present = None
    if gaps:
        present = rng.random((n, len(layers))) > 0.15
        present[:, 0] = True  # every token keeps at least one layer (the CSV cannot hold an empty token)
    w = rng.random((n, len(layers), k)).astype(np.float16) if weights else None
    if present is not None:  # the schema's convention: absent entries hold id 0 (and weight 0)
        ids[~present] = 0
        if w is not None:
            w[~present] = 0
    return Trace.from_arrays(ids, n_expert=n_expert, phase=phase, request=request, ubatch=ubatch, pos=pos,
                             moe_layers=layers, weights=w, present=present, meta={"source": {"kind": "test"}})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weights", [True, False])
def test_csv_round_trip_synthetic(tmp_path, seed, weights):
    tr = random_trace(seed, weights=weights)
    out = tmp_path / "t.csv"
    export_trace(tr, out, format="csv")
    header = out.read_text().splitlines()[0]
    assert header.startswith("# phase,n_tokens,layer,token_idx,e0,e1,e2,start_pos")
    back = import_trace(out, n_expert=16)
    assert back.equals(tr)


def test_csv_layout_is_layer_major(tmp_path):
    tr = random_trace(3, weights=False, gaps=False)
    out = tmp_path / "t.csv"
    export_trace(tr, out, format="csv")
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    # first ubatch: request 0's 2 prefill tokens, layer 0 (both tokens), then layer 2, then layer 5
    assert [(r[0], r[1], r[2], r[3]) for r in rows[:6]] == [
        ("prefill", "2", "0", "0"), ("prefill", "2", "0", "1"), ("prefill", "2", "2", "0"),
        ("prefill", "2", "2", "1"), ("prefill", "2", "5", "0"), ("prefill", "2", "5", "1"),
    ]
    assert [int(x) for x in rows[0][4:7]] == tr.experts[0, 0].tolist()
    assert len(rows) == tr.n_tokens * tr.n_layers


def test_csv_round_trip_real(tmp_path, kimi_coding_csv):
    tr = import_trace(kimi_coding_csv, n_expert=256)
    out = tmp_path / "k.csv"
    export_trace(tr, out, format="csv")
    back = import_trace(out, n_expert=256)
    assert back.equals(tr)
    kept = import_trace(kimi_coding_csv, n_expert=256, keep_warmup=True)
    export_trace(kept, out, format="csv")
    assert import_trace(out, n_expert=256).equals(kept)


def test_csv_round_trip_vllm(tmp_path, mixtral_humaneval_jsonl):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = import_trace(mixtral_humaneval_jsonl, n_expert=8)
    out = tmp_path / "m.csv"
    export_trace(tr, out, format="csv")
    assert import_trace(out, n_expert=8).equals(tr)


def test_csv_refuses_empty_token(tmp_path):
    tr = random_trace(4, gaps=False)
    tr.present = np.ones((tr.n_tokens, tr.n_layers), bool)
    tr.present[3] = False
    with pytest.raises(InputError, match="no recorded layer"):
        export_trace(tr, tmp_path / "x.csv", format="csv")
    assert not (tmp_path / "x.csv").exists()


def _reference_profile(tr: Trace) -> dict[str, dict[int, list[int]]]:
    """Plain-Python profile counts, following the fork's llama-moetrace.cpp loops."""
    E = tr.n_expert
    out = {s: {il: [0] * E for il in tr.moe_layers} for s in ("decode_union", "decode_tokens", "prefill_tokens")}
    wsum = {il: [0.0] * E for il in tr.moe_layers}
    for a, b in tr.iter_steps():
        for li, il in enumerate(tr.moe_layers):
            seen = set()
            for t in range(a, b):
                if tr.present is not None and not tr.present[t, li]:
                    continue
                for e in tr.experts[t, li].tolist():
                    if tr.phase[t] == PHASE_PREFILL:
                        out["prefill_tokens"][il][e] += 1
                    else:
                        out["decode_tokens"][il][e] += 1
                        seen.add(e)
                if tr.weights is not None and tr.phase[t] == PHASE_DECODE:
                    for e, w in zip(tr.experts[t, li].tolist(), tr.weights[t, li].tolist()):
                        wsum[il][e] += float(w)
            for e in seen:
                out["decode_union"][il][e] += 1
    out["decode_weight_u"] = {il: [math.floor(v * 1e6) for v in wsum[il]] for il in tr.moe_layers}
    return out


@pytest.mark.parametrize("seed", [0, 5])
def test_profile_counts_match_reference(seed):
    tr = random_trace(seed)
    prof = profile_from_trace(tr)
    ref = _reference_profile(tr)
    assert prof.n_layer == max(tr.moe_layers) + 1 and prof.layers == tr.moe_layers
    for name in ("decode_union", "decode_tokens", "prefill_tokens", "decode_weight_u"):
        for il in tr.moe_layers:
            assert prof.sections[name][il].tolist() == ref[name][il], (name, il)
    assert prof.header["steps"] == str(len(set(tr.ubatch[tr.phase == PHASE_DECODE].tolist())))
    assert prof.header["decode_tokens"] == str(tr.n_decode_tokens)


def test_moeprof_header_and_rows_exact(tmp_path):
    tr = random_trace(6)
    out = tmp_path / "p.moeprof"
    export_trace(tr, out, format="moeprof")
    lines = out.read_text().splitlines()
    head = lines[0].split(" ")
    # the field order of llama-moetrace.cpp's fprintf
    assert head[:2] == ["moeprof", "v1"]
    assert [f.split("=")[0] for f in head[2:]] == [
        "n_layer", "n_expert", "steps", "decode_tokens", "prefill_tokens", "draft_ubatches", "source"]
    assert head[2] == "n_layer=6" and head[3] == "n_expert=16"
    # every section lists every MoE layer in increasing il, with n_expert integer counts
    names = [line.split()[0] for line in lines[1:]]
    assert names == [s for s in ("decode_union", "decode_tokens", "prefill_tokens", "decode_weight_u") for _ in range(3)]
    for line in lines[1:]:
        parts = line.split()
        assert int(parts[1]) in (0, 2, 5) and len(parts) == 2 + 16
        assert all(p.isdigit() for p in parts[2:])


def test_moeprof_round_trip(tmp_path):
    tr = random_trace(7)
    prof = profile_from_trace(tr)
    out = tmp_path / "p.moeprof"
    write_moeprof(prof, out)
    back = load_moeprof(out)
    assert back.equals(prof)
    write_moeprof(back, tmp_path / "q.moeprof")
    assert (tmp_path / "q.moeprof").read_bytes() == out.read_bytes()
    # float tables (hot-set saves) survive too
    fp = Profile(n_layer=3, n_expert=2, layers=(2,), header={"tokens": "5", "source": "moe-hot-save"},
                 sections={"decode_union": np.array([[0, 0], [0, 0], [1e9 + 0.125, 1e-6 * 3]])})
    write_moeprof(fp, tmp_path / "f.moeprof")
    assert load_moeprof(tmp_path / "f.moeprof").equals(fp)


def test_moeprof_real_trace(tmp_path, kimi_coding_csv):
    tr = import_trace(kimi_coding_csv, n_expert=256)
    out = tmp_path / "k.moeprof"
    export_trace(tr, out, format="moeprof")
    prof = load_moeprof(out)
    assert prof.n_layer == 27 and prof.layers == tuple(range(1, 27))
    assert prof.header["decode_tokens"] == "255" and prof.header["prefill_tokens"] == "237"
    # every decode token selects 8 distinct experts per layer, one token per step: union == tokens
    assert np.array_equal(prof.sections["decode_union"], prof.sections["decode_tokens"])
    assert int(prof.sections["decode_tokens"][5].sum()) == 255 * 8
    # the last MoE layer saw only the last prompt token's row
    assert int(prof.sections["prefill_tokens"][26].sum()) == 8
    assert "decode_weight_u" not in prof.sections


def test_cli_export(tmp_path, capsys, kimi_alt_csv):
    hxt = tmp_path / "a.hxt"
    assert main(["trace", "import", str(kimi_alt_csv), "--out", str(hxt), "--n-expert", "256"]) == 0
    for fmt in ("csv", "moeprof"):
        assert main(["trace", "export", str(hxt), "--format", fmt, "--out", str(tmp_path / f"a.{fmt}")]) == 0
    assert import_trace(tmp_path / "a.csv", n_expert=256).equals(import_trace(kimi_alt_csv, n_expert=256))
    capsys.readouterr()
    bad = tmp_path / "bad.hxt"
    bad.write_bytes(b"HXTRACE\0" + b"\x07\x00\x00\x00" + bytes(12))
    rc = main(["trace", "export", str(bad), "--format", "csv", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "version 7" in err
    assert not (tmp_path / "o.csv").exists()
