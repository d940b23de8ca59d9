"""Helpers shared by the kernels: tanh and a masked GEMM tile.

`tanh`: the Triton interpreter (TRITON_INTERPRET=1, how CI runs these kernels on the CPU) has no
libdevice, so there `tanh(x) = 2 * sigmoid(2x) - 1`, which is exact up to rounding (its absolute error
is a few ulp of 1, harmless next to the float32 tolerances and far below 1e-9 in float64). Compiled for a
GPU, `tanh` is libdevice's. The switch is read once, at import: TRITON_INTERPRET must be set before
`fastrnn.kernels` is imported (the tests do so at the top of their modules).
"""
import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter's tl.dot returns garbage for bfloat16 operands (Triton 3.9), so there the operands are
# widened to the accumulator's dtype first; compiled, bfloat16 goes to the tensor cores as is.
DOT_UPCAST = tl.constexpr(INTERPRET)


@triton.jit
def _tanh_sigmoid(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _tanh_libdevice(x):
    return libdevice.tanh(x)


tanh = _tanh_sigmoid if INTERPRET else _tanh_libdevice


@triton.jit
def dot_tile(a_ptr, a_stride, w_ptr, w_sk, w_sc, rr, rc, mr, mc, K, acc,
             BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc += A[rr, :K] @ W[:K, rc] with A[r, k] at a_ptr + r*a_stride + k and W[k, c] at
    w_ptr + k*w_sk + c*w_sc (so a transposed W is just other strides). Masked lanes load 0, which is
    how tiles are padded to the tl.dot minimum of 16 in every dimension."""
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        a = tl.load(a_ptr + rr[:, None] * a_stride + rk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + rk[:, None] * w_sk + rc[None, :] * w_sc, mask=mk[:, None] & mc[None, :], other=0.0)
        acc = dot_acc(a, w, acc, DOT_PREC)
    return acc


@triton.jit
def dot_acc(a, w, acc, DOT_PREC: tl.constexpr):
    """acc + a @ w, widening the operands where tl.dot cannot take them as they are."""
    if DOT_UPCAST:
        a, w = a.to(acc.dtype), w.to(acc.dtype)
    if a.dtype != w.dtype:  # float32 gradient buffers against bfloat16 weights
        a, w = a.to(acc.dtype), w.to(acc.dtype)
    return tl.dot(a, w, acc, input_precision=DOT_PREC)
