"""Backend choice: which implementation of the per-layer functions runs (docs/CONTRACT.md).

Each backend is a module exposing `available() -> bool`, `lstm_layer(...)` and `sab_layer(...)`.
They are imported lazily, so `import fastrnn` stays cheap and a missing native build or Triton only
matters to the backend that needs it.
"""
import importlib

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

# backend -> (module holding lstm_layer, module holding sab_layer)
_MODULES = {
    "reference": ("fastrnn.reference", "fastrnn.reference"),
    "cpu": ("fastrnn.ops.lstm", "fastrnn.ops.sab"),
    "triton": ("fastrnn.ops.triton_backend", "fastrnn.ops.triton_backend"),
    "cuda": ("fastrnn.ops.cuda_build", "fastrnn.ops.cuda_build"),
}

_WHY_UNAVAILABLE = {
    "triton": "Triton or fastrnn.kernels (kernels/: the package installed, or a source checkout) is not importable",
}


def _why_unavailable(name: str) -> str:
    if name == "cpu":
        from . import _native
        return _native.load_error() or "the native library did not load"
    if name == "cuda":
        from .ops import cuda_build
        return cuda_build.load_error() or "the CUDA ops did not load"
    return _WHY_UNAVAILABLE.get(name, "")


def _load(module_name: str):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return module if module.available() else None


def _layer_modules(name: str):
    """The (lstm module, sab module) of a concrete backend, or None where it is not usable here."""
    if name not in _MODULES:
        return None
    lstm_mod, sab_mod = (_load(m) for m in _MODULES[name])
    if lstm_mod is None or sab_mod is None:
        return None
    return lstm_mod, sab_mod


def available_backends() -> list:
    """The concrete backends that can run in this process (the reference always can). Triton counts only
    where it has a device to run on: CUDA, or the CPU under TRITON_INTERPRET=1."""
    return [name for name in _MODULES if _layer_modules(name) is not None
            and (name != "triton" or _triton_has_a_device())]


def _triton_has_a_device() -> bool:
    import torch
    return torch.cuda.is_available() or _interpreting()


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(backend: str, device) -> str:
    """The concrete backend for tensors on `device`. "auto" picks cpu on CPU; on CUDA the fastest GPU
    backend measured (scripts/gpu_check.sh prints the ratios): cuda if it is built (csrc/cuda, loaded or
    built earlier: "auto" never starts its compile), else triton, else the reference."""
    if backend != "auto":
        return backend
    device_type = device if isinstance(device, str) else device.type
    # meta tensors (shape inference) go through the cpu ops' fake kernels, which need no values
    preferred = {"cpu": ("cpu",), "meta": ("cpu",), "cuda": ("cuda", "triton")}.get(device_type, ())
    for name in preferred:
        if name == "cuda" and not _cuda_built():
            continue
        if _layer_modules(name) is not None:
            return name
    return "reference"


def _cuda_built() -> bool:
    try:
        from .ops import cuda_build
    except ImportError:
        return False
    return cuda_build.built()


# (backend, device type) -> (lstm_layer, sab_layer). Filled eagerly (the modules warm it when built), so a
# forward traced by torch.compile finds its functions with a dict lookup instead of an import.
_RESOLVED = {}


def layer_functions(backend: str, device):
    """(lstm_layer, sab_layer) of `backend` for tensors on `device`, with a clear error if unusable."""
    device_type = device if isinstance(device, str) else device.type
    key = (backend, device_type)
    if key not in _RESOLVED:
        _RESOLVED[key] = _layer_functions(backend, device_type)
    return _RESOLVED[key]


def _layer_functions(backend: str, device_type: str):
    name = resolve(backend, device_type)
    modules = _layer_modules(name)
    if modules is None:
        raise RuntimeError(f"backend {name!r} is not available: {_why_unavailable(name)}")
    if name == "cpu" and device_type not in ("cpu", "meta"):
        raise ValueError(f"backend 'cpu' needs CPU tensors, got input on {device_type}")
    if name == "cuda" and device_type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got input on {device_type}")
    if name == "triton" and device_type != "cuda" and not _interpreting():
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got input on "
                         f"{device_type}")
    return modules[0].lstm_layer, modules[1].sab_layer


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"
