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


def test_command_table_matches_what_each_stage_registers():
    import argparse
    import importlib

    from hotexperts.cli import COMMAND_MODULES, COMMANDS

    for name in COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(name).register(sub)
        assert sorted(sub.choices) == sorted(c for c, m in COMMANDS.items() if m == name), name


def test_llamacpp_commands_do_not_load_the_simulator():
    # NOTE: the process that times llama.cpp must not carry numba/LLVM or the simulator: a CUDA build of
    # llama.cpp crashed at model load in such a process on the GPU host (docs/llamacpp.md).
    code = (
        "import sys\n"
        "from hotexperts import cli\n"
        "for argv in (['bench', 'llamacpp', '--help'], ['measure', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "bad = sorted(m for m in ('numba', 'llvmlite', 'scipy', 'hotexperts.sim', 'hotexperts.policies') if m in sys.modules)\n"
        "print('LOADED', ','.join(bad))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED", out.stdout[-500:]
    # ...while an unknown command still lists every command
    out = subprocess.run([sys.executable, "-m", "hotexperts", "nosuch"], capture_output=True, text=True)
    assert out.returncode == 2
    for cmd in ("trace", "sim", "tune", "bench", "measure", "calibrate"):
        assert cmd in out.stderr


def test_llama_commands_import_llama_cpp_before_numpy():
    # NOTE: a CUDA build of llama.cpp segfaulted at model load when numpy came first (hotexperts/_llamafirst.py);
    # the order is recorded with an import hook, for the commands that load a model and one that does not.
    code = (
        "import sys\n"
        "order = []\n"
        "class F:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name in ('numpy', 'llama_cpp'):\n"
        "            order.append(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, F)\n"
        "from hotexperts import cli\n"
        "try:\n"
        "    cli.main(ARGV)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('ORDER', ','.join(order))\n"
    )
    for argv, want in (
        (["bench", "llamacpp", "--help"], "llama_cpp,numpy"),
        (["trace", "capture", "--help"], "llama_cpp,numpy"),
        (["sim", "--help"], "numpy"),
    ):
        out = _run(code.replace("ARGV", repr(argv)))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == f"ORDER {want}", (argv, out.stdout[-300:])


def test_every_registered_policy_implements_run():
    from hotexperts.policies import REGISTRY
    from hotexperts.policies._engine import Policy

    for name, cls in REGISTRY.items():
        assert cls.run is not Policy.run, f"policy {name} does not implement run()"
