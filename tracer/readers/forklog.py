"""Run summary from the ParmesanParty llama.cpp fork's hot-cache log lines and telemetry JSONL (formats.md §5).

These files are not routing traces: they hold what a live run measured (rebalances, window hit rates,
swap counts, the FILLING -> STEADY switch), which is what a simulation of the same run should reproduce.
Recognised (anywhere in a line, so timestamps or log prefixes do not matter)::

    hot_cache_rebalance: rebalance #<n> at decode <d> (window reset) swap_sum=<s> swap_max=<m>
        hit_rate=<h>% (<hits>/<obs>) entropy=<e> stable=<a>/<b>
    ... hot cache FILLING → STEADY at decode #<d> ...          (also with "->")
    {"type": "header", "n_expert": 128, "K": 32, "timestamp": "..."}   (telemetry JSONL)

The log format is the fork's ``LLAMA_LOG_INFO`` in ``src/llama-moe-hot-cache.cpp``; the per-token and
per-rebalance telemetry schemas are not published, so JSON records are keyed on ``"type"``: unknown types
are counted and listed (with their field names and first few records, unknown fields kept), never guessed.
``path`` may be a file or a telemetry directory (its ``*.jsonl`` files are read in name order).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hotexperts.errors import InputError
from hotexperts.tracer.readers._common import decode_text, read_bytes

__all__ = ["read_fork_log", "SUMMARY_KIND"]

SUMMARY_KIND = "hotexperts-fork-run-summary"
_KEEP_UNKNOWN = 5

_REBALANCE = re.compile(
    r"rebalance #(?P<n>\d+) at decode (?P<decode>\d+) \(window reset\) "
    r"swap_sum=(?P<swap_sum>\d+) swap_max=(?P<swap_max>\d+) "
    r"hit_rate=(?P<hit_rate>[0-9.]+)% \((?P<hits>\d+)/(?P<obs>\d+)\) "
    r"entropy=(?P<entropy>[-0-9.naif]+) stable=(?P<stable>\d+)/(?P<n_layers>\d+)"
)
_STEADY = re.compile(r"FILLING\s*(?:→|->)\s*STEADY at decode #(?P<decode>\d+)")


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".log", ".txt") and p.is_file())
        if not files:
            raise InputError(path, "directory holds no .jsonl/.log/.txt files")
        return files
    return [path]


def read_fork_log(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise fork log lines and telemetry records; InputError if nothing in the input is recognised."""
    root = Path(path)
    rebalances: list[dict[str, Any]] = []
    steady: list[int] = []
    header: dict[str, Any] | None = None
    type_counts: dict[str, int] = {}
    unknown: dict[str, dict[str, Any]] = {}
    n_lines = 0
    n_other = 0
    for f in _files(root):
        text = decode_text(f, read_bytes(f))
        for lineno, line in enumerate(text.splitlines(), start=1):
            n_lines += 1
            s = line.strip()
            if not s:
                continue
            if s.startswith("{"):
                try:
                    obj = json.loads(s)
                except json.JSONDecodeError as exc:
                    raise InputError(f, f"telemetry line is not valid JSON ({exc.msg}; truncated?)",
                                     where=f"line {lineno}") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                    raise InputError(f, 'telemetry record without a string "type" field', where=f"line {lineno}")
                t = obj["type"]
                type_counts[t] = type_counts.get(t, 0) + 1
                if t == "header":
                    for key in ("n_expert", "K"):
                        v = obj.get(key)
                        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                            raise InputError(f, f"telemetry header field {key!r} must be a positive integer",
                                             where=f"line {lineno}")
                    if header is None:
                        header = obj
                else:
                    u = unknown.setdefault(t, {"count": 0, "fields": [], "first": []})
                    u["count"] += 1
                    for key in obj:
                        if key not in u["fields"]:
                            u["fields"].append(key)
                    if len(u["first"]) < _KEEP_UNKNOWN:
                        u["first"].append(obj)
                continue
            m = _REBALANCE.search(s)
            if m:
                g = m.groupdict()
                rb = {
                    "n": int(g["n"]),
                    "decode": int(g["decode"]),
                    "swap_sum": int(g["swap_sum"]),
                    "swap_max": int(g["swap_max"]),
                    "hit_rate": float(g["hit_rate"]) / 100.0,
                    "hits": int(g["hits"]),
                    "obs": int(g["obs"]),
                    "entropy": float(g["entropy"]),
                    "stable_layers": int(g["stable"]),
                    "n_layers": int(g["n_layers"]),
                }
                if rb["hits"] > rb["obs"] or rb["stable_layers"] > rb["n_layers"]:
                    raise InputError(f, "rebalance line with hits > observations or stable > layers",
                                     where=f"line {lineno}")
                rebalances.append(rb)
                continue
            m = _STEADY.search(s)
            if m:
                steady.append(int(m.group("decode")))
                continue
            n_other += 1
    if not rebalances and not steady and not type_counts:
        raise InputError(root, "no hot-cache log lines or telemetry records found: not a fork log")
    hits = sum(r["hits"] for r in rebalances)
    obs = sum(r["obs"] for r in rebalances)
    return {
        "kind": SUMMARY_KIND,
        "note": "a run summary of a live fork run, not a routing trace: it cannot be replayed",
        "source": {"kind": "import", "format": "fork-log", "file": root.name},
        "lines": n_lines,
        "unrecognised_lines": n_other,
        "filling_to_steady_decode": steady[0] if steady else None,
        "rebalances": rebalances,
        "n_rebalances_logged": len(rebalances),
        "last_rebalance": rebalances[-1]["n"] if rebalances else None,
        "hit_rate": {
            "hits": hits,
            "obs": obs,
            "rate": hits / obs if obs else None,
            "note": "summed over the logged rebalance windows only (the fork logs #1-3 and every 10th)",
        },
        "swaps": {
            "sum_logged": sum(r["swap_sum"] for r in rebalances),
            "max": max((r["swap_max"] for r in rebalances), default=None),
        },
        "telemetry": {
            "header": header,
            "record_types": type_counts,
            "unknown_types": sorted(unknown),
            "unknown": unknown,
        },
    }
