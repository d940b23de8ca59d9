"""The CUDA sources compile: CMake configures with FASTRNN_CUDA=ON and nvcc builds the CUDA library for
sm_80 and sm_90 into a temp dir (no GPU is needed to compile; nothing here can run it)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ["fastrnn_lstm_pointwise_forward_f32", "fastrnn_lstm_pointwise_forward_f64",
             "fastrnn_lstm_pointwise_backward_f32", "fastrnn_lstm_pointwise_backward_f64"]


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
    exported = _run(["nm", "-D", "--defined-only", str(so)])
    for name in LAUNCHERS:
        assert name in exported, f"launcher {name} is not exported by {so.name}"
    cuobjdump = _cuobjdump()
    if cuobjdump is None:  # cannot list the cubins: at least the requested architectures were compiled
        flags = (build / "build.ninja").read_text() if (build / "build.ninja").exists() else ""
        assert "sm_80" in flags and "sm_90" in flags
    else:
        elves = _run([cuobjdump, "--list-elf", str(so)])
        assert "sm_80" in elves and "sm_90" in elves, elves
