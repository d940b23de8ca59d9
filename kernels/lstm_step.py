"""One LSTM time step as a fused Triton kernel: the recurrent GEMM tile (`tl.dot`) plus the gate pointwise,
forward and backward. The input projection `x_t @ W_ihᵀ + b` of all steps is one cuBLAS GEMM before the
time loop, and the weight gradients are one GEMM each after the reverse sweep (see kernels/README.md):
only the part of the work that is truly sequential runs per step.

Grid of every kernel here: (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)); each program owns a [BLOCK_B, BLOCK_H]
tile of hidden units for all four gates, so the pointwise part needs nothing from other programs.
Layouts: row-major, W_hh [4H, H], gates [B, 4H] in the order i, f, g, o (torch.nn.LSTM).
`ACC` is the accumulation dtype (float32, or float64 for float64 tensors); `DOT_PREC` the tl.dot input
precision ("ieee" for exact float32, "tf32" when torch allows TF32 matmuls).
"""
import triton
import triton.language as tl

from .math import dot_acc, dot_tile, tanh


@triton.jit
def _gate_tiles(h_ptr, whh_ptr, rb, rh, mb, mh, H, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """h[rb, :] @ W_hh[g*H + rh, :]ᵀ for the four gates g: each h tile is loaded once for all four."""
    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        h = tl.load(h_ptr + rb[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        # W_hhᵀ tile [BLOCK_K, BLOCK_H] of gate g: element (k, j) is W_hh[g*H + j, k]
        w_ptrs = whh_ptr + rh[None, :] * H + rk[:, None]
        wm = mk[:, None] & mh[None, :]
        acc_i = dot_acc(h, tl.load(w_ptrs, mask=wm, other=0.0), acc_i, DOT_PREC)
        acc_f = dot_acc(h, tl.load(w_ptrs + H * H, mask=wm, other=0.0), acc_f, DOT_PREC)
        acc_g = dot_acc(h, tl.load(w_ptrs + 2 * H * H, mask=wm, other=0.0), acc_g, DOT_PREC)
        acc_o = dot_acc(h, tl.load(w_ptrs + 3 * H * H, mask=wm, other=0.0), acc_o, DOT_PREC)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def lstm_fwd_step_kernel(xg_ptr, h_ptr, c_ptr, whh_ptr, gates_ptr, c_out_ptr, h_out_ptr, B, H,
                         ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """One forward step. xg [B, 4H] = x_t @ W_ihᵀ + b_ih + b_hh (precomputed), h/c [B, H] = h_{t-1}, c_{t-1}.
    Writes the activated gates [B, 4H] (i, f, g, o: what the backward needs), c_t and ĥ_t = o·tanh(c_t)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mb, mh = rb < B, rh < H
    m2 = mb[:, None] & mh[None, :]
    g_off = rb[:, None] * (4 * H) + rh[None, :]
    pi, pf, pg, po = _gate_tiles(h_ptr, whh_ptr, rb, rh, mb, mh, H, ACC, BLOCK_B, BLOCK_H, BLOCK_K, DOT_PREC)
    i = tl.sigmoid(pi + tl.load(xg_ptr + g_off, mask=m2, other=0.0).to(ACC))
    f = tl.sigmoid(pf + tl.load(xg_ptr + g_off + H, mask=m2, other=0.0).to(ACC))
    g = tanh(pg + tl.load(xg_ptr + g_off + 2 * H, mask=m2, other=0.0).to(ACC))
    o = tl.sigmoid(po + tl.load(xg_ptr + g_off + 3 * H, mask=m2, other=0.0).to(ACC))
    s_off = rb[:, None] * H + rh[None, :]
    c = f * tl.load(c_ptr + s_off, mask=m2, other=0.0).to(ACC) + i * g
    out_ty = gates_ptr.dtype.element_ty
    tl.store(gates_ptr + g_off, i.to(out_ty), mask=m2)
    tl.store(gates_ptr + g_off + H, f.to(out_ty), mask=m2)
    tl.store(gates_ptr + g_off + 2 * H, g.to(out_ty), mask=m2)
    tl.store(gates_ptr + g_off + 3 * H, o.to(out_ty), mask=m2)
    tl.store(c_out_ptr + s_off, c.to(out_ty), mask=m2)
    tl.store(h_out_ptr + s_off, (o * tanh(c)).to(out_ty), mask=m2)


@triton.jit
def scaled(v, scale_ptr, rb, mb, ROW_SCHEDULE: tl.constexpr, ACC: tl.constexpr):
    """v [BLOCK_B, BLOCK_H] (rows rb) times its step's schedule factor (0 where cut, else scale): one factor
    at scale_ptr, or with ROW_SCHEDULE one per row at scale_ptr[rb] (docs/CONTRACT.md "Per-row truncation"),
    where a cut row gets exactly 0, not 0 · v (not even a NaN crosses a cut)."""
    if ROW_SCHEDULE:
        s = tl.load(scale_ptr + rb, mask=mb, other=0.0).to(ACC)[:, None]
        return tl.where(s != 0.0, s * v, 0.0)
    else:
        return tl.load(scale_ptr).to(ACC) * v


@triton.jit
def lstm_bwd_step_kernel(dg_next_ptr, whh_ptr, rec_scale_ptr, dh_ptr, dc_ptr, gates_ptr, c_ptr, c_in_ptr,
                         dg_out_ptr, dc_out_ptr, scale_t_ptr, B, H, HAS_REC: tl.constexpr,
                         ROW_SCHEDULE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """One backward step t. The gradient reaching ĥ_t is dh [B, H] plus, if HAS_REC, the recurrent part
    rec_scale · (dgates_{t+1} @ W_hh) (fused here: the GEMM's K dimension is all 4H gates of step t+1).
    The schedule factors rec_scale (step t+1) and scale_t (step t; 0 where cut) are read from memory, so
    they keep the tensors' precision (a Python float argument would be float32); with ROW_SCHEDULE they
    point at the step's [B] per-row factors (`scaled`).
    dc [B, H] is the gradient reaching c_t from step t+1, already scaled. Writes dgates_t [B, 4H]
    (pre-activation gradients) and the gradient into c_{t-1}, times scale_t (0 where cut)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mb, mh = rb < B, rh < H
    m2 = mb[:, None] & mh[None, :]
    s_off = rb[:, None] * H + rh[None, :]
    g_off = rb[:, None] * (4 * H) + rh[None, :]
    dh = tl.load(dh_ptr + s_off, mask=m2, other=0.0).to(ACC)
    if HAS_REC:
        rec = dot_tile(dg_next_ptr, 4 * H, whh_ptr, H, 1, rb, rh, mb, mh, 4 * H,
                       tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), BLOCK_K, DOT_PREC)
        dh += scaled(rec, rec_scale_ptr, rb, mb, ROW_SCHEDULE, ACC)
    i = tl.load(gates_ptr + g_off, mask=m2, other=0.0).to(ACC)
    f = tl.load(gates_ptr + g_off + H, mask=m2, other=0.0).to(ACC)
    g = tl.load(gates_ptr + g_off + 2 * H, mask=m2, other=0.0).to(ACC)
    o = tl.load(gates_ptr + g_off + 3 * H, mask=m2, other=0.0).to(ACC)
    tc = tanh(tl.load(c_ptr + s_off, mask=m2, other=0.0).to(ACC))
    c_in = tl.load(c_in_ptr + s_off, mask=m2, other=0.0).to(ACC)
    dc = tl.load(dc_ptr + s_off, mask=m2, other=0.0).to(ACC) + dh * o * (1.0 - tc * tc)
    out_ty = dg_out_ptr.dtype.element_ty
    tl.store(dg_out_ptr + g_off, (dc * g * i * (1.0 - i)).to(out_ty), mask=m2)
    tl.store(dg_out_ptr + g_off + H, (dc * c_in * f * (1.0 - f)).to(out_ty), mask=m2)
    tl.store(dg_out_ptr + g_off + 2 * H, (dc * i * (1.0 - g * g)).to(out_ty), mask=m2)
    tl.store(dg_out_ptr + g_off + 3 * H, (dh * tc * o * (1.0 - o)).to(out_ty), mask=m2)
    tl.store(dc_out_ptr + s_off, (scaled(dc, scale_t_ptr, rb, mb, ROW_SCHEDULE, ACC) * f).to(out_ty), mask=m2)


@triton.jit
def recurrent_grad_kernel(dg_ptr, whh_ptr, out_ptr, scale_ptr, B, H, ROW_SCHEDULE: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """out [B, H] = scale · (dgates [B, 4H] @ W_hh [4H, H]) (per row with ROW_SCHEDULE, `scaled`): the
    gradient into h_{t-1} along the recurrent
    path. The SAB reverse sweep needs it as a whole row before the attention backward, so it cannot be
    fused into the pointwise kernel there (the plain LSTM sweep fuses it, see lstm_bwd_step_kernel)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mb, mh = rb < B, rh < H
    acc = dot_tile(dg_ptr, 4 * H, whh_ptr, H, 1, rb, rh, mb, mh, 4 * H,
                   tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC), BLOCK_K, DOT_PREC)
    tl.store(out_ptr + rb[:, None] * H + rh[None, :],
             scaled(acc, scale_ptr, rb, mb, ROW_SCHEDULE, ACC).to(out_ptr.dtype.element_ty),
             mask=mb[:, None] & mh[None, :])
