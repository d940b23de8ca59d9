"""SAB sparse top-k attention over the memory, forward (SPEC section 1, steps 4-8) for one time step.

Two kernels per step. `sab_scores_kernel`, grid (cdiv(B, BLOCK_B), cdiv(s_hi - s_lo, BLOCK_S)), does 1-2;
`sab_attention_fwd_kernel`, grid (cdiv(B, BLOCK_B),), a program owning BLOCK_B batch rows, does 3-5:
  1. the query q = ĥ_t @ W_hᵀ  ("mlp": [A]; "linear": A = 1 and the bias att_b folded into q),
  2. the score of every slot j of the row's window lo[b] <= j < hi[b] (mlp: v · tanh(q + P_j), linear:
     q + P_j), into a scratch row (a plain call: lo = 0, hi = the slots written so far; with per-row
     resets, docs/CONTRACT.md "Per-row resets", each row's own window of its slot table),
     where P_j = W_m @ m_j is the slot's key, computed once when the slot was written (step 6 below),
  3. the threshold by K_TOP + 1 passes of "next in the ranking" (score descending, NaN above every number,
     lower slot first on ties: docs/SPEC.md 1.3), the normaliser Z = Σ relu(a - τ) + 1e-7, and the
     selected slots (relu(a_j - τ) > 0 or NaN) in ascending slot order by K_TOP passes of "next larger
     index",
  4. h_t = ĥ_t + Σ w_j m_j, gathering only the selected slots,
  5. if the step writes a slot (slot wr[b] of row b, -1: none): m = h_t (or ĥ_t, provisional) into the
     memory and its key P = W_m @ m.
It saves what the backward needs: q, the selected indices (int64, -1 padding) and weights, the threshold
slot and Z. The new slot's key is computed from the slot just stored, after tl.debug_barrier() (a CTA
barrier, which also orders global memory within the CTA).
"""
import triton
import triton.language as tl

from .math import dot_tile, tanh

NORM_EPS = tl.constexpr(1e-7)  # SPEC section 1, step 6 (fastrnn.reference.NORM_EPS)


@triton.jit
def _rank_key(a):
    """Score a as an integer key in the order of the ranking of docs/SPEC.md 1.3: key(a) > key(b) iff a ranks
    above b (a > b, with NaN above every number, as torch.sort(descending=True) and ranks_above in
    csrc/include/fastrnn/sparse_attention.h put it), equal keys iff equal scores (-0.0 and 0.0; any two
    NaNs). Why integers: float comparisons rank NaN below every slot and tl.max drops it, while an integer
    max or min costs what the float one did, so the passes keep their cost for finite scores."""
    if a.dtype == tl.float64:
        bits = a.to(tl.int64, bitcast=True)
        magnitude = 0x7FFFFFFFFFFFFFFF
    else:
        bits = a.to(tl.int32, bitcast=True)
        magnitude = 0x7FFFFFFF
    key = tl.where(bits < 0, bits ^ magnitude, bits)   # a negative float's magnitude bits count downwards
    key = tl.where(a == 0.0, 0, key)                    # -0.0 ties with 0.0, as the float comparison says
    return tl.where(a != a, magnitude, key)             # above +inf's key, the largest of a number


@triton.jit
def _key_score(key, nan_key, ACC: tl.constexpr):
    """The score of a _rank_key key (nan_key: the key of NaN, whose bits are the magnitude mask); -0.0 comes
    back as 0.0, which τ may be: a - τ is the same but for the sign of a zero, which relu drops."""
    return tl.where(key < 0, key ^ nan_key, key).to(ACC, bitcast=True)


@triton.jit
def _weighs(d):
    """Whether ã = relu(d) of d = a - τ counts: d > 0, or NaN, which torch.relu keeps (the row's weights are
    then NaN, as the reference's); d > 0 alone would drop it."""
    return ~(d <= 0.0)


@triton.jit
def sab_scores_kernel(hhat_ptr, key_ptr, wh_ptr, s_ptr, q_ptr, score_ptr, lo_ptr, hi_ptr, s_lo, s_hi, B, H, A, S_cap,
                      MLP: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr):
    """Scores [B, S_cap] of row b's window of slots lo[b] <= j < hi[b] for step t (phases 1-2); lo/hi [B]
    int32, s_lo <= min lo, s_hi >= max hi their bounds over all rows. Grid (cdiv(B, BLOCK_B),
    cdiv(s_hi - s_lo, BLOCK_S)): the keys of a long memory are read by many CTAs at once. Each CTA forms the
    query chunk by chunk in registers (recomputed per slot block: 2·BLOCK_B·H·A flops, small next to the
    scores); the slot block 0 stores it for the backward."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rs = s_lo + tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    mb = rb < B
    lo = tl.load(lo_ptr + rb, mask=mb, other=0)
    hi = tl.load(hi_ptr + rb, mask=mb, other=0)
    ms = (rs[None, :] >= lo[:, None]) & (rs[None, :] < hi[:, None])     # [BLOCK_B, BLOCK_S]
    a = tl.zeros((BLOCK_B, BLOCK_S), dtype=ACC)
    for a0 in range(0, A, BLOCK_A):
        ra = a0 + tl.arange(0, BLOCK_A)
        ma = ra < A
        q = dot_tile(hhat_ptr, H, wh_ptr, 1, H, rb, ra, mb, ma, H,
                     tl.zeros((BLOCK_B, BLOCK_A), dtype=ACC), BLOCK_K, DOT_PREC)
        if not MLP:
            q += tl.load(s_ptr).to(ACC)
        if tl.program_id(1) == 0:
            tl.store(q_ptr + rb[:, None] * A + ra[None, :], q.to(q_ptr.dtype.element_ty),
                     mask=mb[:, None] & ma[None, :])
        m3 = mb[:, None, None] & ms[:, :, None] & ma[None, None, :]
        p = tl.load(key_ptr + rs[None, :, None] * (B * A) + rb[:, None, None] * A + ra[None, None, :],
                    mask=m3, other=0.0).to(ACC)
        if MLP:
            v = tl.load(s_ptr + ra, mask=ma, other=0.0).to(ACC)
            a += tl.sum(tanh(q[:, None, :] + p) * v[None, None, :], axis=2)
        else:
            a += tl.sum(tl.where(m3, p + q[:, None, :], 0.0), axis=2)
    tl.store(score_ptr + rb[:, None] * S_cap + rs[None, :], a.to(score_ptr.dtype.element_ty),
             mask=mb[:, None] & ms)


@triton.jit
def sab_attention_fwd_kernel(hhat_ptr, y_ptr, mem_ptr, key_ptr, wm_ptr, score_ptr, idx_ptr, w_ptr, thr_ptr,
                             z_ptr, lo_ptr, hi_ptr, wr_ptr, s_lo, s_hi, write_any, B, H, A, S_cap,
                             K_TOP: tl.constexpr, K_PAD: tl.constexpr, PROVISIONAL: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                             BLOCK_A: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
                             DOT_PREC: tl.constexpr):
    """Phases 3-5 of step t, after sab_scores_kernel. Grid (cdiv(B, BLOCK_B),). hhat/y [B, H] (ĥ_t in,
    h_t out), mem [S, B, H] and key [S, B, A], wm [A, H], score [B, S_cap] in, idx/w [B, K_TOP] out,
    thr/z [B] out. Row b's window is slots lo[b] <= j < hi[b] (lo/hi [B] int32, never empty; s_lo, s_hi
    their bounds over all rows); it writes slot wr[b] (int32 [B], -1: none) at the end of the step, and
    write_any says whether any row does."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    lo = tl.load(lo_ptr + rb, mask=mb, other=0)
    hi = tl.load(hi_ptr + rb, mask=mb, other=1)
    n_slots = hi - lo   # [BLOCK_B] the size of each row's window
    out_ty = y_ptr.dtype.element_ty

    # 3a. threshold: pass r finds the (r+1)-th slot of the ranking (score desc, NaN first, lower index first
    # on ties), on the scores' _rank_key keys
    NONE = S_cap  # "no slot" marker, larger than every slot index
    nan_key = _rank_key(tl.full((BLOCK_B,), float("nan"), ACC))       # the largest key
    below = _rank_key(tl.full((BLOCK_B,), float("-inf"), ACC)) - 1    # below every slot's key
    prev_k = nan_key
    prev_j = tl.full((BLOCK_B,), -1, tl.int32)
    small_k = nan_key   # the last ranked slot's key (rows with n_slots > K_TOP do not use it)
    thr_small = tl.zeros((BLOCK_B,), dtype=tl.int32)
    for r in range(K_TOP + 1):
        best_k = below
        best_j = tl.full((BLOCK_B,), NONE, tl.int32)
        for s0 in range(s_lo, s_hi, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            valid = mb[:, None] & (rs[None, :] >= lo[:, None]) & (rs[None, :] < hi[:, None])
            k = _rank_key(tl.load(score_ptr + rb[:, None] * S_cap + rs[None, :], mask=valid, other=0.0).to(ACC))
            after = (k < prev_k[:, None]) | ((k == prev_k[:, None]) & (rs[None, :] > prev_j[:, None]))
            ok = valid & after
            bm = tl.max(tl.where(ok, k, below[:, None]), axis=1)
            bj = tl.min(tl.where(ok & (k == bm[:, None]), rs[None, :], NONE), axis=1)
            # blocks come in ascending slot order, so on equal scores the earlier block's slot stays
            better = (bj < NONE) & ((best_j == NONE) | (bm > best_k))
            best_k = tl.where(better, bm, best_k)
            best_j = tl.where(better, bj, best_j)
        prev_k, prev_j = best_k, best_j
        # while |M| <= K_TOP the last ranked slot (pass n_slots - 1) gives tau = its score - 1. Only a found
        # slot's key: `below` decodes to a signalling NaN, whose arithmetic would raise the invalid flag.
        last = (r == n_slots - 1) & (best_j < NONE)
        small_k = tl.where(last, best_k, small_k)
        thr_small = tl.where(last, best_j, thr_small)
    tau = tl.where(n_slots > K_TOP, _key_score(prev_k, nan_key, ACC), _key_score(small_k, nan_key, ACC) - 1.0)
    thr = tl.where(n_slots > K_TOP, prev_j, thr_small)

    # 3b. normaliser Z = Σ relu(a - τ) + eps
    z = tl.zeros((BLOCK_B,), dtype=ACC)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        valid = mb[:, None] & (rs[None, :] >= lo[:, None]) & (rs[None, :] < hi[:, None])
        a = tl.load(score_ptr + rb[:, None] * S_cap + rs[None, :], mask=valid, other=0.0).to(ACC)
        d = a - tau[:, None]
        z += tl.sum(tl.where(valid & _weighs(d), d, 0.0), axis=1)
    z += NORM_EPS

    # 3c. selected slots (relu(a - τ) > 0, or NaN) in ascending order: pass r finds the next one after prev
    col = tl.arange(0, K_PAD)
    sel_j = tl.full((BLOCK_B, K_PAD), -1, tl.int32)
    sel_w = tl.zeros((BLOCK_B, K_PAD), dtype=ACC)
    prev_j = tl.full((BLOCK_B,), -1, tl.int32)
    for r in range(K_TOP):
        best_j = tl.full((BLOCK_B,), NONE, tl.int32)
        best_a = tl.zeros((BLOCK_B,), dtype=ACC)
        for s0 in range(s_lo, s_hi, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            valid = mb[:, None] & (rs[None, :] >= lo[:, None]) & (rs[None, :] < hi[:, None])
            a = tl.load(score_ptr + rb[:, None] * S_cap + rs[None, :], mask=valid, other=0.0).to(ACC)
            ok = valid & _weighs(a - tau[:, None]) & (rs[None, :] > prev_j[:, None])
            bj = tl.min(tl.where(ok, rs[None, :], NONE), axis=1)
            ba = tl.sum(tl.where(ok & (rs[None, :] == bj[:, None]), a, 0.0), axis=1)
            first = (best_j == NONE) & (bj < NONE)
            best_a = tl.where(first, ba, best_a)
            best_j = tl.where(first, bj, best_j)
        found = best_j < NONE
        sel_j = tl.where((col[None, :] == r) & found[:, None], best_j[:, None], sel_j)
        sel_w = tl.where((col[None, :] == r) & found[:, None], ((best_a - tau) / z)[:, None], sel_w)
        prev_j = tl.where(found, best_j, NONE)

    mk = mb[:, None] & (col[None, :] < K_TOP)
    tl.store(idx_ptr + rb[:, None] * K_TOP + col[None, :], sel_j.to(tl.int64), mask=mk)
    tl.store(w_ptr + rb[:, None] * K_TOP + col[None, :], sel_w.to(w_ptr.dtype.element_ty), mask=mk)
    tl.store(thr_ptr + rb, thr, mask=mb)
    tl.store(z_ptr + rb, z.to(z_ptr.dtype.element_ty), mask=mb)

    # 4-5. h_t = ĥ_t + Σ_r w_r m_{j_r}, gathering the selected slots only; maybe write the new slot
    wr = tl.load(wr_ptr + rb, mask=mb, other=-1)
    mw = mb & (wr >= 0)
    wrow = tl.maximum(wr, 0) * B + rb   # row wrow of mem viewed as [S·B, H] (of key as [S·B, A])
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        m2 = mb[:, None] & (rh[None, :] < H)
        off = rb[:, None] * H + rh[None, :]
        hhat = tl.load(hhat_ptr + off, mask=m2, other=0.0).to(ACC)
        h = hhat
        for r in range(K_TOP):
            j = tl.sum(tl.where(col[None, :] == r, sel_j, 0), axis=1)
            w = tl.sum(tl.where(col[None, :] == r, sel_w, 0.0), axis=1)
            m = tl.load(mem_ptr + j[:, None] * (B * H) + off, mask=m2 & (j[:, None] >= 0), other=0.0)
            h += w[:, None] * m.to(ACC)
        tl.store(y_ptr + off, h.to(out_ty), mask=m2)
        if write_any:
            new_slot = mem_ptr + wrow[:, None] * H + rh[None, :]
            mw2 = mw[:, None] & (rh[None, :] < H)
            if PROVISIONAL:
                tl.store(new_slot, hhat.to(out_ty), mask=mw2)
            else:
                tl.store(new_slot, h.to(out_ty), mask=mw2)
    if write_any:
        tl.debug_barrier()
        for a0 in range(0, A, BLOCK_A):
            ra = a0 + tl.arange(0, BLOCK_A)
            ma = ra < A
            p = dot_tile(mem_ptr, H, wm_ptr, 1, H, wrow, ra, mw, ma, H,
                         tl.zeros((BLOCK_B, BLOCK_A), dtype=ACC), BLOCK_K, DOT_PREC)
            tl.store(key_ptr + wrow[:, None] * A + ra[None, :], p.to(out_ty), mask=mw[:, None] & ma[None, :])
