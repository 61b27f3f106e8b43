"""``hotexperts trace split``: one trace into two (train / eval) by request or by subject.

Whole requests go to one side or the other (a request's tokens are never split); tokens keep their order,
request ids, ubatch ids and positions. ``--train`` is one of

* a fraction in (0, 1): that share of the requests (``--by request``) or of the subjects (``--by subject``),
  drawn with ``numpy.random.default_rng(seed)``; the rest go to eval;
* ``--by request``: request-id ranges, ``1-1000`` or ``1-10,15,20-30`` (inclusive);
* ``--by subject``: subject names separated by commas (``meta["subjects"]``, written by the per-request
  importers: the folder a request file was in, e.g. an MMLU subject).

``--eval`` (ranges or names) picks the eval side explicitly; without it eval is every other request.
Requests on neither side are dropped; a request on both sides, a side without requests, a range or name
that selects nothing, and subjects asked of a trace without ``meta["subjects"]`` are errors. Each output's
metadata keeps the source's (``subjects`` narrowed to its requests) and adds ``split`` (how it was made).
Both files are written atomically, the second only if the first worked, and neither is left behind on
failure.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path
from hotexperts.errors import InputError
from hotexperts.tracer.trace import Trace

__all__ = ["split_trace", "parse_ranges", "request_subjects", "add_split_parser"]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """``"1-1000,1500"`` -> ``[(1, 1000), (1500, 1500)]``; ValueError on anything else."""
    out = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise ValueError(f"not a request-id range: {part.strip()!r} (expected N or N-M)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"empty range {lo}-{hi}")
        out.append((lo, hi))
    return out


def _fraction(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    if "." not in text and "e" not in text.lower():
        return None  # an integer: a request id, not a share
    return x


def request_subjects(trace: Trace) -> tuple[list[str], dict[int, int]]:
    """Subject names (``meta["subjects"]`` order) and a map request id -> subject index."""
    subjects = trace.meta.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        return [], {}
    names: list[str] = []
    of: dict[int, int] = {}
    for i, s in enumerate(subjects):
        names.append(str(s.get("name", i)) if isinstance(s, dict) else str(i))
        for lo, hi in (s.get("request_ranges") or []) if isinstance(s, dict) else []:
            for r in range(int(lo), int(hi) + 1):
                of[r] = i
    return names, of


def _narrow_subjects(meta: dict[str, Any], ids: np.ndarray) -> list[dict[str, Any]] | None:
    """``meta["subjects"]`` restricted to the requests ``ids`` (subjects without any dropped)."""
    subjects = meta.get("subjects")
    if not isinstance(subjects, list):
        return None
    keep = set(int(x) for x in ids)
    out = []
    for s in subjects:
        if not isinstance(s, dict):
            continue
        mine = np.array([r for lo, hi in s.get("request_ranges") or [] for r in range(int(lo), int(hi) + 1)
                         if r in keep], np.int64)
        if mine.size == 0:
            continue
        mine.sort()
        brk = np.flatnonzero(np.diff(mine) != 1)
        runs = [[int(mine[x]), int(mine[y])] for x, y in zip(np.r_[0, brk + 1], np.r_[brk, mine.size - 1])]
        out.append({**s, "n_requests": int(mine.size), "request_ranges": runs})
    return out


def split_trace(
    trace: Trace,
    *,
    by: str,
    train: str,
    eval: str | None = None,
    seed: int = 0,
) -> tuple[Trace, Trace]:
    """``(train, eval)`` traces; see the module docstring for ``train`` / ``eval``."""
    if by not in ("request", "subject"):
        raise InputError(None, f"--by must be 'request' or 'subject', got {by!r}")
    req_ids = np.unique(trace.request)
    if req_ids.size < 2:
        raise InputError(None, f"the trace has {req_ids.size} request(s): nothing to split")
    names: list[str] = []
    subj_of: dict[int, int] = {}
    if by == "subject":
        names, subj_of = request_subjects(trace)
        if not names:
            raise InputError(None, "the trace has no subjects (meta['subjects'], written by the per-request "
                                   "importers); split it --by request")
        orphan = [int(r) for r in req_ids if int(r) not in subj_of]
        if orphan:
            raise InputError(None, f"requests {orphan[:5]} belong to no subject in meta['subjects']")
    units = np.arange(len(names)) if by == "subject" else req_ids  # what a side is made of
    unit_of_req = np.array([subj_of[int(r)] for r in req_ids]) if by == "subject" else req_ids

    def pick(spec: str, what: str) -> np.ndarray:
        """Units selected by ranges / names (a bool mask over ``units``)."""
        if by == "request":
            try:
                ranges = parse_ranges(spec)
            except ValueError as exc:
                raise InputError(None, f"--{what}: {exc}") from None
            mask = np.zeros(units.size, bool)
            for lo, hi in ranges:
                hit = (units >= lo) & (units <= hi)
                if not hit.any():
                    raise InputError(None, f"--{what}: no request with an id in {lo}-{hi} (ids {int(units[0])}.."
                                           f"{int(units[-1])})")
                mask |= hit
            return mask
        wanted = [w.strip() for w in spec.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown or not wanted:
            raise InputError(None, f"--{what}: unknown subject(s) {unknown} (subjects: {', '.join(names)})")
        return np.isin(units, [names.index(w) for w in wanted])

    frac = _fraction(train)
    info: dict[str, Any] = {"by": by, "train": train}
    if frac is not None:
        if not 0.0 < frac < 1.0:
            raise InputError(None, f"--train {train}: a share must lie strictly between 0 and 1")
        if eval is not None:
            raise InputError(None, "--eval goes with --train ranges or names, not with a share (the rest is eval)")
        n_train = int(round(frac * units.size))
        if n_train == 0 or n_train == units.size:
            raise InputError(None, f"--train {train} of {units.size} {by}s leaves one side empty")
        order = np.random.default_rng(seed).permutation(units.size)
        tmask = np.zeros(units.size, bool)
        tmask[order[:n_train]] = True
        emask = ~tmask
        info["seed"] = int(seed)
    else:
        tmask = pick(train, "train")
        emask = ~tmask if eval is None else pick(eval, "eval")
        if eval is not None:
            info["eval"] = eval
            both = tmask & emask
            if both.any():
                first = units[both][0]
                raise InputError(None, f"{by} {names[first] if by == 'subject' else int(first)} is on both sides")
    if not tmask.any() or not emask.any():
        raise InputError(None, f"the split leaves the {'train' if not tmask.any() else 'eval'} side without requests")
    # requests -> sides
    unit_index = {int(u): i for i, u in enumerate(units)}
    req_train = np.array([tmask[unit_index[int(u)]] for u in unit_of_req])
    req_eval = np.array([emask[unit_index[int(u)]] for u in unit_of_req])
    out = []
    for side, rmask in (("train", req_train), ("eval", req_eval)):
        ids = req_ids[rmask]
        tr = trace.select(np.isin(trace.request, ids))
        meta = dict(trace.meta)
        narrowed = _narrow_subjects(meta, ids)
        if narrowed is not None:
            meta["subjects"] = narrowed
        meta["split"] = {**info, "side": side, "n_requests": int(ids.size), "n_tokens": tr.n_tokens,
                         "of_requests": int(req_ids.size)}
        tr.meta = meta
        out.append(tr)
    return out[0], out[1]


def add_split_parser(tsub: Any) -> None:
    s = tsub.add_parser(
        "split",
        help="split a trace into train and eval traces by request or by subject",
        description=(
            "Split a trace into two by whole requests: a random share (--train 0.5 --seed 0), request-id "
            "ranges (--by request --train 1-1000 --eval 1001-2000) or subjects (--by subject --train "
            "abstract_algebra,anatomy). Request ids, positions and metadata are kept."
        ),
    )
    s.add_argument("trace", metavar="T", help="trace (.hxt, or any importable source, detected by content)")
    s.add_argument("--by", required=True, choices=["request", "subject"], help="unit of the split")
    s.add_argument(
        "--train",
        required=True,
        metavar="SPEC",
        help="a share in (0,1) of the requests/subjects drawn at random; or request-id ranges (1-1000,1500); "
        "or subject names (a,b)",
    )
    s.add_argument("--eval", default=None, metavar="SPEC", help="ranges or names for eval (default: all the rest)")
    s.add_argument("--seed", type=int, default=0, help="random seed for a share (default 0)")
    s.add_argument("--n-expert", type=int, default=None, help="expert count, for a source that does not say it")
    s.add_argument("--out-train", required=True, metavar="A", help="output trace of the train side (.hxt)")
    s.add_argument("--out-eval", required=True, metavar="B", help="output trace of the eval side (.hxt)")
    s.set_defaults(func=_split_from_args)


def _split_from_args(args: argparse.Namespace) -> int:
    import sys

    from hotexperts.tracer.importers import load_any

    a, b = Path(args.out_train), Path(args.out_eval)
    if a.resolve() == b.resolve():
        raise InputError(a, "--out-train and --out-eval name the same file")
    src = Path(args.trace)
    if src.exists() and src.resolve() in (a.resolve(), b.resolve()):
        raise InputError(src, "an output would overwrite the input trace")
    tr = load_any(args.trace, n_expert=args.n_expert)
    try:
        t_train, t_eval = split_trace(tr, by=args.by, train=args.train, eval=args.eval, seed=args.seed)
    except InputError as exc:
        if exc.path is None:
            raise InputError(args.trace, exc.what) from None
        raise
    with contextlib.ExitStack() as stack:
        ta = stack.enter_context(atomic_path(a))
        tb = stack.enter_context(atomic_path(b))
        t_train.save(ta)
        t_eval.save(tb)
    for name, t in (("train", t_train), ("eval", t_eval)):
        print(f"hotexperts: {name}: {t.n_requests} requests, {t.n_tokens} tokens ({t.n_prefill_tokens} prefill, "
              f"{t.n_decode_tokens} decode) -> {a if name == 'train' else b}", file=sys.stderr)
    return 0

