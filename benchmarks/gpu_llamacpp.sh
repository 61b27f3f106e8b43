#!/usr/bin/env bash
# Validate a `llamacpp` cost model against llama.cpp itself on the H200 host, in ONE device call
# (issue 7; see docs/llamacpp.md for the runs so far). Steps, each timed, all inside BUDGET seconds:
#   1. install hotexperts' wheels (.whl/) and hotexperts into a private site folder (offline);
#   2. build llama-cpp-python 0.3.36 with CUDA from the trimmed source in .llsrc/
#      (benchmarks/prepare_llamacpp_sdist.sh), while `hotexperts model make` writes the random-weight
#      model (Qwen3.5-122B expert shapes, LAYERS layers, q8_0) and a 1-layer one in parallel; a build
#      left in SITE by an earlier call on the same (still warm) machine is reused;
#   3. `hotexperts bench llamacpp` at: gpu and n-cpu-moe=LAYERS (the calibration runs), then the
#      checks n-cpu-moe=N (NS, most informative first), all-cpu (-ngl 0, reference) and gpu again
#      (drift); a run is skipped when the time left is below the longest run so far (+ margin).
#      A short probe on the 1-layer model first picks HOTEXPERTS_NO_EXTRA_BUFTS (1, else 0); if no probe
#      or the first run fails, benchmarks/llamacpp_diag.py loads the 1-layer model in every way it
#      knows (diag.json, with native backtraces of crashes) and the script stops there;
#   4. benchmarks/llamacpp_validate.py: fit the profile on the two calibration runs, predict the rest
#      with the simulator, write llamacpp-validation.json, print the table;
#   5. with the time left, the diagnosis variants that explain the crash of the first attempts.
# Outputs (OUTDIR, at most 8 files): llamacpp-validation.json, bench-all.json (every run's result),
# model.json, phases.json, log.txt, build-tail.txt, diag.json. The models stay in WORK.
#
# Usage: benchmarks/gpu_llamacpp.sh OUTDIR [LAYERS] [NS]
#   LAYERS  layers of the made model (default 6: 6 x 2.57 GB of q8_0 experts = 15.4 GB)
#   NS      --n-cpu-moe values to check (default "3 1 5 2 4", run in this order)
# Environment: PYTHON (python3), BUDGET (seconds for the whole script, default 540), THREADS (nproc),
#   REPS (3), PROMPT (512), GEN (128), LIKE (qwen3.5-122b-a10b-q4_k_l), TYPE (q8_0),
#   WORK (REPO/.hxwork/work), SITE (REPO/.hxwork/site), WHEELS (REPO/.whl), LLAMA_SRC (REPO/.llsrc),
#   CUDA_ARCH (90), CUDA_FA (OFF: FlashAttention CUDA kernels not built, a third less build time;
#   llama.cpp then runs attention unfused, a small share of a step at these context lengths),
#   DIAG (1; 0 = no diagnosis after the validation), BUILD_RESERVE (90: seconds of BUDGET kept after the
#   build), CAPTURE_CHECK (1 = after the probe, only benchmarks/capture_agreement.py on the model: does
#   `bench llamacpp --capture` under n-cpu-moe=3 record what the tracer records with all layers on the GPU;
#   writes capture.json),
#   SKIP_BUILD (1 = use the importable hotexperts and llama-cpp-python, e.g. a CPU dry run),
#   PLACEMENTS (instead of the validation: only these benches, in order, one per line
#   "NAME|PLACEMENT[|THREADS]"; bench-all.json holds them and benchmarks/llamacpp_placements.py tabulates it).
set -uo pipefail
T_START=$SECONDS
OUTDIR="${1:?usage: gpu_llamacpp.sh OUTDIR [LAYERS] [NS]}"
LAYERS="${2:-6}"
NS="${3:-3 1 5 2 4}"
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-540}"
REPS="${REPS:-3}"
PROMPT="${PROMPT:-512}"
GEN="${GEN:-128}"
LIKE="${LIKE:-qwen3.5-122b-a10b-q4_k_l}"
TYPE="${TYPE:-q8_0}"
THREADS="${THREADS:-$(nproc)}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-$REPO/.hxwork/work}"
SITE="${SITE:-$REPO/.hxwork/site}"
mkdir -p "$OUTDIR" "$WORK"
OUTDIR="$(cd "$OUTDIR" && pwd)"
case "$LIKE" in /*|*.json|*.gguf) [ -e "$LIKE" ] && LIKE="$(realpath "$LIKE")";; esac
rm -f "$WORK"/bench-*.json "$WORK"/llamacpp-validation.json
exec > >(tee -a "$OUTDIR/log.txt") 2>&1
export PYTHONUNBUFFERED=1
# NOTE: llama.cpp's extra CPU buffer types (AMX, repacked weights) stay off: they crash this project's
# sandbox CPU (SIGILL) and serve plain MUL_MAT, not the experts' MUL_MAT_ID. The faulthandler dumps a
# Python-level stack if a run crashes (the first two H200 attempts segfaulted at model load).
export HOTEXPERTS_NO_EXTRA_BUFTS="${HOTEXPERTS_NO_EXTRA_BUFTS:-1}" PYTHONFAULTHANDLER=1
PHASES=()
left() { echo $(( BUDGET - (SECONDS - T_START) )); }
phase() { PHASES+=("\"$1\": $2"); echo "-- $1: $2 s (elapsed $((SECONDS - T_START)) s, left $(left) s)"; }

finish() {  # always: bundle the results into OUTDIR (<= 8 files)
  "$PY" - "$WORK" "$OUTDIR" <<'EOF' || true
import json, sys
from pathlib import Path
w, o = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for p in sorted(w.glob("bench-*.json")):
    try:
        runs[p.stem[6:]] = json.loads(p.read_text())
    except Exception as exc:  # noqa: BLE001
        runs[p.stem[6:]] = {"error": str(exc)}
(o / "bench-all.json").write_text(json.dumps(runs, indent=1) + "\n")
for n in ("llamacpp-validation.json", "model.json"):
    if (w / n).exists():
        (o / n).write_text((w / n).read_text())
EOF
  [ -f "$WORK/build.log" ] && tail -c 60000 "$WORK/build.log" > "$OUTDIR/build-tail.txt"
  printf '{%s}\n' "$(IFS=,; echo "${PHASES[*]}")" > "$OUTDIR/phases.json"
  echo "== done in $((SECONDS - T_START)) s: $OUTDIR"; ls -l "$OUTDIR"
}
trap finish EXIT

echo "== machine"
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
lscpu | grep -E "Model name|^CPU\(s\)" || true
free -g | head -2
df -h "$WORK" | tail -1

MODEL="$WORK/model-${LAYERS}l.gguf"
make_model() {
  if [ ! -s "$MODEL" ]; then
    "$PY" -m hotexperts model make --like "$LIKE" --layers "$LAYERS" --type "$TYPE" --out "$MODEL" --no-progress
  fi
}

DIAG_MODEL="$WORK/diag-1l.gguf"
make_models() {
  make_model && { [ -s "$DIAG_MODEL" ] || "$PY" -m hotexperts model make --like "$LIKE" --layers 1 --type "$TYPE" \
    --out "$DIAG_MODEL" --no-progress || echo "1-layer diagnosis model make FAILED"; }
}

t=$SECONDS
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== install wheels and hotexperts (offline) into $SITE"
  mkdir -p "$SITE"
  WHEELS="${WHEELS:-$REPO/.whl}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "wheel install FAILED"; exit 1; }
  rm -rf "$SITE"/hotexperts "$SITE"/hotexperts-*.dist-info
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO" \
    || { echo "hotexperts install FAILED"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  cd /tmp  # import the installed package, not the checkout's folders
  phase install $((SECONDS - t))

  t=$SECONDS
  if [ -f "$SITE/.llama-cuda-ok" ] && "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)"; then
    echo "== llama-cpp-python with CUDA already built in $SITE (earlier call on this machine): reused"
    make_models || { echo "model make FAILED"; exit 1; }
    phase model_make $((SECONDS - t))
  else
    echo "== build llama-cpp-python with CUDA (log: build.log), model make in parallel"
    SRC="${LLAMA_SRC:-$REPO/.llsrc}"
    [ -f "$SRC/pyproject.toml" ] || { echo "no llama-cpp-python source in $SRC (run benchmarks/prepare_llamacpp_sdist.sh)"; exit 1; }
    # NOTE: only the shared libraries: no tests/tools/examples/server, no mtmd (llava), no NCCL (one GPU),
    # and (CUDA_FA=OFF) no FlashAttention kernels.
    export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DLLAVA_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
-DGGML_CUDA_FA=${CUDA_FA:-OFF} -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF"
    export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
    ( timeout "$(( $(left) - ${BUILD_RESERVE:-90} ))" "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir \
        --upgrade --target "$SITE" "$SRC" > "$WORK/build.log" 2>&1; echo $? > "$WORK/build.rc" ) &
    BUILD_PID=$!
    tm=$SECONDS
    nice -n 5 bash -c "$(declare -f make_model make_models); PY='$PY' LIKE='$LIKE' LAYERS='$LAYERS' TYPE='$TYPE' \
MODEL='$MODEL' DIAG_MODEL='$DIAG_MODEL' make_models" || { echo "model make FAILED"; exit 1; }
    phase model_make $((SECONDS - tm))
    nice -n 5 "$PY" "$REPO/benchmarks/llamacpp_validate.py" --warm-up || echo "simulator warm-up failed"  # numba cache
    wait "$BUILD_PID"
    phase build $((SECONDS - t))
    if [ "$(cat "$WORK/build.rc")" != 0 ]; then
      echo "build FAILED (rc $(cat "$WORK/build.rc")); last lines:"; tail -25 "$WORK/build.log"; exit 1
    fi
    touch "$SITE/.llama-cuda-ok"
  fi
else
  make_models || { echo "model make FAILED"; exit 1; }
  phase model_make $((SECONDS - t))
fi
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload())" \
  || { echo "llama_cpp does not import"; exit 1; }
"$PY" -m hotexperts model "$MODEL" --json > "$WORK/model.json"

diag() {  # variants deadline
  local t0=$SECONDS
  [ -s "$DIAG_MODEL" ] && timeout "$(( $2 + 100 ))" "$PY" "$REPO/benchmarks/llamacpp_diag.py" "$DIAG_MODEL" \
    --variants "$1" --deadline "$2" --timeout 90 --out "$OUTDIR/diag.json" || echo "diagnosis did not complete"
  phase diag $((SECONDS - t0))
}

echo "== benchmarks ($REPS x ($PROMPT prompt + $GEN generated) tokens, $THREADS threads)"
LONGEST=20
RESERVE=35  # seconds kept for the validation and the bundling
bench() {  # name placement [threads]
  local need=$(( LONGEST * 5 / 4 + RESERVE )) l
  l=$(left)
  if [ "$l" -lt "$need" ]; then echo "SKIP $1 ($2): $l s left, need $need"; return 0; fi
  local t0=$SECONDS
  timeout "$(( l - RESERVE ))" "$PY" -m hotexperts bench llamacpp "$MODEL" --placement="$2" \
    --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --reps "$REPS" --threads "${3:-$THREADS}" --out "$WORK/bench-$1.json" \
    || echo "bench $1 FAILED or timed out"
  local d=$((SECONDS - t0))
  [ "$d" -gt "$LONGEST" ] && LONGEST=$d
  phase "bench_$1" "$d"
}
echo "== probe: a short gpu bench of the 1-layer model, llama.cpp's extra CPU buffer types off, then on"
t=$SECONDS
PROBED=""
for x in "$HOTEXPERTS_NO_EXTRA_BUFTS" $(( 1 - HOTEXPERTS_NO_EXTRA_BUFTS )); do
  if [ -s "$DIAG_MODEL" ] && HOTEXPERTS_NO_EXTRA_BUFTS=$x timeout 120 "$PY" -m hotexperts bench llamacpp "$DIAG_MODEL" \
      --placement gpu --prompt-tokens 32 --gen-tokens 4 --reps 1 --out "$WORK/probe.json"; then
    PROBED=$x; export HOTEXPERTS_NO_EXTRA_BUFTS=$x; break
  fi
  echo "probe with HOTEXPERTS_NO_EXTRA_BUFTS=$x FAILED"
done
phase probe $((SECONDS - t))
echo "benches run with HOTEXPERTS_NO_EXTRA_BUFTS=${PROBED:-$HOTEXPERTS_NO_EXTRA_BUFTS}"

if [ "${CAPTURE_CHECK:-0}" = 1 ]; then
  echo "== capture check instead of the benches (benchmarks/capture_agreement.py, n-cpu-moe=3 vs all on the GPU)"
  t=$SECONDS
  timeout "$(( $(left) - 5 ))" "$PY" "$REPO/benchmarks/capture_agreement.py" "$MODEL" --placement n-cpu-moe=3 \
    --prompt-tokens 512 --gen-tokens 16 --out "$OUTDIR/capture.json" || echo "capture check FAILED"
  phase capture_check $((SECONDS - t))
  exit 0
fi

if [ -n "${PLACEMENTS:-}" ]; then
  echo "== PLACEMENTS: only these benches"
  t=$SECONDS
  while IFS='|' read -r -u 3 name placement threads; do  # fd 3: the benches keep stdin
    [ -n "$name" ] && bench "$name" "$placement" "$threads"
  done 3<<< "$PLACEMENTS"
  phase benches $((SECONDS - t))
  exit 0
fi

t=$SECONDS
[ -n "$PROBED" ] && bench gpu gpu        # calibration: every expert on the GPU
if [ ! -s "$WORK/bench-gpu.json" ]; then
  echo "== the first bench failed: diagnosis (benchmarks/llamacpp_diag.py, 1-layer model, each way in its own process)"
  diag "lowlevel,bench,bench-extra,numpy-first,noextra,header,gguf,yaml,numba,numba-import,llama-then-numba,highlevel,logcb,bufts,hxcli,bench-numba" "$(( $(left) - 150 ))"
  exit 1
fi
bench "cpu-moe-$LAYERS" "n-cpu-moe=$LAYERS"  # calibration: every expert on the CPU, the rest on the GPU
for n in $NS; do bench "n-cpu-moe-$n" "n-cpu-moe=$n"; done
bench all-cpu all-cpu                    # reference: -ngl 0 (not modelled)
bench gpu-again gpu                      # drift of the first calibration run
phase benches $((SECONDS - t))

echo "== calibrate, predict, compare"
t=$SECONDS
"$PY" "$REPO/benchmarks/llamacpp_validate.py" "$WORK" --model "$MODEL" --out "$WORK/llamacpp-validation.json" \
  || echo "validation did not complete (see above)"
phase validate $((SECONDS - t))

if [ "${DIAG:-1}" = 1 ] && [ "$(left)" -gt 40 ]; then
  echo "== diagnosis of the earlier crash with the time left (benchmarks/llamacpp_diag.py)"
  diag "numpy-first,header,gguf,yaml,noextra,numba,numba-import,llama-then-numba,bench-numba,lowlevel,bench,bench-extra,highlevel,logcb,bufts,hxcli" "$(( $(left) - 40 ))"
fi
