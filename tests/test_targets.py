"""Run-file targets: what is tuned is what runs.

The round trip: for every (target, family) and budget, the configuration a study scores is written with
the target's writer, read back from the files with ``hotexperts check`` (the way the runtime reads them),
simulated again, and must give the same prediction and VRAM and fit the budget. Plus hand-computed cases
of each runtime's rules (profile allocation, the even rule, first-match tensor overrides, env vs flags)
and one-line errors for what cannot be priced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hotexperts.errors import InputError
from hotexperts.modelspec import load_model_spec
from hotexperts.studies.check import check, detect_target, serving_settings
from hotexperts.studies.runfiles import write_run_files
from hotexperts.studies.targets import ALL_RUN_FILES, REGISTRY, ReadContext, WriteContext, parse_for_targets
from hotexperts.studies.targets._llama import expert_placement, read_env_file, read_script
from hotexperts.studies.targets.turboquant import (
    even_slots,
    layer_costs,
    mib_bytes,
    mib_text,
    profile_allocation,
)
from hotexperts.studies.tune import Candidate, Evaluator, TuneConfig, default_trace, objective_fn

GiB = 1 << 30
PAIRS = [("fork", "fork"), ("turboquant", "lru"), ("turboquant", "static"), ("turboquant", "window"),
         ("turboquant", "decay"), ("upstream-lru", "lru"), ("mainline", "layer-offload")]
PRESETS = {"qwen3.5-122b-a10b-q4_k_l": 16384, "kimi-linear-48b-a3b-q4_k_m": 16384}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hotexperts", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    out = {}
    d = tmp_path_factory.mktemp("tr")
    for name in PRESETS:
        spec = load_model_spec(name)
        tr = default_trace(spec, seed=1, n_requests=2, prompt_tokens=128, decode_tokens=160, ubatch=64)
        p = d / f"{name}.hxt"
        tr.save(p)
        out[name] = (spec, tr, p)
    return out


def best_of_small_study(ev: Evaluator, n_trials: int = 8):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=5))
    study.optimize(objective_fn(ev), n_trials=n_trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    t = max(done, key=lambda t: t.value)
    c = t.user_attrs["candidate"]
    return Candidate(c["policy"], c["params"], c["slots"], c["mode"], c["alloc"], target=c["target"], knobs=c["knobs"])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_target_and_family_round_trips_at_every_budget(preset, traces, tmp_path):
    spec, tr, tpath = traces[preset]
    made = 0
    for budget in (8, 12, 16, 24):
        for tname, fam in PAIRS:
            cfg = TuneConfig(model=preset, hardware="rtx4090-7950x", vram_gb=budget, context=PRESETS[preset],
                             target=tname, policies=(fam,), ubatch=64)
            try:
                from hotexperts.studies.tune import build_evaluator

                ev = build_evaluator(cfg, tr)
            except InputError:
                continue  # the budget cannot hold the model without experts
            cand = best_of_small_study(ev)
            if cand is None:
                continue
            assert cand.target == tname and cand.policy in (fam, "all-cpu")
            scored = ev.evaluate(cand)
            vb = ev.vram_of(cand)
            assert vb["fits"]
            out = tmp_path / f"{budget}-{tname}-{fam}"
            out.mkdir()
            ctx = WriteContext(model=spec, context=cfg.context, kv_type=cfg.kv_type, ubatch=cfg.ubatch, evaluator=ev)
            info = write_run_files(out, cand, ctx)
            assert info["target"] == tname and info["script"]
            cr = check(out / "llama-server.sh", model=preset, hardware="rtx4090-7950x", vram_gb=budget, trace=str(tpath))
            # the two LRU runtimes take the same command line (and run it the same way)
            assert cr.target == tname or (fam == "lru" and cr.target in ("turboquant", "upstream-lru"))
            assert cr.candidate.policy == cand.policy
            if cand.policy != "layer-offload":
                assert [int(x) for x in cr.candidate.slots] == [int(x) for x in cand.slots]
            assert cr.result.decode_tok_s == pytest.approx(scored.decode_tok_s, rel=5e-3)
            assert cr.result.decode_tok_s == pytest.approx(scored.decode_tok_s, rel=1e-9)  # exact, in fact
            assert cr.result.prefill_tok_s == pytest.approx(scored.prefill_tok_s, rel=1e-9)
            assert float(cr.vram["total"]) == pytest.approx(float(vb["total"]), rel=1e-12)
            assert cr.vram["fits"] and float(cr.vram["total"]) <= budget * GiB
            made += 1
    # most (budget, target, family) combinations have a feasible configuration at these budgets
    assert made >= 20


def test_a_run_file_that_describes_another_configuration_is_caught(traces, tmp_path):
    """The round trip notices a writer that writes something else than what was scored."""
    spec, tr, tpath = traces["qwen3.5-122b-a10b-q4_k_l"]
    cfg = TuneConfig(model="qwen3.5-122b-a10b-q4_k_l", hardware="rtx4090-7950x", vram_gb=24, context=16384,
                     target="turboquant", policies=("lru",), ubatch=64)
    from hotexperts.studies.tune import build_evaluator

    ev = build_evaluator(cfg, tr)
    # per-layer slots (what the old writer turned into `--moe-expert-cache max(slots)`) cannot be written
    cand = Candidate("lru", {"inserts": 2}, [8] * 47 + [40], target="turboquant")
    with pytest.raises(ValueError, match="one slot count"):
        write_run_files(tmp_path, cand, WriteContext(model=spec, context=16384, ubatch=64, evaluator=ev))
    # an env file edited to another K is read as that K, and its prediction differs
    good = Candidate("lru", {"inserts": 2}, [20] * 48, target="turboquant")
    write_run_files(tmp_path, good, WriteContext(model=spec, context=16384, ubatch=64, evaluator=ev))
    sh = tmp_path / "llama-server.sh"
    sh.write_text(sh.read_text().replace("--moe-expert-cache 20", "--moe-expert-cache 30"))
    cr = check(sh, model="qwen3.5-122b-a10b-q4_k_l", hardware="rtx4090-7950x", vram_gb=24, trace=str(tpath))
    assert cr.candidate.slots[0] == 30
    assert cr.result.decode_tok_s != pytest.approx(ev.evaluate(good).decode_tok_s, rel=5e-3)


# ----------------------------------------------------------------------------- runtime rules
def test_profile_allocation_hand_computed():
    counts = np.array([[5, 0, 3, 1], [4, 4, 2, 0]], float)
    b = np.array([10, 20])
    # worth order: (0,0)=5 (1,0)=4 (1,1)=4 (0,2)=3 (1,2)=2 (0,3)=1 ; budget 45:
    # take (0,0) 10 -> 35; (1,0) 20 -> 15; (1,1) 20 skip; (0,2) 10 -> 5; (1,2) skip; (0,3) 10 skip
    assert profile_allocation(counts, b, np.ones(2), 45).tolist() == [2, 1]
    # a cost of 2 on layer 0 moves its experts first: (0,0)=10 (0,2)=6 (1,0)=4 (1,1)=4 (0,3)=2 (1,2)=2
    got = profile_allocation(counts, b, np.array([2.0, 1.0]), 45)
    # 10 -> 35, 10 -> 25, 20 -> 5, (1,1) skip, (0,3) 10 skip, (1,2) skip
    assert got.tolist() == [2, 1]
    # experts never counted get no slot, however large the budget
    assert profile_allocation(counts, b, np.ones(2), 10**9).tolist() == [3, 3]


def test_even_rule_and_mib_text_round_trip():
    b = np.array([3_000_000, 5_000_000])
    assert even_slots(b, 8_000_000 * 11 + 5, 64) == 10  # 11 rows, one kept for the zero slot
    assert even_slots(b, 8_000_000 * 1, 64) == 0
    assert even_slots(b, 8_000_000 * 1000, 64) == 64
    for k in (1, 7, 57, 200):
        assert even_slots(b, mib_bytes(mib_text((k + 1.5) * b.sum())), 256) == k
    assert mib_bytes("1.5") == 1572864 and mib_bytes("-3") == 0


def test_layer_costs_follow_the_default_cost_map():
    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    assert np.allclose(layer_costs(m), 1.0)  # Q4_K/Q6_K: no entry, cost 1.0
    c = layer_costs(m, {"q6_K": 2.0})
    # down (Q6_K, 6.5625 bits) is 2x, gate and up (Q4_K, 4.5 bits) 1x: byte-weighted mean
    assert c[0] == pytest.approx((4.5 + 4.5 + 2 * 6.5625) / (4.5 + 4.5 + 6.5625))


def test_tensor_overrides_first_match_env_before_flags():
    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    inv = parse_for_targets(["llama-server", "-ot", r"blk\.(3|4)\.ffn_.*=CUDA0", "--n-cpu-moe", "6"], {})
    host = expert_placement(inv, m.n_layer, m.moe_layers)
    assert host[:6] == [True, True, True, False, False, True] and not any(host[6:])
    # the environment's overrides come first, so they win over the command line's
    inv = parse_for_targets(["llama-server", "-ot", "exps=CPU"], {"LLAMA_ARG_OVERRIDE_TENSOR": r"blk\.0\.=CUDA0"})
    host = expert_placement(inv, m.n_layer, m.moe_layers)
    assert host[0] is False and all(host[1:])
    # a scalar flag on the command line wins over its variable
    inv = parse_for_targets(["llama-server", "-c", "4096"], {"LLAMA_ARG_CTX_SIZE": "8192"})
    assert inv.int_of("ctx_size") == 4096


def test_detects_the_runtime_and_reads_its_slots():
    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    ctx = ReadContext(model=m)
    base = ["llama-server", "-m", "x.gguf", "-ngl", "999", "-c", "4096"]
    inv = parse_for_targets(base + ["-ot", "exps=CPU", "--moe-hot-k", "44"], {})
    t = detect_target(inv)
    assert t.name == "fork"
    c = t.read(inv, ctx)
    assert c.slots == [44] * 48 and c.params == {"interval": 40, "pp_bypass": 0}  # the fork's defaults
    inv = parse_for_targets(base + ["-ot", "exps=CPU", "--moe-expert-cache", "300"], {})
    t = detect_target(inv)
    assert t.name == "upstream-lru"
    c = t.read(inv, ctx)
    assert c.slots == [256] * 48 and c.knobs == {"rows": 301}  # N is not clamped: the extra rows cost VRAM
    inv = parse_for_targets(base + ["--n-cpu-moe", "40"], {})
    c = detect_target(inv).read(inv, ctx)
    assert c.policy == "layer-offload" and c.params == {"n_cpu_moe": 40}
    # the fork's cache stays off when the first MoE layer's experts are in VRAM: mainline runs
    inv = parse_for_targets(base + ["--moe-hot-k", "44"], {})
    assert detect_target(inv).read(inv, ctx).policy == "layer-offload"


@pytest.mark.parametrize("argv,env,needle", [
    (["--tensor-split", "1,1"], {}, "--tensor-split"),
    (["--frobnicate"], {}, "unknown flag --frobnicate"),
    (["-c"], {}, "flag -c needs a value"),
    (["-ot", "exps"], {}, "PATTERN=BUFFER_TYPE"),
    ([], {"LLAMA_MOE_CACHE_INSERTS": "3"}, "unknown variable LLAMA_MOE_CACHE_INSERTS"),
    (["-md", "draft.gguf"], {}, "draft model"),
])
def test_unpriceable_flags_are_one_line_errors(argv, env, needle):
    with pytest.raises(InputError) as ei:
        parse_for_targets(["llama-server", *argv], env)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("extra,env,needle", [
    (["--moe-hot-k", "300"], {}, "exceeds the model's 256 experts"),
    ([], {"LLAMA_MOE_HOT_PROFILE": "even", "LLAMA_MOE_HOT_ADAPT": "1", "LLAMA_MOE_HOT_MIB": "auto"}, "MIB=auto"),
    ([], {"LLAMA_MOE_HOT_PROFILE": "even", "LLAMA_MOE_HOT_ADAPT": "1", "LLAMA_MOE_HOT_MIB": "9000",
          "LLAMA_MOE_HOT_POOL": "1"}, "POOL"),
])
def test_runtime_settings_that_are_not_priced(extra, env, needle):
    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    inv = parse_for_targets(["llama-server", "-ngl", "99", "-c", "4096", "-ot", "exps=CPU", *extra], env)
    with pytest.raises(InputError, match=needle):
        detect_target(inv).read(inv, ReadContext(model=m))


def test_serving_settings_refuse_partial_offload_and_missing_context():
    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    for argv, needle in ((["-c", "4096"], "-ngl is not set"), (["-ngl", "20", "-c", "4096"], "dense layers"),
                         (["-ngl", "99"], "-c"), (["-ngl", "99", "-c", "9", "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "off"],
                                                   "flash attention")):
        with pytest.raises(InputError, match=needle):
            serving_settings(parse_for_targets(["llama-server", *argv], {}), m)
    s = serving_settings(parse_for_targets(["llama-server", "-ngl", "all", "-c", "8192", "-ub", "1024"], {}), m)
    assert s == {"context": 8192, "kv_type": "f16", "ubatch": 1024}


def test_env_files_and_scripts_are_read_like_sh(tmp_path):
    envf = tmp_path / "a.env"
    envf.write_text("# c\nexport LLAMA_ARG_CTX_SIZE=4096\nLLAMA_ARG_OVERRIDE_TENSOR='blk\\.(1|2)\\.ffn_.*=CPU'\n")
    assert read_env_file(envf) == {"LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_ARG_OVERRIDE_TENSOR": r"blk\.(1|2)\.ffn_.*=CPU"}
    sh = tmp_path / "run.sh"
    sh.write_text('#!/bin/sh\ncd "$(dirname "$0")"\nset -a\n. ./a.env\nset +a\nexec LLAMA_ARG_UBATCH=64 llama-server \\\n'
                  "  -m m.gguf -ngl 99\n")
    argv, env, cwd = read_script(sh)
    assert argv == ["llama-server", "-m", "m.gguf", "-ngl", "99"] and cwd == tmp_path.resolve()
    assert env["LLAMA_ARG_UBATCH"] == "64" and env["LLAMA_ARG_CTX_SIZE"] == "4096"
    bad = tmp_path / "bad.sh"
    bad.write_text("llama-server -m x\nrm -rf /tmp/x\n")
    with pytest.raises(InputError, match="line 2"):
        read_script(bad)


# ----------------------------------------------------------------------------------- CLI
def test_check_cli_prices_a_users_command_and_exit_status(tmp_path):
    base = ["--model", "qwen3.5-122b-a10b-q4_k_l", "--hardware", "rtx4090-7950x", "--vram-gb", "24", "--",
            "llama-server", "-m", "x.gguf", "-ngl", "999", "-c", "131072", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0",
            "-ub", "3072", "-b", "3072"]
    r = run_cli("check", "--json", *base, "--n-cpu-moe", "40")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["target"] == "mainline" and d["fits"] and d["headroom_gib"] > 0
    assert d["decode_tok_s"] > 0 and d["vram_breakdown"]["kv_cache"] > 0
    # the example: --moe-expert-cache 96 on every layer does not fit 24 GiB
    r = run_cli("check", *base, "-ot", "exps=CPU", "--moe-expert-cache", "96")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "DOES NOT FIT" in r.stdout
    r = run_cli("check", *base, "--split-mode", "row")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--split-mode" in r.stderr


def test_rerun_into_a_folder_leaves_only_the_current_run_files(tmp_path):
    out = tmp_path / "run"
    common = ["--model", "qwen3.5-122b-a10b-q4_k_l", "--hardware", "rtx4090-7950x", "--vram-gb", "16", "--context",
              "8192", "--out", str(out), "--no-progress", "--trials", "6"]
    r = run_cli("tune", *common, "--target", "fork")
    assert r.returncode == 0, r.stderr
    assert (out / "hotexperts.env").exists()
    assert "run it (fork): sh " in r.stdout and "headroom" in r.stdout
    r = run_cli("tune", *common, "--target", "mainline")
    assert r.returncode == 0, r.stderr
    best = json.loads((out / "best.json").read_text())
    present = {n for n in ALL_RUN_FILES if (out / n).exists()}
    assert present == set(best["run_files"]["files"]) == {"mainline.env", "llama-server.sh"}
    assert best["run"]["target"] == "mainline" and best["run"]["headroom_gib"] >= 0
    r = run_cli("check", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tuned"]["decode_diff_pct"] == pytest.approx(0.0, abs=1e-9)
    html = (out / "report.html").read_text()
    assert "headroom" in html and "llama-server.sh" in html


def test_target_that_cannot_run_the_families_or_modes_is_refused():
    with pytest.raises(InputError, match="runs none of the families"):
        TuneConfig(model="x", hardware="y", vram_gb=8, context=1, target="mainline", policies=("fork",))
    with pytest.raises(InputError, match="runs only mode"):
        TuneConfig(model="x", hardware="y", vram_gb=8, context=1, modes=("fetch-on-miss",))
    TuneConfig(model="x", hardware="y", vram_gb=8, context=1, modes=("fetch-on-miss",), target="lab")


def test_registry_targets_declare_their_files_and_families():
    from hotexperts.studies.tune import FAMILIES

    runnable = {f for t in REGISTRY.values() if t.runnable for f in t.families}
    assert set(FAMILIES) <= runnable | {"all-cpu"}
    for t in REGISTRY.values():
        assert t.name and t.title and t.families and t.file_names


def test_readme_main_job_winner_fits_when_read_back(tmp_path):
    """The README's main job, run as written: its run files, read back, fit 24 GiB and reproduce the prediction."""
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("hotexperts tune --model"))
    args = shlex.split(line)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    r = run_cli(*args, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("check", str(tmp_path / "demo"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] and d["vram_gib"] <= 24.0 and d["budget_gib"] == 24.0
    assert d["tuned"]["decode_diff_pct"] == pytest.approx(0.0, abs=0.5)


def test_the_fork_runs_its_cache_only_for_qwen35moe(tmp_path):
    """ParmesanParty hands the cache to build_moe_ffn from the qwen35moe graph builder only."""
    m = load_model_spec("mixtral-8x7b-q4_k_m")
    r = run_cli("tune", "--model", "mixtral-8x7b-q4_k_m", "--hardware", "rtx4090-7950x", "--vram-gb", "16",
                "--context", "4096", "--target", "fork", "--out", str(tmp_path / "o"), "--trials", "2")
    assert r.returncode == 1 and "qwen35moe" in r.stderr and r.stderr.count("\n") == 1
    inv = parse_for_targets(["llama-server", "-ngl", "99", "-c", "4096", "-ot", "exps=CPU", "--moe-hot-k", "4"], {})
    c = REGISTRY["fork"].read(inv, ReadContext(model=m))
    assert c.policy == "all-cpu"  # the flags do nothing there: every expert stays on the CPU
    # with --target any the study never proposes the fork for that model, nor lists its default as a baseline
    from hotexperts.studies.tune import build_evaluator

    tr = default_trace(m, n_requests=1, prompt_tokens=16, decode_tokens=16)
    ev = build_evaluator(TuneConfig(model="mixtral-8x7b-q4_k_m", hardware="rtx4090-7950x", vram_gb=24, context=4096), tr)
    assert "fork" not in {t.name for t in ev.targets} and "fork-default" not in ev.baselines()


def test_profile_seeded_adaptive_sets_round_trip_and_start_from_the_profile(traces, tmp_path):
    import optuna

    from hotexperts.policies import make_policy
    from hotexperts.sim.replay import replay
    from hotexperts.studies.tune import build_evaluator

    spec, tr, tpath = traces["qwen3.5-122b-a10b-q4_k_l"]
    for fam, extra in (("window", {"window.window": 8, "window.min_sightings": 2, "window.hyst": 1,
                                   "window.cap_mib": 64}),
                       ("decay", {"decay.decay": 0.9, "decay.pass_interval": 2, "decay.admit": 2.0, "decay.ratio": 1.2,
                                  "decay.margin": 0.5, "decay.prompt_weight": 0.03, "decay.cap_mib": 128})):
        cfg = TuneConfig(model="qwen3.5-122b-a10b-q4_k_l", hardware="rtx4090-7950x", vram_gb=16, context=16384,
                         target="turboquant", policies=(fam,), ubatch=64)
        ev = build_evaluator(cfg, tr)
        trial = optuna.trial.FixedTrial({"policy": fam, f"{fam}.seed": "profile", "fill": 0.6, **extra})
        cand = REGISTRY["turboquant"].suggest(trial, ev, fam)
        assert cand.knobs["profile"] == "file" and len(set(cand.slots)) > 1  # the fork's per-layer allocation
        scored = ev.evaluate(cand)
        out = tmp_path / fam
        out.mkdir()
        write_run_files(out, cand, WriteContext(model=spec, context=16384, ubatch=64, evaluator=ev))
        env = read_env_file(out / "turboquant.env")
        assert env["LLAMA_MOE_HOT_PROFILE"] == "hotexperts.moeprof" and env["LLAMA_MOE_HOT_ADAPT"] == "1"
        cr = check(out / "llama-server.sh", model="qwen3.5-122b-a10b-q4_k_l", hardware="rtx4090-7950x", vram_gb=16,
                   trace=str(tpath))
        assert cr.candidate.policy == fam and cr.candidate.slots == cand.slots
        assert cr.result.decode_tok_s == pytest.approx(scored.decode_tok_s, rel=1e-9)
    # independent: an adaptive set that never admits anything is the static set it was seeded with
    counts = ev.static_counts()
    slots = np.asarray(cand.slots)
    st = replay(tr, make_policy("static", counts=counts), slots)
    frozen_w = replay(tr, make_policy("window", init_counts=counts, min_sightings=1, window=4, hyst=10**6), slots)
    frozen_d = replay(tr, make_policy("decay", init_counts=counts, admit=1e9), slots)
    assert frozen_w.hit_rate == st.hit_rate and frozen_d.hit_rate == st.hit_rate
    assert int(np.asarray(frozen_w.uploads).sum()) == 0 and int(np.asarray(frozen_d.uploads).sum()) == 0


def test_every_runnable_target_reads_what_it_claims_and_lab_reads_nothing():
    from hotexperts.errors import InputError as IE

    m = load_model_spec("qwen3.5-122b-a10b-q4_k_l")
    inv = parse_for_targets(["llama-server", "-ngl", "99", "-c", "4096"], {})
    with pytest.raises(IE, match="no command line"):
        REGISTRY["lab"].read(inv, ReadContext(model=m))
    for t in REGISTRY.values():
        if t.runnable:  # a command without any cache knob or override runs every expert in VRAM, for each runtime
            c = t.read(inv, ReadContext(model=m))
            assert c.policy == "layer-offload" and c.params == {"n_cpu_moe": 0}
