"""The ``hotexperts`` console command: a thin dispatcher to each stage's subcommands.

Each stage module exposes ``register(subparsers)``, which adds its subcommands and sets
``func`` on them; the work itself lives in the stage packages, imported only when a
command runs so that ``hotexperts --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hotexperts import __version__
from hotexperts.errors import HotExpertsError

__all__ = ["main", "build_parser"]

# NOTE: one line per stage; a stage adds commands in its own cli module, never here.
COMMAND_MODULES: tuple[str, ...] = (
    "hotexperts.tracer.cli",
    "hotexperts.modelcli",
    "hotexperts.sim.cli",
    "hotexperts.studies.cli",
    "hotexperts.runtime.cli",
    "hotexperts.llamacli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotexperts",
        description=(
            "Trace, simulate and tune hot-expert caching for mixture-of-experts models run with "
            "llama.cpp on one GPU with experts in system RAM."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hotexperts {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage without commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
