"""Routing traces: the trace schema and file format, capture from llama.cpp, importers and exporters.

Public API::

    from hotexperts.tracer import Trace, load_trace, import_trace, export_trace, trace_stats, split_trace
"""

from __future__ import annotations

from typing import Any

from hotexperts.tracer.trace import PHASE_DECODE, PHASE_NAMES, PHASE_PREFILL, Trace

__all__ = [
    "PHASE_DECODE",
    "PHASE_NAMES",
    "PHASE_PREFILL",
    "Trace",
    "load_trace",
    "import_trace",
    "export_trace",
    "trace_stats",
    "split_trace",
]


def load_trace(path: Any, *, mmap: bool = False, verify: bool | None = None) -> Trace:
    """Load a ``.hxt`` trace (see :meth:`Trace.load`)."""
    return Trace.load(path, mmap=mmap, verify=verify)


def __getattr__(name: str) -> Any:
    # NOTE: lazy so that `import hotexperts.tracer` does not import pandas or llama_cpp.
    if name == "import_trace":
        from hotexperts.tracer.importers import import_trace

        return import_trace
    if name == "export_trace":
        from hotexperts.tracer.export import export_trace

        return export_trace
    if name == "trace_stats":
        from hotexperts.tracer.stats import trace_stats

        return trace_stats
    if name == "split_trace":
        from hotexperts.tracer.split import split_trace

        return split_trace
    raise AttributeError(name)
