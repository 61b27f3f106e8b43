"""``hotexperts trace synth``: sample a synthetic routing trace fitted to a real trace or a model shape.

Argument parsing only; the work is in :mod:`hotexperts.tracer.synth`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

__all__ = ["add_synth_parser", "synth_from_args"]


def add_synth_parser(tsub: Any) -> None:
    """Add the ``synth`` action to the ``hotexperts trace`` sub-parsers."""
    s = tsub.add_parser(
        "synth",
        help="sample a synthetic routing trace (fitted to a real trace, or built-in parameters for a model)",
        description=(
            "Sample a synthetic routing trace of any length. --like fits the generator to a real trace "
            "(.hxt or any importable format); --model uses built-in fitted parameters for the model's "
            "shape (scaled from the nearest fitted family when none was fitted for that shape). "
            "See docs/synthetic-traces.md."
        ),
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--like", metavar="TRACE", help="fit the generator to this trace")
    src.add_argument("--model", metavar="SPEC", help="model preset, GGUF or JSON spec: use built-in parameters")
    src.add_argument("--params", metavar="JSON", help="parameters saved with --save-params")
    s.add_argument("--tokens", type=int, required=True, metavar="N", help="total tokens (prompt + decode)")
    s.add_argument("--out", required=True, metavar="T", help="output trace (.hxt)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same trace")
    s.add_argument("--requests", type=int, default=1, metavar="R", help="requests (default 1)")
    s.add_argument("--prompt-tokens", type=int, default=0, metavar="P", help="prompt tokens per request (default 0)")
    s.add_argument("--ubatch", type=int, default=512, metavar="U", help="prompt ubatch size (default 512)")
    s.add_argument("--save-params", metavar="JSON", help="also write the fitted parameters as JSON")
    s.set_defaults(func=synth_from_args)


def synth_from_args(args: argparse.Namespace) -> int:
    from hotexperts._atomic import check_output
    from hotexperts.errors import InputError
    from hotexperts.tracer.synth import SynthParams, fit_synth, params_for_model, sample_synth

    check_output(args.out)
    if args.save_params is not None:
        check_output(args.save_params)
    meta: dict[str, Any] = {}
    moe_layers = None
    if args.like:
        from hotexperts.tracer.importers import load_any

        src = load_any(args.like)  # a .hxt, or any importable source (detected by content)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            params = fit_synth(src, path=args.like, source=str(args.like))
        for w in caught:
            print(f"hotexperts: warning: {w.message}", file=sys.stderr)
        moe_layers = src.moe_layers
        if "model" in src.meta:
            meta["model"] = src.meta["model"]
    elif args.model:
        from hotexperts.modelspec import load_model_spec

        spec = load_model_spec(args.model)
        params = params_for_model(spec)
        for n in params.notes:
            if "scaled" in n:
                print(f"hotexperts: note: {n}", file=sys.stderr)
        moe_layers = spec.moe_layers
        meta["model"] = spec.to_dict()
    else:
        params = SynthParams.load(args.params)
    if args.save_params is not None:
        params.save(args.save_params)
    if args.tokens < 1:
        raise InputError(None, f"--tokens must be positive, got {args.tokens}")
    tr = sample_synth(
        params,
        n_tokens=args.tokens,
        n_requests=args.requests,
        prompt_tokens=args.prompt_tokens,
        ubatch=args.ubatch,
        seed=args.seed,
        moe_layers=moe_layers,
        meta=meta,
    )
    tr.save(args.out)
    print(
        f"wrote {args.out}: {tr.n_tokens} tokens ({tr.n_prefill_tokens} prefill, {tr.n_decode_tokens} decode), "
        f"{tr.n_requests} request(s), {tr.n_layers} layers, {tr.n_expert} experts, top-{tr.top_k}, seed {args.seed}"
    )
    return 0
