"""The .hxt trace format: round trip, validation on load, and bad files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hotexperts.errors import InputError
from hotexperts.tracer.trace import MAGIC, PHASE_DECODE, PHASE_PREFILL, Trace


def make_trace(n_tokens: int = 50, n_layers: int = 4, k: int = 8, n_expert: int = 64, seed: int = 0, **kw) -> Trace:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(n_expert)[:k] for _ in range(n_tokens * n_layers)]).reshape(n_tokens, n_layers, k)
    n_prefill = min(10, n_tokens)
    phase = np.r_[np.full(n_prefill, PHASE_PREFILL), np.full(n_tokens - n_prefill, PHASE_DECODE)]
    ubatch = np.r_[np.zeros(n_prefill, int), np.arange(1, n_tokens - n_prefill + 1)]
    return Trace.from_arrays(ids, n_expert=n_expert, phase=phase, ubatch=ubatch, moe_layers=range(1, n_layers + 1), **kw)


def test_round_trip_all_arrays(tmp_path):
    tr = make_trace(
        weights=np.random.default_rng(1).random((50, 4, 8)).astype(np.float16),
        present=np.ones((50, 4), bool),
        step_seconds=np.linspace(0.01, 0.02, 50).astype(np.float32),
        meta={"source": {"kind": "test"}},
    )
    tr.present[:9, 3] = False
    p = tmp_path / "t.hxt"
    tr.save(p)
    back = Trace.load(p, verify=True)
    assert back.equals(tr, meta=True)
    assert back.moe_layers == (1, 2, 3, 4)
    assert back.experts.dtype == np.uint8
    mm = Trace.load(p, mmap=True)
    assert mm.equals(tr)


def test_uint16_ids_for_large_expert_counts(tmp_path):
    tr = make_trace(n_expert=512)
    assert tr.experts.dtype == np.uint16
    tr.save(tmp_path / "t.hxt")
    assert Trace.load(tmp_path / "t.hxt").equals(tr)


def test_steps_and_counts():
    tr = make_trace(n_tokens=13, n_layers=2, k=2, n_expert=8)
    b = tr.step_bounds()
    assert b.tolist() == [0, 10, 11, 12, 13]
    assert tr.n_steps == 4
    assert tr.ubatch_size.tolist() == [10] * 10 + [1, 1, 1]
    c = tr.counts()
    assert c.shape == (2, 8) and c.sum() == 13 * 2 * 2
    # counts agree with a plain loop
    ref = np.zeros((2, 8), int)
    for t in range(13):
        for layer in range(2):
            for e in tr.experts[t, layer]:
                ref[layer, e] += 1
    assert (c == ref).all()


def test_positions_default_per_request():
    ids = np.zeros((6, 1, 1), np.uint8)
    tr = Trace.from_arrays(ids, n_expert=4, request=[0, 0, 1, 1, 1, 0])
    assert tr.pos.tolist() == [0, 1, 0, 1, 2, 2]


def test_to_frame_views():
    tr = make_trace(n_tokens=5, n_layers=3, k=2, n_expert=8, present=np.ones((5, 3), bool))
    tr.present[0, 2] = False
    wide = tr.to_frame()
    assert len(wide) == 5 * 3 - 1
    assert list(wide.columns[:6]) == ["token", "phase", "request", "ubatch", "pos", "layer"]
    row = wide[(wide.token == 3) & (wide.layer == 2)].iloc[0]
    assert [row.e0, row.e1] == tr.experts[3, 1].tolist()
    long = tr.to_frame(long=True)
    assert len(long) == (5 * 3 - 1) * 2
    assert set(long.phase.unique()) == {"prefill"}


def _bytes(tr: Trace, tmp_path) -> bytes:
    p = tmp_path / "good.hxt"
    tr.save(p)
    return p.read_bytes()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"", "empty or truncated"),
        (lambda b: b[:10], "empty or truncated"),
        (lambda b: b"NOTATRACE" + b[9:], "not a hotexperts trace"),
        (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "version 99 is not supported"),
        (lambda b: b[: len(b) // 2], "truncated file"),
        (lambda b: b[:24] + b"[" + b[25:], "corrupt header"),
    ],
)
def test_bad_files_are_rejected_with_one_clear_error(tmp_path, mutate, message):
    good = _bytes(make_trace(), tmp_path)
    p = tmp_path / "bad.hxt"
    p.write_bytes(mutate(good))
    with pytest.raises(InputError) as ei:
        Trace.load(p)
    assert message in str(ei.value)
    assert str(p) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_out_of_range_id_is_rejected(tmp_path):
    tr = make_trace(n_expert=64)
    data = bytearray(_bytes(tr, tmp_path))
    # the experts array is the first array; patch one id to 200 >= 64
    import json

    hlen = struct.unpack_from("<Q", data, 16)[0]
    hdr = json.loads(data[24 : 24 + hlen])
    off = hdr["arrays"]["experts"]["offset"]
    data[off + 5] = 200
    p = tmp_path / "bad.hxt"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="expert id 200 out of range"):
        Trace.load(p, verify=False)
    with pytest.raises(InputError, match="CRC-32"):
        Trace.load(p, verify=True)


def test_inconsistent_shapes_rejected(tmp_path):
    tr = make_trace()
    tr.phase = tr.phase[:-1]
    with pytest.raises(InputError, match="phase has shape"):
        tr.validate()
    tr = make_trace()
    tr.moe_layers = (1, 2)
    with pytest.raises(InputError, match="2 MoE layer ids for 4 trace layers"):
        tr.validate()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        Trace.load(tmp_path / "nope.hxt")


def test_save_is_atomic_on_failure(tmp_path):
    tr = make_trace()
    tr.phase = tr.phase.astype(np.int64)  # invalid: save validates first
    p = tmp_path / "out.hxt"
    with pytest.raises(InputError):
        tr.save(p)
    assert list(tmp_path.iterdir()) == []


def test_magic_constant():
    assert len(MAGIC) == 8


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from hotexperts._atomic import write_text_atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(..., "w") gives under this process's umask
    new = tmp_path / "new.json"
    write_text_atomic(new, "{}")
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(new, 0o640)  # an existing target keeps its mode
    write_text_atomic(new, "{ }")
    assert stat.S_IMODE(new.stat().st_mode) == 0o640 and new.read_text() == "{ }"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "plain.txt"]
