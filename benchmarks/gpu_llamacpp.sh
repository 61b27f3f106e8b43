#!/usr/bin/env bash
# Validate a `llamacpp` cost model against llama.cpp itself on a GPU host (written for the H200
# host; NOT RUN YET, see docs/llamacpp.md): build llama-cpp-python with CUDA, write a random-weight
# model with Qwen3.5-122B's expert shapes, time llama.cpp at several expert placements, calibrate on
# two of them (all experts on the GPU, all experts on the CPU), predict the others (--n-cpu-moe N)
# and write OUTDIR/llamacpp-validation.json with the keys of the runtime's validation.json.
#
# Usage: benchmarks/gpu_llamacpp.sh OUTDIR [LAYERS] [NS]
#   LAYERS  layers of the generated model (default 12: 12 x 2.5 GB of q8_0 experts = 30 GB)
#   NS      --n-cpu-moe values to predict and measure (default "1 2 3 6 9 11")
# Environment:
#   PYTHON (python3), THREADS (all cores), REPS (5), PROMPT (512), GEN (128), LIKE (qwen3.5-122b-a10b-q4_k_l),
#   TYPE (q8_0), WHEELS (REPO/.whl: hotexperts' dependencies plus scikit-build-core, cmake, ninja for the build),
#   LLAMA_SDIST (a trimmed llama-cpp-python 0.3.36 sdist, .tar.gz; required unless SKIP_BUILD=1),
#   CUDA_ARCH (90), SKIP_BUILD (1 = use the llama-cpp-python already importable, e.g. a CPU dry run).
set -euo pipefail
OUTDIR="${1:?usage: gpu_llamacpp.sh OUTDIR [LAYERS] [NS]}"
LAYERS="${2:-12}"
NS="${3:-1 2 3 6 9 11}"
PY="${PYTHON:-python3}"
REPS="${REPS:-5}"
PROMPT="${PROMPT:-512}"
GEN="${GEN:-128}"
LIKE="${LIKE:-qwen3.5-122b-a10b-q4_k_l}"
TYPE="${TYPE:-q8_0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
case "$LIKE" in /*|*.json|*.gguf) [ -e "$LIKE" ] && LIKE="$(realpath "$LIKE")";; esac
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
export PYTHONUNBUFFERED=1

echo "== machine"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv || true
lscpu | grep -E "Model name|^CPU\(s\)|L3" || true
free -g | head -2

SITE=/tmp/hx-site-llamacpp
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== install hotexperts and build llama-cpp-python with CUDA (offline)"
  rm -rf "$SITE"; mkdir -p "$SITE"
  WHEELS="${WHEELS:-$REPO/.whl}"
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  : "${LLAMA_SDIST:?set LLAMA_SDIST to a llama-cpp-python sdist (or SKIP_BUILD=1)}"
  # NOTE: about 5 min with 16 cores (calibration.md: 284 s on the H200 host)
  time CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$LLAMA_SDIST"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$REPO"
  cd /tmp  # import the installed package, not the checkout's folders
fi
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())"
HX=("$PY" -m hotexperts)
"${HX[@]}" --version

echo "== model"
MODEL="$OUTDIR/model-${LAYERS}l.gguf"
if [ ! -s "$MODEL" ]; then
  time "${HX[@]}" model make --like "$LIKE" --layers "$LAYERS" --type "$TYPE" --out "$MODEL" --no-progress
fi
"${HX[@]}" model "$MODEL" --json > "$OUTDIR/model.json"

echo "== benchmarks"
THR=()
if [ -n "${THREADS:-}" ]; then THR=(--threads "$THREADS"); fi
bench() {  # name placement
  "${HX[@]}" bench llamacpp "$MODEL" --placement="$2" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
    --reps "$REPS" "${THR[@]}" --out "$OUTDIR/bench-$1.json"
}
bench gpu gpu                                   # calibration: all experts on the GPU
bench cpu-moe-all "n-cpu-moe=$LAYERS"           # calibration: all experts on the CPU, the rest on the GPU
bench all-cpu all-cpu                           # reference: -ngl 0
for n in $NS; do bench "n-cpu-moe-$n" "n-cpu-moe=$n"; done
bench gpu-again gpu                             # drift check: the first calibration point once more

echo "== calibrate, predict, compare"
"$PY" - "$OUTDIR" "$LAYERS" "$NS" <<'EOF'
import datetime, json, platform, statistics, sys
from pathlib import Path

out, L, ns = Path(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3].split()]
def load(name):
    return json.loads((out / f"bench-{name}.json").read_text())
gpu, cpu = load("gpu"), load("cpu-moe-all")
spec = json.loads((out / "model.json").read_text())
# Layer-offload cost model of calibration.md, per decode token:
#   T(N) = F + N * (tau + k * b / BW_cpu) + (L - N) * g
# The two calibration runs give T(0) = F + L*g and T(L) = F + L*(tau + k*b/BW_cpu), so
#   per-layer CPU-expert cost c = tau + k*b/BW_cpu and per-layer GPU-expert cost g differ by
#   (T(L) - T(0)) / L, and T(N) = T(0) + N * (T(L) - T(0)) / L.
# NOTE: with two calibration points this model predicts a straight line in ms per token; what the
# other placements test is whether llama.cpp's decode time really is that line (CUDA graphs off as
# soon as one layer's experts are on the CPU, CPU threads vs DRAM bandwidth, routing overlap).
t0 = 1000.0 / gpu["decode_tok_s"]["median"]
tL = 1000.0 / cpu["decode_tok_s"]["median"]
per_layer = (tL - t0) / L
k, b = spec["n_expert_used"], statistics.mean(spec["expert_bytes"])
tau_ms = 0.070  # calibration.md: ~70 us per CPU-expert layer hand-off (assumed, not fitted here)
bw_cpu = k * b / max(1e-9, (per_layer - tau_ms) / 1000.0) / 1e9 if per_layer > tau_ms else None
rows = []
for n in ns:
    m = load(f"n-cpu-moe-{n}")
    pred = 1000.0 / (t0 + n * per_layer)
    meas = m["decode_tok_s"]["median"]
    rows.append({
        "name": f"n-cpu-moe={n}",
        "placement": m["placement"],
        "predicted_tok_s": pred,
        "measured_tok_s": meas,
        "error_pct": (pred - meas) / meas * 100.0,
        "measured_spread_tok_s": [m["decode_tok_s"]["min"], m["decode_tok_s"]["max"]],
        "measured_prefill_tok_s": m["prefill_tok_s"]["median"],
    })
errs = [abs(r["error_pct"]) for r in rows]
drift = load("gpu-again")["decode_tok_s"]["median"] / gpu["decode_tok_s"]["median"] - 1.0
res = {
    "machine": {"node": platform.node(), "device": gpu["device"], "llama_cpp_python": gpu["llama_cpp_python"]},
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "model": {"path": gpu["model"], "layers": L, "n_expert": spec["n_expert"], "n_expert_used": k,
              "expert_bytes": b, "like": spec["name"]},
    "calibration": {
        "gpu_decode_ms": t0, "all_experts_cpu_decode_ms": tL, "cpu_layer_ms_minus_gpu_layer_ms": per_layer,
        "handoff_ms_assumed": tau_ms, "cpu_expert_bw_gbs_if_gpu_layer_free": bw_cpu,
        "all_cpu_ngl0_decode_tok_s": load("all-cpu")["decode_tok_s"]["median"],
        "gpu_drift_pct": 100.0 * drift,
    },
    "configs": rows,
    "median_abs_error_pct": statistics.median(errs) if errs else None,
    "max_abs_error_pct": max(errs) if errs else None,
    "goal": "median |error| <= 10 % for decode tok/s (issue 7)",
}
(out / "llamacpp-validation.json").write_text(json.dumps(res, indent=2) + "\n")
print(f"{'placement':<16} {'predicted':>10} {'measured':>10} {'error %':>8}")
for r in rows:
    print(f"{r['name']:<16} {r['predicted_tok_s']:>10.2f} {r['measured_tok_s']:>10.2f} {r['error_pct']:>8.1f}")
print(f"median |error| {res['median_abs_error_pct']:.1f} %, max {res['max_abs_error_pct']:.1f} %, "
      f"gpu drift {100 * drift:+.1f} %")
EOF
echo "== done: $OUTDIR"
ls -l "$OUTDIR"
