"""Run files: write a scored configuration for the runtime it targets, and nothing else.

The target (``hotexperts.studies.targets``) turns the configuration into its env file, profile and
``llama-server`` arguments; this module writes them atomically into the study folder with a
``llama-server.sh`` that sources the env file, and removes run files an earlier run into the same folder
left behind (every file name any target writes). ``mainline_placement`` is the best whole-layer
placement in a byte budget, reported beside the recommendation.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.modelspec import ModelSpec

__all__ = [
    "mainline_placement",
    "ot_patterns_for_gpu_layers",
    "model_path_for",
    "script_text",
    "write_run_files",
]


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


def model_path_for(model_arg: str) -> str:
    """The ``-m`` to write: the absolute path of a GGUF ``--model``, else a placeholder to replace."""
    if model_arg.lower().endswith(".gguf") and os.path.isfile(model_arg):
        return str(Path(model_arg).resolve())
    return "MODEL.gguf"


def script_text(rf: Any, *, header: Sequence[str] = ()) -> str:
    """``llama-server.sh``: run from its own folder, source the env file, exec llama-server."""
    lines = ["#!/bin/sh", *[f"# {h}" for h in header]]
    if "MODEL.gguf" in rf.argv:
        lines.append("# replace MODEL.gguf with the path of your GGUF model file")
    lines.append('cd "$(dirname "$0")"')
    if rf.env_file:
        lines += ["set -a", f". ./{rf.env_file}", "set +a"]
    lines.append("exec " + shlex.join(rf.argv))
    return "\n".join(lines) + "\n"


def write_run_files(out_dir: str | Path, cand: Any, ctx: Any, *, header: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``cand``'s run files for its target into ``out_dir``; remove other targets' stale ones.

    Returns ``{"target", "runnable", "files": {name: path}, "script", "command", "notes"}``.
    """
    from hotexperts.studies.targets import ALL_RUN_FILES, get_target

    out = Path(out_dir)
    target = get_target(cand.target)
    rf = target.write(cand, ctx)
    written: dict[str, str] = {}
    for name, text in rf.files.items():
        write_text_atomic(out / name, text)
        written[name] = str(out / name)
    script = None
    if rf.argv:
        script = out / "llama-server.sh"
        write_text_atomic(script, script_text(rf, header=header))
        os.chmod(script, os.stat(script).st_mode | 0o111)
        written["llama-server.sh"] = str(script)
    for name in ALL_RUN_FILES:
        if name not in written and (out / name).is_file():
            (out / name).unlink()
    return {
        "target": target.name,
        "runnable": target.runnable,
        "files": written,
        "script": None if script is None else str(script),
        "command": rf.command() if rf.argv else None,
        "notes": list(rf.notes),
    }
