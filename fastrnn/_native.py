"""Loads fastrnn's native operator library (`fastrnn/_lib/libfastrnn_cpu.so`) into `torch.ops.fastrnn`,
once per process.

The library comes from `scripts/build_native.sh` in a clone, or from `pip install .` / the wheel, which
build it with CMake (pyproject.toml). A missing or broken build is not an import error: `load()` returns
False and `load_error()` says why, so the reference and Triton backends keep working without it. It is not
silent either: `import fastrnn` warns once when the library is missing (`warn_if_missing`), and `load()`
warns once when it is there but does not load, each warning naming the fix, since `backend="auto"` then
runs CPU tensors on the slow reference.
"""
import warnings
from pathlib import Path
from typing import Optional

import torch

PACKAGE = Path(__file__).resolve().parent
LIBRARY = PACKAGE / "_lib" / "libfastrnn_cpu.so"

_loaded = False
_error: Optional[str] = None
_warned = False


def fix() -> str:
    """How to build the library where this copy of fastrnn lives: the build script in a source checkout,
    else a reinstall from source against the torch installed here."""
    script = PACKAGE.parent / "scripts" / "build_native.sh"
    if script.exists():
        return f"build it with `bash {script}` (or `bash scripts/setup.sh`)"
    return ("reinstall fastrnn from source so that it is built against this torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps <fastrnn source>` (a C++ compiler "
            "and CMake >= 3.21 are needed)")


def _warn(problem: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(f"fastrnn: {problem}; backend='cpu' is unavailable and backend='auto' runs CPU tensors on the "
                  f"slow reference. To fix it, {fix()}.", UserWarning, stacklevel=3)


def warn_if_missing() -> None:
    """Warns (once per process) if the library file is missing; called by `import fastrnn`. Does not load it,
    so `LIBRARY` can still be pointed elsewhere before the first `load()`."""
    if not LIBRARY.exists():
        _warn(f"the native library {LIBRARY} is missing")


def load() -> bool:
    """Loads the library on the first call (later calls only report the outcome); True if it is loaded."""
    global _loaded, _error
    if _loaded or _error is not None:
        return _loaded
    if not LIBRARY.exists():
        _error = f"native library not built: {LIBRARY} is missing ({fix()})"
        return False
    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError) as e:
        _error = f"native library {LIBRARY} failed to load ({e}); {fix()}"
        _warn(f"the native library {LIBRARY} failed to load ({e})")
        return False
    _loaded = True
    return True


def available() -> bool:
    return load()


def load_error() -> Optional[str]:
    """Why the library could not be loaded (trying to load it first), or None if it is loaded."""
    load()
    return _error
