"""``fork``: ParmesanParty/llama.cpp's hot-expert compute cache.

Read from that fork's source (``common/arg.cpp``: ``--moe-hot-k`` / ``LLAMA_ARG_MOE_HOT_K``,
``--moe-hot-rebalance-interval`` / ``LLAMA_ARG_MOE_HOT_REBALANCE_INTERVAL`` with default 40;
``src/llama-graph.cpp`` ``moe_hot_pp_bypass_threshold``: ``LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS``, environment
only, default 0; ``src/llama-moe-hot-cache.cpp`` ``llama_moe_hot_cache_init``; ``src/llama-context.cpp``):

- slots per layer: every MoE layer gets exactly ``K`` slots (one global K, no pooling, no zero slot),
  plus two ``n_expert`` int32 id maps per layer;
- the cache engages only when the first MoE layer's expert tensors are in host memory (``-ot exps=CPU``),
  no LoRA is active and the build has CUDA; per-layer residency is not checked, so a command that keeps
  some layers' experts in VRAM is not priced here;
- ``K`` is not clamped to ``n_expert`` at init; a K above ``n_expert`` never leaves FILLING, so it is refused;
- only the ``qwen35moe`` graph builder hands the cache to ``build_moe_ffn`` (``src/models/qwen35moe.cpp``,
  ``build_layer_ffn``): for other architectures the flags do nothing and the command runs as mainline.
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
from hotexperts.studies.targets._llama import Flag, Invocation, expert_placement

__all__ = ["ForkTarget", "DEFAULT_INTERVAL"]

#: the fork's default rebalance interval (common/common.h ``moe_hot_rebalance_interval``)
DEFAULT_INTERVAL = 40
PP_BYPASS_VAR = "LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS"
_IGNORED_VARS = ("LLAMA_MOE_HOT_TELEMETRY", "LLAMA_MOE_HOT_TELEMETRY_FINE", "LLAMA_MOE_HOT_PERF",
                 "LLAMA_MOE_HOT_PERF_REPORT_EVERY")


class ForkTarget(Target):
    name: ClassVar[str] = "fork"
    title: ClassVar[str] = "ParmesanParty/llama.cpp hot-expert cache"
    families: ClassVar[tuple[str, ...]] = ("fork",)
    flags: ClassVar[tuple[Flag, ...]] = (
        Flag("moe_hot_k", ("--moe-hot-k",), "LLAMA_ARG_MOE_HOT_K"),
        Flag("moe_hot_interval", ("--moe-hot-rebalance-interval",), "LLAMA_ARG_MOE_HOT_REBALANCE_INTERVAL"),
    )
    env_vars: ClassVar[tuple[str, ...]] = (PP_BYPASS_VAR, *_IGNORED_VARS)
    file_names: ClassVar[tuple[str, ...]] = ("hotexperts.env",)
    #: only the qwen35moe graph builder passes the cache to build_moe_ffn (src/models/qwen35moe.cpp,
    #: build_layer_ffn)
    archs: ClassVar[tuple[str, ...]] = ("qwen35moe",)

    def suggest(self, trial: Any, ev: Any, family: str) -> Any:
        from hotexperts.studies.tune import Candidate

        k = trial.suggest_int("hot_k", 1, max(1, min(ev.kmax, ev.model.n_expert)))
        params = {
            "interval": trial.suggest_int("fork.interval", 10, 200, step=10),
            "pp_bypass": trial.suggest_categorical("fork.pp_bypass", [0, 8, 32, 64, 128, 512]),
        }
        return Candidate("fork", params, [k] * ev.model.n_moe_layers, target=self.name)

    def vram_extra(self, cand: Any, model: Any) -> float:
        # hot_map + cold_map: two int32 tables of n_expert entries per MoE layer
        return float(model.n_moe_layers * 8 * model.n_expert) if cand.policy == "fork" else 0.0

    def write(self, cand: Any, ctx: WriteContext) -> RunFiles:
        k = int(max(cand.slots))
        if any(int(s) != k for s in cand.slots):
            raise ValueError("the fork has one K for every layer; per-layer slots cannot be written for it")
        env = {
            "LLAMA_ARG_OVERRIDE_TENSOR": "exps=CPU",
            "LLAMA_ARG_MOE_HOT_K": str(k),
            "LLAMA_ARG_MOE_HOT_REBALANCE_INTERVAL": str(int(cand.params["interval"])),
            PP_BYPASS_VAR: str(int(cand.params.get("pp_bypass", 0))),
            **common_env(ctx),
        }
        return RunFiles(files={"hotexperts.env": env_file_text(self.title, env)}, env_file="hotexperts.env",
                        argv=common_args(ctx), env=env)

    def claims(self, inv: Invocation) -> bool:
        return inv.has("moe_hot_k") or inv.has("moe_hot_interval") or inv.has(PP_BYPASS_VAR)

    def read(self, inv: Invocation, ctx: ReadContext) -> Any:
        from hotexperts.studies.tune import Candidate

        model = ctx.model
        k = inv.int_of("moe_hot_k", 0, minimum=0) or 0
        interval = inv.int_of("moe_hot_interval", DEFAULT_INTERVAL) or 0
        try:
            bypass = max(0, int(str(inv.get(PP_BYPASS_VAR, "0")).strip() or 0))
        except ValueError:
            raise InputError(inv.origin, f"{PP_BYPASS_VAR} expects an integer, got {inv.get(PP_BYPASS_VAR)!r}") from None
        host = expert_placement(inv, model.n_layer, model.moe_layers)
        if k <= 0 or interval <= 0 or not host[0] or self.supports(model) is not None:
            # NOTE: the cache stays off; the command runs as mainline llama.cpp
            from hotexperts.studies.targets.mainline import MainlineTarget

            return MainlineTarget().read(inv, ctx)
        if k > model.n_expert:
            raise InputError(inv.origin, f"{inv.where('moe_hot_k')}={k} exceeds the model's {model.n_expert} experts per "
                                         "layer: the fork never leaves its FILLING phase (not priced)")
        host_layers_or_error(inv, model, "the fork's hot cache")
        return Candidate("fork", {"interval": interval, "pp_bypass": bypass}, [k] * model.n_moe_layers,
                         target=self.name)

