#!/usr/bin/env bash
# Builds fastrnn's native library into build/ (incremental: re-running only recompiles what changed);
# the output lands in fastrnn/_lib/. Works on a fresh clone once the Python environment has torch.
#   PYTHON=/path/to/python   the interpreter whose torch to build against (default: .venv/bin/python)
#   --cuda                   also compile the CUDA kernels (csrc/cuda/*.cu) for sm_80 and sm_90 with nvcc
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CUDA=OFF
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=ON ;;
    *) echo "usage: $0 [--cuda]" >&2; exit 2 ;;
  esac
done

[ -x "$PYTHON" ] || { echo "build_native.sh: no python at $PYTHON (set PYTHON=...)" >&2; exit 1; }
TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

# Ninja if there is one (the venv's pip-installed ninja sits beside its python), else make.
NINJA="$(dirname "$PYTHON")/ninja"
[ -x "$NINJA" ] || NINJA="$(command -v ninja || true)"
if [ -n "$NINJA" ]; then
  GENERATOR=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA")
else
  GENERATOR=(-G "Unix Makefiles")
fi
# A build dir configured with another generator cannot be reused: start it afresh.
if [ -f "$ROOT/build/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${GENERATOR[1]}\$" "$ROOT/build/CMakeCache.txt"; then
  rm -rf "$ROOT/build"
fi

cmake -S "$ROOT" -B "$ROOT/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython_EXECUTABLE="$PYTHON" -DFASTRNN_CUDA="$CUDA"
cmake --build "$ROOT/build" --parallel
