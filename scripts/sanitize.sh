#!/usr/bin/env bash
# Builds the CPU library with AddressSanitizer + UndefinedBehaviorSanitizer into a temp dir (the default
# build and fastrnn/_lib/ are not touched) and runs lstm/sab forward + backward under it, each checked
# against the reference: both scorers, provisional/final slots, every schedule kind, bias=False, B=1, T=1,
# k_top larger than the memory, k_att longer than the sequence, unbatched/batch_first/strided input,
# unused outputs, float32/float64, 1 and 2 threads, with torch's NaN poisoning of fresh allocations.
#
#   scripts/sanitize.sh                 build + run (a few minutes on 2 cores); exits non-zero on a finding
#   PYTHON=/path/to/python              the interpreter whose torch to build against (default .venv/bin/python)
#   CAPABILITY=AVX2|AVX512|DEFAULT|auto the SIMD level of the kernels (default auto: the host's)
#   KEEP=1                              keep the temp dir (its path is printed)
#
# A python host is not instrumented, so libasan is preloaded (it must come first in the process), and leak
# detection is off (CPython and torch keep allocations for the process's lifetime on purpose). Any ASan
# report, or UB (built with -fno-sanitize-recover), aborts the run with its stack; the log is printed.
# No CMake option is needed: the flags go in through CMAKE_CXX_FLAGS / CMAKE_SHARED_LINKER_FLAGS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
CAPABILITY="${CAPABILITY:-auto}"
[ -x "$PYTHON" ] || { echo "sanitize.sh: no python at $PYTHON (set PYTHON=...)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastrnn-sanitize.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then echo "sanitize.sh: temp dir $WORK (kept)"; else trap 'rm -rf "$WORK"' EXIT; fi

TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
NINJA="$(dirname "$PYTHON")/ninja"
[ -x "$NINJA" ] || NINJA="$(command -v ninja || true)"
if [ -n "$NINJA" ]; then GENERATOR=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA"); else GENERATOR=(-G "Unix Makefiles"); fi

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "sanitize.sh: building fastrnn_cpu with $SAN (capability $CAPABILITY) in $WORK/build"
cmake -S "$ROOT" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DPython_EXECUTABLE="$PYTHON" -DFASTRNN_CPU_CAPABILITY="$CAPABILITY" \
  -DFASTRNN_LIB_DIR="$WORK/lib" -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  > "$WORK/configure.log" || { cat "$WORK/configure.log"; exit 1; }
grep "fastrnn: CPU kernels built for" "$WORK/configure.log"
cmake --build "$WORK/build" --target fastrnn_cpu --parallel "${JOBS:-2}" > "$WORK/build.log" \
  || { tail -50 "$WORK/build.log"; exit 1; }
SO="$WORK/lib/libfastrnn_cpu.so"
ldd "$SO" | grep -q libasan || { echo "sanitize.sh: $SO is not linked against libasan" >&2; exit 1; }

LIBASAN="$(${CXX:-c++} -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || { echo "sanitize.sh: libasan.so not found ($LIBASAN)" >&2; exit 1; }

cat > "$WORK/exercise.py" <<'EOF'
import os, sys
from pathlib import Path

import torch

import fastrnn
from fastrnn import _native, truncation as tr

so = os.path.realpath(sys.argv[1])
assert not _native._loaded, "a fastrnn library was loaded before LIBRARY could be redirected"
_native.LIBRARY = Path(so)
assert _native.load(), _native.load_error()
assert so in Path("/proc/self/maps").read_text(), "the sanitized build is not the one loaded"
assert "libasan" in Path("/proc/self/maps").read_text(), "ASan runtime not in the process"

TOL = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=2e-3, atol=2e-4)}
SCHEDULES = {"full": tr.full, "fixed": lambda T: tr.fixed(T, 2), "fixed1": lambda T: tr.fixed(T, 1),
             "artbp": lambda T: tr.artbp(T, 3.0, generator=torch.Generator().manual_seed(T))}


def grads_of(model, x, hx, schedule, use, **kw):
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
    out = model(x, hx, schedule=schedule, **kw)
    y, (h, c) = out[0], out[1]
    g = torch.Generator().manual_seed(7)
    picked = [o for o, keep in zip((y, h, c), use) if keep]
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in picked)
    inputs = [x, *(hx or ()), *model.parameters()]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [y, h, c, *(torch.zeros(()) if gr is None else gr for gr in grads)], out[2:] if len(out) > 2 else ()


def check(name, cls, kw, T, B, *, dtype=torch.float64, schedule="fixed", hx=True, layout="plain",
          use=(True, True, True), attention=False):
    torch.manual_seed(0)
    I, H = 3, 5
    batch_first = layout == "batch_first"
    ref = cls(I, H, 2, backend="reference", dtype=dtype, batch_first=batch_first, **kw)
    cpu = cls(I, H, 2, backend="cpu", dtype=dtype, batch_first=batch_first, **kw)
    cpu.load_state_dict(ref.state_dict())
    if layout == "unbatched":
        x = torch.randn(T, I, dtype=dtype)
        state = (torch.randn(2, H, dtype=dtype), torch.randn(2, H, dtype=dtype))
    else:
        shape = (B, T, I) if batch_first else (T, B, I)
        x = torch.randn(*shape, dtype=dtype)
        if layout == "strided":                       # every other step of a longer sequence
            x = torch.randn(2 * T, B, I, dtype=dtype)[::2]
        state = (torch.randn(2, B, H, dtype=dtype), torch.randn(2, B, H, dtype=dtype))
    sched = SCHEDULES[schedule](T)
    extra = {"return_attention": True} if attention else {}
    ours, att = grads_of(cpu, x, state if hx else None, sched, use, **extra)
    expected, ratt = grads_of(ref, x, state if hx else None, sched, use, **extra)
    noise_only = kw.get("attention") == "linear"
    names = ["y", "h_n", "c_n", "dx", *(["dh0", "dc0"] if hx else []), *(n for n, _ in ref.named_parameters())]
    scale = max(t.abs().max().item() for t in expected[3:]) or 1.0
    for n, a, b in zip(names, ours, expected):
        assert torch.isfinite(a).all(), f"{name}: {n} not finite"
        if noise_only and n.startswith(("att_wh", "att_b")):
            assert a.abs().max() <= 1e-4 * scale, (name, n)   # exact gradient 0: rounding noise only
            continue
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name} {n}: {m}")
    if attention:
        for a, b in zip(att[0], ratt[0]):
            assert torch.equal(a.indices, b.indices), name
    print(f"ok  {name}", flush=True)


SAB, LSTM = fastrnn.SABLSTM, fastrnn.LSTM
mlp_final = dict(k_top=2, k_att=2, attention="mlp", slot_state="final", attn_size=4)
mlp_prov = dict(k_top=3, k_att=1, attention="mlp", slot_state="provisional")
lin_final = dict(k_top=2, k_att=2, attention="linear", slot_state="final")
lin_prov = dict(k_top=3, k_att=1, attention="linear", slot_state="provisional")
CASES = []
for threads in (1, 2):
    for dtype in (torch.float64, torch.float32):
        for sname in SCHEDULES:
            CASES.append((f"lstm {sname} {dtype} t{threads}", LSTM, {}, 9, 4, dict(dtype=dtype, schedule=sname), threads))
            for kname, kw in (("mlp-final", mlp_final), ("mlp-prov", mlp_prov), ("lin-final", lin_final),
                              ("lin-prov", lin_prov)):
                CASES.append((f"sab {kname} {sname} {dtype} t{threads}", SAB, kw, 9, 4,
                              dict(dtype=dtype, schedule=sname, attention=True), threads))
EDGE = [
    ("lstm bias=False", LSTM, dict(bias=False), 6, 3, {}),
    ("sab bias=False mlp", SAB, dict(mlp_final, bias=False), 6, 3, {}),
    ("sab bias=False linear", SAB, dict(lin_prov, bias=False), 6, 3, {}),
    ("lstm B=1", LSTM, {}, 7, 1, {}),
    ("sab B=1", SAB, mlp_prov, 7, 1, dict(attention=True)),
    ("lstm T=1", LSTM, {}, 1, 3, {}),
    ("sab T=1 mlp", SAB, mlp_final, 1, 3, dict(attention=True)),
    ("sab T=1 linear", SAB, lin_prov, 1, 3, {}),
    ("sab T=1 B=1", SAB, mlp_prov, 1, 1, {}),
    ("sab k_top > memory", SAB, dict(k_top=12, k_att=1, attention="mlp"), 5, 3, dict(attention=True)),
    ("sab k_top > memory linear", SAB, dict(k_top=12, k_att=2, attention="linear"), 5, 3, {}),
    ("sab k_top=1", SAB, dict(k_top=1, k_att=1), 8, 2, dict(attention=True)),
    ("sab k_att > T (memory = h0 only)", SAB, dict(k_top=3, k_att=20), 6, 2, dict(attention=True)),
    ("sab no hx", SAB, mlp_final, 6, 2, dict(hx=False)),
    ("lstm no hx", LSTM, {}, 6, 2, dict(hx=False)),
    ("sab unbatched", SAB, mlp_prov, 6, 1, dict(layout="unbatched")),
    ("sab batch_first", SAB, lin_final, 6, 3, dict(layout="batch_first")),
    ("lstm strided input", LSTM, {}, 6, 3, dict(layout="strided")),
    ("sab strided input", SAB, mlp_final, 6, 3, dict(layout="strided")),
    ("sab only y used", SAB, mlp_final, 6, 2, dict(use=(True, False, False))),
    ("sab only c_n used", SAB, mlp_prov, 6, 2, dict(use=(False, False, True))),
    ("lstm only h_n used", LSTM, {}, 6, 2, dict(use=(False, True, False))),
    ("sab long T (several backward chunks)", SAB, dict(k_top=5, k_att=2, slot_state="provisional"), 150, 3,
     dict(schedule="artbp")),
    ("lstm long T (several backward chunks)", LSTM, {}, 150, 5, dict(schedule="artbp")),
]
CASES += [(n, c, kw, T, B, opt, t) for t in (1, 2) for n, c, kw, T, B, opt in
          [(f"{n} t{t}", c, kw, T, B, opt) for n, c, kw, T, B, opt in EDGE]]

# every fresh torch.empty (the ops' outputs and work buffers) filled with NaN: unwritten elements show
torch.use_deterministic_algorithms(True)
torch.utils.deterministic.fill_uninitialized_memory = True
for name, cls, kw, T, B, opt, threads in CASES:
    torch.set_num_threads(threads)
    check(name, cls, kw, T, B, **opt)
print(f"sanitize: {len(CASES)} cases passed under ASan+UBSan", flush=True)
EOF

echo "sanitize.sh: running $WORK/exercise.py under LD_PRELOAD=$LIBASAN"
set +e
LD_PRELOAD="$LIBASAN" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
  "$PYTHON" "$WORK/exercise.py" "$SO" > "$WORK/run.log" 2>&1
rc=$?
set -e
grep -v '^ok ' "$WORK/run.log" | tail -200
echo "sanitize.sh: $(grep -c '^ok ' "$WORK/run.log") cases ok; exit status $rc"
if grep -q -e "ERROR: AddressSanitizer" -e "runtime error:" "$WORK/run.log"; then
  echo "sanitize.sh: sanitizer finding (see the report above)" >&2
  exit 1
fi
exit $rc
