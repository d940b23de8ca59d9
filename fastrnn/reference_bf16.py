"""The bfloat16 mixed precision of the cpu backend (docs/SPEC.md "bfloat16 mixed precision") in plain
PyTorch: the oracle its kernels (csrc/cpu/bf16_gemm.h) are tested against.

The math: every GEMM's operands are rounded to bfloat16 (round to nearest even, `.bfloat16()`), the products
summed in float32; everything else (biases, gates, cell, state, every gradient) stays float32, for float32
master weights. In the backward the GEMMs' operands are rounded too: the incoming gradient of a product
(dG of the gates) is rounded before it multiplies the other operand, so dW = r(dG)^T r(h) and
dh = r(dG) r(W). The rounding itself passes gradients through unchanged (the float32 master gets the
gradient of its rounded copy).

    lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None) -> (y, h_n, c_n)

    sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *, k_top, k_att,
              scorer, provisional, ...) -> (y, h_n, c_n, attention[, new_slots])

take float32 tensors and return float32, with reference.lstm_layer's / reference.sab_layer's signatures and
semantics. In the SAB layer only the LSTM cell's GEMMs (x W_ih^T, h_{t-1} W_hh^T, h_{t-1} the state fed
back, y_{t-1}) are mixed; the attention (scores, top-k, weights, summary) stays float32 (docs/SPEC.md
section 10 says why).
"""
import torch

from . import reference

__all__ = ["bf16_matmul", "lstm_layer", "sab_layer"]


def _r(t):
    return t.bfloat16().float()


class _Bf16Matmul(torch.autograd.Function):
    # forward and setup_context apart, a vmap rule and a jvp: what torch.func's transforms (grad, vmap, jvp)
    # need of a custom Function
    generate_vmap_rule = True

    @staticmethod
    def forward(a, b):
        return _r(a) @ _r(b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def jvp(ctx, ta, tb):
        # forward mode rounds the GEMMs' operands as the backward does: r(ta) r(b) + r(a) r(tb)
        a, b = ctx.saved_tensors
        out = None
        if ta is not None:
            out = _r(ta) @ _r(b)
        if tb is not None:
            out = _r(a) @ _r(tb) if out is None else out + _r(a) @ _r(tb)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        g = _r(grad)
        da = g @ _r(b).t() if ctx.needs_input_grad[0] else None
        db = _r(a).t() @ g if ctx.needs_input_grad[1] else None
        return da, db


def bf16_matmul(a, b):
    """a @ b of float32 matrices [M, K] x [K, N] from operands rounded to bfloat16, summed in float32; its
    backward rounds the incoming gradient and the operands the same way, its jvp the tangents (r(ta) r(b) +
    r(a) r(tb)); torch.func.vmap batches it."""
    return _Bf16Matmul.apply(a, b)


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None):
    """reference.lstm_layer with every GEMM in bfloat16 mixed precision (bf16_matmul)."""
    return reference.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths=lengths,
                                matmul=bf16_matmul)


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, **options):
    """reference.sab_layer with the LSTM cell's GEMMs in bfloat16 mixed precision (bf16_matmul), the attention
    float32; `options` are reference.sab_layer's keyword arguments (k_top, k_att, scorer, provisional, lengths,
    memory, step0, return_slots, reset, slot_offset, row_step0, need_attention)."""
    return reference.sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale,
                               matmul=bf16_matmul, **options)
