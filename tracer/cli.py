"""``hotexperts trace ...`` subcommands: capture, import, export, info, split, synth."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("trace", help="capture, import, export and inspect routing traces")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

    c = tsub.add_parser(
        "capture",
        help="record real expert routing from a GGUF model run through llama-cpp-python",
        description=(
            "Run MODEL through llama-cpp-python and record the experts every MoE layer selects, for "
            "every prompt ubatch and every decode step (cb_eval on the ffn_moe_topk-<il> tensors)."
        ),
    )
    c.add_argument("model", metavar="MODEL.gguf", help="GGUF model file")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (one request)")
    src.add_argument(
        "--prompt-file",
        metavar="F",
        help="prompts, one request each: one prompt per line, or JSONL objects with a 'prompt' key",
    )
    c.add_argument("--n-predict", type=int, default=128, metavar="N", help="tokens to generate per prompt (default 128)")
    c.add_argument("--out", required=True, metavar="T", help="output trace (.hxt)")
    c.add_argument("--ctx", type=int, default=4096, metavar="N", help="context size (default 4096)")
    c.add_argument("--batch", type=int, default=512, metavar="N", help="logical batch size (default 512)")
    c.add_argument("--ubatch", type=int, default=512, metavar="N", help="physical ubatch size (default 512)")
    c.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: llama.cpp's)")
    c.add_argument("--gpu-layers", type=int, default=0, metavar="N", help="layers to offload to the GPU (default 0)")
    c.add_argument("--seed", type=int, default=None, help="sample with this seed (default: greedy decoding)")
    c.add_argument("--temp", type=float, default=0.8, help="sampling temperature when --seed is given (default 0.8)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_capture)

    i = tsub.add_parser(
        "import",
        help="convert a trace or profile written by another tool",
        description="Import a routing trace written by another tool into the hotexperts trace format.",
    )
    i.add_argument(
        "src",
        metavar="SRC",
        help="input file; for per-request formats also a directory, a tar archive, or a folder inside an archive "
        "written as a path below it (requests.tar.xz/anatomy)",
    )
    i.add_argument("--out", required=True, metavar="T", help="output trace (.hxt)")
    i.add_argument(
        "--format",
        default="auto",
        choices=["auto", "csv", "vllm-jsonl", "moet", "chaos-json", "moe-beyond-csv", "fork-log"],
        help="input format (default: detected from the content)",
    )
    i.add_argument("--keep-warmup", action="store_true", help="CSV: keep llama.cpp's 2-token warm-up ubatch")
    i.add_argument("--n-expert", type=int, default=None, help="expert count, where the file does not say it")
    i.add_argument("--model", default=None, metavar="SPEC", help="model preset or GGUF to record in the metadata")
    i.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        metavar="N",
        help="moe-beyond CSV (teacher-forced prompts): keep the first N tokens of each prompt as its prefill and "
        "make every later token a decode step (default: all tokens are one prefill ubatch)",
    )
    i.set_defaults(func=_import)

    e = tsub.add_parser("export", help="write a trace as CSV (formats.md section 1) or a .moeprof v1 profile")
    e.add_argument("trace", metavar="T", help="trace (.hxt, or any importable source, detected by content)")
    e.add_argument("--format", required=True, choices=["csv", "moeprof"], help="output format")
    e.add_argument("--out", required=True, metavar="F", help="output file")
    e.add_argument("--n-expert", type=int, default=None, help="expert count, for a source that does not say it")
    e.set_defaults(func=_export)

    n = tsub.add_parser("info", help="summary and per-layer routing statistics of a trace")
    n.add_argument("trace", metavar="T", help="trace (.hxt, or any importable source, detected by content)")
    n.add_argument("--n-expert", type=int, default=None, help="expert count, for a source that does not say it")
    n.add_argument("--json", action="store_true", help="print JSON")
    n.add_argument("--verify", action="store_true", help="check the CRC-32 of every array (the default unless HOTEXPERTS_NO_VERIFY=1)")
    n.set_defaults(func=_info)

    from hotexperts.tracer.split import add_split_parser

    add_split_parser(tsub)

    from hotexperts.tracer.synth_cli import add_synth_parser

    add_synth_parser(tsub)


def _capture(args: argparse.Namespace) -> int:
    from hotexperts.tracer.capture import capture_from_args

    return capture_from_args(args)


def _import(args: argparse.Namespace) -> int:
    from hotexperts.tracer.importers import import_from_args

    return import_from_args(args)


def _export(args: argparse.Namespace) -> int:
    from hotexperts.tracer.export import export_from_args

    return export_from_args(args)


def _info(args: argparse.Namespace) -> int:
    from hotexperts.tracer.importers import load_any
    from hotexperts.tracer.stats import format_stats, trace_stats
    from hotexperts.tracer.trace import Trace

    if args.verify:
        tr = Trace.load(args.trace, verify=True)
    else:
        tr = load_any(args.trace, n_expert=args.n_expert)
    stats = trace_stats(tr)
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_stats(stats))
    return 0
