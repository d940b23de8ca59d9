"""Every Triton kernel compiles for sm_80 (A100) and sm_90 (H100), in float32 and bfloat16, without a GPU.

The compiles run in subprocesses (tests/_triton_compile_check.py): this test session runs the kernels
under TRITON_INTERPRET=1, where @triton.jit functions cannot be compiled. All four start at once so the
two CI cores overlap them.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_triton_compile_check.py")
CASES = [(cc, dt) for cc in (80, 90) for dt in ("fp32", "bf16")]
EXPECTED_VARIANTS = 13  # lines printed per case: see variants() in the script


@pytest.fixture(scope="module")
def compiles():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    procs = {case: subprocess.Popen([sys.executable, SCRIPT, str(case[0]), case[1]], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for case in CASES}
    results = {case: p.communicate(timeout=600) + (p.returncode,) for case, p in procs.items()}
    return results


@pytest.mark.parametrize("cc,dt", CASES)
def test_kernels_compile(compiles, cc, dt):
    out, err, rc = compiles[(cc, dt)]
    assert rc == 0, f"compile for sm_{cc} {dt} failed:\n{out}\n{err[-4000:]}"
    lines = [line for line in out.splitlines() if line.startswith(f"ok sm_{cc} {dt} ")]
    assert len(lines) == EXPECTED_VARIANTS, out
