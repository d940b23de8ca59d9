"""The CUDA backend: builds and loads the CUDA implementations of the `fastrnn::` ops, and exposes
`available`, `lstm_layer` and `sab_layer` (docs/CONTRACT.md) for `backend="cuda"`.

The kernels (csrc/cuda/*.cu, behind the C API of csrc/cuda/launchers.h) and the binding
(csrc/cuda/binding.cpp, `TORCH_LIBRARY_IMPL(fastrnn, CUDA, m)`) are compiled together with
`torch.utils.cpp_extension.load` (JIT, ninja; cached, so later loads only check timestamps) into
`$FASTRNN_CUDA_BUILD_DIR` (default `~/.cache/fastrnn/cuda-<torch>-<cuda>`), and loaded into the process
as a plain library: the ops keep their schemas (csrc/ops.cpp) and their Python autograd and fake kernels
(fastrnn/ops/lstm.py, sab.py), which hold for every device. `python -m fastrnn.ops.cuda_build` builds
it ahead of time (scripts/gpu_check.sh does).

Usable exactly when torch has CUDA, a device is visible (torch.cuda.is_available()), nvcc is found
(CUDA_HOME or PATH), the CPU library with the schemas loads, and the build succeeds; `load_error()` says
which failed. `backend="auto"` on CUDA tensors takes this backend only once it is built (`built()`:
loaded, or a library from an earlier build in the build directory), otherwise triton: "auto" never starts
a compile of minutes on its own.
Environment: FASTRNN_CUDA_LSTM_MODE = 0 (one launch per step), 1 (persistent kernel where W_hh fits on
chip, the default), 2 (persistent or error); TORCH_CUDA_ARCH_LIST as for any torch extension;
FASTRNN_CUDA_NO_BUILD=1: never start a build from scratch, only load a library an earlier build left in
build_dir() (scripts/gpu_check.sh sets it after its build part, so that a failed or timed-out build is not
retried, for minutes, by every later process that touches the backend).
"""
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from .. import _native
from .streaming import check_stream

NAME = "fastrnn_cuda_ops"
ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

_loaded = False
_error: Optional[str] = None


def sources() -> list:
    """The binding and every kernel translation unit."""
    return [str(CSRC / "cuda" / "binding.cpp"), *sorted(str(p) for p in (CSRC / "cuda").glob("*.cu"))]


def build_dir() -> Path:
    default = Path.home() / ".cache" / "fastrnn" / f"cuda-{torch.__version__}-{torch.version.cuda}"
    return Path(os.environ.get("FASTRNN_CUDA_BUILD_DIR") or default)


def _nvcc() -> Optional[str]:
    from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _why_not() -> Optional[str]:
    """Why the backend cannot be built or loaded here (None when it can be tried)."""
    if torch.version.cuda is None:
        return "this torch is a CPU build (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not (CSRC / "cuda" / "binding.cpp").exists():
        return f"the CUDA sources are not in this installation ({CSRC / 'cuda'})"
    if _nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if not _native.load():
        return f"the CPU library with the op schemas did not load: {_native.load_error()}"
    return None


def load(verbose: bool = False) -> bool:
    """Builds (if needed) and loads the CUDA ops once per process; True when they are registered."""
    global _loaded, _error
    if _loaded or _error is not None:
        return _loaded
    _error = _why_not()
    if _error is not None:
        return False
    from torch.utils import cpp_extension
    out = build_dir()
    if os.environ.get("FASTRNN_CUDA_NO_BUILD") == "1" and not (out / f"{NAME}.so").exists():
        _error = f"not built: FASTRNN_CUDA_NO_BUILD=1 and no {NAME}.so from an earlier build in {out}"
        return False
    out.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name=NAME, sources=sources(), build_directory=str(out), is_python_module=False, verbose=verbose,
            extra_include_paths=[str(CSRC / "include"), str(CSRC)],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-std=c++17"])
    except Exception as e:   # compile or load failure: the backend is unavailable, and says why
        _error = f"building the CUDA ops failed ({type(e).__name__}: {str(e)[-2000:]})"
        return False
    _loaded = True
    return True


def built() -> bool:
    """Loaded already, or loadable without compiling (a library from an earlier build is in build_dir())."""
    if _loaded:
        return True
    if _why_not() is not None:
        return False
    return (build_dir() / f"{NAME}.so").exists() and load()


def load_error() -> Optional[str]:
    load()
    return _error


def available() -> bool:
    return load()


def _check_cuda(x) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got input on {x.device}")
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"x: the cuda backend takes float32, float64 or bfloat16, got {x.dtype}")


def _contiguous(*tensors):
    # anything else (None, a wrong type) is passed on to the cpu module's checks, which name the argument
    return [t.contiguous() if isinstance(t, torch.Tensor) else t for t in tensors]


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None):
    """One LSTM layer on the CUDA ops (docs/CONTRACT.md): the op of fastrnn/ops/lstm.py, dispatched to
    csrc/cuda/binding.cpp by the tensors' device."""
    if not load():
        raise RuntimeError(f"fastrnn cuda backend unavailable: {_error}")
    _check_cuda(x)
    from . import lstm
    return lstm.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths=lengths)


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False,
              lengths=None, memory=None, step0: int = 0, return_slots: bool = False, reset=None,
              slot_offset=None, row_step0=None):
    """One SAB-LSTM layer on the CUDA ops (docs/CONTRACT.md), streaming included (docs/SPEC.md section 8):
    `memory` [B, S0, H] replaces [h0] as the initial memory, `step0` is the global index of x's first step,
    and with `return_slots` a fifth result holds the slots this call wrote, new_slots [B, S1, H]; per-row
    resets (section 9: reset [T, B] bool, slot_offset / row_step0 [B] int64) as the cpu ops take them; `cut`
    and `scale` [T], or [T, B] (one schedule per row). fastrnn.reference.sab_layer is the oracle."""
    step0 = check_stream(memory, step0, lengths, return_slots, h0)
    if not load():
        raise RuntimeError(f"fastrnn cuda backend unavailable: {_error}")
    _check_cuda(x)
    from . import sab
    args = _contiguous(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale)
    lengths, memory = _contiguous(lengths, memory)
    return sab.sab_layer(*args, k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional,
                         need_attention=need_attention, lengths=lengths, memory=memory, step0=step0,
                         return_slots=return_slots, reset=reset, slot_offset=slot_offset, row_step0=row_step0)



if __name__ == "__main__":
    ok = load(verbose=True)
    print(f"fastrnn cuda backend: {'loaded from ' + str(build_dir()) if ok else 'unavailable: ' + str(_error)}")
    raise SystemExit(0 if ok else 1)
