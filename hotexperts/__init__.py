"""hotexperts: trace, simulate and tune hot-expert caching for MoE models run with llama.cpp.

The subpackages are the stages of the tool:

- :mod:`hotexperts.tracer`: the trace format, capture from llama.cpp, importers and exporters;
- :mod:`hotexperts.sim`: the numba replay engine and the cost model;
- :mod:`hotexperts.policies`: the caching policies, one module each;
- :mod:`hotexperts.studies`: optuna tuning studies, configs, plots and reports;
- :mod:`hotexperts.runtime`: the live CUDA runtime (extra ``hotexperts[runtime]``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from hotexperts.errors import HotExpertsError

try:
    __version__ = version("hotexperts")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["HotExpertsError", "__version__"]
