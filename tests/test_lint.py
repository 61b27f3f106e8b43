"""The code base passes the linter (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import REPO


def test_ruff_clean():
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    out = subprocess.run([*cmd, "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean():
    """Every stage type-checks (mypy, configured in pyproject.toml)."""
    exe = shutil.which("mypy")
    cmd = [exe] if exe else [sys.executable, "-m", "mypy"]
    out = subprocess.run([*cmd, "--no-incremental"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
