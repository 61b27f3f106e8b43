"""``hotexperts tune`` and ``hotexperts report`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    from hotexperts.studies.tune import FAMILIES, MODES

    t = sub.add_parser(
        "tune",
        help="find the best caching policy and settings for a VRAM budget (optuna study)",
        description=(
            "Search policy family, slots per layer and parameters with optuna, on TRACE or (without one) a "
            "synthetic trace for the model, under a VRAM budget; write best.json, run files for llama.cpp "
            "and its forks, plots and report.html into --out."
        ),
    )
    t.add_argument("trace", nargs="?", metavar="TRACE", help="routing trace (.hxt); default: synthetic for the model")
    t.add_argument("--model", required=True, metavar="SPEC", help="model preset name or GGUF path")
    t.add_argument("--hardware", required=True, metavar="HW", help="hardware preset name or profile JSON")
    t.add_argument("--vram-gb", required=True, type=float, metavar="G", help="GPU memory budget in GiB")
    t.add_argument("--context", required=True, type=int, metavar="N", help="KV cache size in tokens")
    t.add_argument("--kv-type", default="q8_0", help="KV cache type (default q8_0)")
    t.add_argument("--trials", type=int, default=200, metavar="N", help="finished trials to reach (default 200)")
    t.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (default 1)")
    t.add_argument("--storage", default=None, metavar="URL",
                   help="optuna RDB URL shared by many workers, e.g. postgresql://user@host/db (default: SQLite in --out)")
    t.add_argument("--study", default=None, metavar="NAME", help="study name (default: a hash of the settings)")
    t.add_argument("--seed", type=int, default=0, help="sampler and synthetic-trace seed (default 0)")
    t.add_argument("--policies", default=",".join(FAMILIES),
                   help=f"policy families to search (default {','.join(FAMILIES)})")
    t.add_argument("--modes", default=",".join(MODES),
                   help=f"execution modes to search (default {','.join(MODES)}; real runtimes run cold-cpu only)")
    t.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="hold out a share F of the trace's requests (chosen with --seed): tune on the rest, "
                        "report the winner's and the baselines' tok/s on them")
    t.add_argument("--eval", default=None, metavar="TRACE", dest="eval_trace",
                   help="a second trace to report the winner's and the baselines' tok/s on (held out)")
    t.add_argument("--target", default="any", metavar="T",
                   help="runtime the recommendation is written for: fork, turboquant, upstream-lru, mainline, any "
                        "(every one of those; default) or lab (anything the simulator scores, no run files)")
    t.add_argument("--prefill-weight", type=float, default=0.0, metavar="W",
                   help="objective = throughput of a workload with a share W of prompt tokens (default 0: decode)")
    t.add_argument("--multi-objective", action="store_true", help="maximise tok/s and minimise VRAM (Pareto front)")
    t.add_argument("--remap", action="store_true", help="map the trace's MoE layers onto the model's")
    t.add_argument("--ubatch", type=int, default=512, help="ubatch size for the compute buffer (default 512)")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_tune)

    r = sub.add_parser("report", help="rebuild best.json, plots and report.html from a stored tuning study")
    r.add_argument("dir", metavar="DIR", help="folder written by `hotexperts tune`")
    r.add_argument("--storage", default=None, metavar="URL", help="study storage if not the one recorded")
    r.set_defaults(func=_report)
    _register_check(sub)


def _register_check(sub: Any) -> None:
    c = sub.add_parser(
        "check",
        help="read a llama-server command and environment as the runtime does; predict tok/s and VRAM",
        description=(
            "Reconstruct the configuration a llama-server command runs (llama.cpp, the ParmesanParty fork, the "
            "turboquant fork or the upstream LRU pull request: env files, flags, the profile it loads), then "
            "predict decode/prefill tok/s, hit rate and its VRAM with the headroom left. PATH is a run script "
            "(e.g. llama-server.sh) or a folder written by `hotexperts tune` (model, machine, budget and trace are "
            "then read from it and the prediction is compared with the tuned one); or give the command after --. "
            "Exit status 3 when it does not fit the VRAM budget."
        ),
    )
    c.add_argument("words", nargs="*", metavar="PATH | -- llama-server ARGS",
                   help="a run script or tune folder, or (after --) the command line to check")
    c.add_argument("--env", action="append", default=[], metavar="FILE",
                   help="env file (KEY=VALUE lines) set before the command; repeatable")
    c.add_argument("--model", default=None, metavar="SPEC", help="model preset or GGUF path (default: the -m file)")
    c.add_argument("--hardware", default=None, metavar="HW", help="hardware preset or profile JSON")
    c.add_argument("--vram-gb", type=float, default=None, metavar="G", help="VRAM budget in GiB (default: the card)")
    c.add_argument("--trace", default=None, metavar="TRACE", help="routing trace (default: synthetic for the model)")
    c.add_argument("--target", default=None, metavar="T", help="runtime that runs the command (default: detected)")
    c.add_argument("--remap", action="store_true", default=None, help="map the trace's MoE layers onto the model's")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    import json
    import os

    from hotexperts.errors import InputError
    from hotexperts.studies.check import check, format_text

    words = list(args.words)
    if not words:
        raise InputError(None, "nothing to check: give a run script, a tune folder or -- llama-server ARGS")
    path, argv = None, None
    if os.path.basename(words[0]).startswith("llama-") or len(words) > 1:
        argv = words
    else:
        path = words[0]
    cr = check(path, argv=argv, env_files=args.env, model=args.model, hardware=args.hardware,
               vram_gb=args.vram_gb, trace=args.trace, target=args.target, remap=args.remap)
    if args.json:
        print(json.dumps(cr.to_json(), indent=2, default=str))
    else:
        print(format_text(cr))
    return 0 if cr.vram["fits"] else 3


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _tune(args: argparse.Namespace) -> int:

    from hotexperts.studies.pipeline import tune

    best = tune(
        trace=args.trace, model=args.model, hardware=args.hardware, vram_gb=args.vram_gb, context=args.context,
        kv_type=args.kv_type, trials=args.trials, jobs=args.jobs, storage=args.storage, study=args.study,
        seed=args.seed, policies=_split(args.policies), modes=_split(args.modes), prefill_weight=args.prefill_weight,
        multi_objective=args.multi_objective, remap=args.remap, ubatch=args.ubatch, out=args.out, target=args.target,
        holdout=args.holdout, eval_trace=args.eval_trace,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    b = best["best"]
    print(f"best: {b['label']} ({b['mode']}): {b['decode_tok_s']:.2f} tok/s decode, "
          f"{(b['prefill_tok_s'] or 0):.1f} tok/s prefill, hit rate {100 * b['hit_rate']:.1f} %, "
          f"VRAM {b['vram_gib']:.2f} GiB")
    for name, r in best["baselines"].items():
        print(f"  vs {name:<15} {r['label']:<28} {r['decode_tok_s']:.2f} tok/s ({r['speedup_pct_of_best']:+.1f} %)")
    bb = best["belady_bound"]
    print(f"  belady bound at the same VRAM: hit rate {100 * bb['hit_rate']:.1f} %, {bb['decode_tok_s']:.2f} tok/s")
    held = best.get("heldout")
    if held:
        r = held["rows"]["recommended"]
        pr = r["per_request"]
        print(f"held out ({held['requests']} requests never seen by the study): {r['heldout_decode_tok_s']:.2f} tok/s "
              f"decode (training {r['train_decode_tok_s']:.2f}, {r['gap_pct']:+.1f} %), per request "
              f"{pr.get('p10', 0):.2f}..{pr.get('p90', 0):.2f} (p10..p90)")
        for name, b in held["rows"].items():
            if name != "recommended":
                print(f"  vs {name:<15} {b['heldout_decode_tok_s']:.2f} tok/s held out")
    run = best.get("run", {})
    if run.get("command"):
        print(f"run it ({run['target']}): sh {run['script']}")
        print(f"  {run['command']}")
        print(f"  VRAM {run['vram_gib']:.2f} of {run['budget_gib']:.2f} GiB ({run['headroom_gib']:.2f} GiB headroom)")
    else:
        print("no run files: " + " ".join(best.get("run_files", {}).get("notes", [])))
    print(f"wrote {args.out}/best.json, report.html, run files and plots")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hotexperts.studies.report import rebuild_report

    rebuild_report(Path(args.dir), storage=args.storage)
    print(f"rebuilt {args.dir}/best.json and report.html")
    return 0
