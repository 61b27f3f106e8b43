"""One-pass hit-rate curves (hotexperts.sim.curves) and the textbook policies (lru-textbook,
belady-textbook): against per-K replays, plain-Python caches written here, libCacheSim on a real trace,
the textbook's hand-computed reference string and the published per-layer LRU figures of the Kimi
coding trace."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from hotexperts.policies import BeladyTextbook, LruTextbook
from hotexperts.sim.curves import accesses_per_layer, lru_curve, opt_curve
from hotexperts.sim.replay import replay
from hotexperts.tracer.trace import PHASE_DECODE, Trace
from tests.test_policies import make_trace, step_trace

# ---------------------------------------------------------------------------------- plain Python


def requests(tr: Trace, layer: int, *, decode_only: bool = False) -> list[tuple[int, bool]]:
    """(expert, counted) per request of one layer, in trace order."""
    out = []
    for t in range(tr.n_tokens):
        if tr.present is not None and not tr.present[t, layer]:
            continue
        counted = (not decode_only) or int(tr.phase[t]) == PHASE_DECODE
        out.extend((int(e), counted) for e in tr.experts[t, layer])
    return out


def py_lru_hits(reqs: list[tuple[int, bool]], k: int) -> int:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for e, counted in reqs:
        if e in cache:
            cache.move_to_end(e)
            hits += counted
        elif k > 0:
            cache[e] = None
            if len(cache) > k:
                cache.popitem(last=False)
    return hits


def py_opt_hits(reqs: list[tuple[int, bool]], k: int) -> int:
    n = len(reqs)
    nxt = [n] * n
    last: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = last.get(reqs[i][0], n)
        last[reqs[i][0]] = i
    cache: dict[int, int] = {}  # expert -> next request
    hits = 0
    for i, (e, counted) in enumerate(reqs):
        if e in cache:
            hits += counted
        elif k > 0:
            if len(cache) >= k:
                del cache[max(cache, key=lambda x: cache[x])]
        else:
            continue
        cache[e] = nxt[i]
    return hits


# ------------------------------------------------------------------------------- hand-computed


REFS = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def test_textbook_reference_string():
    # Silberschatz, Operating System Concepts (the 20-reference string, 3 frames): LRU 12 faults, OPT 9;
    # with 1 frame every reference faults (no page repeats at once), with 6 frames only the 6 first uses
    tr = step_trace([[x] for x in REFS], 8)
    lru, opt = lru_curve(tr)[0], opt_curve(tr)[0]
    assert len(REFS) - lru[3] == 12 and len(REFS) - opt[3] == 9
    assert len(REFS) - lru[1] == 20 and len(REFS) - opt[1] == 20
    assert len(REFS) - lru[6] == 6 == len(REFS) - opt[6]
    assert lru[0] == opt[0] == 0
    for pol, want in ((LruTextbook(), 8), (BeladyTextbook(), 11)):
        r = replay(tr, pol, 3, record_events=True)
        assert int(r.hit_sel.sum()) == want
    # OPT by hand: 7, 0, 1 fill; 2 evicts 7 (next use 17 vs 0 -> 4, 1 -> 13); 3 evicts 1 (13); 4 evicts 0
    # (10 vs 2 -> 8, 3 -> 9); 0 evicts 4 (never again); 1 evicts 3 (never again); 7 evicts 2 (never again)
    r = replay(tr, BeladyTextbook(), 3, record_events=True)
    assert [int(e["expert"]) for e in r.events] == [7, 0, 1, 2, 3, 4, 0, 1, 7]
    assert [int(e["evicted"]) for e in r.events] == [-1, -1, -1, 7, 1, 0, 4, 3, 2]


def test_textbook_hits_within_a_step():
    # one 3-token step on one layer, K=1: the textbook model checks residency at every request, so the
    # second use of expert 5 in the step hits (the step model of the other policies would not)
    tr = Trace.from_arrays(np.array([[[5]], [[5]], [[6]]]), n_expert=8, ubatch=[0, 0, 0])
    r = replay(tr, LruTextbook(), 1)
    assert r.hit_sel.tolist() == [[1]] and r.uploads.tolist() == [[2]] and r.uploads_missed.tolist() == [[2]]
    assert (r.hot_distinct.tolist(), r.cold_distinct.tolist()) == ([[0]], [[2]])
    assert lru_curve(tr)[0].tolist()[:3] == [0, 1, 1]


# --------------------------------------------------------------- curves vs replays and references


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("count", ["all", "decode"])
def test_curves_equal_per_k_replays_and_python(seed, count):
    tr = make_trace(seed, n_expert=20, n_layers=3, top_k=3)  # prefill steps, decode steps, absent entries
    lru, opt = lru_curve(tr, count=count), opt_curve(tr, count=count)
    assert lru.shape == opt.shape == (tr.n_layers, tr.n_expert + 1)
    step_phase = tr.phase[tr.step_bounds()[:-1]]
    rows = step_phase == PHASE_DECODE if count == "decode" else np.ones(step_phase.size, bool)
    for k in range(tr.n_expert + 1):
        lr = replay(tr, LruTextbook(), k).hit_sel[rows].sum(axis=0)
        br = replay(tr, BeladyTextbook(), k).hit_sel[rows].sum(axis=0)
        np.testing.assert_array_equal(lru[:, k], lr, err_msg=f"lru K={k}")
        np.testing.assert_array_equal(opt[:, k], br, err_msg=f"opt K={k}")
    for ly in range(tr.n_layers):
        reqs = requests(tr, ly, decode_only=count == "decode")
        for k in (1, 2, 5, 9, 20):
            assert lru[ly, k] == py_lru_hits(reqs, k), (ly, k)
            assert opt[ly, k] == py_opt_hits(reqs, k), (ly, k)
    # OPT is an upper bound of LRU; both grow with K; every K >= distinct experts misses only first uses
    assert np.all(opt >= lru) and np.all(np.diff(lru, axis=1) >= 0) and np.all(np.diff(opt, axis=1) >= 0)
    n_acc = accesses_per_layer(tr, count=count)
    assert np.all(lru[:, -1] == opt[:, -1]) and np.all(lru[:, -1] <= n_acc)
    # ks selects columns
    np.testing.assert_array_equal(lru_curve(tr, [0, 4, 20], count=count), lru[:, [0, 4, 20]])


def test_curves_uint16_ids_and_errors():
    tr = make_trace(9, n_expert=300, n_layers=2, top_k=4, requests=2, decode=40)
    lru, opt = lru_curve(tr), opt_curve(tr)
    for ly in range(2):
        reqs = requests(tr, ly)
        for k in (3, 17, 64):
            assert lru[ly, k] == py_lru_hits(reqs, k)
            assert opt[ly, k] == py_opt_hits(reqs, k)
    with pytest.raises(ValueError, match="ks must lie"):
        lru_curve(tr, [301])
    with pytest.raises(ValueError, match="count must be"):
        opt_curve(tr, count="prefill")


# ------------------------------------------------------------------ real trace: oracles, figures


@pytest.fixture(scope="module")
def kimi_full():
    from tests.conftest import KIMI_CODING, shared_file

    path = shared_file(KIMI_CODING)
    from hotexperts.tracer.importers import import_trace

    # NOTE: keep the 2-token warm-up ubatch: the published figures count every row of the file
    return import_trace(path, n_expert=256, keep_warmup=True)


def test_kimi_published_per_layer_lru(kimi_full):
    # pmains/kimi-linear-48b-ssd-streaming, benchmarks/results/phase-03-locality.json
    # ("per_layer_lru_overall", tools/expert_cache_sim.py): one LRU per MoE layer of capacity_experts // 26
    # slots, every routed selection of the file a request, hit rate over all 100,856 accesses
    tr = kimi_full
    n_acc = int(accesses_per_layer(tr).sum())
    assert n_acc == 100_856
    published = {9: 0.2699, 38: 0.5890, 77: 0.7597, 140: 0.9013}
    curve = lru_curve(tr, list(published))
    for j, (k, want) in enumerate(published.items()):
        assert round(int(curve[:, j].sum()) / n_acc, 4) == want, k
        r = replay(tr, LruTextbook(), k)
        assert round(int(r.hit_sel.sum()) / n_acc, 4) == want, k
        np.testing.assert_array_equal(r.hit_sel.sum(axis=0), curve[:, j])


@pytest.fixture(scope="module")
def mixtral_humaneval():
    from hotexperts.tracer.importers import import_trace
    from hotexperts.tracer.readers import TraceImportWarning
    from tests.conftest import MIXTRAL_HUMANEVAL, shared_file

    with pytest.warns(TraceImportWarning, match="missing"):  # 37 (token, layer) rows absent: a real gap
        return import_trace(shared_file(MIXTRAL_HUMANEVAL), n_expert=8)  # 8 experts, top-2


@pytest.mark.parametrize(
    "fixture, ks", [("kimi_full", [1, 9, 38, 77, 140]), ("mixtral_humaneval", [1, 2, 3, 5, 7, 8])]
)
def test_textbook_match_libcachesim_per_layer(fixture, ks, request):
    lcs = pytest.importorskip("libcachesim")
    tr = request.getfixturevalue(fixture)
    lru, opt = lru_curve(tr, ks), opt_curve(tr, ks)
    big = np.iinfo(np.int64).max  # libCacheSim's "never requested again"
    for ly in range(tr.n_layers):
        ids = [e for e, _ in requests(tr, ly)]
        nxt = [big] * len(ids)
        last: dict[int, int] = {}
        for i in range(len(ids) - 1, -1, -1):
            nxt[i] = last.get(ids[i], big)
            last[ids[i]] = i
        for j, k in enumerate(ks):
            c = lcs.LRU(k)
            h_lru = sum(bool(c.get(lcs.Request(obj_size=1, obj_id=e))) for e in ids)
            b = lcs.Belady(k)
            h_opt = sum(
                bool(b.get(lcs.Request(obj_size=1, obj_id=e, clock_time=i, next_access_vtime=nu)))
                for i, (e, nu) in enumerate(zip(ids, nxt))
            )
            assert lru[ly, j] == h_lru, (ly, k)
            assert opt[ly, j] == h_opt, (ly, k)
    for j, k in enumerate(ks):
        np.testing.assert_array_equal(replay(tr, LruTextbook(), k).hit_sel.sum(axis=0), lru[:, j])
        np.testing.assert_array_equal(replay(tr, BeladyTextbook(), k).hit_sel.sum(axis=0), opt[:, j])
