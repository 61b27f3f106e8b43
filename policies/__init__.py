"""hotexperts.policies: caching policies, one module each, behind one small interface.

A policy is a frozen parameter dataclass (subclass of :class:`Policy`) whose ``run`` replays a prepared
trace with its numba kernel. The registry maps a name to its class; adding a policy = one new module +
one line in :data:`REGISTRY`. See docs/policies.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hotexperts.policies._engine import Policy, Prepared, prepare
from hotexperts.policies.all_cpu import AllCpu
from hotexperts.policies.belady import Belady
from hotexperts.policies.belady_textbook import BeladyTextbook
from hotexperts.policies.decay import Decay
from hotexperts.policies.fork import Fork, fork_bonus
from hotexperts.policies.layer_offload import LayerOffload
from hotexperts.policies.lru import Lru
from hotexperts.policies.lru_textbook import LruTextbook
from hotexperts.policies.static import Static, allocate_static_slots
from hotexperts.policies.window import Window

__all__ = [
    "REGISTRY",
    "AllCpu",
    "Belady",
    "BeladyTextbook",
    "Decay",
    "Fork",
    "LayerOffload",
    "Lru",
    "LruTextbook",
    "Policy",
    "PolicyConfig",
    "Prepared",
    "Static",
    "Window",
    "allocate_static_slots",
    "fork_bonus",
    "make_policy",
    "policy_class",
    "policy_names",
    "prepare",
]

#: the type a replay takes: any registered policy's parameter dataclass
PolicyConfig = Policy

REGISTRY: dict[str, type[Policy]] = {
    "all-cpu": AllCpu,
    "layer-offload": LayerOffload,
    "fork": Fork,
    "lru": Lru,
    "window": Window,
    "decay": Decay,
    "static": Static,
    "belady": Belady,
    "lru-textbook": LruTextbook,
    "belady-textbook": BeladyTextbook,
}


def policy_names() -> list[str]:
    """Registered policy names."""
    return list(REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The parameter class of policy ``name`` (ValueError naming the known ones if unknown)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(REGISTRY)}") from None


def make_policy(name: str, **params: Any) -> Policy:
    """Build policy ``name`` with ``params``; unknown parameter names are errors."""
    cls = policy_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"policy {name!r} has no parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}"
        )
    return cls(**params)
