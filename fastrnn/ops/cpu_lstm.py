"""The CPU backend's `lstm_layer` (docs/CONTRACT.md) on the native ops `fastrnn::lstm_forward` and
`fastrnn::lstm_backward` (csrc/cpu/lstm_*.cpp): the whole layer, forward and backward, runs in C++.

This module registers the ops' autograd formula and fake (meta) kernels, so they work under autograd,
`torch.library.opcheck` and `torch.compile`.
"""
import torch

from .. import _native

__all__ = ["available", "lstm_layer"]


def available() -> bool:
    return _native.load()


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale):
    """One LSTM layer over x [T, B, I] under the schedule (cut, scale); returns (y, h_n, c_n)."""
    if not _native.load():
        raise RuntimeError(f"fastrnn cpu backend unavailable: {_native.load_error()}")
    contiguous = [None if t is None else t.contiguous() for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale)]
    y, h_n, c_n, _, _ = torch.ops.fastrnn.lstm_forward(*contiguous)
    return y, h_n, c_n


def _fake_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
            x.new_empty(T, B, H))


def _fake_backward(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale):
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_hh.new_empty(w_hh.shape[0]), torch.empty_like(h0), torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, _, h0, c0, cut, scale = inputs
    y, _, _, gates, cs = output
    ctx.has_bias = b_ih is not None
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale)
    ctx.mark_non_differentiable(gates, cs)
    # Unused outputs arrive as None instead of zero tensors: materialising zeros for gates [T,B,4H] and
    # cs [T,B,H] on every backward was ~6% of a fwd+bwd step.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x, _, w_hh, h0 = ctx.saved_tensors[:4]
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[1]
    # Autograd may hand over expanded or strided gradients (e.g. from .sum()); the op indexes raw memory.
    dy = x.new_zeros(T, B, H) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    dc_n = torch.zeros_like(h0) if dc_n is None else dc_n.contiguous()
    dx, dw_ih, dw_hh, db, dh0, dc0 = torch.ops.fastrnn.lstm_backward(dy, dh_n, dc_n, *ctx.saved_tensors)
    # b_ih and b_hh get equal gradients, but not one shared tensor: each .grad must own its storage.
    db_ih, db_hh = (db, db.clone()) if ctx.has_bias else (None, None)
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, None, None


def _register() -> None:
    torch.library.register_fake("fastrnn::lstm_forward")(_fake_forward)
    torch.library.register_fake("fastrnn::lstm_backward")(_fake_backward)
    torch.library.register_autograd("fastrnn::lstm_forward", _backward, setup_context=_setup_context)


if _native.load():
    _register()
