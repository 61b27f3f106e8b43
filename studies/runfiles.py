"""Run files: turn a recommended configuration into what llama.cpp and its forks read.

- ``hotexperts.env`` for the ParmesanParty fork (``LLAMA_ARG_MOE_HOT_K``, ``..._REBALANCE_INTERVAL``,
  ``LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS``; experts kept on the host with ``LLAMA_ARG_OVERRIDE_TENSOR=exps=CPU``,
  which the cache needs);
- ``turboquant.env`` for the sirxsniper/llama-cpp-turboquant fork's policies (LRU cache
  ``--moe-expert-cache`` + ``LLAMA_MOE_CACHE_INSERTS``; the hot set: ``LLAMA_MOE_HOT_PROFILE``,
  ``LLAMA_MOE_HOT_MIB``, ``LLAMA_MOE_HOT_ADAPT``/``_ADMIT``/``_HYST``/``_ADAPT_MIB`` for the window policy,
  ``LLAMA_MOE_HOT_DECAY``/``_EVERY``/``_ADMIT``/``_RATIO``/``_HYST``/``_MIB`` and ``LLAMA_MOE_HOT_SEED`` for
  decayed counts; variable names read from that fork's ``src/llama-moecache.h`` and ``llama-moe-decay.h``);
- a ``llama-server`` command line;
- for mainline llama.cpp, the best static placement of whole layers' experts: ``--n-cpu-moe N`` and the
  equivalent (or better) explicit ``-ot`` override-tensor patterns.

Everything here is plain string building from a :class:`RunConfig`; files are written atomically.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.modelspec import ModelSpec

__all__ = [
    "RunConfig",
    "fork_env",
    "turboquant_env",
    "llama_server_command",
    "mainline_placement",
    "ot_patterns_for_gpu_layers",
    "write_run_files",
]


@dataclass(frozen=True)
class RunConfig:
    """A configuration to run: the policy, its parameters and the per-model-layer slot counts."""

    policy: str
    params: dict[str, Any]
    slots: tuple[int, ...]  # per MoE layer of the model (moe_layers order)
    context: int
    kv_type: str = "q8_0"
    ubatch: int = 512
    model_path: str = "MODEL.gguf"
    gpu_layers: tuple[int, ...] = field(default=())  # layer-offload: model layers whose experts are on the GPU


def _common_env(rc: RunConfig) -> list[str]:
    lines = [
        f"LLAMA_ARG_CTX_SIZE={rc.context}",
        "LLAMA_ARG_N_GPU_LAYERS=999",
        f"LLAMA_ARG_UBATCH={rc.ubatch}",
        f"LLAMA_ARG_BATCH={rc.ubatch}",
    ]
    if rc.kv_type not in ("f16", "f32", "bf16"):
        # NOTE: llama.cpp needs flash attention for a quantized V cache.
        lines += ["LLAMA_ARG_FLASH_ATTN=on", f"LLAMA_ARG_CACHE_TYPE_K={rc.kv_type}", f"LLAMA_ARG_CACHE_TYPE_V={rc.kv_type}"]
    return lines


def fork_env(rc: RunConfig) -> str:
    """``hotexperts.env`` for the ParmesanParty fork (uniform K; the fork has one global K)."""
    k = max(rc.slots) if rc.slots else 0
    p = rc.params
    lines = [
        "# hotexperts: ParmesanParty llama.cpp hot-expert cache settings (source this file, then start llama-server)",
        "LLAMA_ARG_OVERRIDE_TENSOR=exps=CPU",
        f"LLAMA_ARG_MOE_HOT_K={k}",
        f"LLAMA_ARG_MOE_HOT_REBALANCE_INTERVAL={int(p.get('interval', 40))}",
        f"LLAMA_MOE_HOT_PP_BYPASS_N_TOKENS={int(p.get('pp_bypass', 0))}",
        *_common_env(rc),
    ]
    return "\n".join(lines) + "\n"


def turboquant_env(rc: RunConfig, model: ModelSpec, *, profile_path: str | None = None) -> str:
    """Environment for the turboquant fork's policy ``rc.policy`` (lru, window, decay or static)."""
    p = rc.params
    mib = _slot_mib(rc.slots, model)
    lines = ["# hotexperts: sirxsniper/llama-cpp-turboquant settings", "LLAMA_ARG_OVERRIDE_TENSOR=exps=CPU"]
    if rc.policy == "lru":
        lines.append(f"LLAMA_MOE_CACHE_INSERTS={int(p.get('inserts', 2))}")
        lines.append(f"# start with: --moe-expert-cache {max(rc.slots) if rc.slots else 0}")
    elif rc.policy in ("window", "decay", "static"):
        lines.append(f"LLAMA_MOE_HOT_PROFILE={profile_path or 'even'}")
        lines.append(f"LLAMA_MOE_HOT_MIB={mib}")
        lines.append("LLAMA_MOE_HOT_SECTION=decode_union")
        if rc.policy == "window":
            lines += [
                "LLAMA_MOE_HOT_ADAPT=1",
                f"LLAMA_MOE_HOT_ADMIT={int(p.get('min_sightings', 3))}/{int(p.get('window', 16))}",
                f"LLAMA_MOE_HOT_HYST={int(p.get('hyst', 1))}",
                f"LLAMA_MOE_HOT_ADAPT_MIB={_mib(p.get('cap_bytes', 64 << 20))}",
            ]
        elif rc.policy == "decay":
            lines += [
                "LLAMA_MOE_HOT_ADAPT=1",
                f"LLAMA_MOE_HOT_DECAY={p.get('decay', 0.92)}",
                f"LLAMA_MOE_HOT_DECAY_EVERY={int(p.get('every', p.get('pass_interval', 2)))}",
                f"LLAMA_MOE_HOT_DECAY_ADMIT={p.get('admit', 2.0)}",
                f"LLAMA_MOE_HOT_DECAY_RATIO={p.get('ratio', 1.2)}",
                f"LLAMA_MOE_HOT_DECAY_HYST={p.get('hyst', p.get('margin', 0.5))}",
                f"LLAMA_MOE_HOT_DECAY_MIB={_mib(p.get('cap_bytes', 128 << 20))}",
                f"LLAMA_MOE_HOT_SEED={p.get('seed', p.get('prompt_weight', 0.03))}",
            ]
    else:
        raise ValueError(f"the turboquant fork has no policy {rc.policy!r}")
    lines += _common_env(rc)
    return "\n".join(lines) + "\n"


def _mib(nbytes: Any) -> int:
    return max(1, int(nbytes) >> 20)


def _slot_mib(slots: Sequence[int], model: ModelSpec) -> int:
    total = sum(int(s) * int(b) for s, b in zip(slots, model.expert_bytes))
    return (total + (1 << 20) - 1) >> 20


def ot_patterns_for_gpu_layers(model: ModelSpec, gpu_layers: Sequence[int]) -> str:
    """``-ot`` patterns keeping every MoE layer's experts on the CPU except ``gpu_layers``.

    llama.cpp applies the first matching pattern, so one CPU pattern listing the host layers suffices.
    """
    host = [il for il in model.moe_layers if il not in set(gpu_layers)]
    if not host:
        return ""
    return r"blk\.(" + "|".join(str(il) for il in host) + r")\.ffn_.*_exps\.=CPU"


def mainline_placement(model: ModelSpec, budget_bytes: int) -> dict[str, Any]:
    """The best placement of whole layers' experts within ``budget_bytes`` for mainline llama.cpp.

    Every MoE layer serves the same number of routed experts per token, so a layer moved to the GPU
    saves time in proportion to its expert bytes and costs VRAM in the same proportion, plus a fixed
    per-layer hand-off saved: the best set is the most layers that fit, smallest layers first.
    ``--n-cpu-moe N`` can only keep the *last* layers, so both are reported.
    """
    order = sorted(range(model.n_moe_layers), key=lambda i: (model.expert_bytes[i], -model.moe_layers[i]))
    used, chosen = 0, []
    for i in order:
        b = model.expert_bytes[i] * model.n_expert
        if used + b > budget_bytes:
            break
        used += b
        chosen.append(model.moe_layers[i])
    # --n-cpu-moe: keep the last n_layer - N layers' experts on the GPU
    used_n, n_gpu = 0, 0
    for i in reversed(range(model.n_moe_layers)):
        b = model.expert_bytes[i] * model.n_expert
        if used_n + b > budget_bytes:
            break
        used_n += b
        n_gpu += 1
    n_cpu_moe = model.n_layer - n_gpu if n_gpu else model.n_layer
    return {
        "gpu_layers": sorted(chosen),
        "gpu_expert_bytes": used,
        "override_tensor": ot_patterns_for_gpu_layers(model, chosen),
        "n_cpu_moe": n_cpu_moe,
        "n_cpu_moe_gpu_layers": n_gpu,
        "n_cpu_moe_expert_bytes": used_n,
    }


def llama_server_command(rc: RunConfig, model: ModelSpec, *, env_file: str | None = None) -> str:
    """A ``llama-server`` command line for the configuration."""
    args = ["llama-server", "-m", rc.model_path, "-c", str(rc.context), "-ngl", "999", "-ub", str(rc.ubatch), "-b", str(rc.ubatch)]
    if rc.kv_type not in ("f16", "f32", "bf16"):
        args += ["-fa", "on", "-ctk", rc.kv_type, "-ctv", rc.kv_type]
    if rc.policy == "all-cpu":
        args += ["-ot", "exps=CPU"]
    elif rc.policy == "layer-offload":
        pat = ot_patterns_for_gpu_layers(model, rc.gpu_layers)
        if pat:
            args += ["-ot", pat]
    elif rc.policy == "lru":
        args += ["-ot", "exps=CPU", "--moe-expert-cache", str(max(rc.slots) if rc.slots else 0)]
    else:
        args += ["-ot", "exps=CPU"]
        if rc.policy == "fork":
            k = max(rc.slots) if rc.slots else 0
            args += ["--moe-hot-k", str(k), "--moe-hot-rebalance-interval", str(int(rc.params.get("interval", 40)))]
    cmd = shlex.join(args)
    if env_file:
        cmd = f"set -a; . {shlex.quote(env_file)}; set +a; {cmd}"
    return cmd


def write_run_files(
    out_dir: str | Path,
    rc: RunConfig,
    model: ModelSpec,
    *,
    vram_budget_bytes: int,
    profile: Any = None,
) -> dict[str, str]:
    """Write the run files for ``rc`` into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    written: dict[str, str] = {}
    if rc.policy == "fork":
        write_text_atomic(out / "hotexperts.env", fork_env(rc))
        written["fork_env"] = str(out / "hotexperts.env")
    profile_path = None
    if profile is not None:
        from hotexperts.tracer.profile import write_moeprof

        write_moeprof(profile, out / "hotexperts.moeprof")
        written["moeprof"] = str(out / "hotexperts.moeprof")
        profile_path = "hotexperts.moeprof"
    if rc.policy in ("lru", "window", "decay", "static"):
        write_text_atomic(out / "turboquant.env", turboquant_env(rc, model, profile_path=profile_path))
        written["turboquant_env"] = str(out / "turboquant.env")
    env_file = "hotexperts.env" if rc.policy == "fork" else ("turboquant.env" if "turboquant_env" in written else None)
    placement = mainline_placement(model, vram_budget_bytes)
    mainline = (
        "# mainline llama.cpp: best static placement of whole layers' experts in the same expert budget\n"
        f"# --n-cpu-moe (keeps the last layers on the GPU): {placement['n_cpu_moe']}"
        f" ({placement['n_cpu_moe_gpu_layers']} layers, {placement['n_cpu_moe_expert_bytes'] / 2**30:.2f} GiB)\n"
        f"# explicit layers ({len(placement['gpu_layers'])}, {placement['gpu_expert_bytes'] / 2**30:.2f} GiB): "
        f"{placement['gpu_layers']}\n"
        f"-ot '{placement['override_tensor']}'\n"
    )
    write_text_atomic(out / "mainline-placement.txt", mainline)
    written["mainline"] = str(out / "mainline-placement.txt")
    cmd = llama_server_command(rc, model, env_file=env_file)
    write_text_atomic(out / "llama-server.sh", "#!/bin/sh\n# generated by hotexperts tune\n" + cmd + "\n")
    written["llama_server"] = str(out / "llama-server.sh")
    return written
