"""Find which step of `hotexperts bench llamacpp` crashes a llama-cpp-python build (each in its own process).

On the H200 (2026-11-29, CUDA build of llama-cpp-python 0.3.36) every bench run segfaulted inside
``llama_model_load_from_file``; the same command works with the CPU build. The cause, found with this
script (docs/llamacpp.md): numpy imported before ``llama_cpp``. This script loads one model in several ways, each in a fresh subprocess with Python's faulthandler on, from the plainest to what the
bench does, and prints which variants survive:

1. ``highlevel``: ``llama_cpp.Llama(model_path, n_gpu_layers)`` and one short completion;
2. ``lowlevel``: ``llama_backend_init`` + ``llama_model_load_from_file`` with default params;
3. ``logcb``: as 2, after hotexperts' Python log callback is installed (``tracer.capture._Libs``);
4. ``bufts``: as 3, after ``hotexperts.llamabench._buffer_types`` opened libggml/libggml-cpu by path;
5. ``numba``: as 2, after ``import numba`` and one ``@njit`` call (numba's LLVM in the process);
6. ``hxcli``: as 2, after building the CLI parser of every stage (what ``python -m hotexperts`` did
   for every command until 2026-11-29, which imports numba, llvmlite and scipy);
7. ``bench``: ``hotexperts bench llamacpp --placement gpu`` (the whole path; the CLI now imports only
   the ``bench`` stage);
8. ``bench-numba``: as 7, with numba imported (and one function compiled) first.

9. ``noextra``: as 2 with ``use_extra_bufts = False`` (what ``HOTEXPERTS_NO_EXTRA_BUFTS=1`` sets);
10. ``yaml``, ``gguf``, ``header``: as 2, after importing yaml, the gguf package, or reading the model's
    header with it (``tracer.capture._read_header``, a numpy memmap), as the bench did before the load;
11. ``numba-import``: as 2 after ``import numba`` alone; ``llama-then-numba``: llama.cpp imported first,
    then numba compiles, then the load;
12. ``numpy-first``: as 2 after ``import numpy`` alone (the cause, attempt 4);
13. ``bench-extra``: as 7 with ``HOTEXPERTS_NO_EXTRA_BUFTS=0`` (llama.cpp's extra CPU buffer types on).

A variant that dies with a signal is run once more with ``benchmarks/segv_backtrace.c`` preloaded
(compiled here with ``cc`` when there is one) for a native backtrace (``native_bt``), and under ``gdb``
when the host has it (``gdb_bt``).

    python benchmarks/llamacpp_diag.py MODEL.gguf [--n-gpu-layers 999] [--variants a,b,...]
        [--deadline SECONDS] [--out diag.json]

``--variants`` picks and orders them (default: all, in the order above); ``--deadline`` starts no
variant after that many seconds (the rows not run are listed as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# NOTE: the load every variant but ``highlevel`` ends with; ``PARAMS`` marks where a variant changes the params.
LOAD = """
import llama_cpp
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = NGL
PARAMS
m = llama_cpp.llama_model_load_from_file(M.encode(), p)
print("ok", bool(m))
"""


def _load(before: str = "", params: str = "") -> str:
    """``before`` (code run first), then the load of ``LOAD`` with ``params`` applied to ``p``."""
    return before + LOAD.replace("PARAMS\n", params + "\n" if params else "")


VARIANTS: dict[str, str] = {
    "highlevel": """
import llama_cpp
llm = llama_cpp.Llama(model_path=M, n_gpu_layers=NGL, n_ctx=256, verbose=False)
out = llm.create_completion("hello", max_tokens=4)
print("ok", len(out["choices"][0]["text"]))
""",
    "lowlevel": _load(),
    "logcb": _load("import llama_cpp\nfrom hotexperts.tracer.capture import _Libs\nlibs = _Libs.get()\n"),
    "bufts": _load(
        "from pathlib import Path\nimport llama_cpp\nfrom hotexperts.tracer.capture import _Libs\n"
        "from hotexperts.llamabench import _buffer_types\nlibs = _Libs.get()\n"
        "print('buffer types', sorted(_buffer_types(Path(llama_cpp.__file__).resolve().parent / 'lib')))\n"
    ),
    "numba": _load("import numba\nassert numba.njit(lambda x: x + 1)(1) == 2\n"),
    "hxcli": _load(
        "import sys\nfrom hotexperts import cli\ncli.build_parser()\n"
        "print('loaded', [k for k in ('numba', 'llvmlite', 'scipy', 'yaml') if k in sys.modules])\n"
    ),
    "noextra": _load(params="p.use_extra_bufts = False"),
    "yaml": _load("import yaml\n"),
    "gguf": _load("import gguf\n"),
    "header": _load("from pathlib import Path\nfrom hotexperts.tracer.capture import _read_header\n"
                    "print(_read_header(Path(M)).n_layer)\n"),
    "numba-import": _load("import numba\n"),
    "llama-then-numba": _load("import llama_cpp\nimport numba\nassert numba.njit(lambda x: x + 1)(1) == 2\n"),
    "numpy-first": _load("import numpy\n"),
}

ALL = (*VARIANTS, "bench", "bench-extra", "bench-numba")
BENCH_ARGS = ["--placement", "gpu", "--prompt-tokens", "32", "--gen-tokens", "4", "--reps", "1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n-gpu-layers", type=int, default=999)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--variants", default=",".join(ALL))
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    tmp = Path(tempfile.mkdtemp())
    cmds: dict[str, list[str]] = {
        name: [sys.executable, "-c", f"M = {str(Path(a.model).resolve())!r}\nNGL = {a.n_gpu_layers}\n" + code]
        for name, code in VARIANTS.items()
    }
    cmds["bench"] = [sys.executable, "-m", "hotexperts", "bench", "llamacpp", a.model, *BENCH_ARGS,
                     "--out", str(tmp / "bench.json")]
    cmds["bench-extra"] = cmds["bench"][:-1] + [str(tmp / "b3.json")]
    cmds["bench-numba"] = [sys.executable, "-c", (
        "import numba\nassert numba.njit(lambda x: x + 1)(1) == 2\nfrom hotexperts.cli import main\n"
        f"raise SystemExit(main(['bench', 'llamacpp', {a.model!r}, *{BENCH_ARGS!r}, '--out', {str(tmp / 'b2.json')!r}]))\n"
    )]
    t0 = time.perf_counter()
    rows = []
    for name in [v.strip() for v in a.variants.split(",") if v.strip()]:
        if name not in cmds:
            ap.error(f"unknown variant {name!r}; known: {', '.join(ALL)}")
        if a.deadline is not None and time.perf_counter() - t0 > a.deadline:
            rows.append({"variant": name, "rc": None, "seconds": 0.0, "last_line": "skipped (deadline)"})
            continue
        e = {**env, "HOTEXPERTS_NO_EXTRA_BUFTS": "0"} if name == "bench-extra" else env
        rows.append(_run(name, cmds[name], e, a.timeout))
    print(f"{'variant':<12} {'rc':>5} {'s':>6}  last line")
    for r in rows:
        print(f"{r['variant']:<12} {r['rc']!s:>5} {r['seconds']:>6.1f}  {r['last_line']}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


def _run(name: str, cmd: list[str], env: dict[str, str], timeout: int) -> dict[str, object]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -999, str(exc.stdout or ""), str(exc.stderr or "")
    lines = [x for x in (out + err).splitlines() if x.strip()]
    fault = [x for x in err.splitlines() if x.strip().startswith("File ")][:6]
    row: dict[str, object] = {
        "variant": name, "rc": rc, "seconds": time.perf_counter() - t0,
        "last_line": lines[-1][:160] if lines else "", "stdout": out[-2000:], "fault_stack": fault,
        "stderr_tail": err[-3000:],
    }
    so = _backtrace_lib()
    if rc is not None and rc < 0 and rc != -999 and so:
        try:
            g = subprocess.run(cmd, capture_output=True, text=True, env={**env, "LD_PRELOAD": so}, timeout=timeout)
            err2 = g.stderr.splitlines()
            if "=== end of native backtrace ===" in err2:
                i = next(j for j, x in enumerate(err2) if x.startswith("=== native backtrace"))
                row["native_bt"] = err2[i : i + 60]
        except (subprocess.TimeoutExpired, StopIteration):
            row["native_bt"] = ["no native backtrace"]
    gdb = shutil.which("gdb")
    if rc < 0 and rc != -999 and gdb:
        try:
            g = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 40", "--args", *cmd], capture_output=True,
                               text=True, env=env, timeout=timeout)
            row["gdb_bt"] = [x for x in g.stdout.splitlines() if x.startswith("#")][:40]
        except subprocess.TimeoutExpired:
            row["gdb_bt"] = ["gdb timed out"]
    return row


_SO: list[str | None] = []


def _backtrace_lib() -> str | None:
    """benchmarks/segv_backtrace.c compiled once (None without a C compiler)."""
    if not _SO:
        cc = shutil.which("cc") or shutil.which("gcc")
        out = Path(tempfile.mkdtemp()) / "segv_backtrace.so"
        src = Path(__file__).with_name("segv_backtrace.c")
        ok = cc is not None and subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)]).returncode == 0
        _SO.append(str(out) if ok else None)
    return _SO[0]


if __name__ == "__main__":
    sys.exit(main())
