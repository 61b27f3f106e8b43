"""Find which step of `hotexperts bench llamacpp` crashes a llama-cpp-python build (each in its own process).

On the H200 (2026-11-29, CUDA build of llama-cpp-python 0.3.36) every bench run segfaulted inside
``llama_model_load_from_file``; the same command works with the CPU build. This script loads one model
in several ways, each in a fresh subprocess with Python's faulthandler on, from the plainest to what the
bench does, and prints which variants survive:

1. ``highlevel``: ``llama_cpp.Llama(model_path, n_gpu_layers)`` and one short completion;
2. ``lowlevel``: ``llama_backend_init`` + ``llama_model_load_from_file`` with default params;
3. ``logcb``: as 2, after hotexperts' Python log callback is installed (``tracer.capture._Libs``);
4. ``bufts``: as 3, after ``hotexperts.llamabench._buffer_types`` opened libggml/libggml-cpu by path;
5. ``bench``: ``hotexperts bench llamacpp --placement gpu`` (the whole path).

    python benchmarks/llamacpp_diag.py MODEL.gguf [--n-gpu-layers 999] [--out diag.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, str] = {
    "highlevel": """
import llama_cpp
llm = llama_cpp.Llama(model_path=M, n_gpu_layers=NGL, n_ctx=256, verbose=False)
out = llm.create_completion("hello", max_tokens=4)
print("ok", len(out["choices"][0]["text"]))
""",
    "lowlevel": """
import llama_cpp
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = NGL
m = llama_cpp.llama_model_load_from_file(M.encode(), p)
print("ok", bool(m))
""",
    "logcb": """
import llama_cpp
from hotexperts.tracer.capture import _Libs
libs = _Libs.get()
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = NGL
m = llama_cpp.llama_model_load_from_file(M.encode(), p)
print("ok", bool(m), len(libs.log_lines))
""",
    "bufts": """
from pathlib import Path
import llama_cpp
from hotexperts.tracer.capture import _Libs
from hotexperts.llamabench import _buffer_types
libs = _Libs.get()
print("buffer types", sorted(_buffer_types(Path(llama_cpp.__file__).resolve().parent / "lib")))
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = NGL
m = llama_cpp.llama_model_load_from_file(M.encode(), p)
print("ok", bool(m))
""",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n-gpu-layers", type=int, default=999)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    rows = []
    for name, code in VARIANTS.items():
        src = f"M = {str(Path(a.model).resolve())!r}\nNGL = {a.n_gpu_layers}\n" + code
        rows.append(_run(name, [sys.executable, "-c", src], env, a.timeout))
    rows.append(_run("bench", [sys.executable, "-m", "hotexperts", "bench", "llamacpp", a.model, "--placement", "gpu",
                               "--prompt-tokens", "32", "--gen-tokens", "4", "--reps", "1",
                               "--out", str(Path(tempfile.mkdtemp()) / "bench.json")], env, a.timeout))
    print(f"{'variant':<10} {'rc':>5} {'s':>6}  last line")
    for r in rows:
        print(f"{r['variant']:<10} {r['rc']:>5} {r['seconds']:>6.1f}  {r['last_line']}")
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
    return {"variant": name, "rc": rc, "seconds": time.perf_counter() - t0,
            "last_line": lines[-1][:160] if lines else "", "stdout": out[-2000:], "fault_stack": fault,
            "stderr_tail": err[-3000:]}


if __name__ == "__main__":
    sys.exit(main())
