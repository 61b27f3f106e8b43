"""Load llama.cpp's shared libraries before numpy, for the commands that run llama.cpp in process.

On the H200 host (2026-11-29, llama-cpp-python 0.3.36 built there with CUDA) every model load
segfaulted inside ``llama_model::print_info`` when numpy had been imported before ``llama_cpp``:
libllama's ``std::ostream`` calls were bound to the copy of libstdc++ code that libggml-cuda.so
carries instead of the system libstdc++ (native backtraces in
benchmarks/results/2026-11-29-h200/llamacpp-attempt4/diag.json). Imported the other way round, the
same load works. ``hotexperts.cli`` calls :func:`preload` first for ``bench llamacpp`` and
``trace capture``; Python code calling :func:`hotexperts.llamabench.bench_llamacpp` or the tracer's
capture directly should ``import llama_cpp`` before numpy too.
"""

from __future__ import annotations

import sys

__all__ = ["preload", "needs_preload"]

# NOTE: (command, subcommand) pairs of hotexperts.cli that load a model with llama.cpp.
_LLAMA_COMMANDS = {("bench", "llamacpp"), ("trace", "capture")}


def needs_preload(argv: list[str]) -> bool:
    """Whether the command line ``argv`` (without the program name) runs llama.cpp in this process."""
    return tuple(argv[:2]) in _LLAMA_COMMANDS


def preload() -> None:
    """Import ``llama_cpp`` (which loads its shared libraries) unless it is already imported.

    A missing or broken llama-cpp-python is left for the command to report in its own words.
    """
    if "llama_cpp" in sys.modules:
        return
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - reported by the command that needs it
        pass
