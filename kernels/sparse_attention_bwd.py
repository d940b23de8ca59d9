"""Backward of the SAB sparse attention for one time step (SPEC section 2): only the <= K_TOP selected
slots and the threshold slot are touched, never the whole memory.

Grid: (cdiv(B, BLOCK_B),). A program owns BLOCK_B batch rows; slots are stored [S, B, ...], so rows of
different programs never alias and the per-slot gradient buffers are updated without atomics. For them:
  1. g_h = dy_t + rec (recurrent gradient from step t+1) [+ the gradient of the slot this step wrote,
     when slots hold final states]: the gradient reaching h_t, which is also the gradient of s_t.
     The slot's gradient is gm[n] + dkey[n] @ W_m: direct uses (summaries) plus uses as a key, both
     complete because every later step has been swept already. For each selected slot j_r:
     dw_r = g_h · m_{j_r} and gm[j_r] += w_r g_h.
  2. dã_r = (dw_r - Σ_l w_l dw_l) / Z, dτ = -Σ_r dã_r, which flows to the threshold slot's score.
  3. through the scorer (mlp: e = da · v ⊙ (1 - u²), u = tanh(q + P_j); linear: e = da):
     dq += e, dkey[j] += e, dv += da · u. dq is saved for dW_h (one GEMM after the sweep).
  4. g_ĥ = g_h + dq @ W_h [+ the written slot's gradient when slots hold provisional states], the
     gradient handed to the LSTM step backward.
gh is also the scratch that carries g_h from phase 1 to phase 4 (separated by a CTA barrier).
"""
import triton
import triton.language as tl

from .math import dot_tile, tanh


@triton.jit
def _slot_grad(gm_ptr, dkey_ptr, wm_ptr, n, rb, rh, mb, mh, B, H, A, acc,
               BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """acc += gm[n] + dkey[n] @ W_m: the whole gradient of slot n[b] of each row b (n [BLOCK_B], -1: none,
    those rows unchanged), columns rh."""
    mn = mb & (n >= 0)
    row = tl.maximum(n, 0) * B + rb   # row of gm viewed as [S·B, H], of dkey as [S·B, A]
    acc += tl.load(gm_ptr + row[:, None] * H + rh[None, :], mask=mn[:, None] & mh[None, :], other=0.0).to(acc.dtype)
    return dot_tile(dkey_ptr, A, wm_ptr, H, 1, row, rh, mn, mh, A, acc, BLOCK_K, DOT_PREC)


@triton.jit
def _col(tile, col, r):
    """Column r of a [BLOCK_B, K_PAD] register tile."""
    return tl.sum(tl.where(col[None, :] == r, tile, 0), axis=1)


@triton.jit
def _through_scorer(j, da, use, q, v, key_ptr, dkey_ptr, rb, ra, mb, ma, B, A, dq, dv,
                    ACC: tl.constexpr, MLP: tl.constexpr):
    """Gradient da [BLOCK_B] of slot j's score, for rows where `use`: adds into dq, dv (registers) and
    dkey[j] (memory). Returns (dq, dv)."""
    m2 = (mb & use)[:, None] & ma[None, :]
    off = j[:, None] * (B * A) + rb[:, None] * A + ra[None, :]
    if MLP:
        p = tl.load(key_ptr + off, mask=m2, other=0.0).to(ACC)
        u = tanh(q + p)
        e = tl.where(m2, da[:, None] * v[None, :] * (1.0 - u * u), 0.0)
        dv += tl.where(m2, da[:, None] * u, 0.0)
    else:
        e = tl.where(m2, da[:, None], 0.0)
    dk = tl.load(dkey_ptr + off, mask=m2, other=0.0).to(ACC)
    tl.store(dkey_ptr + off, (dk + e).to(dkey_ptr.dtype.element_ty), mask=m2)
    return dq + e, dv


@triton.jit
def sab_attention_bwd_kernel(dy_ptr, rec_ptr, mem_ptr, key_ptr, wh_ptr, wm_ptr, s_ptr, q_ptr,
                             idx_ptr, w_ptr, thr_ptr, z_ptr, gm_ptr, dkey_ptr, dv_ptr, gh_ptr, dq_ptr,
                             wr_ptr, write_any, B, H, A,
                             HAS_REC: tl.constexpr, K_TOP: tl.constexpr, K_PAD: tl.constexpr,
                             MLP: tl.constexpr, PROVISIONAL: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_A: tl.constexpr,
                             BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """One step t. dy/rec [B, H] in, gh [B, H] out (g_ĥ), dq [B, A] out; gm [S, B, H], dkey [S, B, A],
    dv [B, A] (mlp) accumulate across steps. q, idx, w, thr, z: what the forward saved for step t.
    wr [B] int32: the slot each row wrote at the end of step t, or -1; write_any: whether any row did."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    slot_new = tl.load(wr_ptr + rb, mask=mb, other=-1)
    col = tl.arange(0, K_PAD)
    mk = mb[:, None] & (col[None, :] < K_TOP)
    sel_j = tl.load(idx_ptr + rb[:, None] * K_TOP + col[None, :], mask=mk, other=-1).to(tl.int32)
    sel_w = tl.load(w_ptr + rb[:, None] * K_TOP + col[None, :], mask=mk, other=0.0).to(ACC)
    thr = tl.load(thr_ptr + rb, mask=mb, other=0)
    z = tl.load(z_ptr + rb, mask=mb, other=1.0).to(ACC)
    out_ty = gh_ptr.dtype.element_ty

    # 1. g_h, dw_r = g_h · m_{j_r}, gm[j_r] += w_r g_h
    dw = tl.zeros((BLOCK_B, K_PAD), dtype=ACC)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mh = rh < H
        m2 = mb[:, None] & mh[None, :]
        off = rb[:, None] * H + rh[None, :]
        g = tl.load(dy_ptr + off, mask=m2, other=0.0).to(ACC)
        if HAS_REC:
            g += tl.load(rec_ptr + off, mask=m2, other=0.0).to(ACC)
        if not PROVISIONAL:
            if write_any:
                g = _slot_grad(gm_ptr, dkey_ptr, wm_ptr, slot_new, rb, rh, mb, mh, B, H, A, g,
                               BLOCK_K, DOT_PREC)
        tl.store(gh_ptr + off, g.to(out_ty), mask=m2)
        for r in range(K_TOP):
            j = _col(sel_j, col, r)
            w = _col(sel_w, col, r)
            ms = m2 & (j[:, None] >= 0)
            slot = j[:, None] * (B * H) + off
            m = tl.load(mem_ptr + slot, mask=ms, other=0.0).to(ACC)
            dw += tl.where(col[None, :] == r, tl.sum(g * m, axis=1)[:, None], 0.0)
            gm = tl.load(gm_ptr + slot, mask=ms, other=0.0).to(ACC)
            tl.store(gm_ptr + slot, (gm + w[:, None] * g).to(gm_ptr.dtype.element_ty), mask=ms)

    # 2. through the normalisation and the threshold
    chosen = sel_j >= 0
    da = tl.where(chosen, (dw - tl.sum(sel_w * dw, axis=1)[:, None]) / z[:, None], 0.0)
    dtau = -tl.sum(da, axis=1)
    is_thr = chosen & (sel_j == thr[:, None])           # while |M| <= K_TOP the threshold slot is selected
    da += tl.where(is_thr, dtau[:, None], 0.0)
    thr_apart = tl.sum(is_thr.to(tl.int32), axis=1) == 0

    # 3. through the scorer; dq saved for dW_h, dv accumulated across steps
    for a0 in range(0, A, BLOCK_A):
        ra = a0 + tl.arange(0, BLOCK_A)
        ma = ra < A
        m2a = mb[:, None] & ma[None, :]
        q = tl.load(q_ptr + rb[:, None] * A + ra[None, :], mask=m2a, other=0.0).to(ACC)
        v = tl.load(s_ptr + ra, mask=ma, other=0.0).to(ACC)   # unused by the linear scorer
        dq = tl.zeros((BLOCK_B, BLOCK_A), dtype=ACC)
        dv = tl.zeros((BLOCK_B, BLOCK_A), dtype=ACC)
        for r in range(K_TOP):
            j = _col(sel_j, col, r)
            dq, dv = _through_scorer(j, _col(da, col, r), j >= 0, q, v, key_ptr, dkey_ptr, rb, ra, mb, ma,
                                     B, A, dq, dv, ACC, MLP)
        dq, dv = _through_scorer(thr, dtau, thr_apart, q, v, key_ptr, dkey_ptr, rb, ra, mb, ma,
                                 B, A, dq, dv, ACC, MLP)
        tl.store(dq_ptr + rb[:, None] * A + ra[None, :], dq.to(dq_ptr.dtype.element_ty), mask=m2a)
        if MLP:
            dv_off = dv_ptr + rb[:, None] * A + ra[None, :]
            dv += tl.load(dv_off, mask=m2a, other=0.0).to(ACC)
            tl.store(dv_off, dv.to(dv_ptr.dtype.element_ty), mask=m2a)
    tl.debug_barrier()

    # 4. g_ĥ = g_h + dq @ W_h (+ the written slot's gradient, provisional slots)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mh = rh < H
        m2 = mb[:, None] & mh[None, :]
        off = rb[:, None] * H + rh[None, :]
        g = tl.load(gh_ptr + off, mask=m2, other=0.0).to(ACC)
        g = dot_tile(dq_ptr, A, wh_ptr, H, 1, rb, rh, mb, mh, A, g, BLOCK_K, DOT_PREC)
        if PROVISIONAL:
            if write_any:
                g = _slot_grad(gm_ptr, dkey_ptr, wm_ptr, slot_new, rb, rh, mb, mh, B, H, A, g,
                               BLOCK_K, DOT_PREC)
        tl.store(gh_ptr + off, g.to(out_ty), mask=m2)
