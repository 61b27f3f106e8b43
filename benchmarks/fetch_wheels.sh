#!/usr/bin/env bash
# Download the wheels an offline GPU host needs to run `hotexperts calibrate` / `validate` into .whl/
# (git-ignored). The GPU image already has torch, numpy, pandas, numba, matplotlib, tqdm, pyyaml,
# requests, markupsafe, typing-extensions and packaging; it lacks gguf (the model presets compute
# tensor sizes with it) and optuna with its own needs (studies/; carried so the whole CLI imports).
# llama-cpp-python is not needed by the runtime and is not fetched.
# Usage: benchmarks/fetch_wheels.sh [PYTHON_VERSION]   (default 3.12, the GPU image's python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
mkdir -p .whl
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
# pinned to the versions this project's CI resolves (pip show here); one version of each
dl gguf==0.19.0
dl optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 greenlet
ls -l .whl
