"""Studies safe to reuse, kill and share (issue: robust inputs and outputs): reused folders, copied
folders, small models, concurrent runs on one folder, killed parents and workers, Ctrl-C, bad options."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotexperts.modelspec import ModelSpec
from hotexperts.tracer.trace import Trace

MB = 1 << 20


def tiny(n_expert: int = 4) -> ModelSpec:
    return ModelSpec(name=f"tiny{n_expert}", arch="qwen3moe", n_layer=4, moe_layers=(0, 1, 2, 3), n_expert=n_expert,
                     n_expert_used=2, hidden_size=256, expert_ff=128, expert_bytes=(MB,) * 4, dense_bytes=32 * MB,
                     n_kv_layers=4, n_head_kv=2, head_dim=64, n_head=4, vocab_size=1000)


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(tiny(4).to_dict()))
    return p


def common(spec: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(spec), "--hardware", "rtx4090-7950x", "--vram-gb", "2", "--context", "1024",
            "--out", str(out), "--no-progress", *extra]


def test_models_with_fewer_than_eight_experts_tune_and_report(spec, tmp_path):
    out = tmp_path / "run"
    r = cli("tune", *common(spec, out, "--trials", "8"))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "best.json").read_text())["best"]["fits"]
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr


def test_reused_folder_keeps_the_trace_tuned_and_a_copied_folder_reads_its_own_study(spec, tmp_path):
    from hotexperts.studies.tune import default_trace

    out = tmp_path / "run"
    m = tiny(4)
    user = default_trace(m, seed=7, n_requests=1, prompt_tokens=64, decode_tokens=64)
    tp = tmp_path / "user.hxt"
    user.save(tp)
    r = cli("tune", str(tp), *common(spec, out, "--trials", "6"))
    assert r.returncode == 0, r.stderr
    assert Trace.load(out / "trace.hxt").n_tokens == user.n_tokens
    # the same folder without a trace: the synthetic default replaces the earlier trace.hxt
    r = cli("tune", *common(spec, out, "--trials", "6"))
    assert r.returncode == 0, r.stderr
    assert Trace.load(out / "trace.hxt").n_tokens != user.n_tokens
    assert json.loads((out / "tune.json").read_text())["storage"] == "sqlite:///study.db"
    # a copied folder reads its own database, even once the original is gone
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(out)
    r = cli("report", str(copy))
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    # and a folder without its database is one line, not a new empty study
    (copy / "study.db").unlink()
    r = cli("report", str(copy))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no study database" in r.stderr
    assert not (copy / "study.db").exists()


def test_two_tunes_on_one_new_folder_share_the_study_without_duplicates(spec, tmp_path):
    import optuna

    out = tmp_path / "run"
    args = [sys.executable, "-m", "hotexperts", "tune", *common(spec, out, "--trials", "24", "--policies", "decay")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    name = json.loads((out / "tune.json").read_text())["study_name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) >= 24
    keys = [json.dumps(t.params, sort_keys=True) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # decay's parameters are continuous: a repeated configuration means two processes sampled alike
    assert len(keys) == len(set(keys)), "two workers sampled the same configuration"
    workers = {t.user_attrs.get("worker") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(workers) == 2


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        txt = (task / "children").read_text().split()
        out += [int(x) for x in txt]
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_parent_leaves_no_worker_and_resume_fails_its_trials(spec, tmp_path, monkeypatch):
    import optuna

    out = tmp_path / "run"
    args = [sys.executable, "-m", "hotexperts", "tune", *common(spec, out, "--trials", "100000", "--jobs", "2")]
    parent = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = out / "study.db"
    workers: list[int] = []
    t0 = time.time()
    while time.time() - t0 < 180:
        time.sleep(1.0)
        workers = [c for c in _children(parent.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        if len(workers) == 2 and db.exists():
            try:
                st = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
            except Exception:
                continue
            if len([t for t in st.trials if t.state.is_finished()]) >= 6:
                break
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.time()
    while time.time() - t0 < 30 and any(_alive(w) for w in workers):
        time.sleep(0.5)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed parent"
    # the trials the killed workers left RUNNING are marked failed when the study is opened again (a trial
    # killed before it recorded its worker after a grace period, here shortened)
    import hotexperts.studies.tune as tune_mod
    from hotexperts.studies.tune import TuneConfig, open_study

    monkeypatch.setattr(tune_mod, "UNNAMED_RUNNING_GRACE_S", 0.0)

    name = optuna.get_all_study_names(storage=f"sqlite:///{db}")[0]
    cfg = TuneConfig(model=str(spec), hardware="rtx4090-7950x", vram_gb=2, context=1024)
    st = open_study(f"sqlite:///{db}", name, cfg)
    assert not [t for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_ctrl_c_is_one_line(spec, tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "hotexperts", "tune", *common(spec, out, "--trials", "100000")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 120 and not (out / "study.db").exists():
        time.sleep(0.5)
    time.sleep(3.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert err.strip() == "hotexperts: interrupted"


@pytest.mark.parametrize("extra,needle", [
    (["--vram-gb", "inf"], "--vram-gb"),
    (["--modes", ""], "--modes"),
    (["--kv-type", "junk"], "--kv-type"),
    (["--jobs", "0"], "--jobs"),
])
def test_bad_tune_options_are_one_line(spec, tmp_path, extra, needle):
    args = common(spec, tmp_path / "run") + extra
    r = cli("tune", *args)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_out_paths_are_one_line(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out must not write into the current folder
    f = tmp_path / "afile"
    f.write_text("x")
    for out in ("", str(f), str(f / "sub")):
        args = common(spec, Path("X"))
        args[args.index("--out") + 1] = out
        r = cli("tune", *args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (out, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "tiny.json"]


# ----------------------------------------------------------------------------------- held out
def six_requests(path: Path) -> Trace:
    from hotexperts.studies.tune import default_trace

    tr = default_trace(tiny(4), seed=3, n_requests=6, prompt_tokens=32, decode_tokens=48, ubatch=32)
    tr.save(path)
    return tr


def test_split_by_request_is_disjoint_and_complete(tmp_path):
    import numpy as np

    from hotexperts.errors import InputError
    from hotexperts.studies.tune import split_by_request

    tr = six_requests(tmp_path / "six.hxt")
    a, b = split_by_request(tr, 0.34, seed=1)
    ra, rb = set(np.unique(a.request)), set(np.unique(b.request))
    assert not ra & rb and ra | rb == set(np.unique(tr.request)) and len(rb) == 2
    assert a.n_tokens + b.n_tokens == tr.n_tokens
    one = tr.select(tr.request == tr.request[0])
    with pytest.raises(InputError, match="two or more requests"):
        split_by_request(one, 0.5)


def test_holdout_reports_unseen_requests_and_static_learns_from_the_first_requests(spec, tmp_path):
    import numpy as np

    from hotexperts.sim.hardware import load_hardware
    from hotexperts.studies.tune import Candidate, Evaluator, TuneConfig

    six_requests(tmp_path / "six.hxt")
    out = tmp_path / "run"
    r = cli("tune", str(tmp_path / "six.hxt"), *common(spec, out, "--trials", "10", "--holdout", "0.34"))
    assert r.returncode == 0, r.stderr
    assert "held out (2 requests never seen by the study)" in r.stdout
    best = json.loads((out / "best.json").read_text())
    held = best["heldout"]
    assert held["requests"] == 2 and set(held["rows"]) >= {"recommended", "all-cpu", "best-n-cpu-moe"}
    train, ev_tr = Trace.load(out / "trace.hxt"), Trace.load(out / "eval.hxt")
    assert not set(np.unique(train.request)) & set(np.unique(ev_tr.request))
    # the held-out figure is the winner simulated on the held-out trace alone (an independent run)
    cfg = TuneConfig(model=str(spec), hardware="rtx4090-7950x", vram_gb=2, context=1024, target="lab")
    m = tiny(4)
    b = best["best"]
    cand = Candidate(b["policy"], {k: v for k, v in b["params"].items() if k != "counts"}, b["slots_per_layer"],
                     b["mode"], target=b["target"], knobs=b["knobs"])
    if b["policy"] == "layer-offload":
        cand = Candidate("layer-offload", {k: v for k, v in b["params"].items() if v not in (None, [])},
                         [0] * 4, target="mainline")
    hev = Evaluator(ev_tr, m, load_hardware("rtx4090-7950x"), cfg)
    if b["policy"] == "static":
        tev = Evaluator(train, m, load_hardware("rtx4090-7950x"), cfg)
        cand.counts = tev.static_counts()
    want = hev.evaluate(cand).decode_tok_s
    assert held["rows"]["recommended"]["heldout_decode_tok_s"] == pytest.approx(want, rel=1e-9)
    assert held["rows"]["recommended"]["per_request"]["n"] == 2
    assert "Training vs held-out requests" in (out / "report.html").read_text()
    # report rebuilds the held-out table from eval.hxt
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "best.json").read_text())["heldout"]["rows"]["recommended"] == held["rows"]["recommended"]


def test_static_hot_sets_are_learned_on_the_first_half_of_the_requests(tmp_path):
    import numpy as np

    from hotexperts.sim.hardware import load_hardware
    from hotexperts.studies.tune import Evaluator, TuneConfig

    tr = six_requests(tmp_path / "six.hxt")
    cfg = TuneConfig(model="x", hardware="rtx4090-7950x", vram_gb=2, context=1024)
    ev = Evaluator(tr, tiny(4), load_hardware("rtx4090-7950x"), cfg)
    counts = ev.static_counts()
    # independently: per decode step, each distinct expert counts once, over the first three requests
    first = np.unique(tr.request)[:3]
    want = np.zeros((4, 4))
    b = tr.step_bounds()
    for s in range(b.size - 1):
        t0, t1 = b[s], b[s + 1]
        if tr.phase[t0] != 1 or tr.request[t0] not in first:
            continue
        for ly in range(4):
            for e in np.unique(tr.experts[t0:t1, ly, :]):
                want[ly, e] += 1
    assert np.array_equal(counts, want)
