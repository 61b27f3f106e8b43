"""``hotexperts sim ...`` and ``hotexperts hardware ...``: argument parsing only; the work is in
:func:`hotexperts.sim.simulate.simulate` and :mod:`hotexperts.sim.hardware`.

Policy options are generated from the policy parameter dataclasses (``hotexperts.policies.REGISTRY``):
every field becomes ``--field-name`` with the field's help text, so a new policy needs no CLI edit. A
field shared by several policies (e.g. ``pp_bypass``) is one option. Giving an option the chosen policy
does not have is an error. Fields whose type has no command-line form (arrays) are not offered. The slot
count is ``--hot-k`` (all policies that use slots).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from typing import Any

__all__ = ["register", "policy_options"]

_SKIP_TYPES = ("ndarray",)


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _int_list(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _converter(type_str: str) -> Any:
    t = type_str.replace(" ", "")
    if any(x in t for x in _SKIP_TYPES):
        return None
    if t.startswith("tuple[int"):
        return _int_list
    base = t.split("|")[0]
    return {"int": int, "float": float, "bool": _bool, "str": str}.get(base)


def policy_options() -> dict[str, dict[str, Any]]:
    """Option table generated from the registry: field name -> {type, help, policies}."""
    from hotexperts.policies import REGISTRY

    table: dict[str, dict[str, Any]] = {}
    for pname, cls in REGISTRY.items():
        for f in dataclasses.fields(cls):
            conv = _converter(str(f.type))
            if conv is None:
                continue
            ent = table.setdefault(f.name, {"type": conv, "helps": [], "policies": []})
            ent["policies"].append(pname)
            h = str(f.metadata.get("help", "")).replace("%", "%%")
            ent["helps"].append(f"{pname}: {h} (default {f.default!r})")
    return table


def register(sub: Any) -> None:
    from hotexperts.policies import REGISTRY

    p = sub.add_parser(
        "sim",
        help="replay a trace under a caching policy and predict decode/prefill tok/s, hit rate, PCIe and VRAM",
        description=(
            "Replay TRACE (.hxt, or a CSV/JSONL/MOET file the importer reads) under --policy on --model with "
            "--hardware and print hit rates, predicted tok/s, upload bytes and VRAM. Cost model: "
            "docs/cost-model.md."
        ),
    )
    p.add_argument("trace", metavar="TRACE", help="routing trace (.hxt or an importable format)")
    p.add_argument("--model", required=True, metavar="SPEC", help="model preset name or GGUF/JSON path")
    p.add_argument("--hardware", required=True, metavar="HW", help="hardware preset name or JSON profile")
    p.add_argument("--policy", required=True, choices=list(REGISTRY), help="caching policy")
    p.add_argument(
        "--hot-k", default=None, metavar="K", help="slots per MoE layer: one number or one per model layer (a,b,...)"
    )
    p.add_argument("--mode", default="cold-cpu", choices=["cold-cpu", "fetch-on-miss"], help="execution mode")
    p.add_argument("--vram-gb", type=float, default=None, metavar="G", help="VRAM budget in GiB (default: the card)")
    p.add_argument("--context", type=int, default=None, metavar="N", help="KV cache size in tokens (default: trace)")
    p.add_argument("--kv-type", default="q8_0", help="KV cache type (default q8_0)")
    p.add_argument("--ubatch", type=int, default=None, metavar="N", help="ubatch the compute buffer is sized for")
    p.add_argument("--pos-offset", type=int, default=0, metavar="N", help="add N tokens of context to every step")
    p.add_argument("--remap", action="store_true", help="map the trace's MoE layers onto the model's if they differ")
    p.add_argument("--sweep-k", default=None, metavar="K1,K2,...", help="simulate each K; print a hit-rate curve")
    p.add_argument("--timeline", default=None, metavar="FILE", help="write the per-step cost terms (CSV)")
    p.add_argument("--json", action="store_true", help="print JSON")
    g = p.add_argument_group("policy options (generated from the policy parameter classes)")
    for name, ent in policy_options().items():
        g.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"pol_{name}",
            type=ent["type"],
            default=None,
            help="; ".join(ent["helps"]),
        )
    p.set_defaults(func=_run_sim)

    h = sub.add_parser("hardware", help="list and show hardware profiles")
    hs = h.add_subparsers(dest="hardware_command", metavar="ACTION", required=True)
    hl = hs.add_parser("list", help="list built-in hardware presets")
    hl.set_defaults(func=_hw_list)
    hw = hs.add_parser("show", help="show a hardware profile (preset name or JSON file) with field help")
    hw.add_argument("name", metavar="HW")
    hw.add_argument("--json", action="store_true", help="print the profile as JSON")
    hw.set_defaults(func=_hw_show)


# ------------------------------------------------------------------------------------------ helpers
def _load_trace(path: str, model: Any) -> Any:
    from hotexperts.tracer.inputs import open_trace

    # NOTE: formats without an expert count: the inferred count is the model's, nothing to warn about
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = open_trace(path, model=model, quiet_inferred=True)
    for w in caught:
        print(f"hotexperts: warning: {w.message}", file=sys.stderr)
    return tr


def _policy(args: argparse.Namespace, model: Any) -> Any:
    from hotexperts.errors import InputError
    from hotexperts.policies import make_policy, policy_class

    cls = policy_class(args.policy)
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("pol_") and v is not None}
    foreign = sorted(set(given) - fields)
    if foreign:
        opts = ", ".join("--" + f.replace("_", "-") for f in foreign)
        raise InputError(None, f"policy {args.policy} has no option {opts}")
    if "expert_bytes" in fields and "expert_bytes" not in given:
        # NOTE: byte caps need an expert size; the model's mean expert size is the natural default
        given["expert_bytes"] = int(round(model.mean_expert_bytes))
    try:
        return make_policy(args.policy, **given)
    except (ValueError, TypeError) as exc:
        raise InputError(None, f"policy {args.policy}: {exc}") from None


def _slots(spec: str | None, policy: Any) -> Any:
    from hotexperts.errors import InputError

    if spec is None:
        if getattr(type(policy), "uses_slots", True):
            raise InputError(None, f"policy {policy.name} needs --hot-k K (slots per layer)")
        return 0
    try:
        v = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InputError(None, f"--hot-k: expected an integer or a comma-separated list, got {spec!r}") from None
    if not v:
        raise InputError(None, "--hot-k is empty")
    return v[0] if len(v) == 1 else v


def _summary(r: Any) -> str:
    vb = r.vram_breakdown
    gib = 2.0**30
    lines = [
        f"{r.label} on {r.model} / {r.hardware} ({r.mode}{', remapped' if r.remapped else ''})",
        f"  steps {r.n_steps}: {r.prefill_tokens} prefill + {r.decode_tokens} decode tokens, "
        f"{r.selections} routed selections, replay {r.replay_seconds * 1e3:.1f} ms",
        f"  decode hit rate {r.hit_rate:.4f} (per layer {min(r.hit_rate_per_layer, default=0):.3f}.."
        f"{max(r.hit_rate_per_layer, default=0):.3f})",
        "  decode  " + (f"{r.decode_tok_s:.2f} tok/s" if r.decode_tok_s else "-"),
        "  prefill " + (f"{r.prefill_tok_s:.1f} tok/s" if r.prefill_tok_s else "-"),
        f"  uploads {r.upload_experts} experts, {r.upload_bytes / 1e9:.2f} GB over PCIe"
        + (f" (+{r.prefill_copy_bytes / 1e9:.1f} GB prefill op-offload copies)" if r.prefill_copy_bytes else ""),
        f"  VRAM {vb['total'] / gib:.2f} GiB of {vb['budget'] / gib:.2f}: "
        + ("fits" if r.fits else "DOES NOT FIT")
        + f" (dense {vb['dense_weights'] / gib:.2f}, slots {vb['expert_slots'] / gib:.2f}, KV {vb['kv_cache'] / gib:.2f}, "
        f"state {vb['recurrent_state'] / gib:.2f}, compute {vb['compute_buffer'] / gib:.2f}, other {vb['overhead'] / gib:.2f})",
        "  decode ms/token: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r.terms_ms_per_decode_token.items() if v > 0),
    ]
    return "\n".join(lines)


def _write_timeline(path: str, r: Any) -> None:
    from hotexperts._atomic import atomic_open

    cols = r.cost.timeline()
    names = list(cols)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(names) + "\n")
        n = len(cols["step"])
        for i in range(n):
            fh.write(",".join(_fmt(cols[c][i]) for c in names) + "\n")


def _fmt(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.9g}"


# ------------------------------------------------------------------------------------------ commands
def _run_sim(args: argparse.Namespace) -> int:
    import math

    from hotexperts._atomic import check_output
    from hotexperts.errors import InputError
    from hotexperts.modelspec import KV_TYPE_BYTES, load_model_spec
    from hotexperts.sim.hardware import load_hardware
    from hotexperts.sim.simulate import simulate

    if args.timeline is not None:
        check_output(args.timeline)
    if args.vram_gb is not None and (not math.isfinite(args.vram_gb) or args.vram_gb <= 0):
        raise InputError(None, f"--vram-gb must be a positive number, got {args.vram_gb}")
    if args.context is not None and args.context < 0:
        raise InputError(None, f"--context must be >= 0, got {args.context}")
    if args.ubatch is not None and args.ubatch <= 0:
        raise InputError(None, f"--ubatch must be positive, got {args.ubatch}")
    if args.pos_offset < 0:
        raise InputError(None, f"--pos-offset must be >= 0, got {args.pos_offset}")
    if args.kv_type not in KV_TYPE_BYTES:
        raise InputError(None, f"unknown --kv-type {args.kv_type!r}; known: {', '.join(KV_TYPE_BYTES)}")
    if args.sweep_k is not None and not [x for x in args.sweep_k.split(",") if x.strip()]:
        raise InputError(None, f"--sweep-k lists no K: {args.sweep_k!r}")
    model = load_model_spec(args.model)
    hw = load_hardware(args.hardware)
    trace = _load_trace(args.trace, model)
    pol = _policy(args, model)
    common = dict(
        mode=args.mode, vram_gb=args.vram_gb, context=args.context, kv_type=args.kv_type, remap=args.remap,
        ubatch=args.ubatch, pos_offset=args.pos_offset, trace_path=args.trace,
    )
    if args.sweep_k:
        try:
            ks = [int(x) for x in args.sweep_k.split(",") if x.strip()]
        except ValueError:
            raise InputError(None, f"--sweep-k: expected comma-separated integers, got {args.sweep_k!r}") from None
        def one(i_k: tuple[int, int]) -> Any:
            return simulate(trace, model, hw, pol, i_k[1], warm_up=(i_k[0] == 0), keep_arrays=False, **common)

        results = [one((0, ks[0]))] if ks else []
        if type(pol).layer_independent or len(ks) < 3:
            # NOTE: each replay already runs chunks of layers on every core
            results += [one(x) for x in enumerate(ks[1:], 1)]
        else:
            # NOTE: one K per thread (the kernels release the GIL), after the first compiled the kernels
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=max(1, min(len(ks) - 1, os.cpu_count() or 1))) as pool:
                results += list(pool.map(one, enumerate(ks[1:], 1)))
        rows = [
            {"K": k, "label": r.label, "hit_rate": r.hit_rate, "decode_tok_s": r.decode_tok_s,
             "prefill_tok_s": r.prefill_tok_s, "upload_bytes": r.upload_bytes, "vram_bytes": r.vram_bytes,
             "fits": r.fits, "replay_seconds": r.replay_seconds}
            for k, r in zip(ks, results)
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'K':>5} {'hit':>7} {'decode tok/s':>13} {'prefill tok/s':>14} {'upload GB':>10} {'VRAM GiB':>9} fits")
            for row in rows:
                print(f"{row['K']:5d} {row['hit_rate']:7.4f} {row['decode_tok_s'] or 0:13.2f} "
                      f"{row['prefill_tok_s'] or 0:14.1f} {row['upload_bytes'] / 1e9:10.2f} "
                      f"{row['vram_bytes'] / 2**30:9.2f} {'yes' if row['fits'] else 'NO'}")
        return 0
    slots = _slots(args.hot_k, pol)
    r = simulate(trace, model, hw, pol, slots, **common)
    if args.timeline is not None:
        _write_timeline(args.timeline, r)
    if args.json:
        print(json.dumps(r.to_json(), indent=2))
    else:
        print(_summary(r))
    return 0


def _hw_list(args: argparse.Namespace) -> int:
    from hotexperts.sim.hardware import hardware_presets, load_hardware

    for n in hardware_presets():
        hw = load_hardware(n)
        print(f"{n:18s} VRAM {hw.vram_bytes / 2**30:6.1f} GiB, GPU {hw.gpu_mem_bw:g} GB/s, PCIe pinned "
              f"{hw.pcie_pinned_bw:g} GB/s, CPU experts {hw.cpu_expert_bw:.1f} GB/s")
    return 0


def _hw_show(args: argparse.Namespace) -> int:
    from hotexperts.sim.hardware import field_help, load_hardware

    hw = load_hardware(args.name)
    if args.json:
        print(json.dumps(hw.to_dict(), indent=2))
        return 0
    d = hw.to_dict()
    for name, unit, help_text, _default in field_help():
        if name in ("source", "notes", "fitted"):
            continue
        v = d[name]
        tag = " (fitted)" if name in hw.fitted else ""
        vs = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else ("null" if v is None else f"{v:g}" if isinstance(v, float) else str(v))
        print(f"{name:24s} {vs:>16s} {unit:8s}{tag}  {help_text}")
    print(f"\nsource: {hw.source}\nnotes: {hw.notes}")
    return 0
