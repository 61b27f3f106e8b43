"""The ``hotexperts`` console command: a thin dispatcher to each stage's subcommands.

Each stage module exposes ``register(subparsers)``, which adds its subcommands and sets
``func`` on them; the work itself lives in the stage packages, imported only when a
command runs so that ``hotexperts --help`` stays fast. A command names its stage module in
``COMMANDS``, and a run of that command imports that module only: ``hotexperts bench llamacpp``
must not load numba/LLVM (the simulator's) into the process it measures llama.cpp in.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hotexperts import __version__
from hotexperts.errors import HotExpertsError

__all__ = ["main", "build_parser"]

# NOTE: one entry per top-level command, naming the stage module that registers it (a test checks
# that each module registers exactly these); a stage adds its options in its own cli module.
COMMANDS: dict[str, str] = {
    "trace": "hotexperts.tracer.cli",
    "model": "hotexperts.modelcli",
    "sim": "hotexperts.sim.cli",
    "hardware": "hotexperts.sim.cli",
    "tune": "hotexperts.studies.cli",
    "report": "hotexperts.studies.cli",
    "check": "hotexperts.studies.cli",
    "calibrate": "hotexperts.runtime.cli",
    "validate": "hotexperts.runtime.cli",
    "bench": "hotexperts.llamacli",
    "measure": "hotexperts.llamacli",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with a known ``command``, only that command's stage is imported."""
    parser = argparse.ArgumentParser(
        prog="hotexperts",
        description=(
            "Trace, simulate and tune hot-expert caching for mixture-of-experts models run with "
            "llama.cpp on one GPU with experts in system RAM."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hotexperts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage without commands yet
                continue
            raise
        module.register(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (its first item, when that is not an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from hotexperts import _llamafirst

    if _llamafirst.needs_preload(argv):
        _llamafirst.preload()  # before numpy: see hotexperts/_llamafirst.py
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        rc = func(args)
    except HotExpertsError as exc:
        print(f"hotexperts: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hotexperts: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `hotexperts trace info T | head`
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
