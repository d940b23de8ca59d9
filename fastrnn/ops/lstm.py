"""The op `fastrnn::lstm_forward` / `lstm_backward` (schemas in csrc/ops.cpp): one LSTM layer over a
sequence, forward and backward each one call into the device's kernels (csrc/cpu/lstm_*.cpp).

`lstm_layer` follows docs/CONTRACT.md. This module registers the op's autograd formula and fake (meta)
kernels, which hold for every device's implementation, so the op works under autograd,
`torch.library.opcheck` and `torch.compile`. A backward asked for with a graph (create_graph=True)
recomputes through the reference (ops/glue.py).
"""
import os

import torch

from .. import _native
from . import glue
from .streaming import check_schedule

__all__ = ["available", "bf16_capabilities", "lstm_layer", "mixed_lstm_layer"]


def available() -> bool:
    return _native.load()


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None, bf16_gemm=None):
    """One LSTM layer over x [T, B, I] under the schedule (cut, scale); returns (y, h_n, c_n).
    lengths (None, or int64 [B] on x's device, each in [0, T]): each row stops at its own length
    (docs/CONTRACT.md, "Variable length"). cut (bool) and scale (x's dtype) [T]: TypeError / ValueError
    naming the argument otherwise, as the other backends.
    bf16_gemm (None: computes in the tensors' dtype): the bfloat16 mixed precision of docs/SPEC.md
    (fastrnn.reference_bf16 is its oracle) with the GEMM kernel of that name: "auto", "emulated", "mkl" or
    "avx512bf16" (csrc/cpu/bf16_gemm.h). Float32 tensors in and out; RuntimeError for another dtype, an
    unknown kernel or one this CPU cannot run (torch.ops.fastrnn.bf16_capabilities() says which can)."""
    if not _native.load():
        raise RuntimeError(f"fastrnn cpu backend unavailable: {_native.load_error()}")
    # Checked here, not only by the op: the dispatcher cannot name a None or non-tensor cut / scale.
    check_schedule(cut, scale, x.shape[0], x.shape[1], per_row=False, dtype=x.dtype)
    contiguous = [None if t is None else t.contiguous()
                  for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths)]
    if bf16_gemm is None:
        y, h_n, c_n, _, _ = torch.ops.fastrnn.lstm_forward(*contiguous)
    else:
        y, h_n, c_n, _, _ = torch.ops.fastrnn.lstm_mixed_forward(*contiguous, bf16_gemm)
    return y, h_n, c_n


def mixed_lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None):
    """lstm_layer in bfloat16 mixed precision with the kernel named by the environment variable
    FASTRNN_BF16_GEMM (default "auto"): what fastrnn.LSTM runs on the cpu backend under
    torch.autocast("cpu", dtype=torch.bfloat16). ValueError naming the variable for a value that is no kernel
    (empty counts as unset)."""
    return lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths=lengths, bf16_gemm=_env_kernel())


BF16_KERNELS = ("auto", "emulated", "mkl", "avx512bf16")


def _env_kernel() -> str:
    kernel = os.environ.get("FASTRNN_BF16_GEMM") or "auto"
    if kernel not in BF16_KERNELS:
        raise ValueError(f"FASTRNN_BF16_GEMM={kernel!r} names no bfloat16 GEMM kernel: set it to one of "
                         f"{', '.join(BF16_KERNELS)}, or unset it (auto)")
    return kernel


def bf16_capabilities() -> dict:
    """What this machine offers the bfloat16 mixed precision: {"avx512bf16": bool, "amx": bool, "mkl": bool
    (MKL's bfloat16 GEMM is exported by this torch), "auto": the kernel "auto" runs}. RuntimeError if the
    native library is unavailable."""
    if not _native.load():
        raise RuntimeError(f"fastrnn cpu backend unavailable: {_native.load_error()}")
    avx512_bf16, amx, mkl, auto = torch.ops.fastrnn.bf16_capabilities()
    return dict(avx512bf16=avx512_bf16, amx=amx, mkl=mkl, auto=auto)


def _fake_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths=None, gemm=None):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T, B, H))


def _fake_backward(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths=None, gemm=None):
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_hh.new_empty(w_hh.shape[0]), torch.empty_like(h0), torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths = inputs[:10]
    ctx.gemm = inputs[10] if len(inputs) > 10 else None   # lstm_mixed_forward's kernel name
    y, _, _, gates, cs = output
    ctx.has_bias = b_ih is not None
    # the biases are not needed by the kernels' backward, only by the differentiable one (glue.py)
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths, b_ih, b_hh)
    ctx.mark_non_differentiable(gates, cs)
    # Unused outputs arrive as None instead of zero tensors: materialising zeros for gates [T,B,4H] and
    # cs [T,B,H] on every backward was ~6% of a fwd+bwd step.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths, b_ih, b_hh = ctx.saved_tensors
    mixed = () if ctx.gemm is None else (None,)   # no gradient for lstm_mixed_forward's gemm
    if glue.wants_graph():
        from .. import reference, reference_bf16
        layer = reference.lstm_layer if ctx.gemm is None else reference_bf16.lstm_layer
        return (*glue.differentiable_backward(
            layer, (x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale), ctx.needs_input_grad,
            (dy, dh_n, dc_n), lengths=lengths), None, *mixed)
    args = (glue.grad_or_zeros(dy, y), glue.grad_or_zeros(dh_n, h0), glue.grad_or_zeros(dc_n, c0),
            x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths)
    if ctx.gemm is None:
        dx, dw_ih, dw_hh, db, dh0, dc0 = torch.ops.fastrnn.lstm_backward(*args)
    else:
        dx, dw_ih, dw_hh, db, dh0, dc0 = torch.ops.fastrnn.lstm_mixed_backward(*args, ctx.gemm)
    return (dx, dw_ih, dw_hh, *glue.bias_grads(db, ctx.has_bias), dh0, dc0, None, None, None, *mixed)


def _register() -> None:
    for forward, backward in (("lstm_forward", "lstm_backward"), ("lstm_mixed_forward", "lstm_mixed_backward")):
        glue.register_fake(forward, _fake_forward)
        glue.register_fake(backward, _fake_backward)
        torch.library.register_autograd(f"fastrnn::{forward}", _backward, setup_context=_setup_context)


if _native.load():
    _register()
