#!/usr/bin/env bash
# End to end on a fresh, offline GPU host: install hotexperts from this checkout (no network: wheels
# brought along in .whl/, see benchmarks/fetch_wheels.sh), calibrate the machine, validate the
# simulator against live runs, and leave everything in OUTDIR.
#
# Usage: benchmarks/gpu_validate.sh OUTDIR TRACE [LAYERS] [TOKENS]
#   TRACE   routing trace (.hxt, or a CSV/JSONL the tracer imports) with the model's expert count/top-k
#   LAYERS  engine MoE layers (default by DTYPE so the experts fit in host RAM: fp32 6 = 58 GB of
#           Qwen3.5-122B-shaped experts, bf16/fp16 8 = 39 GB, int8 12 = 29 GB)
#   TOKENS  measured decode tokens per configuration (default 200, after 16 warm-up tokens)
# Environment: WHEELS (default REPO/.whl), MODEL (default qwen3.5-122b-a10b-q4_k_l), PYTHON (default python3),
#   THREADS (default all cores less one), REPEATS (interleaved repetitions of every configuration, default 1), DTYPE (host/slot expert dtype: fp32 (default), int8, bf16, fp16),
#   DEVICE (default cuda; cpu for a dry run of the script on a machine without a GPU),
#   TUNE_TRIALS (default 0 = skip; N > 0: `hotexperts tune` with the calibrated hw.json on the engine's model
#   at the VRAM of the fork default K=44, then its pick and the fork default K=44 I60 run live into
#   OUTDIR/tune-live, see benchmarks/tune_live.py).
set -euo pipefail
OUTDIR="${1:?usage: gpu_validate.sh OUTDIR TRACE [LAYERS] [TOKENS]}"
TRACE="${2:?usage: gpu_validate.sh OUTDIR TRACE [LAYERS] [TOKENS]}"
LAYERS="${3:-}"
TOKENS="${4:-200}"
MODEL="${MODEL:-qwen3.5-122b-a10b-q4_k_l}"
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"  # the script changes directory below
TRACE="$(realpath "$TRACE")"
LOG="$OUTDIR/log.txt"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/hx-numba}"

echo "== machine"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max --format=csv || true
lscpu | grep -E "Model name|^CPU\(s\)|L3" || true
free -g | head -2
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== install (offline)"
SITE=/tmp/hx-site
rm -rf "$SITE"; mkdir -p "$SITE"
WHEELS="${WHEELS:-$REPO/.whl}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$REPO"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
cd /tmp  # import the installed package, not the checkout's folders
"$PY" -m hotexperts --version

THR=(--device "${DEVICE:-cuda}" --dtype "${DTYPE:-fp32}")
if [ -n "${THREADS:-}" ]; then THR+=(--threads "$THREADS"); fi
if [ -n "$LAYERS" ]; then THR+=(--layers "$LAYERS"); fi

echo "== calibrate"
time "$PY" -m hotexperts calibrate --model "$MODEL" "${THR[@]}" --out "$OUTDIR/hw.json"

echo "== validate"
time "$PY" -m hotexperts validate "$TRACE" --model "$MODEL" --hardware "$OUTDIR/hw.json" --out "$OUTDIR" \
  --tokens "$TOKENS" --repeats "${REPEATS:-1}" "${THR[@]}"
if [ "${TUNE_TRIALS:-0}" -gt 0 ]; then
  LAYERS_OPT=(); if [ -n "$LAYERS" ]; then LAYERS_OPT=(--layers "$LAYERS"); fi
  echo "== tune with hw.json, then its pick and the fork default live"
  time "$PY" "$REPO/benchmarks/tune_live.py" "$OUTDIR/tune-live" "$OUTDIR/hw.json" "$TRACE" \
    "${LAYERS_OPT[@]}" --dtype "${DTYPE:-fp32}" --trials "$TUNE_TRIALS" --model "$MODEL"
  time "$PY" -m hotexperts validate "$TRACE" --model "$MODEL" --hardware "$OUTDIR/hw.json" --out "$OUTDIR/tune-live" \
    --configs "$OUTDIR/tune-live/tune-configs.json" --tokens "$TOKENS" "${THR[@]}"
fi
echo "== done: $OUTDIR"
ls -l "$OUTDIR"
