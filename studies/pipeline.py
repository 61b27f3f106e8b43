"""``tune()``: the whole job behind ``hotexperts tune``: trace, study, outputs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError
from hotexperts.modelspec import load_model_spec
from hotexperts.studies.report import finalize
from hotexperts.studies.tune import (
    FAMILIES,
    MODES,
    TuneConfig,
    build_evaluator,
    default_trace,
    file_sha256,
    run_study,
    split_by_request,
)
from hotexperts.tracer.inputs import open_trace

__all__ = ["tune"]

#: a temporary file of an atomic write this old was left by a killed run
_STALE_TMP_SECONDS = 600.0


def _remove_stale_temporaries(out: Path) -> None:
    """Remove the hidden ``.NAME.<random>.tmp`` files of atomic writes that a killed run left, once they are
    older than ten minutes (a live run's temporary file is younger)."""
    now = time.time()
    for p in out.glob(".*.tmp"):
        try:
            if p.is_file() and now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                p.unlink()
        except OSError:
            pass


def tune(
    *,
    model: str,
    hardware: str,
    vram_gb: float,
    context: int,
    out: Path | str,
    trace: str | None = None,
    kv_type: str = "q8_0",
    trials: int = 200,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 0,
    policies: tuple[str, ...] = FAMILIES,
    modes: tuple[str, ...] = MODES,
    prefill_weight: float = 0.0,
    multi_objective: bool = False,
    remap: bool = False,
    ubatch: int = 512,
    progress: bool = False,
    target: str = "any",
    holdout: float = 0.0,
    eval_trace: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) a tuning study and write every output into ``out``; returns ``best.json``."""
    t0 = time.perf_counter()
    if jobs < 1:
        raise InputError(None, f"--jobs must be >= 1, got {jobs}")
    if not str(out).strip():
        raise InputError(None, "--out is empty: name a folder for the study's outputs")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out must be a folder")
    spec = load_model_spec(model)
    if trace is None:
        tr = default_trace(spec, seed=seed, ubatch=ubatch)
        sha = ""
    else:
        tr = open_trace(trace)
        sha = file_sha256(trace) if Path(trace).is_file() else ""
    tr_eval = None
    if eval_trace is not None:
        tr_eval = open_trace(eval_trace)
    elif holdout > 0:
        tr, tr_eval = split_by_request(tr, holdout, seed)
    cfg = TuneConfig(
        model=model, hardware=hardware, vram_gb=vram_gb, context=context, kv_type=kv_type, trials=trials, seed=seed,
        policies=tuple(policies), modes=tuple(modes), prefill_weight=prefill_weight, multi_objective=multi_objective,
        remap=remap, ubatch=ubatch, target=target, trace=None if trace is None else str(trace), trace_sha=sha,
        holdout=holdout, eval_trace=None if eval_trace is None else str(eval_trace),
    )
    # NOTE: validate everything (model, hardware, trace vs model, budget) before writing into --out
    ev = build_evaluator(cfg, tr)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hotexperts-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(out, f"cannot write the study folder: {exc.strerror or exc}") from None
    _remove_stale_temporaries(out)
    trace_copy = out / "trace.hxt"
    # NOTE: the study folder keeps the exact trace it was tuned on, so `hotexperts report` and extra
    # workers (--jobs) replay the same routing.
    # NOTE: a folder reused for another trace (or the synthetic default after a user trace) must not keep
    # the earlier trace.hxt: `report` would rebuild from it
    if trace is None or tr_eval is not None or not trace_copy.exists() or file_sha256(trace_copy) != sha:
        tr.save(trace_copy)
    if tr_eval is not None:
        # NOTE: the held-out requests, never seen by the study; `report` evaluates on them again
        build_evaluator(cfg, tr_eval)  # the held-out trace must fit the model too
        tr_eval.save(out / "eval.hxt")
    elif (out / "eval.hxt").exists():
        (out / "eval.hxt").unlink()
    st, ev, url, name = run_study(cfg, tr, out, study_name=study, storage=storage, jobs=jobs, progress=progress,
                                evaluator=ev)
    local = f"sqlite:///{(out / 'study.db').resolve()}"
    recorded = "sqlite:///study.db" if url == local else url
    write_text_atomic(out / "tune.json", json.dumps({"config": cfg.to_json(), "storage": recorded, "study_name": name},
                                                     indent=2) + "\n")
    return finalize(st, ev, cfg, out, storage=url, study_name=name, seconds=time.perf_counter() - t0,
                    eval_trace=tr_eval)
