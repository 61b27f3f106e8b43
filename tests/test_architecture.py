"""Layering rules: only runtime/ (and the tracer's capture) touch the GPU stack; the CLI is importable fast."""

from __future__ import annotations

import subprocess
import sys

import hotexperts


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_laptop_stages_do_not_import_gpu_stack():
    code = (
        "import sys\n"
        "import hotexperts, hotexperts.tracer, hotexperts.sim, hotexperts.policies, hotexperts.studies\n"
        "bad = sorted(m for m in ('torch', 'llama_cpp', 'numba.cuda') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "hotexperts", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"hotexperts {hotexperts.__version__}"
    out = subprocess.run([sys.executable, "-m", "hotexperts", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("trace", "model", "sim"):
        assert cmd in out.stdout
