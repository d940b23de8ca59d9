#!/usr/bin/env bash
# The GPU check of issue #14, one command on a machine with one H100/H200 and the CUDA build of torch
# (nothing from the network):
#   1. builds the CUDA backend (fastrnn/ops/cuda_build.py: csrc/cuda with torch.utils.cpp_extension),
#   2. runs the GPU tests (tests/test_cuda.py: cuda and triton backends against the reference, streaming
#      a SAB layer across calls included),
#   3. runs compute-sanitizer --tool memcheck on a small LSTM and SAB forward+backward (cuda backend),
#   4. prints fwd+bwd times as ratios to nn.LSTM (cuDNN) for fastrnn.LSTM and SABLSTM (cuda, triton) at
#      B in {32, 256}, H in {128, 512, 1024}, T in {100, 1000}.
# Each part is bounded with `timeout` (180 + 135 + 45 + 105 s): the whole check ends within 8 minutes.
#   PYTHON=/path/to/python   the interpreter with the CUDA torch (default: .venv/bin/python, else python3)
# Exit codes: 0 all parts passed, or no CUDA device (prints "gpu_check: no CUDA device ..." and runs
# nothing else); 1 the build failed; 2 GPU tests failed; 3 memcheck found errors; 4 the benchmark failed;
# 124 a part ran out of its time (the output says which).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0                     # tests/conftest.py defaults it to 1 (CPU machines)
export CUBLAS_WORKSPACE_CONFIG=":4096:8"      # deterministic mode (the NaN-poisoning fixture) with cuBLAS
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"       # parallel nvcc jobs of the extension build
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"   # H100/H200 only: halves the build

echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), python $PYTHON"
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
  echo "gpu_check: cannot import torch with $PYTHON: $probe" >&2
  exit 1
fi
case "$probe" in
  ok*) echo "gpu_check: ${probe#ok }" ;;
  *) echo "gpu_check: $probe; nothing to check on this machine (exit 0)"; exit 0 ;;
esac

part() {  # part NAME SECONDS EXIT_CODE_ON_FAILURE COMMAND...
  local name="$1" secs="$2" code="$3"
  shift 3
  echo
  echo "== $name (at most ${secs}s) =="
  local t0=$SECONDS
  timeout --kill-after=5 "$secs" "$@"
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0))s =="
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "gpu_check: $name ran out of its ${secs}s" >&2; exit 124; fi
  if [ $rc -ne 0 ]; then echo "gpu_check: $name failed" >&2; exit "$code"; fi
}

part "build the CUDA backend" 180 1 "$PYTHON" -m fastrnn.ops.cuda_build
part "GPU tests (tests/test_cuda.py)" 135 2 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py

SANITIZER="$(command -v compute-sanitizer || true)"
[ -n "$SANITIZER" ] || { [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SANITIZER="$CUDA_HOME/bin/compute-sanitizer"; }
[ -n "$SANITIZER" ] || { [ -x /usr/local/cuda/bin/compute-sanitizer ] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer; }
if [ -n "$SANITIZER" ]; then
  part "compute-sanitizer memcheck, small case" 45 3 "$SANITIZER" --tool memcheck --error-exitcode 9 \
    --target-processes all "$PYTHON" - <<'PY'
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
torch.cuda.synchronize()
print("memcheck case ran: LSTM and SABLSTM (mlp, linear), float32 and bfloat16, both LSTM sweeps; streaming")
PY
else
  echo; echo "== compute-sanitizer not found (CUDA_HOME/bin, PATH): memcheck skipped =="
fi

part "fwd+bwd time / nn.LSTM (cuDNN)" 105 4 "$PYTHON" - <<'PY'
import time
import torch
import fastrnn
from fastrnn import backends

budget_end = time.monotonic() + 95
dev = torch.device("cuda")
have = {b: b in ("cuda", "triton") and backends._layer_modules(b) is not None for b in ("cuda", "triton")}

def fwd_bwd_ms(model, x, reps=3):
    """Median of `reps` forward+backward passes (after one warm-up), in ms; None past the time budget."""
    times = []
    for i in range(reps + 1):
        if time.monotonic() > budget_end:
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
print("ratios: fastrnn time / nn.LSTM time, fwd+bwd, float32 (skip: past the part's time budget)")
PY
echo
echo "gpu_check: all parts passed"
