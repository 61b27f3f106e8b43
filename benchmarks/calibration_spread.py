"""How much do fresh-process calibrations of one machine disagree, and how far apart are their predictions?

Reads ``DIR/before-*/hw.json`` and ``DIR/after-*/hw.json`` (written by ``benchmarks/gpu_stability.sh``: the
single-pass calibrate of commit 97b4a2c and the current interleaved-rounds one, alternating, fresh processes)
and prints, per profile parameter, each group's values and their spread ``(max - min) / median``, with the
current calibrate's own 95 % intervals; then the cost model's predictions for the reference configurations
(:func:`hotexperts.runtime.calibrate.reference_predictions`) under every profile and their spread per group.
With ``--validation validation.json`` (a ``hotexperts validate --compare-hardware`` output), the spread of the
predictions of every validated configuration, per group. Writes the numbers to ``--json``.

Usage: python benchmarks/calibration_spread.py DIR [--model SPEC] [--validation V.json] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _spread(v: list[float]) -> float:
    a = np.asarray(v, float)
    med = float(np.median(a))
    return float((a.max() - a.min()) / abs(med) * 100.0) if med else (0.0 if a.max() == a.min() else float("inf"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--model", default=None, help="model preset of the engine shape (default: by expert count)")
    ap.add_argument("--validation", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--trace", default=None, help="with --validation: the validated trace, to compute each parameter "
                    "interval's shift of every validated configuration's prediction (after-1's intervals)")
    args = ap.parse_args(argv)
    from hotexperts.modelspec import load_model_spec
    from hotexperts.runtime.calibrate import PROFILE_PARAMS, reference_predictions
    from hotexperts.runtime.engine import EngineShape
    from hotexperts.sim.hardware import HardwareProfile

    d = Path(args.dir)
    groups: dict[str, list[Path]] = {g: sorted(d.glob(f"{g}-*/hw.json")) for g in ("before", "after")}
    if not any(groups.values()):
        print(f"no */hw.json under {d}", file=sys.stderr)
        return 1
    first = next(p for ps in groups.values() for p in ps)
    raw0 = json.loads(first.with_name("hw.raw.json").read_text())
    es = raw0["engine_shape"]
    model = load_model_spec(args.model or ("qwen3.5-122b-a10b-q4_k_l" if es["n_expert"] == 256 else "mixtral-8x7b-q4_k_m"))
    espec = EngineShape(**es).model_spec(model)
    out: dict[str, Any] = {"dir": str(d), "engine": es, "params": {}, "reference_predictions": {}}
    print(f"{d}: engine {es['n_layers']} layers, {es['dtype']} experts; "
          + ", ".join(f"{g} x{len(ps)}" for g, ps in groups.items()))
    print(f"{'parameter':24s} {'before (fresh processes)':>32s} {'spread':>7s}   {'after':>32s} {'spread':>7s}  "
          f"after's own 95 % CI half-widths")
    profs = {g: [HardwareProfile.load(p) for p in ps] for g, ps in groups.items()}
    raws = {g: [json.loads(p.with_name("hw.raw.json").read_text()) for p in ps] for g, ps in groups.items()}
    for par in PROFILE_PARAMS:
        row: dict[str, Any] = {}
        cells = []
        for g in ("before", "after"):
            vals = [float(getattr(h, par)) for h in profs[g]]
            row[g] = vals
            row[f"{g}_spread_pct"] = _spread(vals) if vals else None
            cells.append(f"{' '.join(f'{v:9.4g}' for v in vals):>32s} {(_spread(vals) if vals else 0):6.1f}%")
        hw_ci = [r["intervals"][par]["rel_halfwidth"] * 100 for r in raws["after"] if "intervals" in r]
        row["after_ci_rel_halfwidth_pct"] = hw_ci
        out["params"][par] = row
        print(f"{par:24s} {cells[0]}   {cells[1]}  " + " ".join(f"{v:5.1f}%" for v in hw_ci))
    print("reference predictions (tok/s) under each profile, spread per group:")
    for g in ("before", "after"):
        preds = [reference_predictions(espec, h) for h in profs[g]]
        if not preds:
            continue
        sp = {name: _spread([p[name] for p in preds]) for name in preds[0]}
        out["reference_predictions"][g] = {"tok_s": preds, "spread_pct": sp}
        print(f"  {g:6s} " + ", ".join(f"{n} {sp[n]:.1f}%" for n in sp) + f"  (max {max(sp.values()):.1f} %)")
    if args.validation:
        v = json.loads(Path(args.validation).read_text())
        out["validation"] = {}
        print(f"validated configurations ({args.validation}): spread of predictions per group")
        for r in v["configs"]:
            by = r["predicted_by_profile_tok_s"]
            grp: dict[str, list[float]] = {"before": [], "after": []}
            for label, t in by.items():
                g = "after" if label == "main" or "/after-" in label else ("before" if "/before-" in label else "")
                if g:
                    grp[g].append(float(t))
            sp = {g: _spread(x) for g, x in grp.items() if x}
            out["validation"][r["name"]] = {"spread_pct": sp, "by_profile": by}
            print(f"  {r['name']:30s} " + "  ".join(f"{g} {s:5.1f}%" for g, s in sp.items()))
    if args.validation and args.trace:
        from hotexperts.runtime.validate import default_configs, load_any_trace, offline_predictions

        v = json.loads(Path(args.validation).read_text())
        tr = load_any_trace(args.trace, n_expert=model.n_expert)
        cfgs = default_configs(es["n_layers"], model.n_expert)
        assert [c.name for c in cfgs] == [r["name"] for r in v["configs"]], "not the default configurations"
        main_hw = groups["after"][0]
        ivs = json.loads(main_hw.with_name("hw.raw.json").read_text())["intervals"]
        off = offline_predictions(trace=tr, model=model, hardware=[main_hw], configs=cfgs, n_layers=es["n_layers"],
                                  dtype=es["dtype"], tokens=v["trace"]["decode_steps"] - v["trace"]["warmup"],
                                  warmup=v["trace"]["warmup"], intervals=ivs)
        for r in v["configs"]:  # the same predictions as the live run's
            assert abs(off["by_profile"][str(main_hw)][r["name"]] / r["predicted_tok_s"] - 1) < 1e-9, r["name"]
        sh = off["shifts"]
        worst = {p: max(abs(x) for pair in row.values() for x in pair) for p, row in sh.items()}
        comb = {name: float(np.sqrt(sum(max(abs(x) for x in sh[p][name]) ** 2 for p in sh))) for name in sh["handoff_us"]}
        out["validation_interval_shifts_pct"] = {"per_param_max": worst, "combined_rss_per_config": comb, "shifts": sh}
        print(f"interval shifts of the validated predictions ({main_hw}'s intervals), largest per parameter:")
        print("  " + ", ".join(f"{p} {w:.1f}%" for p, w in sorted(worst.items(), key=lambda kv: -kv[1]) if w >= 0.05))
        print("  combined (root sum of squares) per configuration: "
              + ", ".join(f"{n} {c:.1f}%" for n, c in comb.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
