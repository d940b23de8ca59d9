"""The op `fastrnn::sab_forward` / `sab_backward` (schemas in csrc/ops.cpp): one SAB-LSTM layer, forward
and backward each one call into the device's kernels (csrc/cpu/sab_*.cpp).

`sab_layer` follows docs/CONTRACT.md. This module registers the op's autograd formula (the backward op,
one reverse sweep) and fake kernels (shapes only), which hold for every device's implementation, so that
`torch.library.opcheck` passes and `torch.compile(fullgraph=True)` traces through them. A backward asked
for with a graph (create_graph=True) recomputes through the reference (ops/glue.py).
"""
import torch

from .. import _native
from . import glue
from .attention import SABAttention, slot_steps

__all__ = ["available", "sab_layer"]


def available() -> bool:
    return _native.load() and hasattr(torch.ops.fastrnn, "sab_forward")


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False,
              lengths=None):
    """One SAB-LSTM layer (SPEC sections 1-2); returns (y, h_n, c_n, attention or None).
    att_vb is the scorer's last parameter: att_v [A] (scorer "mlp") or att_b [1] ("linear").
    lengths (None, or int64 [B] on x's device, each in [0, T]): each row stops at its own length
    (docs/CONTRACT.md, "Variable length"); the attention record is -1 / 0 past it."""
    if not available():
        raise RuntimeError(f"fastrnn cpu backend: {_native.load_error() or 'sab ops missing from the library'}")
    out = torch.ops.fastrnn.sab_forward(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale,
                                        lengths, k_top, k_att, scorer, provisional)
    y, h_n, c_n = out[0], out[1], out[2]
    attention = None
    if need_attention:
        attention = SABAttention(out[6], out[7], slot_steps(x.shape[0], k_att, x.device))
    return y, h_n, c_n, attention


def _forward_fake(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, k_top, k_att,
                  scorer, provisional):
    T, B, _ = x.shape
    H = h0.shape[1]
    mlp = scorer == "mlp"
    A = att_wh.shape[0] if mlp else 0
    S = 1 + T // k_att
    e = x.new_empty
    return (e(T, B, H), e(B, H), e(B, H),                                     # y, h_n, c_n
            e(T, B, 4 * H), e(T, B, H), e(T, B, H),                           # gates, c, hhat
            e((T, B, k_top), dtype=torch.int64), e(T, B, k_top),              # idx, w
            e((T, B), dtype=torch.int64), e(T, B),                            # thr, denom
            e(B, S, A) if mlp else e(B, S))                                   # slot_keys


def _backward_fake(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, y,
                   gates, c, hhat, idx, w, thr, denom, slot_keys, k_top, k_att, scorer, provisional, has_bias):
    G = w_ih.shape[0]
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(G if has_bias else 0), torch.empty_like(att_wh), torch.empty_like(att_wm),
            torch.empty_like(att_vb), torch.empty_like(h0), torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, k_top, k_att, scorer,
     provisional) = inputs
    y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, slot_keys = output
    # the biases are not needed by the kernels' backward, only by the differentiable one (glue.py)
    ctx.save_for_backward(x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths,
                          y, gates, c, hhat, idx, w, thr, denom, slot_keys, b_ih, b_hh)
    ctx.config = (k_top, k_att, scorer, provisional, b_ih is not None)
    # Only y, h_n, c_n are differentiable; the attention weights are a detached record, as in the reference.
    ctx.mark_non_differentiable(gates, c, hhat, idx, w, thr, denom, slot_keys)
    # Otherwise autograd would allocate zero gradients for all eleven outputs (~T·B·7H floats).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_hn, grad_cn, *unused):
    x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, y, *saved, b_ih, b_hh = ctx.saved_tensors
    k_top, k_att, scorer, provisional, has_bias = ctx.config
    if glue.wants_graph():
        from .. import reference
        grads = glue.differentiable_backward(
            reference.sab_layer, (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale),
            ctx.needs_input_grad, (grad_y, grad_hn, grad_cn),
            k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, lengths=lengths)
        return (*grads, None, None, None, None, None)
    dx, dw_ih, dw_hh, db, datt_wh, datt_wm, datt_vb, dh0, dc0 = torch.ops.fastrnn.sab_backward(
        glue.grad_or_zeros(grad_y, y), glue.grad_or_zeros(grad_hn, h0), glue.grad_or_zeros(grad_cn, c0),
        x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, y, *saved,
        k_top, k_att, scorer, provisional, has_bias)
    return (dx, dw_ih, dw_hh, *glue.bias_grads(db, has_bias), datt_wh, datt_wm, datt_vb, dh0, dc0,
            None, None, None, None, None, None, None)


def _register() -> None:
    torch.library.register_fake("fastrnn::sab_forward")(_forward_fake)
    torch.library.register_fake("fastrnn::sab_backward")(_backward_fake)
    torch.library.register_autograd("fastrnn::sab_forward", _backward, setup_context=_setup_context)


if available():
    _register()
