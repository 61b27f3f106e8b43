#!/usr/bin/env bash
# Issue 12 on one fresh, offline GPU host: how stable is `hotexperts calibrate`, and how well does the cost
# model predict repeated, interleaved live runs. Everything lands in OUTDIR (few files: the device tool
# brings back at most 8, so the profiles are packed into tarballs).
#
# Usage: benchmarks/gpu_stability.sh OUTDIR STAGE...
#   calib          fresh-process calibrations, alternating the calibrate of BEFORE_PY (the single-pass
#                  calibrate of commit 97b4a2c, if the file exists) and the current one (interleaved
#                  rounds with intervals), N_CAL each, for the Qwen3.5 shape (fp32, 6 layers) and the
#                  Mixtral shape (int8, MIX_LAYERS layers) -> OUTDIR/calib-qwen.tgz, calib-mixtral.tgz
#   val-qwen       validate the Qwen3.5 shape (fp32, 6 layers) on the Kimi coding trace: the default
#                  configurations, REPEATS interleaved repetitions, TOKENS decode tokens, with the first
#                  current calibration as the profile and the others side by side -> OUTDIR/val-qwen.tgz
#   val-qwen2      the same on the second Kimi trace (phase-05-alt-conv; its 31 decode tokens repeated)
#   val-mixtral    validate the Mixtral shape (int8, MIX_LAYERS layers) on the Mixtral HumanEval trace
#   val-mixtral2   the same on the Mixtral GSM8K trace
#   instr-qwen     the Qwen3.5 shape on the Kimi coding trace, configurations INSTR_CONFIGS (a JSON file),
#                  one timed run and one instrumented run each (--instrument: per-layer CUDA events and host
#                  timestamps), profile INSTR_HW (default the committed calib-qwen/after-1 of 2026-12-04)
# Inputs (carried in .hxwork/, which git ignores): traces/ (copies of ../shared/traces files),
# before/calibrate_v1.py (git show 97b4a2c:runtime/calibrate.py). Wheels in .whl/ (fetch_wheels.sh).
# Environment: N_CAL (3), REPEATS (3), TOKENS (200), MIX_TOKENS (48), MIX_LAYERS (8), CAL_DIR (where val-*
#   finds the calibrations: OUTDIR, or a folder holding calib-*.tgz from an earlier call).
set -uo pipefail
OUTDIR="${1:?usage: gpu_stability.sh OUTDIR STAGE...}"; shift
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUTDIR"; OUTDIR="$(cd "$OUTDIR" && pwd)"
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/hx-numba}"
PY="${PYTHON:-python3}"
N_CAL="${N_CAL:-3}"; REPEATS="${REPEATS:-3}"; TOKENS="${TOKENS:-200}"
MIX_TOKENS="${MIX_TOKENS:-48}"; MIX_LAYERS="${MIX_LAYERS:-8}"
HX="$REPO/.hxwork"; W=/tmp/hx-stab; mkdir -p "$W"
QWEN=qwen3.5-122b-a10b-q4_k_l; MIX=mixtral-8x7b-q4_k_m

echo "== machine $(date -u)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
lscpu | grep -E "Model name|^CPU\(s\)" || true
free -g | head -2
SITE=/tmp/hx-site; rm -rf "$SITE"; mkdir -p "$SITE"
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$REPO" || exit 1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd /tmp
"$PY" -m hotexperts --version || exit 1

cal_pair() {  # cal_pair TAG MODEL DTYPE LAYERS
  local tag=$1 model=$2 dtype=$3 layers=$4 d="$W/calib-$1"
  mkdir -p "$d"
  for i in $(seq 1 "$N_CAL"); do
    if [ -f "$HX/before/calibrate_v1.py" ]; then
      mkdir -p "$d/before-$i"; echo "== calibrate BEFORE $tag $i $(date -u +%T)"
      /usr/bin/time -f "%e s" "$PY" "$REPO/benchmarks/calibrate_before.py" "$HX/before/calibrate_v1.py" \
        --model "$model" --dtype "$dtype" --layers "$layers" --out "$d/before-$i/hw.json"
    fi
    mkdir -p "$d/after-$i"; echo "== calibrate AFTER $tag $i $(date -u +%T)"
    /usr/bin/time -f "%e s" "$PY" -m hotexperts calibrate --model "$model" --dtype "$dtype" --layers "$layers" \
      --out "$d/after-$i/hw.json"
    (cd "$W" && tar czf "$OUTDIR/calib-$tag.tgz" "calib-$tag")
  done
  "$PY" "$REPO/benchmarks/calibration_spread.py" "$d" || true
}

cal_dir() {  # where the calibrations of TAG are: unpacked from CAL_DIR's tarball if needed
  local tag=$1
  if [ ! -d "$W/calib-$tag" ] && [ -f "${CAL_DIR:-$OUTDIR}/calib-$tag.tgz" ]; then
    tar xzf "${CAL_DIR:-$OUTDIR}/calib-$tag.tgz" -C "$W"
  fi
  echo "$W/calib-$tag"
}

val() {  # val NAME TAG MODEL DTYPE LAYERS TRACE TOKENS
  local name=$1 tag=$2 model=$3 dtype=$4 layers=$5 trace=$6 tokens=$7
  local d; d=$(cal_dir "$tag")
  local main="$d/after-1/hw.json"; local others=()
  for f in "$d"/after-*/hw.json "$d"/before-*/hw.json; do [ -f "$f" ] && [ "$f" != "$main" ] && others+=("$f"); done
  echo "== validate $name $(date -u +%T): $trace, $tokens tokens, $REPEATS repeats, profile $main"
  /usr/bin/time -f "%e s" "$PY" -m hotexperts validate "$trace" --model "$model" --dtype "$dtype" --layers "$layers" \
    --hardware "$main" --compare-hardware "${others[@]}" --out "$W/$name" --tokens "$tokens" --repeats "$REPEATS"
  (cd "$W" && tar czf "$OUTDIR/$name.tgz" "$name")
}

for stage in "$@"; do
  case "$stage" in
    calib) cal_pair qwen "$QWEN" fp32 6; cal_pair mixtral "$MIX" int8 "$MIX_LAYERS" ;;
    calib-qwen) cal_pair qwen "$QWEN" fp32 6 ;;
    calib-mixtral) cal_pair mixtral "$MIX" int8 "$MIX_LAYERS" ;;
    val-qwen) val val-qwen qwen "$QWEN" fp32 6 "$HX/traces/phase-03-coding-lru.csv" "$TOKENS" ;;
    val-qwen2) val val-qwen2 qwen "$QWEN" fp32 6 "$HX/traces/phase-05-alt-conv.csv" "$TOKENS" ;;
    val-mixtral) val val-mixtral mixtral "$MIX" int8 "$MIX_LAYERS" "$HX/traces/humaneval_2_routing.jsonl" "$MIX_TOKENS" ;;
    val-mixtral2) val val-mixtral2 mixtral "$MIX" int8 "$MIX_LAYERS" "$HX/traces/gsm8k_2_routing.jsonl" "$MIX_TOKENS" ;;
    instr-qwen)
      ihw="${INSTR_HW:-$REPO/benchmarks/results/2026-12-04-h200-stability/calib-qwen/after-1/hw.json}"
      echo "== validate --instrument $(date -u +%T): profile $ihw"
      "$PY" -m hotexperts validate "$HX/traces/phase-03-coding-lru.csv" --model "$QWEN" --dtype fp32 --layers 6 \
        --hardware "$ihw" --configs "${INSTR_CONFIGS:?}" --out "$W/instr-qwen" --tokens "$TOKENS" --instrument
      (cd "$W" && tar czf "$OUTDIR/instr-qwen.tgz" instr-qwen) ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "== done $(date -u)"; ls -l "$OUTDIR"
