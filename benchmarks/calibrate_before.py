"""Run an earlier version of ``runtime/calibrate.py`` (a file path) in a fresh process and write its profile.

Used by ``benchmarks/gpu_stability.sh`` to measure the single-pass calibrate of commit 97b4a2c next to the
current one on the same machine (``git show 97b4a2c:runtime/calibrate.py > .hxwork/before/calibrate_v1.py``).

Usage: python benchmarks/calibrate_before.py CALIBRATE_PY --model SPEC --dtype D --layers L --out HW.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("calibrate_py")
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("hx_calibrate_before", args.calibrate_py)
    if spec is None or spec.loader is None:
        print(f"cannot load {args.calibrate_py}", file=sys.stderr)
        return 1
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from hotexperts.modelspec import load_model_spec

    cal = mod.calibrate(model=load_model_spec(args.model), n_layers=args.layers, dtype=args.dtype, device="cuda")
    raw = mod.write_profile(cal, args.out)
    p = cal["profile"]
    print(f"wrote {args.out} ({raw}): CPU {p['cpu_expert_bw']:.1f} GB/s, hand-off {p['handoff_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
