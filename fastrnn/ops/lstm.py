"""The op `fastrnn::lstm_forward` / `lstm_backward` (schemas in csrc/ops.cpp): one LSTM layer over a
sequence, forward and backward each one call into the device's kernels (csrc/cpu/lstm_*.cpp).

`lstm_layer` follows docs/CONTRACT.md. This module registers the op's autograd formula and fake (meta)
kernels, which hold for every device's implementation, so the op works under autograd,
`torch.library.opcheck` and `torch.compile`. A backward asked for with a graph (create_graph=True)
recomputes through the reference (ops/glue.py).
"""
import torch

from .. import _native
from . import glue

__all__ = ["available", "lstm_layer"]


def available() -> bool:
    return _native.load()


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None):
    """One LSTM layer over x [T, B, I] under the schedule (cut, scale); returns (y, h_n, c_n).
    lengths (None, or int64 [B] on x's device, each in [0, T]): each row stops at its own length
    (docs/CONTRACT.md, "Variable length")."""
    if not _native.load():
        raise RuntimeError(f"fastrnn cpu backend unavailable: {_native.load_error()}")
    contiguous = [None if t is None else t.contiguous()
                  for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths)]
    y, h_n, c_n, _, _ = torch.ops.fastrnn.lstm_forward(*contiguous)
    return y, h_n, c_n


def _fake_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths=None):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T, B, H))


def _fake_backward(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths=None):
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_hh.new_empty(w_hh.shape[0]), torch.empty_like(h0), torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths = inputs
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
    if glue.wants_graph():
        from .. import reference
        return (*glue.differentiable_backward(
            reference.lstm_layer, (x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale), ctx.needs_input_grad,
            (dy, dh_n, dc_n), lengths=lengths), None)
    dx, dw_ih, dw_hh, db, dh0, dc0 = torch.ops.fastrnn.lstm_backward(
        glue.grad_or_zeros(dy, y), glue.grad_or_zeros(dh_n, h0), glue.grad_or_zeros(dc_n, c0),
        x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths)
    return (dx, dw_ih, dw_hh, *glue.bias_grads(db, ctx.has_bias), dh0, dc0, None, None, None)


def _register() -> None:
    torch.library.register_fake("fastrnn::lstm_forward")(_fake_forward)
    torch.library.register_fake("fastrnn::lstm_backward")(_fake_backward)
    torch.library.register_autograd("fastrnn::lstm_forward", _backward, setup_context=_setup_context)


if _native.load():
    _register()
