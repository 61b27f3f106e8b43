"""``hotexperts trace import``: convert routing traces written by other tools into the ``.hxt`` format.

The readers live in :mod:`hotexperts.tracer.readers` (one module per format, documented in
``docs/trace-format.md``); this module adds the model spec and writes the result atomically.
Recoverable oddities (gaps, a truncated MOET tail, a guessed expert count) are
:class:`~hotexperts.tracer.readers.TraceImportWarning` warnings, which the CLI prints as
``hotexperts: warning: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError
from hotexperts.tracer.readers import TraceImportWarning, detect_format, read_trace
from hotexperts.tracer.trace import Trace

__all__ = ["import_trace", "import_from_args", "load_any"]


def _model_spec(model: Any) -> Any:
    if model is None or not isinstance(model, (str, os.PathLike)):
        return model
    try:
        from hotexperts.modelspec import load_model_spec  # type: ignore[attr-defined]
    except ImportError:
        raise InputError(None, "model specs cannot be loaded in this build (hotexperts.modelspec.load_model_spec)") from None
    return load_model_spec(model)


def import_trace(
    src: str | os.PathLike[str],
    *,
    format: str = "auto",
    keep_warmup: bool = False,
    n_expert: int | None = None,
    model: Any = None,
    prompt_tokens: int | None = None,
) -> Trace:
    """Read ``src`` (``format``: ``auto``, ``csv``, ``vllm-jsonl``, ``moet``, ``chaos-json`` or
    ``moe-beyond-csv``) into a :class:`Trace`. ``src`` may be a directory or a tar archive of per-request
    files, or a folder inside an archive written as a path below it (``requests.tar.xz/anatomy``).

    ``model`` (a preset name, a GGUF path, a ``ModelSpec`` or its dict) supplies ``n_expert`` when the
    file does not say it, is checked against the trace (expert count, MoE layer ids, top-k) and is
    stored in ``meta["model"]``.
    """
    spec = _model_spec(model)
    spec_d: dict[str, Any] | None = None
    if spec is not None:
        spec_d = spec if isinstance(spec, dict) else spec.to_dict()
        if n_expert is None:
            n_expert = int(spec_d["n_expert"])
        elif n_expert != int(spec_d["n_expert"]):
            raise InputError(src, f"--n-expert {n_expert} differs from the model's n_expert={spec_d['n_expert']}")
    tr = read_trace(src, format=format, keep_warmup=keep_warmup, n_expert=n_expert, prompt_tokens=prompt_tokens)
    if spec_d is not None:
        layers = set(int(x) for x in spec_d.get("moe_layers", tr.moe_layers))
        extra = sorted(set(tr.moe_layers) - layers)
        if extra:
            raise InputError(src, f"trace layers {extra} are not MoE layers of the model {spec_d.get('name', '')}")
        used = spec_d.get("n_expert_used")
        if used is not None and int(used) != tr.top_k:
            raise InputError(src, f"the trace routes {tr.top_k} experts per token, the model {used}")
        tr.meta["model"] = spec_d
        tr.meta.pop("n_expert_inferred", None)
    return tr


def load_any(path: str | os.PathLike[str], *, n_expert: int | None = None, model: Any = None) -> Trace:
    """:func:`hotexperts.tracer.inputs.open_trace` for the commands: import warnings are printed as
    ``hotexperts: warning:`` lines."""
    from hotexperts.tracer.inputs import open_trace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceImportWarning)
        tr = open_trace(path, n_expert=n_expert, model=model)
    _emit(caught)
    return tr


def _subjects_note(tr: Trace) -> str:
    subjects = tr.meta.get("subjects")
    return f" in {len(subjects)} subject(s)" if isinstance(subjects, list) and subjects else ""


def _emit(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if issubclass(w.category, TraceImportWarning):
            print(f"hotexperts: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def import_from_args(args: argparse.Namespace) -> int:
    """The ``trace import`` command: write a ``.hxt`` trace, or for ``fork-log`` a JSON run summary."""
    from hotexperts._atomic import check_output

    check_output(args.out)
    fmt = args.format
    if fmt == "auto":
        fmt = detect_format(args.src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceImportWarning)
        if fmt == "fork-log":
            from hotexperts.tracer.readers.forklog import read_fork_log

            summary = read_fork_log(args.src)
            write_text_atomic(args.out, json.dumps(summary, indent=2) + "\n")
            _emit(caught)
            print(
                f"hotexperts: {args.src} is a fork log: wrote a run summary (JSON, not a trace) to {args.out}: "
                f"{summary['n_rebalances_logged']} rebalances logged, telemetry types "
                f"{sorted(summary['telemetry']['record_types'])}",
                file=sys.stderr,
            )
            return 0
        tr = import_trace(
            args.src, format=fmt, keep_warmup=args.keep_warmup, n_expert=args.n_expert, model=args.model,
            prompt_tokens=getattr(args, "prompt_tokens", None),
        )
        tr.save(args.out)
    _emit(caught)
    print(
        f"hotexperts: imported {args.src} ({fmt}): {tr.n_tokens} tokens ({tr.n_prefill_tokens} prefill, "
        f"{tr.n_decode_tokens} decode), {tr.n_requests} requests{_subjects_note(tr)}, {tr.n_layers} MoE layers, "
        f"top-{tr.top_k} of "
        f"{tr.n_expert} -> {args.out}",
        file=sys.stderr,
    )
    return 0
