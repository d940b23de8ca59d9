"""The Triton kernels one by one, on CPU tensors under TRITON_INTERPRET=1, against their torch formulas
and fastrnn.reference: the single-step LSTM kernels and the sparse attention forward and backward, with
small explicit tiles, so that multi-program grids, K loops and masked edges run. float64 to 1e-9 relative,
float32 to the float32 tolerance (tests/helpers.py TOL). Outputs that kernels write are poisoned with NaN
first. The whole triton layers are compared with the reference in tests/test_lstm.py and tests/test_sab.py.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from fastrnn import reference as R  # noqa: E402
from fastrnn.ops import triton_backend as TB  # noqa: E402
from helpers import TOL, assert_close, layer_args, leaves  # noqa: E402

pytestmark = pytest.mark.triton

K = TB._kernels()
F64, F32 = torch.float64, torch.float32
SMALL = dict(BLOCK_B=16, BLOCK_H=16, BLOCK_K=16, DOT_PREC="ieee")   # H = 20 -> 2 tiles, 2 K-steps


def nan(*shape, dtype=F64):
    return torch.full(shape, float("nan"), dtype=dtype)


def rnd(*shape, dtype=F64, scale=0.5):
    return (torch.randn(*shape, dtype=F64) * scale).to(dtype)


# ---------------------------------------------------------------- LSTM step kernels

@pytest.mark.parametrize("dtype", [F64, F32])
def test_lstm_fwd_step_kernel(dtype):
    B, H = 3, 20
    x, h, c, w = rnd(B, 4 * H, dtype=dtype), rnd(B, H, dtype=dtype), rnd(B, H, dtype=dtype), rnd(4 * H, H, dtype=dtype)
    gates, c_out, h_out = nan(B, 4 * H, dtype=dtype), nan(B, H, dtype=dtype), nan(B, H, dtype=dtype)
    K.lstm_step.lstm_fwd_step_kernel[(1, 2)](x, h, c, w, gates, c_out, h_out, B, H,
                                             ACC=K.acc_dtype(dtype), **SMALL)
    eye = torch.eye(4 * H, dtype=dtype)                      # x is already the input projection
    c_ref, h_ref = R.lstm_cell(x, h, c, eye, w, None, None)
    assert_close(c_out, c_ref, dtype, "c_t")
    assert_close(h_out, h_ref, dtype, "ĥ_t")
    pre = x + h @ w.t()
    act = torch.cat([pre[:, :2 * H].sigmoid(), pre[:, 2 * H:3 * H].tanh(), pre[:, 3 * H:].sigmoid()], 1)
    assert_close(gates, act, dtype, "activated gates")


def schedule_factors(values, B, row_schedule, dtype):
    """A step's schedule factors as the kernels read them: one for every row (0-dim), or per row ([B]; the
    second row cut, factor 0, so that a cut row must come out exactly 0)."""
    if not row_schedule:
        return [torch.tensor(v, dtype=dtype) for v in values]
    return [torch.tensor([v * (1 + b) if b != 1 else 0.0 for b in range(B)], dtype=dtype) for v in values]


def times(factor, v):
    return factor * v if factor.dim() == 0 else factor.unsqueeze(1) * v


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("has_rec", [True, False])
@pytest.mark.parametrize("row_schedule", [False, True])
def test_lstm_bwd_step_kernel(dtype, has_rec, row_schedule):
    B, H = 3, 20
    x = rnd(B, 4 * H, dtype=dtype).requires_grad_()
    c_in = rnd(B, H, dtype=dtype).requires_grad_()
    h, w = rnd(B, H, dtype=dtype), rnd(4 * H, H, dtype=dtype)
    dh, dc, dg_next = rnd(B, H, dtype=dtype), rnd(B, H, dtype=dtype), rnd(B, 4 * H, dtype=dtype)
    rec_scale, scale_t = schedule_factors([0.7, 1.5], B, row_schedule, dtype)   # read from memory by the kernel
    c_ref, h_ref = R.lstm_cell(x, h, c_in, torch.eye(4 * H, dtype=dtype), w, None, None)
    dh_total = dh + times(rec_scale, dg_next @ w) if has_rec else dh
    dx_ref, dc_in_ref = torch.autograd.grad((h_ref * dh_total).sum() + (c_ref * dc).sum(), [x, c_in])
    pre = x.detach() + h @ w.t()
    gates = torch.cat([pre[:, :2 * H].sigmoid(), pre[:, 2 * H:3 * H].tanh(), pre[:, 3 * H:].sigmoid()], 1)
    dg_out, dc_out = nan(B, 4 * H, dtype=dtype), nan(B, H, dtype=dtype)
    K.lstm_step.lstm_bwd_step_kernel[(1, 2)](dg_next, w, rec_scale, dh, dc, gates, c_ref.detach(),
                                             c_in.detach(), dg_out, dc_out, scale_t, B, H, HAS_REC=has_rec,
                                             ROW_SCHEDULE=row_schedule, ACC=K.acc_dtype(dtype), **SMALL)
    assert_close(dg_out, dx_ref, dtype, "dgates")
    assert_close(dc_out, times(scale_t, dc_in_ref), dtype, "dc_{t-1}")


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("row_schedule", [False, True])
def test_recurrent_grad_kernel(dtype, row_schedule):
    B, H = 3, 20
    dg, w = rnd(B, 4 * H, dtype=dtype), rnd(4 * H, H, dtype=dtype)
    if row_schedule:
        dg[1] = float("nan")         # a cut row (factor 0) is exactly 0: not even a NaN crosses a cut
    out = nan(B, H, dtype=dtype)
    (scale,) = schedule_factors([0.3], B, row_schedule, dtype)
    K.lstm_step.recurrent_grad_kernel[(1, 2)](dg, w, out, scale, B, H, ROW_SCHEDULE=row_schedule,
                                              ACC=K.acc_dtype(dtype), **SMALL)
    want = times(scale, dg @ w)
    if row_schedule:
        want[1] = 0
    assert_close(out, want, dtype, "recurrent gradient")


# ---------------------------------------------------------------- sparse attention kernels

def attention_case(scorer, n_slots, B=3, H=20, A=20, dtype=F64, ties=False):
    """A memory of S = n_slots + 1 slots (the last one is where a written slot goes), parameters, ĥ."""
    S = n_slots + 1
    mem = rnd(S, B, H, dtype=dtype)
    if ties:   # equal slots score equally: exercises the tie rules, also at the threshold
        mem[1:n_slots:2] = mem[0]
    if scorer == "mlp":
        wh, wm, s = rnd(A, H, dtype=dtype), rnd(A, H, dtype=dtype), rnd(A, dtype=dtype)
    else:
        wh, wm, s = rnd(H, dtype=dtype), rnd(H, dtype=dtype), rnd(1, dtype=dtype)
    return mem, wh, wm, s, rnd(B, H, dtype=dtype)


def run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, n_slots, write_slot, provisional, dtype, rows=None):
    """sab_scores_kernel then sab_attention_fwd_kernel, small tiles (2 slot blocks when n_slots > 16).
    Every row scores slots [0, n_slots) and writes slot n_slots if write_slot; or `rows` = (lo, hi, wr), each
    row's own window [lo[b], hi[b]) and written slot wr[b] (-1: none), int lists [B]."""
    S, B, H = mem.shape
    if rows is None:
        rows = ([0] * B, [n_slots] * B, [n_slots if write_slot else -1] * B)
    lo, hi, wr = (torch.tensor(v, dtype=torch.int32) for v in rows)
    s_lo, s_hi = min(rows[0]), max(rows[1])
    wh2, wm2 = TB._scorer_views(scorer, wh, wm)
    A = wh2.shape[0]
    mem = mem.clone()
    key = nan(S, B, A, dtype=dtype)
    key[:s_hi] = mem[:s_hi] @ wm2.t()
    out = dict(y=nan(B, H, dtype=dtype), q=nan(B, A, dtype=dtype), score=nan(B, S, dtype=dtype),
               idx=torch.full((B, k_top), -7, dtype=torch.int64), w=nan(B, k_top, dtype=dtype),
               thr=torch.full((B,), -7, dtype=torch.int32), z=nan(B, dtype=dtype))
    acc, grid_b = K.acc_dtype(dtype), (B + 15) // 16
    K.sparse_attention.sab_scores_kernel[(grid_b, (s_hi - s_lo + 15) // 16)](
        hhat, key, wh2, s, out["q"], out["score"], lo, hi, s_lo, s_hi, B, H, A, S, MLP=scorer == "mlp", ACC=acc,
        BLOCK_B=16, BLOCK_S=16, BLOCK_A=16, BLOCK_K=16, DOT_PREC="ieee")
    K.sparse_attention.sab_attention_fwd_kernel[(grid_b,)](
        hhat, out["y"], mem, key, wm2, out["score"], out["idx"], out["w"], out["thr"], out["z"],
        lo, hi, wr, s_lo, s_hi, int(bool((wr >= 0).any())), B, H, A, S,
        K_TOP=k_top, K_PAD=max(2, 1 << (k_top - 1).bit_length()),
        PROVISIONAL=provisional, ACC=acc, BLOCK_A=16, BLOCK_S=16, **SMALL)
    return out, mem, key


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("scorer,k_top,n_slots,ties", [
    ("mlp", 3, 20, False),     # |M| > k_top, slots over two BLOCK_S blocks
    ("mlp", 5, 4, False),      # |M| <= k_top: all selected, tau = min - 1
    ("mlp", 2, 7, True),       # equal scores, at and above the threshold
    ("linear", 3, 20, False),
    ("linear", 4, 9, True),
])
def test_attention_fwd_kernel(dtype, scorer, k_top, n_slots, ties):
    B = 20 if n_slots == 20 else 3    # 20 rows: two batch tiles
    mem, wh, wm, s, hhat = attention_case(scorer, n_slots, B=B, dtype=dtype, ties=ties)
    for provisional in (False, True):
        out, mem_after, key_after = run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, n_slots, True,
                                                      provisional, dtype)
        memory = mem[:n_slots].transpose(0, 1)                          # [B, |M|, H]
        w_ref = R.sparse_weights(R.scores(scorer, hhat, memory, wh, wm, s), k_top)
        idx_ref, wt_ref = R.selected(w_ref, k_top)
        assert torch.equal(out["idx"], idx_ref), (out["idx"], idx_ref)
        assert_close(out["w"], wt_ref, dtype, "weights")
        y_ref = hhat + (w_ref.unsqueeze(2) * memory).sum(1)
        assert_close(out["y"], y_ref, dtype, "h_t")
        new = hhat if provisional else y_ref
        assert_close(mem_after[n_slots], new, dtype, "written slot")
        wm2 = TB._scorer_views(scorer, wh, wm)[1]
        assert_close(key_after[n_slots], new @ wm2.t(), dtype, "written slot's key")
        assert torch.equal(mem_after[:n_slots], mem[:n_slots]), "earlier slots must not change"


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_attention_fwd_kernel_per_row_windows(scorer):
    """Per-row tables (docs/CONTRACT.md "Per-row resets"): each row scores its own window [lo_b, hi_b) of
    the memory (a 1-slot window, windows over two slot blocks, one not starting at 0) and writes its own
    slot or none; the result per row equals the reference on that row's window, indices shifted by lo_b."""
    k_top, dtype = 3, F64
    lo, hi, wr = [0, 5, 17, 2], [20, 19, 18, 6], [20, -1, 21, 7]
    B = len(lo)
    mem, wh, wm, s, hhat = attention_case(scorer, 22, B=B, dtype=dtype)
    for provisional in (False, True):
        out, mem_after, key_after = run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, None, None,
                                                      provisional, dtype, rows=(lo, hi, wr))
        wm2 = TB._scorer_views(scorer, wh, wm)[1]
        for b in range(B):
            memory = mem[lo[b]:hi[b], b:b + 1].transpose(0, 1)
            w_ref = R.sparse_weights(R.scores(scorer, hhat[b:b + 1], memory, wh, wm, s), k_top)
            idx_ref, wt_ref = R.selected(w_ref, k_top)
            assert torch.equal(out["idx"][b:b + 1], torch.where(idx_ref >= 0, idx_ref + lo[b], idx_ref)), b
            assert_close(out["w"][b:b + 1], wt_ref, dtype, f"weights {b}")
            y_ref = hhat[b:b + 1] + (w_ref.unsqueeze(2) * memory).sum(1)
            assert_close(out["y"][b:b + 1], y_ref, dtype, f"h_t {b}")
            if wr[b] >= 0:
                new = hhat[b:b + 1] if provisional else y_ref
                assert_close(mem_after[wr[b], b:b + 1], new, dtype, f"written slot {b}")
                assert_close(key_after[wr[b], b:b + 1], new @ wm2.t(), dtype, f"written slot's key {b}")
        untouched = torch.ones(mem.shape[:2], dtype=torch.bool)
        for b in range(B):
            if wr[b] >= 0:
                untouched[wr[b], b] = False
        assert torch.equal(mem_after[untouched], mem[untouched]), "only the written slots change"


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("k_top", [1, 2, 4])
def test_attention_fwd_ranks_signed_zeros_infinities_and_nan_as_torch_sort(dtype, k_top):
    """The ranking on scores given as they are (sab_attention_fwd_kernel alone): -0.0 ties with 0.0 (lower
    slot first), inf and -inf are numbers, NaN ranks above them; the threshold slot is torch.sort's
    (descending, stable) rank k_top + 1 and h_t the reference's, NaN where it is NaN."""
    inf, nan_ = float("inf"), float("nan")
    scores = torch.tensor([[0.0, -0.0, 0.0, -0.0, -1.0, 1.0],
                           [-0.0, 0.5, 0.0, -0.0, 0.5, -2.0],
                           [-inf, inf, nan_, inf, -inf, 3.0],
                           [-inf, 2.0, -inf, 1.0, -inf, 0.0],
                           [nan_, nan_, 1.0, nan_, 2.0, 0.0]], dtype=dtype)
    B, n = scores.shape
    H, A = 20, 16
    mem = rnd(n + 1, B, H, dtype=dtype)
    hhat = rnd(B, H, dtype=dtype)
    score = nan(B, n + 1, dtype=dtype)
    score[:, :n] = scores
    out = dict(y=nan(B, H, dtype=dtype), idx=torch.full((B, k_top), -7, dtype=torch.int64),
               w=nan(B, k_top, dtype=dtype), thr=torch.full((B,), -7, dtype=torch.int32), z=nan(B, dtype=dtype))
    lo, hi, wr = (torch.tensor([v] * B, dtype=torch.int32) for v in (0, n, -1))
    K.sparse_attention.sab_attention_fwd_kernel[(1,)](
        hhat, out["y"], mem, nan(n + 1, B, A, dtype=dtype), nan(A, H, dtype=dtype), score, out["idx"], out["w"],
        out["thr"], out["z"], lo, hi, wr, 0, n, 0, B, H, A, n + 1,
        K_TOP=k_top, K_PAD=max(2, 1 << (k_top - 1).bit_length()), PROVISIONAL=True, ACC=K.acc_dtype(dtype),
        BLOCK_A=16, BLOCK_S=4, **SMALL)            # BLOCK_S = 4: ties across two slot blocks
    ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices
    assert torch.equal(out["thr"].long(), ranked[:, k_top]), (out["thr"], ranked[:, k_top])
    w_ref = R.sparse_weights(scores, k_top)
    y_ref = hhat + (w_ref.unsqueeze(2) * mem[:n].transpose(0, 1)).sum(1)
    torch.testing.assert_close(out["y"], y_ref, equal_nan=True, **TOL[dtype])
    finite = ~w_ref.isnan().any(1)
    assert finite[:2].all() and not finite[2:].all(), "the case must hold finite and NaN rows"
    idx_ref, wt_ref = R.selected(w_ref[finite], k_top)
    assert torch.equal(out["idx"][finite], idx_ref)
    assert_close(out["w"][finite], wt_ref, dtype, "weights of the rows without NaN")


def test_attention_fwd_all_tied_selects_nothing():
    """All scores equal: tau equals them, relu(0) = 0, so no slot is selected and h_t = ĥ_t."""
    mem, wh, wm, s, hhat = attention_case("mlp", 6)
    mem[:] = mem[0]
    out, _, _ = run_attention_fwd("mlp", 2, mem, wh, wm, s, hhat, 6, False, False, F64)
    assert (out["idx"] == -1).all() and (out["w"] == 0).all()
    assert_close(out["y"], hhat, F64, "h_t")


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("scorer,k_top,n_slots,nan_slots", [
    ("mlp", 2, 20, ([17], [3, 18])),      # a NaN in the second slot block; two NaNs: one the threshold slot
    ("linear", 1, 7, ([2, 5], [6])),      # tau NaN (two NaNs, k_top = 1): every slot weighs, NaN
    ("mlp", 3, 9, ([0, 4, 8], [4])),      # as many NaNs as k_top, the threshold a number
    ("linear", 5, 4, ([2], [0, 3])),      # |M| <= k_top: tau = the last ranked (a number) - 1
])
def test_attention_fwd_kernel_nan_scores_rank_first(dtype, scorer, k_top, n_slots, nan_slots):
    """NaN scores (NaN slots in rows 0 and 2, row 1 clean, equal slots for ties) rank above every number and
    tie with each other (lower slot first), as torch.sort(descending=True, stable=True) ranks them
    (docs/SPEC.md 1.3): the threshold slot is that sort's rank k_top + 1 (|M| <= k_top: its last); a NaN
    row's Z, weights and h_t are NaN as the reference's, and the clean row is the reference's."""
    mem, wh, wm, s, hhat = attention_case(scorer, n_slots, dtype=dtype, ties=True)
    for b, slots in zip((0, 2), nan_slots):
        mem[slots, b] = float("nan")
    out, _, _ = run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, n_slots, False, False, dtype)
    memory = mem[:n_slots].transpose(0, 1)
    a = R.scores(scorer, hhat, memory, wh, wm, s)
    ranked = torch.sort(a, dim=1, descending=True, stable=True).indices
    assert torch.equal(out["thr"].long(), ranked[:, min(k_top, n_slots - 1)]), (out["thr"], ranked)
    w_ref = R.sparse_weights(a, k_top)
    y_ref = hhat + (w_ref.unsqueeze(2) * memory).sum(1)
    assert out["z"][[0, 2]].isnan().all() and not out["z"][1].isnan()
    torch.testing.assert_close(out["y"], y_ref, equal_nan=True, **TOL[dtype])
    assert y_ref[[0, 2]].isnan().all(), "the case must give NaN rows"
    idx_ref, wt_ref = R.selected(w_ref[1:2], k_top)
    assert torch.equal(out["idx"][1:2], idx_ref) and not out["w"][1].isnan().any()
    assert_close(out["w"][1:2], wt_ref, dtype, "clean row's weights")


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("scorer,k_top,n_slots,ties", [
    ("mlp", 3, 20, False), ("mlp", 5, 4, False), ("mlp", 2, 7, True), ("linear", 3, 9, False),
    ("linear", 5, 4, False),
])
def test_attention_bwd_kernel(dtype, scorer, k_top, n_slots, ties):
    B = 20 if n_slots == 20 else 3    # 20 rows: two batch tiles
    mem, wh, wm, s, hhat = attention_case(scorer, n_slots, B=B, dtype=dtype, ties=ties)
    out, _, key = run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, n_slots, False, False, dtype)
    S, B, H = mem.shape
    wh2, wm2 = TB._scorer_views(scorer, wh, wm)
    A = wh2.shape[0]
    # the reference: one step of SPEC section 1 steps 4-7, autograd for its backward
    leaves = [t.clone().requires_grad_() for t in (hhat, mem[:n_slots], wh, wm, s)]
    l_hhat, l_mem, l_wh, l_wm, l_s = leaves
    memory = l_mem.transpose(0, 1)
    w_ref = R.sparse_weights(R.scores(scorer, l_hhat, memory, l_wh, l_wm, l_s), k_top)
    h = l_hhat + (w_ref.unsqueeze(2) * memory).sum(1)
    dy, rec = rnd(B, H, dtype=dtype), rnd(B, H, dtype=dtype)
    d_hhat, d_mem, d_wh, d_wm, d_s = torch.autograd.grad((h * (dy + rec)).sum(), leaves)
    # the kernel
    gm, dkey = torch.zeros(S, B, H, dtype=dtype), torch.zeros(S, B, A, dtype=dtype)
    dv, gh, dq = torch.zeros(B, A, dtype=dtype), nan(B, H, dtype=dtype), nan(B, A, dtype=dtype)
    K.sparse_attention_bwd.sab_attention_bwd_kernel[((B + 15) // 16,)](
        dy, rec, mem, key, wh2, wm2, s, out["q"], out["idx"], out["w"], out["thr"], out["z"], gm, dkey, dv, gh, dq,
        torch.full((B,), -1, dtype=torch.int32), 0, B, H, A,
        HAS_REC=True, K_TOP=k_top, K_PAD=max(2, 1 << (k_top - 1).bit_length()),
        MLP=scorer == "mlp", PROVISIONAL=False, ACC=K.acc_dtype(dtype), BLOCK_A=16, **SMALL)
    assert_close(gh, d_hhat, dtype, "dĥ")
    assert_close(gm[:n_slots] + dkey[:n_slots] @ wm2, d_mem, dtype, "d memory")
    touched = (gm[:n_slots].abs().sum(2) + dkey[:n_slots].abs().sum(2)) > 0          # [|M|, B]
    assert (touched.sum(0) <= k_top + 1).all(), "only selected and threshold slots get gradient"
    assert (gm[n_slots:] == 0).all() and (dkey[n_slots:] == 0).all()
    dwh = (dq.t() @ hhat).reshape(wh.shape)
    dwm = (dkey[:n_slots].reshape(-1, A).t() @ mem[:n_slots].reshape(-1, H)).reshape(wm.shape)
    scale = max(d_mem.abs().max().item(), 1.0)   # linear: d att_wh, att_b are 0 up to rounding
    torch.testing.assert_close(dwh, d_wh, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    assert_close(dwm, d_wm, dtype, "d att_wm")
    ds = dv.sum(0) if scorer == "mlp" else dq.sum().reshape(1)
    torch.testing.assert_close(ds, d_s, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


# ---------------------------------------------------------------- streaming (docs/SPEC.md section 8)

@pytest.mark.parametrize("provisional", [True, False])
def test_sab_layer_streaming_empty_chunk_and_second_order(provisional):
    """The whole triton layer streamed in chunks, one of which writes no slot (new_slots [B, 0, H], no
    slot count change), against the reference's chunks: outputs, carried memory, first-order gradients
    (the kernels' sweep) and second-order gradients (create_graph=True recomputes through the reference
    with memory and step0: the penalty's gradient reaches earlier chunks through the carried memory)."""
    from test_streaming import chunked, grads_of

    torch.manual_seed(2)
    chunks = [(0, 4), (4, 5), (5, 9)]            # k_att = 3: slots after steps 2, 5, 8; none in (4, 5)
    args = layer_args(9, 2, 3, 4, A=5)
    cut, scale = torch.zeros(9, dtype=torch.bool), torch.full((9,), 0.5, dtype=F64)
    kw = dict(k_top=2, k_att=3, scorer="mlp", provisional=provisional, need_attention=True)
    ours = chunked(TB.sab_layer, args, cut, scale, chunks, **kw)
    ref = chunked(R.sab_layer, args, cut, scale, chunks, **kw)
    assert ours[4].shape[1] == 4                 # h0 and the three written slots
    for name, a, b in zip(("y", "h_n", "c_n", "memory"), ours[:3] + ours[4:], ref[:3] + ref[4:]):
        assert_close(a, b, F64, name)
    og, rg = grads_of(ours[:3] + ours[4:], args), grads_of(ref[:3] + ref[4:], args)
    for name in rg:
        assert_close(og[name], rg[name], F64, f"d{name}")

    def second_order(sab_layer):
        y, h_n, _, _, memory = chunked(sab_layer, args, cut, scale, chunks, **kw)
        named = leaves(args)
        first = torch.autograd.grad((y * y.detach().sin()).sum() + h_n.sum() + memory.pow(2).sum(),
                                    list(named.values()), create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in first), list(named.values()))

    for name, a, b in zip(leaves(args), second_order(TB.sab_layer), second_order(R.sab_layer)):
        assert_close(a, b, F64, f"second-order d{name}")
