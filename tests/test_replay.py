"""ReplayResult: shapes, step metadata and derived properties computed by hand."""

from __future__ import annotations

import numpy as np

from hotexperts.policies import Fork, Static
from hotexperts.sim.replay import EVENT_DTYPE, replay
from hotexperts.tracer.trace import Trace


def _trace() -> Trace:
    # step 0: 2-token prefill; steps 1..3: decode; 2 layers, top-2, 4 experts
    ids = np.array(
        [
            [[0, 1], [2, 3]],
            [[1, 2], [3, 0]],
            [[0, 1], [2, 3]],
            [[0, 2], [2, 1]],
            [[0, 1], [2, 3]],
        ]
    )
    return Trace.from_arrays(ids, n_expert=4, phase=[0, 0, 1, 1, 1], ubatch=[0, 0, 1, 2, 3], pos=[0, 1, 2, 3, 4])


def test_step_metadata_and_derived():
    tr = _trace()
    counts = np.array([[9, 8, 0, 0], [0, 0, 9, 8]])
    r = replay(tr, Static(counts=counts), 2)
    assert r.step_bounds.tolist() == [0, 2, 3, 4, 5]
    assert r.step_phase.tolist() == [0, 1, 1, 1]
    assert r.step_tokens.tolist() == [2, 1, 1, 1]
    assert r.step_pos.tolist() == [1, 2, 3, 4]
    assert r.sel.shape == (4, 2) and r.sel.dtype == np.int32
    # layer 0 holds {0, 1}, layer 1 holds {2, 3}
    # decode steps: layer 0 hits 2, 1, 2 of 6; layer 1 hits 2, 1, 2 of 6
    assert r.hit_rate_per_layer.tolist() == [5 / 6, 5 / 6]
    assert r.hit_rate == 10 / 12
    # prefill step: layer 0 routes 0,1,1,2 -> 3 hits of 4; layer 1 routes 2,3,3,0 -> 3 of 4
    assert r.prefill_hit_rate == 6 / 8
    assert r.hot_distinct[0].tolist() == [2, 2] and r.cold_distinct[0].tolist() == [1, 1]
    assert r.selections == 20 and r.total_uploads == 0
    assert not r.blocking_uploads and r.label == "static-K2-prof"


def test_fork_result_fields():
    tr = _trace()
    r = replay(tr, Fork(interval=2, pp_bypass=1), 2, record_events=True)
    assert r.blocking_uploads and r.label == "fork-K2-I2-B1"
    assert r.bypass.tolist() == [True, False, False, False]
    assert r.events.dtype == EVENT_DTYPE
    assert r.upload_experts_per_layer.tolist() == r.uploads.sum(axis=0).tolist()
    assert r.params["interval"] == 2
    assert r.replay_seconds >= 0.0


def test_parallel_layer_chunks_equal_one_thread(monkeypatch):
    """Policies that declare ``layer_independent`` give the same numbers when chunks of layers run in
    parallel threads (forced here on a small trace), with per-layer slot counts and absent entries."""
    import importlib

    from hotexperts.policies import REGISTRY
    from tests.test_policies import _default, make_trace

    rp = importlib.import_module("hotexperts.sim.replay")  # the module (the package exports the function)
    monkeypatch.setattr(rp, "PARALLEL_MIN_SELECTIONS", 0)
    calls = []
    real = rp._run_layers_parallel
    monkeypatch.setattr(rp, "_run_layers_parallel", lambda *a: calls.append(a[-1]) or real(*a))
    tr = make_trace(21, n_layers=5)
    slots = np.array([3, 0, 7, 5, 11])
    parallel = [name for name, cls in REGISTRY.items() if cls.layer_independent]
    assert {"lru", "belady", "lru-textbook", "belady-textbook"} <= set(parallel)
    for name in parallel:
        pol = _default(REGISTRY[name])
        one = replay(tr, pol, slots, threads=1)
        for threads in (2, 3, 8):
            many = replay(tr, pol, slots, threads=threads)
            for f in ("sel", "hit_sel", "hot_distinct", "cold_distinct", "uploads", "uploads_missed", "resident_final"):
                np.testing.assert_array_equal(getattr(many, f), getattr(one, f), err_msg=f"{name} {f} threads={threads}")
    assert calls == [2, 3, 5] * len(parallel)  # the chunked path ran (threads capped at the 5 layers)
    assert replay(tr, Fork(), slots, threads=2).n_layers == 5 and calls == [2, 3, 5] * len(parallel)  # not for fork
