"""Triton kernels of fastrnn's GPU path (`backend="triton"`), installed as `fastrnn.kernels`.

    lstm_step              fused LSTM step: recurrent GEMM tile + gate pointwise, forward and backward
    sparse_attention       SAB sparse top-k attention over the memory, forward (+ writing the new slot)
    sparse_attention_bwd   its backward: only the selected slots and the threshold slot
    math                   tanh (libdevice, or a sigmoid form under the interpreter) and a GEMM tile

The time loop is driven from Python by `fastrnn/ops/triton_backend.py`; kernels/README.md gives the
launches and bytes per step and what bounds a step on an H100. Set TRITON_INTERPRET=1 before importing
this package to run the kernels on CPU tensors (that is how CI tests them).
"""
import torch
import triton
import triton.language as tl

from .math import INTERPRET


def acc_dtype(dtype: torch.dtype):
    """The accumulation dtype of the kernels for tensors of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: float32 follows torch's TF32 switch for matmuls (off by default)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def row_block(n: int, cap: int) -> int:
    """A power-of-two tile size for a dimension of size n: at least 16 (the tl.dot minimum), at most cap.
    Under the interpreter every program instance costs milliseconds, so the cap is lifted there: one
    tile covers the whole dimension."""
    b = max(16, triton.next_power_of_2(n))
    return b if INTERPRET else min(b, cap)
