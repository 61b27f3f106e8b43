"""``mainline``: llama.cpp itself, whole layers' experts placed in VRAM or host memory.

Read from ggml-org/llama.cpp (``common/arg.cpp``: ``--n-cpu-moe N`` / ``LLAMA_ARG_N_CPU_MOE`` appends a
CPU override for each of the first ``N`` model layers, ``--cpu-moe`` / ``LLAMA_ARG_CPU_MOE`` one for every
layer, ``-ot`` / ``LLAMA_ARG_OVERRIDE_TENSOR`` appends ``regex=buffer type`` items; environment overrides
come before command-line ones; ``src/llama-model-loader.cpp`` ``create_tensor``: the first override whose
pattern ``regex_search``-es the tensor name wins). A MoE layer's experts are on the GPU when no override
sends them to host memory (``-ngl`` covering every layer).

A study proposes the number of MoE layers whose experts go to VRAM and, when layers differ in expert
size, which ones: the last layers (written as ``--n-cpu-moe N``) or the smallest (written as one ``-ot``
pattern listing the host layers).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from hotexperts.studies.targets._base import (
    ReadContext,
    RunFiles,
    Target,
    WriteContext,
    common_args,
    common_env,
    env_file_text,
)
from hotexperts.studies.targets._llama import Invocation, expert_placement

__all__ = ["MainlineTarget", "ot_pattern_for_host_layers", "smallest_layers", "n_cpu_moe_for_last"]


def ot_pattern_for_host_layers(host_layers: list[int]) -> str:
    """One ``-ot`` item sending the experts of ``host_layers`` (model layer ids) to host memory."""
    if not host_layers:
        return ""
    return r"blk\.(" + "|".join(str(il) for il in host_layers) + r")\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"


def smallest_layers(model: Any, n: int) -> list[int]:
    """The ``n`` MoE layers with the smallest experts (ties: later layers first), as model layer ids."""
    order = sorted(range(model.n_moe_layers), key=lambda i: (model.expert_bytes[i], -model.moe_layers[i]))
    return sorted(model.moe_layers[i] for i in order[:n])


def n_cpu_moe_for_last(model: Any, n: int) -> int:
    """``--n-cpu-moe`` keeping exactly the last ``n`` MoE layers' experts in VRAM."""
    return int(model.moe_layers[model.n_moe_layers - n]) if n > 0 else int(model.n_layer)


class MainlineTarget(Target):
    name: ClassVar[str] = "mainline"
    title: ClassVar[str] = "llama.cpp (whole layers' experts placed with --n-cpu-moe / -ot)"
    families: ClassVar[tuple[str, ...]] = ("layer-offload", "all-cpu")
    file_names: ClassVar[tuple[str, ...]] = ("mainline.env",)

    def suggest(self, trial: Any, ev: Any, family: str) -> Any:
        from hotexperts.studies.tune import Candidate

        model = ev.model
        n = model.n_moe_layers
        if family == "all-cpu":
            return Candidate("all-cpu", {}, [0] * n, target=self.name)
        n_gpu = trial.suggest_int("layer-offload.gpu_layers", 0, n)
        order = "last"
        if len(set(model.expert_bytes)) > 1:
            order = trial.suggest_categorical("layer-offload.order", ["last", "smallest"])
        return self.placement(model, n_gpu, order)

    def placement(self, model: Any, n_gpu: int, order: str = "last") -> Any:
        from hotexperts.studies.tune import Candidate

        n = model.n_moe_layers
        if order == "last" or n_gpu <= 0:
            return Candidate("layer-offload", {"n_cpu_moe": n_cpu_moe_for_last(model, n_gpu)}, [0] * n,
                             target=self.name)
        return Candidate("layer-offload", {"gpu_layers": smallest_layers(model, n_gpu)}, [0] * n,
                         target=self.name, knobs={"order": "smallest"})

    def write(self, cand: Any, ctx: WriteContext) -> RunFiles:
        model = ctx.model
        env: dict[str, str] = {}
        if cand.policy == "all-cpu":
            env["LLAMA_ARG_OVERRIDE_TENSOR"] = "exps=CPU"
        elif "n_cpu_moe" in cand.params and cand.params["n_cpu_moe"] is not None:
            env["LLAMA_ARG_N_CPU_MOE"] = str(int(cand.params["n_cpu_moe"]))
        else:
            gpu = {int(x) for x in cand.params.get("gpu_layers", ())}
            pat = ot_pattern_for_host_layers([il for il in model.moe_layers if il not in gpu])
            if pat:
                env["LLAMA_ARG_OVERRIDE_TENSOR"] = pat
        env.update(common_env(ctx))
        return RunFiles(files={"mainline.env": env_file_text(self.title, env)}, env_file="mainline.env",
                        argv=common_args(ctx), env=env)

    def read(self, inv: Invocation, ctx: ReadContext) -> Any:
        from hotexperts.studies.tune import Candidate

        model = ctx.model
        host = np.asarray(expert_placement(inv, model.n_layer, model.moe_layers), bool)
        n = model.n_moe_layers
        if host.all():
            return Candidate("all-cpu", {}, [0] * n, target=self.name)
        n_gpu = int((~host).sum())
        if bool((~host[n - n_gpu:]).all()):
            return Candidate("layer-offload", {"n_cpu_moe": n_cpu_moe_for_last(model, n_gpu)}, [0] * n,
                             target=self.name)
        gpu = [int(il) for il, h in zip(model.moe_layers, host) if not h]
        return Candidate("layer-offload", {"gpu_layers": gpu}, [0] * n, target=self.name)
