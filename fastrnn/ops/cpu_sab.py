"""The CPU backend's SAB-LSTM layer: `torch.ops.fastrnn.sab_forward` / `sab_backward` (csrc/cpu/sab_*.cpp).

`sab_layer` follows docs/CONTRACT.md. The ops are defined in C++; this module registers their autograd
formula (the backward op, one reverse sweep in C++) and their fake kernels (shapes only), so that
`torch.library.opcheck` passes and `torch.compile(fullgraph=True)` traces through them.
"""
import torch

from .. import _native
from ..reference import SABAttention, slot_steps

_registered = False


def available() -> bool:
    if not _native.load() or not hasattr(torch.ops.fastrnn, "sab_forward"):
        return False
    _register()
    return True


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False):
    """One SAB-LSTM layer (SPEC sections 1-2) on the CPU; returns (y, h_n, c_n, attention or None)."""
    if not available():
        raise RuntimeError(f"fastrnn cpu backend: {_native.load_error() or 'sab ops missing from the library'}")
    out = torch.ops.fastrnn.sab_forward(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale,
                                        k_top, k_att, scorer, provisional)
    y, h_n, c_n = out[0], out[1], out[2]
    attention = None
    if need_attention:
        attention = SABAttention(out[6], out[7], slot_steps(x.shape[0], k_att, x.device))
    return y, h_n, c_n, attention


# ---- registrations ------------------------------------------------------------------------------

def _forward_fake(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att,
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
            e(B, S, A) if mlp else e(B, S))                                   # cache


def _backward_fake(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, y,
                   gates, c, hhat, idx, w, thr, denom, cache, k_top, k_att, scorer, provisional, has_bias):
    G = w_ih.shape[0]
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(G if has_bias else 0), torch.empty_like(att_wh), torch.empty_like(att_wm),
            torch.empty_like(att_s), torch.empty_like(h0), torch.empty_like(c0))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att, scorer, provisional = inputs
    y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, cache = output
    ctx.save_for_backward(x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale,
                          y, gates, c, hhat, idx, w, thr, denom, cache)
    ctx.config = (k_top, k_att, scorer, provisional, b_ih is not None)
    # Only y, h_n, c_n are differentiable; the attention weights are a detached record, as in the reference.
    ctx.mark_non_differentiable(gates, c, hhat, idx, w, thr, denom, cache)
    # Otherwise autograd would allocate zero gradients for all eleven outputs (~T·B·7H floats).
    ctx.set_materialize_grads(False)


def _grad_or_zeros(g, like):
    return torch.zeros_like(like) if g is None else g.contiguous()


def _backward(ctx, grad_y, grad_hn, grad_cn, *unused):
    x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, y, *saved = ctx.saved_tensors
    k_top, k_att, scorer, provisional, has_bias = ctx.config
    dx, dw_ih, dw_hh, db, datt_wh, datt_wm, datt_s, dh0, dc0 = torch.ops.fastrnn.sab_backward(
        _grad_or_zeros(grad_y, y), _grad_or_zeros(grad_hn, h0), _grad_or_zeros(grad_cn, c0),
        x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, y, *saved,
        k_top, k_att, scorer, provisional, has_bias)
    # b_ih and b_hh have the same gradient; give each its own tensor (they accumulate separately).
    db_ih, db_hh = (db, db.clone()) if has_bias else (None, None)
    return (dx, dw_ih, dw_hh, db_ih, db_hh, datt_wh, datt_wm, datt_s, dh0, dc0,
            None, None, None, None, None, None)


def _register():
    global _registered
    if _registered:
        return
    torch.library.register_fake("fastrnn::sab_forward")(_forward_fake)
    torch.library.register_fake("fastrnn::sab_backward")(_backward_fake)
    torch.library.register_autograd("fastrnn::sab_forward", _backward, setup_context=_setup_context)
    _registered = True
