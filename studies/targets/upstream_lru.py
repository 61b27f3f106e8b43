"""``upstream-lru``: the GPU-resident LRU expert cache of llama.cpp pull request #27861.

``--moe-expert-cache N`` (``LLAMA_ARG_MOE_EXPERT_CACHE``) gives every MoE layer whose experts are in host
memory (and whose router is on the GPU) the same ``N`` slots plus one permanent zero slot, and a
``n_expert`` int32 id table; ``--moe-expert-cache-inserts M`` (``LLAMA_ARG_MOE_EXPERT_CACHE_INSERTS``,
default 2) caps the uploads per layer per step. Only ubatches of at most 4 tokens are observed and the
cache path runs for single-token ubatches (``hotexperts.policies.lru``). N is not clamped to the expert
count: rows beyond ``n_expert`` cost VRAM and never hold an expert. The same mechanism is carried by
sirxsniper/llama-cpp-turboquant (``src/llama-moecache.cpp``, ``llama_moe_cache_init`` and
``llama_moe_cache_step``). The flag and variable names are the PR's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hotexperts.errors import InputError
from hotexperts.studies.targets._base import (
    ReadContext,
    RunFiles,
    Target,
    WriteContext,
    common_args,
    common_env,
    env_file_text,
    host_layers_or_error,
)
from hotexperts.studies.targets._llama import Flag, Invocation

__all__ = ["UpstreamLruTarget", "LRU_FLAGS", "DEFAULT_INSERTS", "lru_suggest", "lru_read", "lru_write", "lru_vram_extra"]

DEFAULT_INSERTS = 2
LRU_FLAGS: tuple[Flag, ...] = (
    Flag("moe_expert_cache", ("--moe-expert-cache",), "LLAMA_ARG_MOE_EXPERT_CACHE"),
    Flag("moe_expert_cache_inserts", ("--moe-expert-cache-inserts",), "LLAMA_ARG_MOE_EXPERT_CACHE_INSERTS"),
)


def lru_suggest(trial: Any, ev: Any, target: str) -> Any:
    from hotexperts.studies.tune import Candidate

    k = trial.suggest_int("hot_k", 1, max(1, ev.kmax))
    m = trial.suggest_int("lru.inserts", 1, 16, log=True)
    return Candidate("lru", {"inserts": m}, [k] * ev.model.n_moe_layers, target=target)


def lru_vram_extra(cand: Any, model: Any) -> float:
    """The zero slot of every layer, rows past ``n_expert`` (``knobs['rows']``) and the id table."""
    if cand.policy != "lru":
        return 0.0
    extra = 0.0
    rows = int(cand.knobs.get("rows", 0))
    for s, b in zip(cand.slots, model.expert_bytes):
        extra += float(max(rows, int(s) + 1) - int(s)) * b + 4.0 * model.n_expert
    return extra


def lru_write(cand: Any, ctx: WriteContext, title: str, env_name: str, extra_env: dict[str, str] | None = None) -> RunFiles:
    n = int(max(cand.slots))
    if any(int(s) != n for s in cand.slots):
        raise ValueError("--moe-expert-cache has one slot count for every layer; per-layer slots cannot be written")
    env = {"LLAMA_ARG_OVERRIDE_TENSOR": "exps=CPU", **(extra_env or {}), **common_env(ctx)}
    argv = common_args(ctx) + ["--moe-expert-cache", str(n), "--moe-expert-cache-inserts",
                               str(int(cand.params.get("inserts", DEFAULT_INSERTS)))]
    return RunFiles(files={env_name: env_file_text(title, env)}, env_file=env_name, argv=argv, env=env)


def lru_read(inv: Invocation, ctx: ReadContext, target: str) -> Any:
    from hotexperts.studies.tune import Candidate

    model = ctx.model
    n = inv.int_of("moe_expert_cache", 0, minimum=0) or 0
    m = inv.int_of("moe_expert_cache_inserts", DEFAULT_INSERTS, minimum=0)
    if n <= 0:
        from hotexperts.studies.targets.mainline import MainlineTarget

        return MainlineTarget().read(inv, ctx)
    host_layers_or_error(inv, model, "--moe-expert-cache")
    if m == 0:
        raise InputError(inv.origin, f"{inv.where('moe_expert_cache_inserts')}=0 never fills the cache (not priced)")
    k = min(n, model.n_expert)
    return Candidate("lru", {"inserts": int(m or DEFAULT_INSERTS)}, [k] * model.n_moe_layers, target=target,
                     knobs={"rows": n + 1} if n > k else {})


class UpstreamLruTarget(Target):
    name: ClassVar[str] = "upstream-lru"
    title: ClassVar[str] = "llama.cpp PR #27861 GPU-resident LRU expert cache"
    families: ClassVar[tuple[str, ...]] = ("lru",)
    flags: ClassVar[tuple[Flag, ...]] = LRU_FLAGS
    file_names: ClassVar[tuple[str, ...]] = ("upstream-lru.env",)

    def suggest(self, trial: Any, ev: Any, family: str) -> Any:
        return lru_suggest(trial, ev, self.name)

    def vram_extra(self, cand: Any, model: Any) -> float:
        return lru_vram_extra(cand, model)

    def write(self, cand: Any, ctx: WriteContext) -> RunFiles:
        return lru_write(cand, ctx, self.title, "upstream-lru.env")

    def claims(self, inv: Invocation) -> bool:
        return inv.has("moe_expert_cache") or inv.has("moe_expert_cache_inserts")

    def read(self, inv: Invocation, ctx: ReadContext) -> Any:
        return lru_read(inv, ctx, self.name)
