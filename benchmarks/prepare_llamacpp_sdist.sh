#!/usr/bin/env bash
# Prepare what benchmarks/gpu_llamacpp.sh builds on the offline GPU host: the llama-cpp-python 0.3.36
# source, unpacked into .llsrc/ (git-ignored) and trimmed to what a CUDA + CPU build of the shared
# libraries needs, so that it travels with the working tree (64 MiB limit, .whl/ included).
#
# Removed from vendor/llama.cpp: models/ (vocab GGUFs), docs/, media/, examples/, tests/, benches/,
# pocs/, gguf-py/, conversion scripts, tools/ except tools/mtmd (its CMakeLists is referenced by
# the package's CMakeLists when LLAVA_BUILD is on), the UI assets, and every ggml backend other than
# ggml-cpu and ggml-cuda (vulkan, sycl, metal, opencl, cann, musa, hip, rpc, webgpu, zdnn, ...);
# their CMakeLists are only entered when that backend is switched on. Also the package's own docs,
# examples and tests. The trimmed tree is checked to configure with CMake (CPU only, here).
# Also fetches diskcache (a pure-Python need of `import llama_cpp` the GPU image lacks) into .whl/.
#
# Usage: benchmarks/prepare_llamacpp_sdist.sh            (re-run: replaces .llsrc/)
set -euo pipefail
cd "$(dirname "$0")/.."
VER=0.3.36
grep -qxF '/.llsrc/' .git/info/exclude 2>/dev/null || echo '/.llsrc/' >> .git/info/exclude
DL="${TMPDIR:-/tmp}/hx-llsdist"
mkdir -p "$DL"
if [ ! -s "$DL/llama_cpp_python-$VER.tar.gz" ]; then
  python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$DL"
fi
rm -rf .llsrc
mkdir -p .llsrc
tar xzf "$DL/llama_cpp_python-$VER.tar.gz" -C .llsrc --strip-components=1
S=.llsrc
V=$S/vendor/llama.cpp
rm -rf "$S"/docs "$S"/examples "$S"/tests "$S"/docker "$S"/scripts "$S"/mkdocs.yml
rm -rf "$V"/models "$V"/docs "$V"/media "$V"/examples "$V"/tests "$V"/benches "$V"/pocs "$V"/gguf-py \
  "$V"/conversion "$V"/scripts "$V"/ci "$V"/app "$V"/skills "$V"/grammars "$V"/requirements "$V"/.github \
  "$V"/convert_*.py "$V"/flake.nix "$V"/.devops "$V"/tools/server/public*
find "$V"/tools -mindepth 1 -maxdepth 1 ! -name mtmd ! -name CMakeLists.txt -exec rm -rf {} +
for b in "$V"/ggml/src/ggml-*/; do
  case "$(basename "$b")" in ggml-cpu|ggml-cuda) ;; *) rm -rf "$b" ;; esac
done
find "$S" -name .git -prune -exec rm -rf {} +
echo "== configure check (CPU only)"
B="${TMPDIR:-/tmp}/hx-llsrc-cmake"
rm -rf "$B"
cmake -S "$S" -B "$B" -DGGML_CUDA=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF > "$B.log" 2>&1 \
  || { tail -30 "$B.log"; echo "configure FAILED"; exit 1; }
tail -2 "$B.log"
rm -rf "$B"
mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || grep -qxF '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
if ! compgen -G ".whl/diskcache-*.whl" > /dev/null; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl diskcache==5.6.3
fi
du -sh .llsrc .whl
du -sc .llsrc .whl | tail -1
