"""Run-file targets: the runtimes a recommendation is written for, one module each.

| target | runtime | families |
|---|---|---|
| ``fork`` | ParmesanParty/llama.cpp hot-expert cache (``--moe-hot-k``) | fork |
| ``turboquant`` | sirxsniper/llama-cpp-turboquant (``LLAMA_MOE_HOT_*``, ``--moe-expert-cache``) | lru, static, window, decay |
| ``upstream-lru`` | llama.cpp PR #27861 (``--moe-expert-cache``) | lru |
| ``mainline`` | llama.cpp (``--n-cpu-moe``, ``-ot``) | layer-offload, all-cpu |
| ``lab`` | none: anything the simulator scores (per-layer slots for every family, fetch-on-miss) | all |

Each target (:class:`Target`) says what it can express, suggests configurations in a study exactly as
the runtime will run them, writes its files and reads them back. Adding a runtime = one new module and
one line in :data:`REGISTRY`. ``any`` (the tuner's default) means every runnable target.
"""

from __future__ import annotations

from hotexperts.errors import InputError
from hotexperts.studies.targets._base import ReadContext, RunFiles, Target, WriteContext
from hotexperts.studies.targets._llama import GENERIC_FLAGS, Flag, Invocation, parse_invocation
from hotexperts.studies.targets.fork import ForkTarget
from hotexperts.studies.targets.lab import LabTarget
from hotexperts.studies.targets.mainline import MainlineTarget
from hotexperts.studies.targets.turboquant import TurboquantTarget
from hotexperts.studies.targets.upstream_lru import UpstreamLruTarget

__all__ = [
    "REGISTRY",
    "ALL_RUN_FILES",
    "ReadContext",
    "RunFiles",
    "Target",
    "WriteContext",
    "all_flags",
    "get_target",
    "parse_for_targets",
    "resolve_targets",
    "target_for_family",
    "target_names",
]

REGISTRY: dict[str, Target] = {
    t.name: t
    for t in (ForkTarget(), TurboquantTarget(), UpstreamLruTarget(), MainlineTarget(), LabTarget())
}

#: every file a target may write, plus the script (a rerun into a folder removes the ones it did not write)
ALL_RUN_FILES: tuple[str, ...] = tuple(dict.fromkeys(
    ["llama-server.sh", "mainline-placement.txt", *[n for t in REGISTRY.values() for n in t.file_names]]
))


def target_names() -> list[str]:
    return list(REGISTRY)


def get_target(name: str) -> Target:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(None, f"unknown target {name!r}; known: {', '.join(REGISTRY)}, any") from None


def resolve_targets(spec: str) -> tuple[Target, ...]:
    """``any`` -> every runnable target; else a comma-separated list of names."""
    names = [x.strip() for x in spec.split(",") if x.strip()]
    if not names:
        raise InputError(None, "no target given")
    out: list[Target] = []
    for n in names:
        if n == "any":
            out += [t for t in REGISTRY.values() if t.runnable]
        else:
            out.append(get_target(n))
    return tuple(dict.fromkeys(out))


def target_for_family(targets: tuple[Target, ...], family: str) -> Target | None:
    """The first of ``targets`` that runs ``family`` (registry order)."""
    for t in targets:
        if family in t.families:
            return t
    return None


def all_flags() -> tuple[Flag, ...]:
    extra = [f for t in REGISTRY.values() for f in t.flags]
    return GENERIC_FLAGS + tuple(extra)


def parse_for_targets(argv: list[str], env: dict[str, str], *, origin: str = "<command>") -> Invocation:
    """Parse a llama-server invocation knowing every target's flags and variables."""
    env_only = tuple(dict.fromkeys(v for t in REGISTRY.values() for v in t.env_vars))
    return parse_invocation(argv, env, all_flags(), env_only=env_only, origin=origin)
