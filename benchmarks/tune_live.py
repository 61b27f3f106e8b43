"""Tune on the calibrated profile, then hand the pick to ``hotexperts validate`` to run it live.

The issue-6 check: the configuration ``hotexperts tune`` picks with the calibrated ``HW.json`` (on the model
the live engine actually builds), run live, must beat the fork's default (K=44, interval 60, PP bypass 64)
run live at the same VRAM budget. This script:

1. writes the engine's model spec (``EngineShape.model_spec``: the engine's layers, expert bytes of its dtype, dense
   bytes, no attention) to ``OUT/engine-model.json``;
2. takes the budget as the VRAM the fork default needs on that model (``vram_breakdown``, context 0: the
   engine has no KV cache), in GiB;
3. runs ``hotexperts tune TRACE --remap`` under that budget (families fork, lru, window, decay,
   layer-offload; ``static`` is left out because the tuner learns its hot set from the first half of the
   trace, which a configs file cannot express);
4. writes ``OUT/tune-configs.json`` for ``hotexperts validate --configs``: the pick and the fork default.

Usage: ``python benchmarks/tune_live.py OUT HW.json TRACE [--layers 12] [--trials 100] [--model M]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hotexperts._atomic import write_text_atomic
from hotexperts.modelspec import load_model_spec
from hotexperts.runtime.engine import EngineShape, default_layers
from hotexperts.sim.cost import GiB, vram_breakdown
from hotexperts.sim.hardware import load_hardware

FORK_DEFAULT = {"name": "fork-K44-I60", "policy": "fork", "params": {"interval": 60, "pp_bypass": 64},
                "slots": 44, "mode": "cold-cpu"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("hardware")
    ap.add_argument("trace")
    ap.add_argument("--layers", type=int, default=None, help="engine MoE layers (default: by --dtype)")
    ap.add_argument("--dtype", default="int8", help="engine host/slot expert dtype (int8, fp32, bf16, fp16)")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--model", default="qwen3.5-122b-a10b-q4_k_l")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_model_spec(a.model)
    n_layers = a.layers or default_layers(a.dtype)
    espec = EngineShape.from_spec(spec, n_layers=n_layers, dtype=a.dtype).model_spec(spec)
    mpath = out / "engine-model.json"
    write_text_atomic(mpath, json.dumps(espec.to_dict()) + "\n")
    hw = load_hardware(a.hardware)
    budget = vram_breakdown(espec, FORK_DEFAULT["slots"], context=0, hardware=hw)["total"] / GiB
    # NOTE: a hair above the default's own need so that the default itself fits the budget
    vram_gb = round(budget + 0.005, 3)
    print(f"tune_live: budget {vram_gb} GiB (the fork default K=44 needs {budget:.3f} GiB on {espec.name})", flush=True)
    cmd = [sys.executable, "-m", "hotexperts", "tune", a.trace, "--model", str(mpath), "--hardware", a.hardware,
           "--vram-gb", str(vram_gb), "--context", "0", "--trials", str(a.trials), "--remap",
           "--policies", "fork,lru,window,decay,layer-offload", "--target", "lab", "--out", str(out / "tune"),
           "--no-progress"]
    subprocess.run(cmd, check=True)
    best = json.loads((out / "tune" / "best.json").read_text(encoding="utf-8"))["best"]
    slots = [int(x) for x in best["slots_per_layer"]]
    picked = {"name": f"tuned-{best['label']}", "policy": best["policy"], "params": dict(best["params"]),
              "slots": slots if len(set(slots)) > 1 else slots[0], "mode": best["mode"]}
    if best["policy"] == "layer-offload" and "gpu_layers" in picked["params"]:
        picked["params"]["gpu_layers"] = [int(x) for x in picked["params"]["gpu_layers"]]
    write_text_atomic(out / "tune-configs.json", json.dumps([picked, FORK_DEFAULT], indent=1) + "\n")
    print(f"tune_live: pick {picked['name']} ({best['mode']}), predicted {best['decode_tok_s']:.2f} tok/s, "
          f"VRAM {best['vram_gib']:.3f} GiB; wrote {out / 'tune-configs.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
