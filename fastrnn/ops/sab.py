"""The op `fastrnn::sab_forward` / `sab_backward` (schemas in csrc/ops.cpp): one SAB-LSTM layer, forward
and backward each one call into the device's kernels (csrc/cpu/sab_*.cpp).

`sab_layer` follows docs/CONTRACT.md. This module registers the op's autograd formula (the backward op,
one reverse sweep) and fake kernels (shapes only), which hold for every device's implementation, so that
`torch.library.opcheck` passes and `torch.compile(fullgraph=True)` traces through them. A backward asked
for with a graph (create_graph=True) recomputes through the reference (ops/glue.py).

`fastrnn::sab_mixed_forward` / `sab_mixed_backward` are the same layer in bfloat16 mixed precision
(docs/SPEC.md section 10; `mixed_sab_layer`, or `sab_layer(..., bf16_gemm=...)`), with the same autograd
formula and fake kernels; a backward with a graph recomputes through their oracle,
fastrnn.reference_bf16.sab_layer.
"""
import torch

from .. import _native
from . import glue
from .attention import SABAttention, slot_steps
from .lstm import _env_kernel
from .streaming import carried_row_steps, check_rows, check_schedule, check_stream, per_row, reset_plan

__all__ = ["available", "mixed_sab_layer", "sab_layer"]


def available() -> bool:
    return _native.load() and hasattr(torch.ops.fastrnn, "sab_forward")


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False,
              lengths=None, memory=None, step0: int = 0, return_slots: bool = False, reset=None,
              slot_offset=None, row_step0=None, bf16_gemm=None):
    """One SAB-LSTM layer (SPEC sections 1-2); returns (y, h_n, c_n, attention or None[, new_slots]).
    cut (bool) and scale (x's dtype): the truncation schedule, [T] or per row [T, B] (docs/CONTRACT.md
    "Per-row truncation"); TypeError / ValueError naming the argument otherwise, as the other backends.
    att_vb is the scorer's last parameter: att_v [A] (scorer "mlp") or att_b [1] ("linear").
    lengths (None, or int64 [B] on x's device, each in [0, T]): each row stops at its own length
    (docs/CONTRACT.md, "Variable length"); the attention record is -1 / 0 past it.
    Streaming (SPEC section 8): memory [B, S0, H] (None: a fresh sequence, memory [h0]) and step0, the global
    index of x's first step; return_slots adds new_slots [B, S1, H], the slots this call wrote.
    Per-row resets (SPEC section 9, docs/CONTRACT.md "Per-row resets"): reset [T, B] bool, slot_offset and
    row_step0 [B] int64; the record's indices then index each row's slot table, its slot_steps is [B, S].
    bf16_gemm (None: computes in the tensors' dtype): the bfloat16 mixed precision of docs/SPEC.md section 10
    (fastrnn.reference_bf16.sab_layer is its oracle): the LSTM part's GEMMs on the kernel of that name
    ("auto", "emulated", "mkl" or "avx512bf16", csrc/cpu/bf16_gemm.h), the attention float32. Float32 tensors
    in and out; RuntimeError for another dtype, an unknown kernel or one this CPU cannot run."""
    if not available():
        raise RuntimeError(f"fastrnn cpu backend: {_native.load_error() or 'sab ops missing from the library'}")
    # Checked here, not only by the op: the dispatcher cannot name a None or non-tensor cut / scale (it fails
    # with "tensor does not have a device").
    check_schedule(cut, scale, x.shape[0], x.shape[1], per_row=True, dtype=x.dtype)
    step0 = check_stream(memory, step0, lengths, return_slots, h0)
    rows = per_row(reset, slot_offset, row_step0)
    if rows:
        check_rows(x, memory, step0, lengths, reset, slot_offset, row_step0)
    # the kernels read raw row-major buffers; a module's parameter may be a strided view (as nn.LSTM takes it),
    # a carried memory cut to max_slots is one
    tensors = (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory)
    x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, reset, slot_offset, \
        row_step0 = (None if t is None else t.contiguous() for t in (*tensors, reset, slot_offset, row_step0))
    args = (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset,
            slot_offset, row_step0, k_top, k_att, scorer, provisional)
    if bf16_gemm is None:
        out = torch.ops.fastrnn.sab_forward(*args)
    else:
        out = torch.ops.fastrnn.sab_mixed_forward(*args, bf16_gemm)
    y, h_n, c_n = out[0], out[1], out[2]
    attention = None
    if need_attention and rows:
        plan = reset_plan(x.shape[0], x.shape[1], k_att, x.device, S0=1 if memory is None else memory.shape[1],
                          step0=step0, reset=reset, slot_offset=slot_offset, row_step0=row_step0)
        steps = torch.cat([carried_row_steps(x.shape[1], k_att, x.device, memory=memory, slot_offset=slot_offset),
                           plan.new_steps], dim=1)
        attention = SABAttention(out[6], out[7], steps)
    elif need_attention:
        S0 = 1 if memory is None else memory.shape[1]
        attention = SABAttention(out[6], out[7], slot_steps(x.shape[0], k_att, x.device, S0=S0, step0=step0))
    if return_slots:
        return y, h_n, c_n, attention, out[11]
    return y, h_n, c_n, attention


def mixed_sab_layer(*args, **kwargs):
    """sab_layer (same arguments) in bfloat16 mixed precision with the kernel named by the environment variable
    FASTRNN_BF16_GEMM (default "auto"): what fastrnn.SABLSTM runs on the cpu backend under
    torch.autocast("cpu", dtype=torch.bfloat16). ValueError naming the variable for a value that is no kernel
    (empty counts as unset)."""
    return sab_layer(*args, **kwargs, bf16_gemm=_env_kernel())


def _new_slot_count(T, step0, k_att):
    """S1, the slots a call of T steps starting at global step step0 writes (after (step0 + t + 1) % k_att == 0)."""
    return (step0 + T) // k_att - step0 // k_att


def _forward_fake(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0,
                  reset, slot_offset, row_step0, k_top, k_att, scorer, provisional, gemm=None):
    T, B, _ = x.shape
    H = h0.shape[1]
    mlp = scorer == "mlp"
    A = att_wh.shape[0] if mlp else 0
    if per_row(reset, slot_offset, row_step0):     # the most slots one row appends: data dependent
        S1 = torch.library.get_ctx().new_dynamic_size()
    else:
        S1 = _new_slot_count(T, step0, k_att)
    S = (1 if memory is None else memory.shape[1]) + S1
    e = x.new_empty
    return (e(T, B, H), e(B, H), e(B, H),                                     # y, h_n, c_n
            e(T, B, 4 * H), e(T, B, H), e(T, B, H),                           # gates, c, hhat
            e((T, B, k_top), dtype=torch.int64), e(T, B, k_top),              # idx, w
            e((T, B), dtype=torch.int64), e(T, B),                            # thr, denom
            e(B, S, A) if mlp else e(B, S),                                   # slot_keys
            e(B, S1, H))                                                      # new_slots


def _backward_fake(grad_y, grad_hn, grad_cn, grad_new_slots, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut,
                   scale, lengths, memory, step0, reset, slot_offset, row_step0, y, gates, c, hhat, idx, w, thr, denom, slot_keys, k_top, k_att,
                   scorer, provisional, has_bias, gemm=None):
    G = w_ih.shape[0]
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty(G if has_bias else 0), torch.empty_like(att_wh), torch.empty_like(att_wm),
            torch.empty_like(att_vb), torch.empty_like(h0), torch.empty_like(c0),
            x.new_empty(0) if memory is None else torch.empty_like(memory))


def _setup_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset,
     slot_offset, row_step0, k_top, k_att, scorer, provisional) = inputs[:22]
    ctx.gemm = inputs[22] if len(inputs) > 22 else None   # sab_mixed_forward's kernel name
    y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, slot_keys, new_slots = output
    # the biases are not needed by the kernels' backward, only by the differentiable one (glue.py)
    ctx.save_for_backward(x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory,
                          reset, slot_offset, row_step0, y, gates, c, hhat, idx, w, thr, denom, slot_keys, b_ih, b_hh)
    ctx.config = (step0, k_top, k_att, scorer, provisional, b_ih is not None)
    # y, h_n, c_n and new_slots (the memory a later call reads) are differentiable; the attention weights are
    # a detached record, as in the reference. With lengths new_slots cannot be carried on (the op's backward
    # refuses grad_new_slots), so it gets no gradient: AOT autograd would otherwise send it a zero tangent.
    ctx.mark_non_differentiable(gates, c, hhat, idx, w, thr, denom, slot_keys,
                                *((new_slots,) if lengths is not None else ()))
    # Otherwise autograd would allocate zero gradients for all twelve outputs (~T·B·7H floats).
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_hn, grad_cn, _gates, _c, _hhat, _idx, _w, _thr, _denom, _slot_keys,
              grad_new_slots):
    (x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, reset, slot_offset, row_step0, y,
     *saved, b_ih, b_hh) = ctx.saved_tensors
    step0, k_top, k_att, scorer, provisional, has_bias = ctx.config
    if glue.wants_graph():
        output_grads = (grad_y, grad_hn, grad_cn, grad_new_slots)
        *layer_grads, _cut, _scale, dmemory = _differentiable_backward(ctx, output_grads)
    else:
        args = (glue.grad_or_zeros(grad_y, y), glue.grad_or_zeros(grad_hn, h0), glue.grad_or_zeros(grad_cn, c0),
                None if grad_new_slots is None else grad_new_slots.contiguous(),
                x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset, slot_offset,
                row_step0, y, *saved, k_top, k_att, scorer, provisional, has_bias)
        if ctx.gemm is None:
            grads = torch.ops.fastrnn.sab_backward(*args)
        else:
            grads = torch.ops.fastrnn.sab_mixed_backward(*args, ctx.gemm)
        dx, dw_ih, dw_hh, db, datt_wh, datt_wm, datt_vb, dh0, dc0, dmemory = grads
        layer_grads = (dx, dw_ih, dw_hh, *glue.bias_grads(db, has_bias), datt_wh, datt_wm, datt_vb, dh0, dc0)
        dmemory = None if memory is None else dmemory
    mixed = () if ctx.gemm is None else (None,)   # no gradient for sab_mixed_forward's gemm
    #                      cut   scale lengths           step0 reset offset row_step0 k_top k_att scorer provisional
    return (*layer_grads, None, None, None, dmemory, None, None, None, None, None, None, None, None, *mixed)


def _differentiable_backward(ctx, output_grads):
    """The gradients of (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, memory) with a
    graph (None for cut and scale), through the reference (ops/glue.py; create_graph=True): for the mixed op its
    oracle, reference_bf16.sab_layer, whose gradient is the mixed one. new_slots is
    asked of the reference only when it has a gradient: the reference refuses return_slots with lengths, as
    the op's backward refuses grad_new_slots."""
    from .. import reference, reference_bf16
    (x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, reset, slot_offset, row_step0, *_,
     b_ih, b_hh) = ctx.saved_tensors
    step0, k_top, k_att, scorer, provisional, _ = ctx.config
    return_slots = output_grads[3] is not None
    needs = ctx.needs_input_grad
    return glue.differentiable_backward(
        reference.sab_layer if ctx.gemm is None else reference_bf16.sab_layer,
        (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale),
        needs[:12] + needs[13:14], output_grads if return_slots else output_grads[:3],
        keyword_inputs=dict(memory=memory), k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional,
        lengths=lengths, step0=step0, return_slots=return_slots, reset=reset, slot_offset=slot_offset,
        row_step0=row_step0)


def _register() -> None:
    for forward, backward in (("sab_forward", "sab_backward"), ("sab_mixed_forward", "sab_mixed_backward")):
        glue.register_fake(forward, _forward_fake)
        glue.register_fake(backward, _backward_fake)
        torch.library.register_autograd(f"fastrnn::{forward}", _backward, setup_context=_setup_context)


if available():
    _register()
