"""``hotexperts model``: show a model spec (from a GGUF header, a preset or a spec JSON), list presets.

Forms:
    hotexperts model SPEC [--json] [--header-only]   SPEC = MODEL.gguf | preset name | spec .json
    hotexperts model list [--json]                   built-in presets
    hotexperts model make --like SPEC --layers L --type q8_0|f16 --out M.gguf [--seed S] [--experts E]
                                                     random-weight qwen3moe GGUF of SPEC's expert shapes
    hotexperts model <sub> ...                       further subcommands, see _SUBCOMMANDS

NOTE: argparse cannot mix a free positional with sub-parsers, so ``model`` takes its first word
and the remaining arguments verbatim; a first word in ``_SUBCOMMANDS`` is a subcommand with its own
parser (prog ``hotexperts model <sub>``), anything else is a SPEC. To add a subcommand, add an entry
``name: (build_parser, run)`` to ``_SUBCOMMANDS`` (e.g. ``make``). A file literally named like a
subcommand can be given as ``./list``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["register", "format_spec", "spec_json"]

GIB = 1024**3


def _build_spec_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Show a model spec.")
    p.add_argument("spec", metavar="SPEC", help="MODEL.gguf, a preset name (see `hotexperts model list`) or a spec .json")
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.add_argument(
        "--header-only",
        action="store_true",
        help="accept a GGUF file that holds only the header (e.g. a partial download)",
    )
    return p


def _run_spec(args: argparse.Namespace) -> int:
    from hotexperts.modelspec import load_model_spec

    spec = load_model_spec(args.spec, allow_partial=args.header_only)
    if args.json:
        print(json.dumps(spec_json(spec), indent=2))
    else:
        print(format_spec(spec))
    return 0


def _build_list_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="List the built-in model presets.")
    p.add_argument("--json", action="store_true", help="print the presets' specs as JSON")
    return p


def _run_list(args: argparse.Namespace) -> int:
    from hotexperts.presets import get_preset, preset_names

    specs = [get_preset(n) for n in preset_names()]
    if args.json:
        print(json.dumps({s.name: spec_json(s) for s in specs}, indent=2))
        return 0
    rows = [("preset", "arch", "layers", "experts", "expert MiB", "experts GiB", "dense GiB")]
    for s in specs:
        rows.append((
            s.name,
            s.arch,
            f"{s.n_moe_layers}/{s.n_layer}",
            f"{s.n_expert_used}/{s.n_expert}",
            f"{s.mean_expert_bytes / 2**20:.2f}",
            f"{s.total_expert_bytes / GIB:.1f}",
            f"{s.dense_bytes / GIB:.2f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


def _build_make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Write a random-weight qwen3moe GGUF with the expert shapes of a model (hidden size, expert "
            "ff, expert count, top-k, attention heads) and fewer layers, for measuring llama.cpp "
            "(hotexperts bench llamacpp). Shared experts, linear attention and the vocabulary are not copied."
        ),
    )
    p.add_argument("--like", required=True, metavar="SPEC", help="preset name, spec .json or MODEL.gguf to copy")
    p.add_argument("--layers", required=True, type=int, metavar="L", help="number of (MoE) layers")
    p.add_argument("--type", default="q8_0", metavar="q8_0|f16", help="type of every 2-D weight (default q8_0)")
    p.add_argument("--out", required=True, metavar="M.gguf", help="output GGUF (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--experts", type=int, default=None, metavar="E", help="routed experts per layer (default: SPEC's)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _run_make(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hotexperts.errors import InputError
    from hotexperts.ggufmake import make_like_gguf

    out = Path(args.out)
    if out.is_dir():
        raise InputError(out, "is a directory; --out needs a file name")
    info = make_like_gguf(
        out,
        like=args.like,
        n_layer=args.layers,
        ggml_type=args.type,
        seed=args.seed,
        n_expert=args.experts,
        progress=not args.no_progress,
    )
    info["path"] = str(out)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(
            f"wrote {out}: {info['bytes'] / GIB:.2f} GiB, qwen3moe like {info['like']}, {info['n_layer']} layers, "
            f"{info['n_expert_used']}/{info['n_expert']} experts of {info['expert_bytes']:,} B ({info['type']})"
        )
    return 0


# name -> (build parser given prog, run)
_SUBCOMMANDS: dict[str, tuple[Callable[[str], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "list": (_build_list_parser, _run_list),
    "make": (_build_make_parser, _run_make),
}


def _dispatch(args: argparse.Namespace) -> int:
    words = [args.target, *args.rest]
    if args.json and "--json" not in words:
        words.append("--json")
    if args.target in _SUBCOMMANDS:
        build, run = _SUBCOMMANDS[args.target]
        sub = build(f"hotexperts model {args.target}").parse_args(words[1:])
        return run(sub)
    return _run_spec(_build_spec_parser("hotexperts model").parse_args(words))


def register(sub: Any) -> None:
    """Add ``hotexperts model`` to the top-level subparsers."""
    p = sub.add_parser(
        "model",
        help="show a model spec from a GGUF header or preset; `model list` lists presets",
        description=(
            "hotexperts model SPEC [--json] shows the spec of MODEL.gguf (header only), a preset or a spec "
            f"JSON; subcommands: {', '.join(_SUBCOMMANDS)} (hotexperts model list --help)."
        ),
    )
    p.add_argument("target", metavar="SPEC|" + "|".join(_SUBCOMMANDS), help="a GGUF path, preset, spec JSON or subcommand")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_dispatch)


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def spec_json(spec: Any) -> dict[str, Any]:
    """The spec as a JSON-ready dict, with a few derived totals under ``derived``."""
    d = spec.to_dict()
    d["derived"] = {
        "n_moe_layers": spec.n_moe_layers,
        "total_expert_bytes": spec.total_expert_bytes,
        "mean_expert_bytes": spec.mean_expert_bytes,
        "kv_bytes_per_token": {t: spec.kv_bytes_per_token(t) for t in ("f16", "q8_0")},
    }
    return d


def _ranges(xs: list[int]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def format_spec(spec: Any) -> str:
    """A readable multi-line summary of a :class:`~hotexperts.modelspec.ModelSpec`."""
    lines = [
        f"model        {spec.name}",
        f"source       {spec.source}",
        f"arch         {spec.arch}, {spec.n_layer} layers, hidden {spec.hidden_size}, vocab {spec.vocab_size:,}",
        f"MoE layers   {spec.n_moe_layers}: {_ranges(list(spec.moe_layers))}",
        f"experts      {spec.n_expert} routed, top-{spec.n_expert_used}, ff {spec.expert_ff}"
        + (f"; {spec.n_shared_expert} shared of ff {spec.shared_ff}" if spec.n_shared_expert else ""),
    ]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, layer in enumerate(spec.moe_layers):
        t = spec.expert_types[i] if spec.expert_types else {}
        groups.setdefault((spec.expert_bytes[i], "/".join(f"{k}={v}" for k, v in t.items())), []).append(layer)
    lines.append("one expert   " + ("" if len(groups) == 1 else "by layer:"))
    for (b, t), layers in sorted(groups.items()):
        lines.append(f"  {b:>14,} B  {t or '?'}  layers {_ranges(layers)}")
    lines += [
        f"all experts  {spec.total_expert_bytes / GIB:.2f} GiB ({spec.total_expert_bytes:,} B)",
        f"dense        {spec.dense_bytes / GIB:.2f} GiB ({spec.dense_bytes:,} B; token embedding {spec.embd_bytes:,} B)",
        f"KV cache     {spec.n_kv_layers} layers x {spec.n_head_kv} KV heads x head dim {spec.head_dim}"
        + (f"/{spec.head_dim_v}" if spec.head_dim_v else "")
        + f": {spec.kv_bytes_per_token('f16'):,.0f} B/token f16, {spec.kv_bytes_per_token('q8_0'):,.0f} B/token q8_0",
    ]
    if spec.state_bytes:
        lines.append(f"state        {spec.state_bytes:,} B recurrent state ({spec.state_bytes / 1e9:.3f} GB)")
    est = spec.extra.get("estimates") if isinstance(spec.extra, dict) else None
    if est:
        lines.append(f"estimates    {', '.join(est)}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from hotexperts.cli import main

    sys.exit(main(["model", *sys.argv[1:]]))
