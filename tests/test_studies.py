"""Tuning studies: allocation, run files, the tune pipeline, resume, pruning, reports, shared storage."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from hotexperts.modelspec import ModelSpec
from hotexperts.studies.runfiles import mainline_placement, ot_patterns_for_gpu_layers
from hotexperts.studies.tune import greedy_allocation
from hotexperts.tracer.trace import Trace

MB = 1 << 20


def small_model(n_layers: int = 4, n_expert: int = 32, top_k: int = 4) -> ModelSpec:
    eb = tuple(MB * (2 if i % 2 else 1) for i in range(n_layers))  # alternate 1 MiB / 2 MiB experts
    return ModelSpec(
        name="tiny-moe", arch="qwen3moe", n_layer=n_layers + 1, moe_layers=tuple(range(1, n_layers + 1)),
        n_expert=n_expert, n_expert_used=top_k, hidden_size=512, expert_ff=256, expert_bytes=eb,
        dense_bytes=64 * MB, n_kv_layers=n_layers + 1, n_head_kv=2, head_dim=64, n_head=8, vocab_size=4096,
    )


def local_trace(model: ModelSpec, n_decode: int = 300, prompt: int = 64, seed: int = 0) -> Trace:
    """Routing with locality: each layer draws from a slowly drifting hot set."""
    rng = np.random.default_rng(seed)
    n = prompt + n_decode
    L, E, k = model.n_moe_layers, model.n_expert, model.n_expert_used
    ids = np.zeros((n, L, k), np.int64)
    for layer in range(L):
        pop = rng.dirichlet(np.full(E, 0.3))
        for t in range(n):
            if t % 50 == 0:
                pop = 0.7 * pop + 0.3 * rng.dirichlet(np.full(E, 0.3))
            ids[t, layer] = rng.choice(E, size=k, replace=False, p=pop)
    phase = np.r_[np.zeros(prompt, int), np.ones(n_decode, int)]
    ubatch = np.r_[np.zeros(prompt, int), np.arange(1, n_decode + 1)]
    return Trace.from_arrays(ids, n_expert=E, phase=phase, ubatch=ubatch, moe_layers=model.moe_layers)


@pytest.fixture
def setup(tmp_path):
    model = small_model()
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(model.to_dict()))
    tr = local_trace(model)
    tp = tmp_path / "t.hxt"
    tr.save(tp)
    return model, spec, tp


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


# ------------------------------------------------------------------------------ allocation
def test_greedy_allocation_matches_brute_force():
    ks = np.array([0, 1, 2, 3, 4], float)
    curves = np.array([[0, 0.5, 0.7, 0.8, 0.85], [0, 0.3, 0.55, 0.75, 0.9], [0, 0.1, 0.2, 0.3, 0.4]])
    eb = np.array([1.0, 2.0, 1.0])
    for budget in (0, 1, 3, 5, 8, 12):
        got = greedy_allocation(curves, ks, eb, budget, 4)
        assert float((got * eb).sum()) <= budget
        best = max(
            (sum(curves[i, s[i]] for i in range(3)), s)
            for s in itertools.product(range(5), repeat=3)
            if sum(s[i] * eb[i] for i in range(3)) <= budget
        )
        # greedy on concave curves is optimal per unit slot; allow the 1-slot knapsack slack of the 2-byte layer
        assert sum(curves[i, got[i]] for i in range(3)) >= best[0] - 0.25 + 1e-9


# -------------------------------------------------------------------------------- run files
def test_fork_env_exact():
    from hotexperts.studies.targets import WriteContext, get_target
    from hotexperts.studies.tune import Candidate

    m = small_model()
    cand = Candidate("fork", {"interval": 60, "pp_bypass": 64}, [44] * m.n_moe_layers, target="fork")
    rf = get_target("fork").write(cand, WriteContext(model=m, context=131072))
    lines = rf.files["hotexperts.env"].splitlines()
    for want in ("LLAMA_ARG_MOE_HOT_K=44", "LLAMA_ARG_MOE_HOT_REBALANCE_INTERVAL=60",
                 "LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS=64", "LLAMA_ARG_OVERRIDE_TENSOR=exps=CPU",
                 "LLAMA_ARG_CTX_SIZE=131072", "LLAMA_ARG_CACHE_TYPE_K=q8_0"):
        assert want in lines


def test_mainline_placement_prefers_small_layers_and_ot_pattern_matches():
    m = small_model(n_layers=6)
    budget = 3 * 32 * MB + 32 * MB  # room for the three 1-MiB-expert layers and not all of a 2 MiB one
    pl = mainline_placement(m, budget)
    assert pl["gpu_layers"] == [1, 3, 5]
    assert pl["gpu_expert_bytes"] == 3 * 32 * MB
    # --n-cpu-moe keeps the last layers: layer 6 (2 MiB) fits, then 5 (1 MiB), then 4 (2 MiB) does not
    assert pl["n_cpu_moe_gpu_layers"] == 2 and pl["n_cpu_moe"] == m.n_layer - 2
    pat = re.compile(ot_patterns_for_gpu_layers(m, pl["gpu_layers"]).split("=")[0])
    assert pat.search("blk.2.ffn_up_exps.weight") and pat.search("blk.4.ffn_down_exps.weight")
    assert not pat.search("blk.1.ffn_gate_exps.weight") and not pat.search("blk.12.ffn_up_exps.weight")


# -------------------------------------------------------------------------------- pipeline
def test_tune_end_to_end_resume_and_report(setup, tmp_path):
    model, spec, tp = setup
    out = tmp_path / "run"
    common = [str(tp), "--model", str(spec), "--hardware", "rtx4090-7950x", "--vram-gb", "1.45",
              "--context", "2048", "--out", str(out), "--no-progress", "--seed", "3"]
    r = run_cli("tune", *common, "--trials", "14")
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "best.json").read_text())
    for key in ("best", "baselines", "belady_bound", "study", "run_files", "plots", "mainline"):
        assert key in best
    b = best["best"]
    assert b["fits"] and b["vram_gib"] <= 1.45
    for base in best["baselines"].values():
        assert b["objective"] >= base["objective"] - 1e-9  # baselines are seeded into the study
    assert best["belady_bound"]["hit_rate"] >= b["hit_rate"] - 1e-9 or b["policy"] == "layer-offload"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "Recommendation" in html
    for stem in ("hit_rate_vs_slots", "fork_k_interval_heatmap", "pareto_tok_s_vs_vram", "expert_popularity",
                 "hit_rate_per_layer", "optimization_history"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.svg").exists()
    assert (out / "llama-server.sh").exists() and not (out / "mainline-placement.txt").exists()
    # the run files, read back as the runtime reads them, are the configuration that was scored
    from hotexperts.studies.check import check

    cr = check(out)
    assert cr.result.decode_tok_s == pytest.approx(b["decode_tok_s"], rel=1e-9)
    assert float(cr.vram["total"]) == pytest.approx(b["vram_bytes"], rel=1e-12)

    import optuna

    study = optuna.load_study(study_name=best["study"]["name"], storage=f"sqlite:///{out / 'study.db'}")
    first = [(t.number, t.params) for t in study.trials]
    assert len([t for t in study.trials if t.state.is_finished()]) == 14
    # resume: more trials continue the same study, keeping the first ones
    r = run_cli("tune", *common, "--trials", "20")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name=best["study"]["name"], storage=f"sqlite:///{out / 'study.db'}")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 20
    assert [(t.number, t.params) for t in study.trials[: len(first)]] == first
    # pruned trials are the infeasible ones, and every scored one fits
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert "infeasible" in t.user_attrs
        elif t.state == optuna.trial.TrialState.COMPLETE:
            assert t.user_attrs["vram_bytes"] <= 1.45 * 2**30
    # the report can be rebuilt from the stored study
    best = json.loads((out / "best.json").read_text())
    (out / "report.html").unlink()
    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").exists()
    assert json.loads((out / "best.json").read_text())["best"]["label"] == json.loads(
        json.dumps(best["best"]["label"]))


def test_tune_is_reproducible_with_seed(setup, tmp_path):
    _, spec, tp = setup
    labels = []
    for d in ("a", "b"):
        r = run_cli("tune", str(tp), "--model", str(spec), "--hardware", "rtx4090-7950x", "--vram-gb", "1.45",
                    "--context", "2048", "--out", str(tmp_path / d), "--trials", "10", "--seed", "7", "--no-progress")
        assert r.returncode == 0, r.stderr
        labels.append(json.loads((tmp_path / d / "best.json").read_text())["best"]["label"])
    assert labels[0] == labels[1]


def test_impossible_budget_is_one_line_error(setup, tmp_path):
    _, spec, tp = setup
    out = tmp_path / "x"
    r = run_cli("tune", str(tp), "--model", str(spec), "--hardware", "rtx4090-7950x", "--vram-gb", "0.01",
                "--context", "2048", "--out", str(out), "--trials", "5", "--no-progress")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "impossible budget" in r.stderr
    assert not out.exists()  # nothing half-written
    r = run_cli("tune", str(tp), "--model", str(spec), "--hardware", "no-such-machine", "--vram-gb", "1.45",
                "--context", "2048", "--out", str(out), "--trials", "5", "--no-progress")
    assert r.returncode == 1 and "no-such-machine" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not out.exists()


# ------------------------------------------------------------------------- shared storage
def _pg_url() -> str:
    url = os.environ.get("HOTEXPERTS_TEST_PG_URL")
    if url:
        return url
    script = Path(__file__).resolve().parents[1] / ".ci" / "start-postgres.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.fail(f"could not start PostgreSQL for the test: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().split("=", 1)[1]


@pytest.fixture
def fresh_pg_db():
    """A new, empty PostgreSQL database (dropped afterwards): optuna's schema does not exist yet in it."""
    import sqlalchemy

    base = _pg_url()
    db = f"hxtest_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    try:
        yield base.rsplit("/", 1)[0] + "/" + db
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


def _open_storage_at_barrier(url: str, barrier, results) -> None:
    from optuna.storages import RDBStorage

    from hotexperts.studies.tune import _rdb_storage

    barrier.wait()
    try:
        _rdb_storage(RDBStorage, url, {}).engine.dispose()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_simultaneous_workers_create_the_schema_of_an_empty_database(fresh_pg_db):
    """Regression: CI's first run on a fresh server failed with a duplicate pg_type key (CREATE TYPE race)."""
    import multiprocessing as mp

    import optuna

    ctx = mp.get_context("fork")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_storage_at_barrier, args=(fresh_pg_db, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n, outcomes
    # the schema is complete and usable by anyone afterwards
    optuna.create_study(storage=fresh_pg_db, study_name="after")
    assert [s.study_name for s in optuna.get_all_study_summaries(storage=fresh_pg_db)] == ["after"]


def test_two_workers_share_one_postgres_study(setup, tmp_path, fresh_pg_db):
    import optuna

    _, spec, tp = setup
    url = fresh_pg_db  # empty: the two workers also race to create optuna's tables, as on a new server
    name = f"test-{uuid.uuid4().hex[:8]}"
    n_trials = 16
    procs = []
    for w in range(2):
        args = [sys.executable, "-m", "hotexperts", "tune", str(tp), "--model", str(spec), "--hardware",
                "rtx4090-7950x", "--vram-gb", "1.45", "--context", "2048", "--out", str(tmp_path / f"w{w}"),
                "--trials", str(n_trials), "--storage", url, "--study", name, "--seed", str(w), "--no-progress"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no duplicated or lost trial numbers
    assert all(t.state.is_finished() for t in trials)  # nothing left running or failed
    assert not any(t.state == optuna.trial.TrialState.FAIL for t in trials)
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # each worker stops once the study holds n_trials finished trials; at most one in flight per other worker
    assert n_trials <= len(finished) <= n_trials + 1
    # every trial names the worker that ran it, and only these two processes ran any
    pids = {f"{socket.gethostname()}:{p.pid}" for p in procs}
    assert {t.user_attrs["worker"] for t in trials} <= pids
    for w in range(2):
        assert (tmp_path / f"w{w}" / "best.json").exists()


def test_jobs_and_multi_objective(setup, tmp_path):
    import optuna

    _, spec, tp = setup
    out = tmp_path / "mo"
    r = run_cli("tune", str(tp), "--model", str(spec), "--hardware", "rtx4090-7950x", "--vram-gb", "1.45",
                "--context", "2048", "--out", str(out), "--trials", "10", "--jobs", "2", "--multi-objective",
                "--prefill-weight", "0.3", "--no-progress")
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "best.json").read_text())
    assert "prefill share 0.3" in best["objective"]
    b = best["best"]
    d, p = b["decode_tok_s"], b["prefill_tok_s"]
    assert b["objective"] == pytest.approx(1 / (0.7 / d + 0.3 / p))
    study = optuna.load_study(study_name=best["study"]["name"], storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.directions) == 2
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 10 <= len(finished) <= 11  # two workers: at most one trial past the target
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    for t in study.best_trials:  # the Pareto front: VRAM objective equals the stored VRAM
        assert t.values[1] == pytest.approx(t.user_attrs["vram_bytes"] / 2**30)
