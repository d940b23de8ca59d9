"""Loads fastrnn's native operator library (`fastrnn/_lib/libfastrnn_cpu.so`, built by
`scripts/build_native.sh`) into `torch.ops.fastrnn`, once per process.

A missing or broken build is not an import error: `load()` returns False and `load_error()` says why,
so the reference and Triton backends keep working without it.
"""
from pathlib import Path
from typing import Optional

import torch

LIBRARY = Path(__file__).resolve().parent / "_lib" / "libfastrnn_cpu.so"

_loaded = False
_error: Optional[str] = None


def load() -> bool:
    """Loads the library on the first call (later calls only report the outcome); True if it is loaded."""
    global _loaded, _error
    if _loaded or _error is not None:
        return _loaded
    if not LIBRARY.exists():
        _error = f"native library not built: {LIBRARY} is missing (run scripts/build_native.sh)"
        return False
    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError) as e:
        _error = f"native library {LIBRARY} failed to load ({e}); rebuild it with scripts/build_native.sh"
        return False
    _loaded = True
    return True


def available() -> bool:
    return load()


def load_error() -> Optional[str]:
    """Why the library could not be loaded (trying to load it first), or None if it is loaded."""
    load()
    return _error
