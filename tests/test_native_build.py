"""Native builds into temp dirs (fastrnn/_lib/ is never touched).

The CUDA sources compile: CMake configures with FASTRNN_CUDA=ON and nvcc builds the CUDA library for
sm_80 and sm_90 (no GPU is needed to compile; nothing here can run it).

The CPU library at FASTRNN_CPU_CAPABILITY=DEFAULT and AVX2 (the levels another machine's `auto` may pick):
each build uses the requested level (CMake's message and the vector registers in its code), loads in a
fresh process and matches the reference in float64 (forward outputs and every gradient, 1e-9 relative).
About 35 s per build on 2 idle cores."""
import ctypes
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Every launcher of csrc/cuda/launchers.h, per dtype where it has one.
LAUNCHERS = ["fastrnn_lstm_pointwise_forward_f32", "fastrnn_lstm_pointwise_forward_f64",
             "fastrnn_lstm_pointwise_backward_f32", "fastrnn_lstm_pointwise_backward_f64",
             "fastrnn_lstm_persistent_units", "fastrnn_sab_max_k_top", "fastrnn_sab_row_slots",
             *(f"fastrnn_{op}_{dt}" for op in ("gemm", "lstm_forward", "lstm_backward", "sab_forward", "sab_backward")
               for dt in ("f32", "f64", "bf16"))]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _cuobjdump():
    """cuobjdump from the CUDA toolkit, or the copy Triton ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: the CUDA compile check needs it")
def test_cuda_library_compiles_for_sm80_and_sm90(tmp_path):
    build, lib = tmp_path / "build", tmp_path / "lib"
    cmake = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DFASTRNN_CUDA=ON",
             f"-DFASTRNN_LIB_DIR={lib}", f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
             f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}"]
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    if Path(ninja).exists():
        cmake += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    _run(cmake)
    _run(["cmake", "--build", str(build), "--target", "fastrnn_cuda", "--parallel"])  # the CUDA library only

    so = lib / "libfastrnn_cuda.so"
    assert so.exists(), f"build succeeded but {so} is missing"
    exported = {line.split()[-1] for line in _run(["nm", "-D", "--defined-only", str(so)]).splitlines()
                if len(line.split()) >= 3 and line.split()[1] == "T"}
    declared = set(re.findall(r"\bint (fastrnn_\w+)\(", (ROOT / "csrc" / "cuda" / "launchers.h").read_text()))
    assert declared == set(LAUNCHERS), f"launchers.h and this test disagree: {sorted(declared ^ set(LAUNCHERS))}"
    missing = [name for name in LAUNCHERS if name not in exported]
    assert not missing, f"launchers not exported (as functions) by {so.name}: {missing}"
    # the SAB k_top limit (csrc/cuda/sab.cuh, row_max_k) is host arithmetic, callable without a GPU: the
    # per-row kernels' shared memory (2K + 1) 8 + (3K + 34) acc bytes within 48 KiB less 256 static bytes
    lib = ctypes.CDLL(str(so))
    for code, acc in ((0, 4), (1, 8), (2, 4)):   # float32, float64, bfloat16 (float accumulation)
        assert lib.fastrnn_sab_max_k_top(code) == (48 * 1024 - 256 - 8 - 34 * acc) // (16 + 3 * acc), code
    cuobjdump = _cuobjdump()
    if cuobjdump is None:  # cannot list the cubins: at least the requested architectures were compiled
        flags = (build / "build.ninja").read_text() if (build / "build.ninja").exists() else ""
        assert "sm_80" in flags and "sm_90" in flags
    else:
        elves = _run([cuobjdump, "--list-elf", str(so)])
        assert "sm_80" in elves and "sm_90" in elves, elves
        # every translation unit's kernels for both architectures (one cubin per .cu and architecture)
        units = sorted(p.stem for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        for arch in ("sm_80", "sm_90"):
            cubins = [line for line in elves.splitlines() if arch in line]
            assert len(cubins) >= len(units), f"{arch}: {len(cubins)} cubins for {len(units)} units {units}:\n{elves}"
        # the kernels of every op and direction are in the library
        functions = _run([cuobjdump, "--list-text", str(so)])
        for kernel in ("lstm_fwd_step_kernel", "lstm_fwd_persistent_kernel", "lstm_bwd_step_kernel",
                       "lstm_bwd_persistent_kernel", "gemm_kernel", "sab_attention_fwd_kernel",
                       "sab_attention_bwd_kernel", "sab_cell_bwd_kernel", "sab_row_slots_kernel"):
            assert kernel in functions, f"{kernel} missing from {so.name}"



def _cuda_include():
    """The CUDA toolkit's include directory (cuda_runtime_api.h), from nvcc's location."""
    nvcc = shutil.which("nvcc")
    for base in ([Path(nvcc).resolve().parents[1]] if nvcc else []) + [Path("/usr/local/cuda")]:
        if (base / "include" / "cuda_runtime_api.h").exists():
            return base / "include"
    return None


@pytest.mark.skipif(shutil.which("c++") is None or _cuda_include() is None,
                    reason="a C++ compiler and the CUDA toolkit headers are needed")
def test_cuda_binding_parses_against_torch_headers(tmp_path):
    """csrc/cuda/binding.cpp (the TORCH_LIBRARY_IMPL for the CUDA key) cannot be built with the CPU torch, but
    it can be parsed: the CPU wheel ships c10/cuda's headers except the one CMake generates, stubbed here."""
    from torch.utils import cpp_extension
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    system = [a for p in cpp_extension.include_paths() for a in ("-isystem", p)]
    _run(["c++", "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *system,
          "-isystem", str(_cuda_include()), "-isystem", str(tmp_path), f"-I{ROOT / 'csrc' / 'include'}",
          f"-I{ROOT / 'csrc'}", str(ROOT / "csrc" / "cuda" / "binding.cpp")])

# ---- the CPU library at each SIMD level -----------------------------------------------------------------
# CMake builds the kernels for one capability (CMakeLists.txt, FASTRNN_CPU_CAPABILITY); a machine of another
# CPU model may get the other one. Each level is built into a temp dir and checked against the reference in
# a fresh process (the library registers torch.ops.fastrnn, which one process can hold only once).

# Run in the child: point fastrnn._native at the temp build before anything loads a library, then compare
# the public modules on backend="cpu" with backend="reference" (forward outputs and every gradient).
_CHECK_AGAINST_REFERENCE = r"""
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(2)
import fastrnn
from fastrnn import _native, truncation as tr

so = os.path.realpath(sys.argv[1])
default = os.path.realpath(_native.LIBRARY)
assert not _native._loaded, "a fastrnn library was loaded before LIBRARY could be redirected"
_native.LIBRARY = Path(so)
assert _native.load(), _native.load_error()
maps = Path("/proc/self/maps").read_text()
assert so in maps and default not in maps, "the process did not load the temp build (alone)"

f64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)
CASES = [
    ("lstm", fastrnn.LSTM, dict(), tr.artbp(9, 3.0, generator=torch.Generator().manual_seed(1))),
    ("sab-mlp-final", fastrnn.SABLSTM, dict(k_top=2, k_att=2, attn_size=3), tr.fixed(9, 3)),
    ("sab-linear-provisional", fastrnn.SABLSTM,
     dict(k_top=3, k_att=1, attention="linear", slot_state="provisional"), tr.fixed(9, 4)),
    ("sab-mlp-nobias-full", fastrnn.SABLSTM, dict(k_top=4, k_att=3, bias=False), tr.full(9)),
]
worst = {}
for name, cls, kw, sched in CASES:
    torch.manual_seed(0)
    ref = cls(3, 5, 2, backend="reference", dtype=f64, **kw)
    cpu = cls(3, 5, 2, backend="cpu", dtype=f64, **kw)
    cpu.load_state_dict(ref.state_dict())
    x = torch.randn(9, 4, 3, dtype=f64)
    hx = (torch.randn(2, 4, 5, dtype=f64), torch.randn(2, 4, 5, dtype=f64))
    runs = []
    for m in (cpu, ref):
        xs, hs = x.clone().requires_grad_(), tuple(t.clone().requires_grad_() for t in hx)
        y, (h, c) = m(xs, hs, schedule=sched)[:2]
        g = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=f64)).sum() for o in (y, h, c))
        names = ["x", "h0", "c0", *(n for n, _ in m.named_parameters())]
        grads = torch.autograd.grad(loss, [xs, *hs, *m.parameters()], allow_unused=True)
        runs.append({"y": y, "h_n": h, "c_n": c,
                     **{"d" + n: torch.zeros(1, dtype=f64) if gr is None else gr for n, gr in zip(names, grads)}})
    ours, expected = runs
    scale = max(v.abs().max().item() for k, v in expected.items() if k.startswith("d"))
    for key in expected:
        a, b = ours[key], expected[key]
        if kw.get("attention") == "linear" and key[1:].startswith(("att_wh", "att_b")):
            # the linear score's query term cancels in the threshold: its exact gradient is zero and both
            # sides hold rounding noise only
            assert a.abs().max() <= 1e-12 * scale and b.abs().max() <= 1e-12 * scale, key
            continue
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name} {key}: {m}")
        rel = ((a - b).abs() / b.abs().clamp(min=1e-300)).max().item()
        worst[name] = max(worst.get(name, 0.0), rel)
print(json.dumps(worst))
"""


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _simd_registers(so):
    """({'ymm', 'zmm'} used by the library's code), or None without objdump."""
    if shutil.which("objdump") is None:
        return None
    asm = _run(["objdump", "-d", "--no-show-raw-insn", str(so)])
    return {reg for reg in ("ymm", "zmm") if f"%{reg}" in asm}


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                    reason="cmake or a C++ compiler is missing")
@pytest.mark.parametrize("capability", ["DEFAULT", "AVX2"])
def test_cpu_library_builds_and_matches_reference_at(capability, tmp_path):
    needs = {"DEFAULT": set(), "AVX2": {"avx2", "fma", "f16c"}}[capability]
    flags = _cpu_flags()
    if needs - flags:
        pytest.skip(f"this CPU lacks {sorted(needs - flags)}: cannot run a {capability} build")
    build, lib = tmp_path / "build", tmp_path / "lib"
    cmake = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             f"-DFASTRNN_CPU_CAPABILITY={capability}", f"-DFASTRNN_LIB_DIR={lib}",
             f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DPython_EXECUTABLE={sys.executable}"]
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    if Path(ninja).exists():
        cmake += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    configured = _run(cmake)
    assert f"fastrnn: CPU kernels built for {capability}" in configured, configured[-3000:]
    _run(["cmake", "--build", str(build), "--target", "fastrnn_cpu", "--parallel", "2"])

    so = lib / "libfastrnn_cpu.so"
    assert so.exists(), f"build succeeded but {so} is missing"
    registers = _simd_registers(so)
    if registers is not None:  # the kernels really use the requested vector width, and no wider one
        assert registers == {"DEFAULT": set(), "AVX2": {"ymm"}}[capability], registers

    out = _run([sys.executable, "-c", _CHECK_AGAINST_REFERENCE, str(so)], cwd=ROOT, timeout=300)
    worst = json.loads(out.strip().splitlines()[-1])
    assert set(worst) == {"lstm", "sab-mlp-final", "sab-linear-provisional", "sab-mlp-nobias-full"}, worst
