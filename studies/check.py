"""``hotexperts check``: read a llama-server command (and its environment) the way the runtime does, and
price it.

The command is reconstructed into the configuration the runtime executes (``hotexperts.studies.targets``:
which runtime's knobs it sets, slots per layer as that runtime derives them, the profile it loads), then
simulated on a trace with the same evaluator the tuner uses. Pointed at a folder written by
``hotexperts tune`` it reads ``llama-server.sh`` and the env file and profile it names, takes the model,
machine, budget and trace from ``tune.json`` and compares with the tuned prediction in ``best.json``: the
round trip of every run file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotexperts.errors import InputError
from hotexperts.studies.targets import REGISTRY, ReadContext, Target, get_target, parse_for_targets
from hotexperts.studies.targets._base import NON_QUANT_KV
from hotexperts.studies.targets._llama import Invocation, read_env_file, read_script

__all__ = ["CheckResult", "check", "detect_target", "serving_settings"]

GiB = float(1 << 30)
_FA_ON = ("on", "1", "true", "enabled", "auto")


@dataclass
class CheckResult:
    target: str
    candidate: Any
    result: Any
    vram: dict[str, Any]
    settings: dict[str, Any]
    tuned: dict[str, Any] | None
    origin: str

    def to_json(self) -> dict[str, Any]:
        r = self.result
        vb = {k: v for k, v in self.vram.items() if isinstance(v, (int, float, bool, str))}
        out: dict[str, Any] = {
            "origin": self.origin,
            "target": self.target,
            "policy": self.candidate.policy,
            "label": r.label,
            "mode": self.candidate.mode,
            "params": {k: v for k, v in r.params.items() if k != "counts"},
            "knobs": dict(self.candidate.knobs),
            "slots_per_layer": [int(x) for x in self.candidate.slots] if self.candidate.policy != "layer-offload"
            else [int(x) for x in self.vram.get("slots_per_layer", [])],
            "decode_tok_s": r.decode_tok_s,
            "prefill_tok_s": r.prefill_tok_s,
            "hit_rate": r.hit_rate,
            "vram_bytes": float(self.vram["total"]),
            "vram_gib": float(self.vram["total"]) / GiB,
            "budget_gib": float(self.vram["budget"]) / GiB,
            "headroom_gib": (float(self.vram["budget"]) - float(self.vram["total"])) / GiB,
            "fits": bool(self.vram["fits"]),
            "vram_breakdown": vb,
            "settings": self.settings,
        }
        if self.tuned is not None:
            out["tuned"] = self.tuned
        return out


def detect_target(inv: Invocation, name: str | None = None) -> Target:
    """The runtime whose knobs ``inv`` sets (``name`` forces one); mainline when none."""
    if name:
        t = get_target(name)
        if not t.runnable:
            raise InputError(inv.origin, f"target {name} has no command line to read")
        return t
    claimed = [t for t in REGISTRY.values() if t.runnable and t.claims(inv)]
    names = {t.name for t in claimed}
    if "turboquant" in names and "upstream-lru" in names:
        # NOTE: --moe-expert-cache with the turboquant fork's own variables: the fork runs it
        claimed = [t for t in claimed if t.name != "upstream-lru"]
    if len(claimed) > 1:
        raise InputError(inv.origin, f"the command sets knobs of several runtimes ({', '.join(t.name for t in claimed)}); "
                                     "pass --target to say which one runs it")
    return claimed[0] if claimed else REGISTRY["mainline"]


def serving_settings(inv: Invocation, model: Any) -> dict[str, Any]:
    """Context, KV cache type and ubatch of ``inv``; InputError naming a setting that is not priced."""
    ngl_raw = inv.get("n_gpu_layers")
    if ngl_raw is None:
        raise InputError(inv.origin, "-ngl is not set: only every layer on the GPU (e.g. -ngl 999) is priced, "
                                     "and llama.cpp's default differs between versions")
    if str(ngl_raw).strip().lower() != "all":
        ngl = inv.int_of("n_gpu_layers")
        assert ngl is not None
        if ngl < 0 or ngl <= model.n_layer:
            raise InputError(inv.origin, f"{inv.where('n_gpu_layers')}={ngl}: dense layers on the CPU are not priced "
                                         f"(use at least {model.n_layer + 1} for {model.name})")
    ctx = inv.int_of("ctx_size")
    if ctx is None or ctx <= 0:
        raise InputError(inv.origin, "-c (the context size) is not set: the KV cache it reserves is part of the VRAM")
    ktype = str(inv.get("cache_type_k", "f16"))
    vtype = str(inv.get("cache_type_v", "f16"))
    if ktype != vtype:
        raise InputError(inv.origin, f"different K and V cache types ({ktype}, {vtype}) are not priced")
    fa = str(inv.get("flash_attn", "auto")).strip().lower()
    if fa in ("true",):
        fa = "on"
    if vtype not in NON_QUANT_KV and fa not in _FA_ON:
        raise InputError(inv.origin, f"a quantized V cache ({vtype}) needs flash attention: llama.cpp refuses "
                                     f"{inv.where('flash_attn')}={fa}")
    ub = inv.int_of("ubatch", 512, minimum=1)
    b = inv.int_of("batch", 2048, minimum=1)
    assert ub is not None and b is not None
    return {"context": ctx, "kv_type": vtype, "ubatch": min(ub, b)}


def _model_arg(inv: Invocation, explicit: str | None, tune_cfg: dict[str, Any] | None, cwd: Path) -> str:
    if explicit:
        return explicit
    m = inv.get("model")
    if m:
        p = Path(str(m))
        p = p if p.is_absolute() else cwd / p
        if p.is_file():
            return str(p)
    if tune_cfg is not None:
        return str(tune_cfg["model"])
    raise InputError(inv.origin, f"model {m!r} is not a file here: name the model with --model (a preset or GGUF path)")


def check(
    script: str | Path | None = None,
    *,
    argv: list[str] | None = None,
    env_files: list[str] | None = None,
    model: str | None = None,
    hardware: str | None = None,
    vram_gb: float | None = None,
    trace: str | None = None,
    target: str | None = None,
    remap: bool | None = None,
) -> CheckResult:
    """Price a llama-server invocation (a run script, a tune folder, or argv + env files)."""
    from hotexperts.modelspec import load_model_spec
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.studies.tune import TuneConfig, build_evaluator, default_trace
    from hotexperts.tracer.trace import Trace

    tune_cfg: dict[str, Any] | None = None
    tuned_best: dict[str, Any] | None = None
    folder: Path | None = None
    env: dict[str, str] = {}
    if script is not None and Path(script).is_dir():
        folder = Path(script)
        tj = folder / "tune.json"
        if tj.is_file():
            try:
                tune_cfg = json.loads(tj.read_text(encoding="utf-8"))["config"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(tj, f"corrupt tune.json ({exc})") from None
        bj = folder / "best.json"
        if bj.is_file():
            try:
                tuned_best = json.loads(bj.read_text(encoding="utf-8"))["best"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(bj, f"corrupt best.json ({exc})") from None
        script = folder / "llama-server.sh"
        if not script.is_file():
            raise InputError(folder, "no llama-server.sh here (a lab study writes no run files)")
    if script is not None:
        args, env, cwd = read_script(script)
        origin = str(script)
    else:
        if not argv:
            raise InputError(None, "nothing to check: give a run script, a tune folder or -- llama-server ARGS")
        args, cwd, origin = list(argv), Path.cwd(), "<command>"
    for f in env_files or []:
        env = {**read_env_file(f), **env}
    inv = parse_for_targets(args, env, origin=origin)
    model_arg = _model_arg(inv, model, tune_cfg, cwd)
    spec = load_model_spec(model_arg)
    settings = serving_settings(inv, spec)
    hw_arg = hardware or (tune_cfg or {}).get("hardware")
    if not hw_arg:
        raise InputError(None, "--hardware is required (a preset name or profile JSON)")
    hw = load_hardware(hw_arg)
    budget = vram_gb if vram_gb is not None else (tune_cfg or {}).get("vram_gb")
    if budget is None:
        budget = hw.vram_bytes / GiB
    tgt = detect_target(inv, target)
    cand = tgt.read(inv, ReadContext(model=spec, cwd=cwd))
    do_remap = bool(remap if remap is not None else (tune_cfg or {}).get("remap", False))
    cfg = TuneConfig(model=model_arg, hardware=hw_arg, vram_gb=float(budget), context=settings["context"],
                     kv_type=settings["kv_type"], ubatch=settings["ubatch"], remap=do_remap, target="lab")
    if trace is not None:
        from hotexperts.tracer.inputs import open_trace

        tr = open_trace(trace, model=spec, quiet_inferred=True)
    elif folder is not None and (folder / "trace.hxt").is_file():
        tr = Trace.load(folder / "trace.hxt")
    else:
        tr = default_trace(spec, seed=int((tune_cfg or {}).get("seed", 0)), ubatch=settings["ubatch"])
    ev = build_evaluator(cfg, tr)
    res = ev.evaluate(cand)
    vb = ev.vram_of(cand)
    tuned = None
    if tuned_best is not None:
        want = float(tuned_best.get("decode_tok_s") or 0.0)
        got = float(res.decode_tok_s or 0.0)
        tuned = {
            "label": tuned_best.get("label"),
            "decode_tok_s": want,
            "prefill_tok_s": tuned_best.get("prefill_tok_s"),
            "vram_bytes": tuned_best.get("vram_bytes"),
            "decode_diff_pct": 100.0 * (got / want - 1.0) if want > 0 else math.nan,
        }
    return CheckResult(target=tgt.name, candidate=cand, result=res, vram=vb, settings=settings, tuned=tuned,
                       origin=origin)


def format_text(cr: CheckResult) -> str:
    """What ``hotexperts check`` prints."""
    d = cr.to_json()
    sl = d["slots_per_layer"]
    slots = (f"{sl[0]} per layer" if sl and all(x == sl[0] for x in sl) else
             f"{min(sl)}..{max(sl)} per layer ({sum(sl)} in all)") if sl else "none"
    lines = [
        f"{cr.origin}: {d['target']} runs {d['label']} ({d['mode']}), slots {slots}",
        f"  context {d['settings']['context']} ({d['settings']['kv_type']} KV cache), ubatch {d['settings']['ubatch']}",
        f"  predicted decode {d['decode_tok_s']:.2f} tok/s, prefill {(d['prefill_tok_s'] or 0):.1f} tok/s, "
        f"decode hit rate {100 * d['hit_rate']:.1f} %",
        "  VRAM (GiB):",
    ]
    vb = d["vram_breakdown"]
    for k in ("dense_weights", "expert_slots", "runtime_extra", "kv_cache", "recurrent_state", "compute_buffer", "overhead"):
        if k in vb and float(vb[k]) > 0:
            lines.append(f"    {k:<16} {float(vb[k]) / GiB:8.2f}")
    verdict = "fits" if d["fits"] else "DOES NOT FIT"
    lines.append(f"    {'total':<16} {d['vram_gib']:8.2f} of {d['budget_gib']:.2f}: {verdict}, "
                 f"headroom {d['headroom_gib']:.2f} GiB")
    if cr.tuned is not None:
        t = cr.tuned
        lines.append(f"  tuned prediction {t['decode_tok_s']:.2f} tok/s ({t['label']}): this command "
                     f"{t['decode_diff_pct']:+.2f} %")
    return "\n".join(lines)
