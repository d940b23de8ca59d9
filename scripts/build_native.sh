#!/usr/bin/env bash
# Builds fastrnn's native library into build/ (incremental: re-running only recompiles what changed);
# the output lands in fastrnn/_lib/. Works on a fresh clone once the Python environment has torch.
#   PYTHON=/path/to/python   the interpreter whose torch to build against (default: .venv/bin/python if
#                            there is one, else python3 on PATH; a bare name is looked up on PATH)
#   --cuda                   also compile the CUDA kernels (csrc/cuda/*.cu) for sm_80 and sm_90 with nvcc
# With the CUDA build of torch (a GPU machine), CMake's find_package(Torch) itself needs the CUDA toolkit
# (nvcc of torch's CUDA major version): it is taken from CUDA_HOME, PATH or /usr/local/cuda and passed to
# CMake; without it the script stops and says so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASKED="${PYTHON:-}"
if [ -z "$ASKED" ]; then
  PYTHON="$ROOT/.venv/bin/python"
  [ -x "$PYTHON" ] || PYTHON="$(command -v python3 || true)"
elif [[ "$PYTHON" != */* ]]; then
  PYTHON="$(command -v "$PYTHON" || true)"
fi
CUDA=OFF
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=ON ;;
    *) echo "usage: $0 [--cuda]" >&2; exit 2 ;;
  esac
done

if [ -z "$PYTHON" ] || [ ! -x "$PYTHON" ]; then
  if [ -n "$ASKED" ]; then
    echo "build_native.sh: PYTHON=$ASKED is not an executable python" >&2
  else
    echo "build_native.sh: no python: no $ROOT/.venv/bin/python and no python3 on PATH (set PYTHON=...)" >&2
  fi
  exit 1
fi
read -r TORCH_PREFIX TORCH_VERSION TORCH_CUDA < <("$PYTHON" -c \
  'import torch; print(torch.utils.cmake_prefix_path, torch.__version__, torch.version.cuda or "none")') || {
  echo "build_native.sh: $PYTHON cannot import torch: install torch into that environment first" >&2
  exit 1
}
echo "build_native.sh: $PYTHON, torch $TORCH_VERSION (CUDA: $TORCH_CUDA)"

# The CUDA build of torch: its CMake config (Caffe2's public/cuda.cmake, run by find_package(Torch)) looks
# for the CUDA toolkit and enables CMake's CUDA language even for the CPU library, and fails without nvcc.
# (A CPU torch with --cuda leaves finding nvcc to CMake, as before.)
CUDA_ARGS=()
if [ "$TORCH_CUDA" != none ]; then
  NVCC=""
  for c in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then NVCC="$c"; break; fi
  done
  if [ -z "$NVCC" ]; then
    echo "build_native.sh: torch $TORCH_VERSION is a CUDA $TORCH_CUDA build, and CMake's find_package(Torch)" \
         "then needs the CUDA toolkit (nvcc $TORCH_CUDA): none found in CUDA_HOME, PATH or /usr/local/cuda" >&2
    exit 1
  fi
  # The toolkit's root as nvcc itself reports it (TOP; nvcc on PATH may be a wrapper script elsewhere).
  probe_dir="$(mktemp -d)"
  touch "$probe_dir/probe.cu"
  TOOLKIT="$("$NVCC" --dryrun -c "$probe_dir/probe.cu" -o "$probe_dir/probe.o" 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  rm -rf "$probe_dir"
  if [ -n "$TOOLKIT" ] && [ -x "$TOOLKIT/bin/nvcc" ]; then
    TOOLKIT="$(cd "$TOOLKIT" && pwd -P)"
  else
    TOOLKIT="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
  fi
  [ -x "$TOOLKIT/bin/nvcc" ] && NVCC="$TOOLKIT/bin/nvcc"
  CUDA_ARGS=(-DCMAKE_CUDA_COMPILER="$NVCC" -DCUDA_TOOLKIT_ROOT_DIR="$TOOLKIT")
  echo "build_native.sh: CUDA toolkit $TOOLKIT ($NVCC), for find_package(Torch)"
fi

# --cuda: sm_80 and sm_90 named here, since the CUDA torch's config has enabled CUDA (and with it the
# compiler's default architecture) before CMakeLists.txt could choose them.
[ "$CUDA" = ON ] && CUDA_ARGS+=(-DCMAKE_CUDA_ARCHITECTURES="80;90")

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

if ! cmake -S "$ROOT" -B "$ROOT/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython_EXECUTABLE="$PYTHON" -DFASTRNN_CUDA="$CUDA" ${CUDA_ARGS[@]+"${CUDA_ARGS[@]}"}; then
  echo "build_native.sh: CMake could not configure the build (output above)." >&2
  if [ "$TORCH_CUDA" != none ]; then
    echo "build_native.sh: torch $TORCH_VERSION is a CUDA $TORCH_CUDA build: find_package(Torch) needs that CUDA" \
         "toolkit (${NVCC:-nvcc}: its version must match the headers it finds; set CUDA_HOME to choose" \
         "another) and enables CMake's CUDA language; 'PyTorch: CUDA cannot be found' or 'Found two" \
         "conflicting CUDA versions' above point there." >&2
  fi
  exit 1
fi
cmake --build "$ROOT/build" --parallel
