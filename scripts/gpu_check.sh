#!/usr/bin/env bash
# The GPU check of issue #14, one command on a machine with one H100/H200 and the CUDA build of torch.
# Nothing from the network and nothing installed: the checkout runs through PYTHONPATH (fastrnn.kernels is
# its kernels/, fastrnn/_checkout.py). Six parts, each bounded with `timeout`, each run whatever the others
# gave; a part that needs one that did not pass is skipped, and says so:
#   1. builds the CPU library, fastrnn/_lib/libfastrnn_cpu.so (the op schemas every backend's ops use),
#      against this python's torch (scripts/build_native.sh),
#   2. builds the CUDA backend (fastrnn/ops/cuda_build.py: csrc/cuda with torch.utils.cpp_extension);
#      later processes only load it (FASTRNN_CUDA_NO_BUILD=1: a failed build is not retried by each),
#   3. runs the cuda backend's GPU tests (tests/test_cuda.py -k "not triton": against the reference,
#      streaming a SAB layer across calls, both LSTM sweeps, new_slots fresh, the k_top limit, per-row
#      resets against each row's pieces and per-row [T, B] schedules against each row's reference),
#   4. runs the triton backend's GPU tests (tests/test_cuda.py -k triton),
#   5. runs compute-sanitizer --tool memcheck on a small LSTM and SAB forward+backward (cuda backend; SAB
#      also streaming, and per row: resets, a left-padded memory, per-row counters, a [T, B] schedule), after
#      a probe: where the sanitizer is missing or refuses the device ("Device not supported", as under
#      gVisor) the part is skipped with a line saying so, not failed,
#   6. prints fwd+bwd times as ratios to nn.LSTM (cuDNN) for fastrnn.LSTM and SABLSTM (cuda, triton) at
#      B in {32, 256}, H in {128, 512, 1024}, T in {100, 1000}, until a deadline set at the part's start.
# Time: everything ends within GPU_CHECK_SECONDS (default 465: under 8 minutes) of the script's start, kill
# margins included. Each part gets at most its own cap, and never more than what is left once the parts
# after it have their minimum, so a part that finishes early leaves its time to the later ones.
#   PYTHON=/path/to/python   the interpreter with the CUDA torch (default: .venv/bin/python, else python3)
# Exit codes: 0 every part passed (or was skipped by the sanitizer's probe); else the code of the first
# part that did not pass: 1 a build failed, 2 GPU tests failed, 3 memcheck found errors, 4 the benchmark
# failed, 124 a part ran out of its time (or had none left); 5 nothing was checked: torch does not import,
# or it has no CUDA device (one line says which, and nothing else runs).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3 || true)"
BUDGET="${GPU_CHECK_SECONDS:-465}"
MARGIN=5                                      # timeout --kill-after: SIGKILL this long after SIGTERM
SKIPPED=77                                    # a part's command exits so to say "skipped, nothing wrong"
export PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0                     # tests/conftest.py defaults it to 1 (CPU machines)
export CUBLAS_WORKSPACE_CONFIG=":4096:8"      # deterministic mode (the NaN-poisoning fixture) with cuBLAS
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"       # parallel nvcc jobs of the extension build
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"   # H100/H200 only: halves the build

echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), python ${PYTHON:-none}, budget ${BUDGET}s"
if [ -z "$PYTHON" ] || [ ! -x "$PYTHON" ]; then
  echo "gpu_check: no python (no .venv/bin/python, no python3 on PATH; set PYTHON=...): nothing checked (exit 5)"
  exit 5
fi
probe="$("$PYTHON" -c '
import torch
if torch.version.cuda is None:
    print("no CUDA device: this torch is a CPU build (torch.version.cuda is None)")
elif not torch.cuda.is_available():
    print("no CUDA device: torch.cuda.is_available() is False")
else:
    print("ok", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))
' 2>&1)"
if [ $? -ne 0 ]; then
  echo "gpu_check: cannot import torch with $PYTHON: nothing checked (exit 5)"
  printf '%s\n' "$probe" | tail -n 3
  exit 5
fi
case "$probe" in
  ok*) echo "gpu_check: ${probe#ok }" ;;
  *) echo "gpu_check: $(printf '%s\n' "$probe" | tail -n 1); nothing checked on this machine (exit 5)"; exit 5 ;;
esac

FIRST_FAILURE=0
SUMMARY=()
note() {  # note NAME CODE WHAT: one line of the summary; CODE != 0 counts as a failure
  SUMMARY+=("$1: $3")
  if [ "$2" -ne 0 ] && [ "$FIRST_FAILURE" -eq 0 ]; then FIRST_FAILURE="$2"; fi
}

skip() {  # skip NAME WHY: a part that cannot run because one it needs did not pass (not a failure itself)
  echo
  echo "== $1: skipped: $2 =="
  note "$1" 0 "skipped ($2)"
}

# part NAME CAP RESERVE CODE COMMAND...: COMMAND under timeout, for at most CAP seconds and never past
# BUDGET - RESERVE (RESERVE: the minimum kept for the parts after this one). GPU_CHECK_DEADLINE (epoch
# seconds) tells the command when it is stopped. Returns 0 when the part passed (or skipped itself).
part() {
  local name="$1" cap="$2" reserve="$3" code="$4"
  shift 4
  local left=$((BUDGET - SECONDS - reserve - MARGIN))
  local secs=$((cap < left ? cap : left))
  echo
  if [ "$secs" -lt 10 ]; then
    echo "== $name: not run: ${left}s left of the ${BUDGET}s budget =="
    note "$name" 124 "not run (no time left)"
    return 1
  fi
  echo "== $name (at most ${secs}s) =="
  export GPU_CHECK_DEADLINE=$(($(date +%s) + secs))
  local t0=$SECONDS
  timeout --kill-after="$MARGIN" "$secs" "$@"
  local rc=$? took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then
    echo "== $name: passed in ${took}s =="
    note "$name" 0 "passed in ${took}s"
    return 0
  elif [ $rc -eq $SKIPPED ]; then
    echo "== $name: skipped (the reason is above) =="
    note "$name" 0 "skipped (see its output)"
    return 0
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "== $name: ran out of its ${secs}s (rc=$rc) =="
    note "$name" 124 "ran out of its ${secs}s"
  else
    echo "== $name: FAILED (rc=$rc) in ${took}s =="
    note "$name" "$code" "FAILED (rc=$rc)"
  fi
  return 1
}

# The minimum each later part keeps (its floor plus the kill margin): timings 20 s, memcheck 30 s (probe
# included), each test part 45 s, the CUDA build 60 s.
AFTER_MEMCHECK=$((20 + MARGIN))
AFTER_TRITON=$((AFTER_MEMCHECK + 30 + MARGIN))
AFTER_CUDA_TESTS=$((AFTER_TRITON + 45 + MARGIN))
AFTER_CUDA_BUILD=$((AFTER_CUDA_TESTS + 45 + MARGIN))
AFTER_NATIVE=$((AFTER_CUDA_BUILD + 60 + MARGIN))
XDIST=()   # the test parts on 4 processes where pytest-xdist is installed (Triton's compiles in parallel)
"$PYTHON" -c "import xdist" 2>/dev/null && XDIST=(-n 4)

NATIVE=0
part "1. build the CPU library (scripts/build_native.sh)" 150 "$AFTER_NATIVE" 1 \
  bash scripts/build_native.sh && NATIVE=1

CUDA=0
if [ $NATIVE -eq 1 ]; then
  part "2. build the CUDA backend (fastrnn.ops.cuda_build)" 240 "$AFTER_CUDA_BUILD" 1 \
    "$PYTHON" -m fastrnn.ops.cuda_build && CUDA=1
else
  skip "2. build the CUDA backend (fastrnn.ops.cuda_build)" "the CPU library (op schemas) did not build"
fi
export FASTRNN_CUDA_NO_BUILD=1   # from here on: load the library built above, never rebuild

if [ $CUDA -eq 1 ]; then
  part "3. cuda backend GPU tests (tests/test_cuda.py -k 'not triton')" 150 "$AFTER_CUDA_TESTS" 2 \
    "$PYTHON" -m pytest -q -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"} tests/test_cuda.py -k "not triton"
else
  skip "3. cuda backend GPU tests (tests/test_cuda.py -k 'not triton')" "the CUDA backend did not build"
fi

part "4. triton backend GPU tests (tests/test_cuda.py -k triton)" 150 "$AFTER_TRITON" 2 bash -c '
"$PYTHON" -c "import fastrnn.kernels" || { echo "gpu_check: fastrnn.kernels does not import (above)"; exit 1; }
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@" tests/test_cuda.py -k triton' bash ${XDIST[@]+"${XDIST[@]}"}

SANITIZER="$(command -v compute-sanitizer || true)"
[ -n "$SANITIZER" ] || { [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SANITIZER="$CUDA_HOME/bin/compute-sanitizer"; }
[ -n "$SANITIZER" ] || { [ -x /usr/local/cuda/bin/compute-sanitizer ] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer; }
export SANITIZER
if [ $CUDA -ne 1 ]; then
  skip "5. compute-sanitizer memcheck, small case" "the CUDA backend did not build"
elif [ -z "$SANITIZER" ]; then
  skip "5. compute-sanitizer memcheck, small case" "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda/bin)"
else
  # The probe: a context and one allocation through the driver (ctypes, no torch: a few seconds). A
  # sanitizer that refuses the device says "Device not supported" (then error 999 at the allocation).
  part "5. compute-sanitizer memcheck, small case" 90 "$AFTER_MEMCHECK" 3 bash -c '
probe="$(timeout 30 "$SANITIZER" --tool memcheck --error-exitcode 9 "$PYTHON" -c "
import ctypes
cu = ctypes.CDLL(\"libcuda.so.1\")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
for call, args in ((cu.cuInit, (0,)), (cu.cuDeviceGet, (ctypes.byref(dev), 0)),
                   (cu.cuDevicePrimaryCtxRetain, (ctypes.byref(ctx), dev)), (cu.cuCtxSetCurrent, (ctx,)),
                   (cu.cuMemAlloc_v2, (ctypes.byref(ptr), ctypes.c_size_t(1 << 20))), (cu.cuMemFree_v2, (ptr,))):
    rc = call(*args)
    assert rc == 0, f\"{call.__name__} returned CUresult {rc}\"
print(\"sanitizer probe: ok\")
" </dev/null 2>&1)"
rc=$?
printf "%s\n" "$probe" | tail -n 5
if [ $rc -ne 0 ] || ! printf "%s\n" "$probe" | grep -q "sanitizer probe: ok"; then
  if printf "%s\n" "$probe" | grep -qi "device not supported"; then
    echo "gpu_check: compute-sanitizer does not support this device here (\"Device not supported\"; e.g. under gVisor): memcheck skipped"
  else
    echo "gpu_check: compute-sanitizer could not run a trivial CUDA program here (rc=$rc, output above): memcheck skipped"
  fi
  exit 77
fi
exec "$SANITIZER" --tool memcheck --error-exitcode 9 --target-processes all "$PYTHON" -' <<'PY'
import torch, fastrnn
from fastrnn.truncation import fixed
torch.manual_seed(0)
for mode in ("0", "1"):   # one launch per step, then persistent
    import os; os.environ["FASTRNN_CUDA_LSTM_MODE"] = mode
    for dt in (torch.float32, torch.bfloat16):
        for m in (fastrnn.LSTM(5, 40, backend="cuda"),
                  fastrnn.SABLSTM(5, 40, backend="cuda", k_top=2, k_att=2, attn_size=8),
                  fastrnn.SABLSTM(5, 40, backend="cuda", k_top=2, k_att=3, attention="linear", slot_state="final")):
            m = m.to("cuda", dt)
            x = torch.randn(9, 3, 5, device="cuda", dtype=dt, requires_grad=True)
            y = m(x, schedule=fixed(9, 4), lengths=torch.tensor([9, 0, 5]))[0]
            y.float().square().sum().backward()
from fastrnn.ops import cuda_build   # streaming: carried slots (S0 = 4 > B) and a step0 off the k_att grid
d = dict(device="cuda", dtype=torch.float32)
for mlp in (True, False):
    T, B, I, H, A = 5, 3, 5, 40, 8
    r = lambda *s: (torch.randn(*s, **d) * 0.3).requires_grad_()
    att = (r(A, H), r(A, H), r(A)) if mlp else (r(H), r(H), r(1))
    out = cuda_build.sab_layer(r(T, B, I), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), *att, r(B, H), r(B, H),
                               torch.zeros(T, dtype=torch.bool, device="cuda"), torch.ones(T, **d), k_top=2,
                               k_att=3, scorer="mlp" if mlp else "linear", provisional=mlp, memory=r(B, 4, H),
                               step0=7, return_slots=True)
    (out[0].square().sum() + out[4].square().sum()).backward()
    # per row (docs/SPEC.md section 9): resets (one at step 0), a left-padded memory, per-row counters, and a
    # [T, B] schedule; the per-row slot tables (sab_rows.cu) and every kernel's per-row path
    reset = torch.zeros(T, B, dtype=torch.bool, device="cuda")
    reset[0, 1] = reset[2, 0] = reset[3, 2] = True
    cut = torch.zeros(T, B, dtype=torch.bool, device="cuda")
    cut[3, 1] = True
    out = cuda_build.sab_layer(r(T, B, I), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), *att, r(B, H), r(B, H),
                               cut, torch.rand(T, B, **d) + 0.5, k_top=2, k_att=2, scorer="mlp" if mlp else "linear",
                               provisional=not mlp, memory=r(B, 4, H), step0=7, return_slots=True, reset=reset,
                               slot_offset=torch.tensor([1, 0, 3], device="cuda"),
                               row_step0=torch.tensor([2, 5, 0], device="cuda"))
    (out[0].square().sum() + out[4].square().sum()).backward()
torch.cuda.synchronize()
print("memcheck case ran: LSTM and SABLSTM (mlp, linear), float32 and bfloat16, both LSTM sweeps; streaming; "
      "per-row resets and schedules")
PY
fi

part "6. fwd+bwd time / nn.LSTM (cuDNN)" 60 0 4 "$PYTHON" - <<'PY'
import os
import time
import torch
import fastrnn
from fastrnn import backends

# The part's deadline (set by gpu_check.sh at its start), less a margin for the pass in flight: no new
# pass starts after it, and the cases not reached print "skip".
budget_end = float(os.environ.get("GPU_CHECK_DEADLINE", time.time() + 60)) - 15
dev = torch.device("cuda")
have = {b: backends._layer_modules(b) is not None for b in ("cuda", "triton")}
print("backends:", {b: "ok" if ok else backends._why_unavailable(b) for b, ok in have.items()}, flush=True)

def fwd_bwd_ms(model, x, reps=3):
    """Median of `reps` forward+backward passes (after one warm-up), in ms; None past the time budget."""
    times = []
    for i in range(reps + 1):
        if time.time() > budget_end:
            return None
        x.grad = None
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = model(x)[0]
        out.float().sum().backward()
        stop.record()
        torch.cuda.synchronize()
        if i:
            times.append(start.elapsed_time(stop))
        if start.elapsed_time(stop) > 4000:   # a slow case: one timed pass is enough
            reps = min(reps, i + 1 if i else 1)
            if i:
                break
    return sorted(times)[len(times) // 2] if times else None

def ratio(ms, base):
    return "   skip" if ms is None or base is None else f"{ms / base:7.2f}"

print(f"{'B':>4} {'H':>5} {'T':>5} | {'cuDNN ms':>9} | {'LSTM cuda':>9} {'LSTM trit':>9} | {'SAB cuda':>9} {'SAB trit':>9}")
for T in (100, 1000):
    for B in (32, 256):
        for H in (128, 512, 1024):
            torch.manual_seed(0)
            x = torch.randn(T, B, H, device=dev, requires_grad=True)
            base = fwd_bwd_ms(torch.nn.LSTM(H, H).to(dev), x)
            cells = []
            for cls in (fastrnn.LSTM, fastrnn.SABLSTM):
                for b in ("cuda", "triton"):
                    if not have[b]:
                        cells.append("      n/a")
                        continue
                    kw = dict(k_top=5, k_att=2) if cls is fastrnn.SABLSTM else {}
                    ms = fwd_bwd_ms(cls(H, H, backend=b, **kw).to(dev), x)
                    cells.append(f"  {ratio(ms, base)}")
            base_s = "     skip" if base is None else f"{base:9.2f}"
            print(f"{B:>4} {H:>5} {T:>5} | {base_s} | {cells[0]} {cells[1]} | {cells[2]} {cells[3]}", flush=True)
print("ratios: fastrnn time / nn.LSTM time, fwd+bwd, float32 (skip: past the part's deadline; n/a: backend unavailable)")
PY

echo
echo "gpu_check: summary (${SECONDS}s of ${BUDGET}s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
if [ "$FIRST_FAILURE" -eq 0 ]; then
  echo "gpu_check: all parts passed"
else
  echo "gpu_check: FAILED, exit $FIRST_FAILURE (the first part that did not pass)"
fi
exit "$FIRST_FAILURE"
