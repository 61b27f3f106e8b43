"""``hotexperts bench llamacpp`` and ``hotexperts measure``: measure llama.cpp itself.

Argument parsing only; the work is in :mod:`hotexperts.llamabench` (in-process llama.cpp through
llama-cpp-python) and :mod:`hotexperts.measure` (any running llama.cpp-compatible HTTP server).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def _run_bench(args: argparse.Namespace) -> int:
    from hotexperts.llamabench import bench_llamacpp

    r = bench_llamacpp(
        args.model,
        placement=args.placement,
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        threads=args.threads,
        reps=args.reps,
        n_ubatch=args.ubatch,
        capture_path=args.capture,
        out_path=args.out,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return 0

    def fmt(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{s['median']:.2f} tok/s (min {s['min']:.2f}, max {s['max']:.2f})"

    print(
        f"{r['placement']}: prefill {fmt(r['prefill_tok_s'])}, decode {fmt(r['decode_tok_s'])}; "
        f"{r['reps']} reps, {r['threads']} threads, {len(r['overridden_tensors'])} tensors overridden",
        file=sys.stderr,
    )
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_measure(args: argparse.Namespace) -> int:
    from hotexperts.measure import format_measurement, measure_from_args

    r = measure_from_args(args)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_measurement(r))
    return 0


def register(sub: Any) -> None:
    """Add ``bench`` (with ``bench llamacpp``) and ``measure`` to the top-level subparsers."""
    b = sub.add_parser("bench", help="benchmark llama.cpp itself (bench llamacpp)")
    bsub = b.add_subparsers(dest="bench_command", metavar="BENCH")
    p = bsub.add_parser(
        "llamacpp",
        help="time prefill and decode of a GGUF model in llama.cpp (llama-cpp-python) under a placement",
        description=(
            "Load MODEL.gguf through llama-cpp-python with the experts placed like llama.cpp's -ngl / "
            "--n-cpu-moe / -ot, and time prefill and decode over several repetitions."
        ),
        epilog=(
            "Environment: HOTEXPERTS_NO_EXTRA_BUFTS=1 turns off llama.cpp's extra CPU buffer types (AMX, "
            "repacked weights) where they crash with SIGILL; 0 or unset leaves them on. Result keys and the "
            "H200 validation: docs/llamacpp.md."
        ),
    )
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument(
        "--placement",
        default="all-cpu",
        help='all-cpu | gpu | n-cpu-moe=N | "-ot REGEX=BUFT[,REGEX=BUFT...]" (default all-cpu)',
    )
    p.add_argument("--prompt-tokens", type=int, default=512, metavar="P", help="prompt tokens per repetition (512)")
    p.add_argument("--gen-tokens", type=int, default=128, metavar="G", help="generated tokens per repetition (128)")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="CPU threads (llama.cpp default)")
    p.add_argument("--reps", type=int, default=3, metavar="R", help="timed repetitions (3)")
    p.add_argument("--ubatch", type=int, default=512, help="prompt tokens per llama_decode call (512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pseudo-random tokens (0)")
    p.add_argument("--capture", default=None, metavar="T.hxt", help="also write the routing of these tokens")
    p.add_argument("--out", default=None, metavar="R.json", help="write the result JSON (atomically)")
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.set_defaults(func=_run_bench)
    b.set_defaults(func=lambda a: (b.print_help(), 2)[1])

    m = sub.add_parser(
        "measure",
        help="measure prefill/decode tok/s of a running llama.cpp-compatible HTTP server",
        description=(
            "Send bounded completion requests to a running llama-server (or any server with /completion "
            "or /v1/completions) and report prefill and decode tok/s, from the server's timings when it "
            "returns them, else from wall time and token usage. --compare prints them next to a tune "
            "output's predictions."
        ),
    )
    m.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8080")
    m.add_argument("--prompts", default=None, metavar="F", help="prompt file (one per line, or JSONL with 'prompt')")
    m.add_argument("--n-predict", type=int, default=128, metavar="N", help="tokens to generate per request (128)")
    m.add_argument("--reps", type=int, default=3, metavar="R", help="repetitions over the prompts (3)")
    m.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds per request (300)")
    m.add_argument("--compare", default=None, metavar="DIR/best.json", help="tune output to compare with")
    m.add_argument("--out", default=None, metavar="R.json", help="write the result JSON (atomically)")
    m.add_argument("--json", action="store_true", help="print the result JSON")
    m.set_defaults(func=_run_measure)
