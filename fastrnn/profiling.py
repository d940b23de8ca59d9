"""Named ranges that show both in Nsight Systems (NVTX) and in torch.profiler traces, from one call.

    from fastrnn import profiling

    with profiling.range("fastrnn.train_step.forward"):     # a block
        ...

    @profiling.ranged("my.phase")                            # a function
    def phase(...): ...

    y, h_n, c_n = profiling.layer("fastrnn.lstm0", lstm_layer, x, w_ih, ...)   # a layer: forward and backward

NVTX comes from the `nvtx` package (a dependency of fastrnn; without it, NVTX ranges are a no-op). An NVTX
range costs well under a microsecond and records nothing unless a tool such as `nsys profile` is attached.
The torch.profiler side is a `record_function` range, entered only while a torch profiler runs. Inside a
region that torch.compile traces, every helper here does nothing, so ranges never break a graph.

`layer` also marks a layer's backward, on every backend: when a tool or profiler is recording, it passes
the layer's differentiable inputs and outputs through two identity autograd nodes, so that the range
"NAME.backward" opens when the gradient reaches the layer's outputs and closes once the gradients of all
its inputs (data, state and weights) are computed. When nothing records, it calls the layer function
directly and the autograd graph is unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable

import torch

try:
    import nvtx as _nvtx
except ImportError:  # the package is optional at run time: NVTX ranges become no-ops
    _nvtx = None

__all__ = ["DOMAIN", "range", "ranged", "layer", "recording", "nvtx_available"]

DOMAIN = "fastrnn"  # the NVTX domain of every range here (nsys: --nvtx-domain-include=fastrnn)
_NULL = contextlib.nullcontext()


def nvtx_available() -> bool:
    """True if the `nvtx` package is importable (its ranges still record only under a tool)."""
    return _nvtx is not None


# nsys (and the other NVTX tools) attach through this variable, set when the process starts; without a tool
# NVTX calls record nothing, so they are skipped altogether.
_NVTX_ON = _nvtx is not None and bool(os.environ.get("NVTX_INJECTION64_PATH"))


def recording() -> bool:
    """True while a torch profiler runs or an NVTX tool (nsys) is attached to this process."""
    return _NVTX_ON or torch.autograd._profiler_enabled()


class _Range:
    """One NVTX range and one record_function range with the same name."""

    __slots__ = ("name", "_record", "_nvtx")

    def __init__(self, name: str):
        self.name = name
        self._record = None
        self._nvtx = None

    def start(self) -> None:
        if _NVTX_ON:
            # start/end (not push/pop): a backward range opens and closes in different autograd nodes
            self._nvtx = _nvtx.start_range(self.name, domain=DOMAIN)
        if torch.autograd._profiler_enabled():
            self._record = torch.autograd.profiler.record_function(self.name)
            self._record.__enter__()

    def end(self) -> None:
        if self._record is not None:
            record, self._record = self._record, None
            record.__exit__(None, None, None)
        if self._nvtx is not None:
            handle, self._nvtx = self._nvtx, None
            _nvtx.end_range(handle)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.end()
        return False


def range(name: str):  # noqa: A001 (the natural name; `builtins.range` is not used in this module)
    """A context manager: an NVTX range and a torch.profiler range named ``name`` around the block."""
    if torch.compiler.is_compiling() or not recording():
        return _NULL
    return _Range(name)


def ranged(name: str) -> Callable:
    """A decorator: every call of the function runs inside ``range(name)``."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with range(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


# ---- a layer's forward and backward -------------------------------------------------------------------

class _OnBackward(torch.autograd.Function):
    """Identity on some tensors; when autograd reaches it on the way back it calls `action` (the span's
    start or end). On the layer's outputs it runs first in the layer's backward (opens the range), on its
    inputs last (closes it)."""

    @staticmethod
    def forward(ctx, action, *tensors):
        ctx.action = action
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.action()
        return (None, *grads)


def _differentiable(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and value.is_floating_point()


def layer(name: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a backend's per-layer function) with its forward in the range
    ``NAME.forward`` and, when anything records (`recording()`) and grad mode is on, its backward in
    ``NAME.backward``. Positional tensor arguments that require grad are the layer's inputs; tensors among
    the returned tuple that require grad are its outputs (other returned values pass through)."""
    if torch.compiler.is_compiling() or not recording():
        return fn(*args, **kwargs)
    track = torch.is_grad_enabled()
    span = _Range(name + ".backward")
    if track:
        positions = [i for i, a in enumerate(args) if _differentiable(a)]
        if positions:
            args = list(args)
            for i, t in zip(positions, _OnBackward.apply(span.end, *(args[i] for i in positions))):
                args[i] = t
    with _Range(name + ".forward"):
        out = fn(*args, **kwargs)
    if not track:
        return out
    single = not isinstance(out, tuple)
    values = [out] if single else list(out)
    positions = [i for i, v in enumerate(values) if _differentiable(v)]
    if positions:
        for i, t in zip(positions, _OnBackward.apply(span.start, *(values[i] for i in positions))):
            values[i] = t
    if single:
        return values[0]
    return tuple(values) if type(out) is tuple else type(out)(*values)
