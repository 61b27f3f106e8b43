"""``.moeprof v1`` routing profiles: per-layer expert count tables (formats.md section 4).

The format is the one ``src/llama-moetrace.cpp`` of github.com/sirxsniper/llama-cpp-turboquant writes
(``LLAMA_MOE_PROFILE=<file>``) and its ``hot_read_profile`` parser reads (both read, not copied)::

    moeprof v1 n_layer=N n_expert=E steps=S decode_tokens=D prefill_tokens=P draft_ubatches=R source=X
    decode_union <il> c0 c1 ... c(E-1)
    ...

``n_layer`` is the largest model layer index + 1; rows are indexed by the model's layer index ``il`` and
exist only for MoE layers; every section lists every layer in increasing ``il``; ``#`` lines are comments.
The fork's parser only checks that line 1 starts with ``moeprof v1``, keys rows on ``il`` and ignores a
row whose length is not ``n_expert``. A hot-set save (``source=moe-hot-save``) writes
``tokens=.. source=moe-hot-save policy=..`` and non-integer values; those load as float64 tables.

A profile is counts, not a trace: it can seed a static policy but cannot be replayed in time order.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_open
from hotexperts.errors import InputError
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = [
    "DECODE_MAX_T",
    "MOEPROF_MAGIC",
    "SECTIONS",
    "Profile",
    "load_moeprof",
    "moeprof_text",
    "profile_from_trace",
    "write_moeprof",
]

MOEPROF_MAGIC = "moeprof v1"
SECTIONS = ("decode_union", "decode_tokens", "prefill_tokens", "decode_weight_u")
# the fork counts ubatches of up to this many tokens as decode (DECODE_MAX_T in llama-moetrace.cpp)
DECODE_MAX_T = 8
_HEADER_ORDER = ("steps", "decode_tokens", "prefill_tokens", "draft_ubatches", "source")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(eq=False)
class Profile:
    """Per-layer expert count tables.

    Attributes:
        n_layer: model layers (largest MoE layer index + 1); table row ``il`` is model layer ``il``.
        n_expert: experts per layer.
        layers: the model layer indices that have rows in the file (the MoE layers), increasing.
        header: the other header fields in file order, as strings (``steps``, ``source``, ...).
        sections: name -> ``(n_layer, n_expert)`` table; int64 counts, float64 where the file has
            non-integer values (hot-set saves). Rows of layers not in ``layers`` are zero.
    """

    n_layer: int
    n_expert: int
    layers: tuple[int, ...]
    header: dict[str, str] = field(default_factory=dict)
    sections: dict[str, np.ndarray] = field(default_factory=dict)

    def equals(self, other: Profile) -> bool:
        return (
            self.n_layer == other.n_layer
            and self.n_expert == other.n_expert
            and self.layers == other.layers
            and self.header == other.header
            and list(self.sections) == list(other.sections)
            and all(np.array_equal(self.sections[s], other.sections[s]) for s in self.sections)
        )


def load_moeprof(path: str | os.PathLike[str]) -> Profile:
    """Read a ``.moeprof v1`` file strictly; InputError naming the line for anything malformed."""
    from hotexperts.tracer.readers._common import decode_text, read_bytes

    text = decode_text(path, read_bytes(path))
    lines = text.splitlines()
    if not lines or not text.strip():
        raise InputError(path, "empty file: not a .moeprof profile")
    first = lines[0].split()
    if first[:1] != ["moeprof"]:
        raise InputError(path, "not a .moeprof profile: line 1 must start with 'moeprof v1'", where="line 1")
    if first[1:2] != ["v1"]:
        raise InputError(path, f"moeprof version {first[1] if len(first) > 1 else '?'} is not supported (v1 only)",
                         where="line 1")
    hdr: dict[str, str] = {}
    for tok in first[2:]:
        if "=" not in tok:
            raise InputError(path, f"header field {tok!r} is not key=value", where="line 1")
        key, val = tok.split("=", 1)
        if key in hdr:
            raise InputError(path, f"header field {key!r} given twice", where="line 1")
        hdr[key] = val
    try:
        n_layer = int(hdr.pop("n_layer"))
        n_expert = int(hdr.pop("n_expert"))
    except KeyError as exc:
        raise InputError(path, f"header lacks {exc.args[0]}=", where="line 1") from None
    except ValueError:
        raise InputError(path, "header n_layer/n_expert must be integers", where="line 1") from None
    if n_layer <= 0 or n_expert <= 0 or n_layer > 4096 or n_expert > 65536:
        raise InputError(path, f"header n_layer={n_layer} n_expert={n_expert} out of range", where="line 1")
    rows: dict[str, dict[int, list[float]]] = {}
    integral = True
    for lineno, line in enumerate(lines[1:], start=2):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = f"line {lineno}"
        parts = s.split()
        if len(parts) < 2:
            raise InputError(path, "row must be '<section> <il> c0 ... c(E-1)'", where=where)
        name = parts[0]
        if not _NAME.match(name):
            raise InputError(path, f"bad section name {name[:30]!r}", where=where)
        try:
            il = int(parts[1])
        except ValueError:
            raise InputError(path, f"layer index {parts[1][:20]!r} is not an integer", where=where) from None
        if not 0 <= il < n_layer:
            raise InputError(path, f"layer {il} out of range for n_layer={n_layer}", where=where)
        if len(parts) - 2 != n_expert:
            raise InputError(path, f"{len(parts) - 2} counts for n_expert={n_expert} (truncated line?)", where=where)
        try:
            vals = [float(x) for x in parts[2:]]
        except ValueError:
            raise InputError(path, "counts must be numbers", where=where) from None
        if any(not math.isfinite(v) or v < 0 for v in vals):
            raise InputError(path, "counts must be finite and non-negative", where=where)
        if integral and any(v != int(v) or v > 2**62 for v in vals):
            integral = False
        sec = rows.setdefault(name, {})
        if il in sec:
            raise InputError(path, f"section {name} has layer {il} twice", where=where)
        sec[il] = vals
    if not rows:
        raise InputError(path, "no count rows")
    layer_sets = {name: tuple(sorted(sec)) for name, sec in rows.items()}
    all_layers = tuple(sorted(set().union(*layer_sets.values())))
    sections: dict[str, np.ndarray] = {}
    for name, sec in rows.items():
        a = np.zeros((n_layer, n_expert), np.float64)
        for il, vals in sec.items():
            a[il] = vals
        sections[name] = a.astype(np.int64) if integral else a
    return Profile(n_layer=n_layer, n_expert=n_expert, layers=all_layers, header=hdr, sections=sections)


def _fmt_row(a: np.ndarray) -> str:
    if a.dtype.kind in "iu":
        return " ".join(map(str, a.tolist()))
    return " ".join(f"{v:.17g}" for v in a.tolist())


def moeprof_text(profile: Profile) -> str:
    """``profile`` in the fork's ``.moeprof v1`` layout (header field order as the fork's)."""
    if not profile.layers:
        raise ValueError("profile has no layers")
    if max(profile.layers) >= profile.n_layer:
        raise ValueError("a layer index is >= n_layer")
    parts = [MOEPROF_MAGIC, f"n_layer={profile.n_layer}", f"n_expert={profile.n_expert}"]
    for key, val in profile.header.items():
        if key in ("n_layer", "n_expert"):
            continue
        sval = str(val)
        # NOTE: the header is split on whitespace, so a value may not contain any (make_profile.py does the same)
        sval = re.sub(r"\s+", "_", sval) or "-"
        parts.append(f"{key}={sval}")
    lines = [" ".join(parts)]
    for name, table in profile.sections.items():
        if table.shape != (profile.n_layer, profile.n_expert):
            raise ValueError(f"section {name} has shape {table.shape}")
        for il in profile.layers:
            lines.append(f"{name} {il} {_fmt_row(table[il])}")
    return "\n".join(lines) + "\n"


def write_moeprof(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Write ``profile`` atomically in the fork's ``.moeprof v1`` layout (:func:`moeprof_text`)."""
    text = moeprof_text(profile)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def profile_from_trace(trace: Trace, *, source: str | None = None) -> Profile:
    """The profile the fork's profiler would write for the routing in ``trace``.

    Sections, per MoE layer ``il`` (absent entries skipped):
      * ``decode_union``: per decode step (ubatch), 1 for every expert any of its tokens used;
      * ``decode_tokens`` / ``prefill_tokens``: selections per decode / prefill token and slot;
      * ``decode_weight_u``: ``floor(1e6 * sum of gate weights)`` over decode selections, only
        when the trace has gate weights (the fork truncates the same way).

    NOTE: the fork classifies a ubatch by size (more than 8 tokens = prefill); the trace records the
    phase, which is used here. The two agree except for short prompt tails, which the fork counts as decode.
    """
    n_layer = max(trace.moe_layers) + 1
    E = trace.n_expert
    layers = trace.moe_layers
    pres = trace.present
    dec = trace.phase == PHASE_DECODE
    pre = trace.phase == PHASE_PREFILL
    b = trace.step_bounds()
    step_of = np.repeat(np.arange(b.size - 1), np.diff(b))
    tables = {s: np.zeros((n_layer, E), np.int64) for s in SECTIONS[:3]}
    wsum = np.zeros((n_layer, E), np.float64) if trace.weights is not None else None
    for li, il in enumerate(layers):
        ids = trace.experts[:, li, :].astype(np.int64)
        ok = np.ones(trace.n_tokens, bool) if pres is None else pres[:, li]
        md, mp = dec & ok, pre & ok
        tables["decode_tokens"][il] = np.bincount(ids[md].reshape(-1), minlength=E)
        tables["prefill_tokens"][il] = np.bincount(ids[mp].reshape(-1), minlength=E)
        tables["decode_union"][il] = np.bincount(_distinct(step_of[md][:, None] * E + ids[md]) % E, minlength=E)
        if wsum is not None and trace.weights is not None:
            w = trace.weights[:, li, :].astype(np.float64)
            wsum[il] = np.bincount(ids[md].reshape(-1), weights=w[md].reshape(-1), minlength=E)
    sections: dict[str, np.ndarray] = dict(tables)
    if wsum is not None:
        sections["decode_weight_u"] = np.floor(wsum * 1e6).astype(np.int64)
    n_dec_steps = int(np.unique(step_of[dec]).size) if bool(dec.any()) else 0
    src = source if source is not None else _source_name(trace.meta)
    header: dict[str, Any] = {
        "steps": n_dec_steps,
        "decode_tokens": trace.n_decode_tokens,
        "prefill_tokens": trace.n_prefill_tokens,
        "draft_ubatches": 0,
        "source": src,
    }
    return Profile(
        n_layer=n_layer,
        n_expert=E,
        layers=tuple(layers),
        header={k: re.sub(r"\s+", "_", str(header[k])) or "-" for k in _HEADER_ORDER},
        sections=sections,
    )


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Distinct values of an int64 array (sort-based; numpy's hash-based ``unique`` is slow on large arrays)."""
    k = np.sort(keys.reshape(-1))
    if k.size == 0:
        return k
    return k[np.r_[True, k[1:] != k[:-1]]]


def _source_name(meta: dict[str, Any]) -> str:
    src = meta.get("source")
    if isinstance(src, dict):
        name = src.get("file") or src.get("kind") or "hotexperts"
        return f"hotexperts:{name}"
    if isinstance(src, str) and src:
        return src
    return "hotexperts"
