"""The Triton kernels on CPU tensors under TRITON_INTERPRET=1, against fastrnn.reference.

Kernel by kernel (with small explicit tiles, so that multi-program grids, K loops and masked edges run),
then the whole `triton_backend.lstm_layer` / `sab_layer` forward + every gradient, then
`SABLSTM(backend="triton")`. float64 to 1e-9 relative (tests/helpers.py TOL); float32 to TOL as well
(rtol 2e-4, atol 2e-5). Outputs that kernels write are poisoned with NaN first.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from fastrnn import SABLSTM, reference as R, truncation  # noqa: E402
from fastrnn.ops import triton_backend as TB  # noqa: E402
from helpers import TOL, assert_close, layer_args, run_with_grads, schedule_args  # noqa: E402

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


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("has_rec", [True, False])
def test_lstm_bwd_step_kernel(dtype, has_rec):
    B, H = 3, 20
    x = rnd(B, 4 * H, dtype=dtype).requires_grad_()
    c_in = rnd(B, H, dtype=dtype).requires_grad_()
    h, w = rnd(B, H, dtype=dtype), rnd(4 * H, H, dtype=dtype)
    dh, dc, dg_next = rnd(B, H, dtype=dtype), rnd(B, H, dtype=dtype), rnd(B, 4 * H, dtype=dtype)
    rec_scale, scale_t = 0.7, 1.5
    c_ref, h_ref = R.lstm_cell(x, h, c_in, torch.eye(4 * H, dtype=dtype), w, None, None)
    dh_total = dh + rec_scale * dg_next @ w if has_rec else dh
    dx_ref, dc_in_ref = torch.autograd.grad((h_ref * dh_total).sum() + (c_ref * dc).sum(), [x, c_in])
    pre = x.detach() + h @ w.t()
    gates = torch.cat([pre[:, :2 * H].sigmoid(), pre[:, 2 * H:3 * H].tanh(), pre[:, 3 * H:].sigmoid()], 1)
    dg_out, dc_out = nan(B, 4 * H, dtype=dtype), nan(B, H, dtype=dtype)
    factors = torch.tensor([rec_scale, scale_t], dtype=dtype)     # read from memory by the kernel
    K.lstm_step.lstm_bwd_step_kernel[(1, 2)](dg_next, w, factors[0], dh, dc, gates, c_ref.detach(),
                                             c_in.detach(), dg_out, dc_out, factors[1], B, H, HAS_REC=has_rec,
                                             ACC=K.acc_dtype(dtype), **SMALL)
    assert_close(dg_out, dx_ref, dtype, "dgates")
    assert_close(dc_out, scale_t * dc_in_ref, dtype, "dc_{t-1}")


@pytest.mark.parametrize("dtype", [F64, F32])
def test_recurrent_grad_kernel(dtype):
    B, H = 3, 20
    dg, w = rnd(B, 4 * H, dtype=dtype), rnd(4 * H, H, dtype=dtype)
    out = nan(B, H, dtype=dtype)
    K.lstm_step.recurrent_grad_kernel[(1, 2)](dg, w, out, torch.tensor(0.3, dtype=dtype), B, H,
                                              ACC=K.acc_dtype(dtype), **SMALL)
    assert_close(out, 0.3 * dg @ w, dtype, "recurrent gradient")


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


def run_attention_fwd(scorer, k_top, mem, wh, wm, s, hhat, n_slots, write_slot, provisional, dtype):
    """sab_scores_kernel then sab_attention_fwd_kernel, small tiles (2 slot blocks when n_slots > 16)."""
    S, B, H = mem.shape
    wh2, wm2 = TB._scorer_views(scorer, wh, wm)
    A = wh2.shape[0]
    mem = mem.clone()
    key = nan(S, B, A, dtype=dtype)
    key[:n_slots] = mem[:n_slots] @ wm2.t()
    out = dict(y=nan(B, H, dtype=dtype), q=nan(B, A, dtype=dtype), score=nan(B, S, dtype=dtype),
               idx=torch.full((B, k_top), -7, dtype=torch.int64), w=nan(B, k_top, dtype=dtype),
               thr=torch.full((B,), -7, dtype=torch.int32), z=nan(B, dtype=dtype))
    acc, grid_b = K.acc_dtype(dtype), (B + 15) // 16
    K.sparse_attention.sab_scores_kernel[(grid_b, (n_slots + 15) // 16)](
        hhat, key, wh2, s, out["q"], out["score"], n_slots, B, H, A, S, MLP=scorer == "mlp", ACC=acc,
        BLOCK_B=16, BLOCK_S=16, BLOCK_A=16, BLOCK_K=16, DOT_PREC="ieee")
    K.sparse_attention.sab_attention_fwd_kernel[(grid_b,)](
        hhat, out["y"], mem, key, wm2, out["score"], out["idx"], out["w"], out["thr"], out["z"],
        n_slots, int(write_slot), B, H, A, S, K_TOP=k_top, K_PAD=max(2, 1 << (k_top - 1).bit_length()),
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


def test_attention_fwd_all_tied_selects_nothing():
    """All scores equal: tau equals them, relu(0) = 0, so no slot is selected and h_t = ĥ_t."""
    mem, wh, wm, s, hhat = attention_case("mlp", 6)
    mem[:] = mem[0]
    out, _, _ = run_attention_fwd("mlp", 2, mem, wh, wm, s, hhat, 6, False, False, F64)
    assert (out["idx"] == -1).all() and (out["w"] == 0).all()
    assert_close(out["y"], hhat, F64, "h_t")


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
        -1, B, H, A, HAS_REC=True, K_TOP=k_top, K_PAD=max(2, 1 << (k_top - 1).bit_length()),
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


# ---------------------------------------------------------------- whole layers

SCHEDULES = {
    "full": lambda T: truncation.full(T),
    "fixed3": lambda T: truncation.fixed(T, 3),
    "artbp": lambda T: truncation.artbp(T, 2, generator=torch.Generator().manual_seed(3)),
}


def compare_layer(fn_name, args, sched, dtype, **kw):
    out_ref, g_ref = run_with_grads(getattr(R, fn_name), args, sched, **kw)
    out, g = run_with_grads(getattr(TB, fn_name), args, sched, **kw)
    for name, a, b in zip(("y", "h_n", "c_n"), out, out_ref):
        assert_close(a, b, dtype, name)
    for name in g_ref:
        if name in ("att_wh", "att_s") and kw.get("scorer") == "linear":
            # zero in exact arithmetic (the query cancels in the sparsifier): compare on the scale of x's
            scale = max(g_ref["x"].abs().max().item(), 1.0)
            torch.testing.assert_close(g[name], g_ref[name], rtol=0, atol=TOL[dtype]["atol"] * 10 * scale)
        else:
            assert_close(g[name], g_ref[name], dtype, f"d {name}")
    return out, out_ref


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("sched,bias", [("full", True), ("fixed3", False), ("artbp", True)])
def test_lstm_layer(dtype, sched, bias):
    T, B, I, H = 7, 3, 5, 20
    args = layer_args(T, B, I, H, dtype=dtype, bias=bias, sab=False)
    compare_layer("lstm_layer", args, schedule_args(SCHEDULES[sched](T), dtype), dtype)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("scorer,provisional,k_top,k_att,sched,A", [
    ("mlp", False, 2, 1, "full", 12),
    ("mlp", True, 3, 2, "fixed3", None),
    ("mlp", False, 1, 3, "artbp", None),
    ("linear", False, 2, 1, "fixed3", None),
    ("linear", True, 4, 2, "full", None),
])
def test_sab_layer(dtype, scorer, provisional, k_top, k_att, sched, A):
    T, B, I, H = 8, 3, 5, 16
    args = layer_args(T, B, I, H, A=A, scorer=scorer, dtype=dtype)
    kw = dict(k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True)
    out, out_ref = compare_layer("sab_layer", args, schedule_args(SCHEDULES[sched](T), dtype), dtype, **kw)
    att, att_ref = out[3], out_ref[3]
    assert torch.equal(att.indices, att_ref.indices)
    assert_close(att.weights, att_ref.weights, dtype, "attention weights")
    assert torch.equal(att.slot_steps, att_ref.slot_steps)


@pytest.mark.parametrize("T,k_att", [(1, 1), (3, 5)])
def test_sab_layer_short_sequences(T, k_att):
    """T = 1, and a memory that never grows past h0 (k_att > T)."""
    args = layer_args(T, 2, 3, 16, dtype=F64)
    kw = dict(k_top=2, k_att=k_att, scorer="mlp", provisional=False, need_attention=True)
    compare_layer("sab_layer", args, schedule_args(truncation.full(T), F64), F64, **kw)


def test_sab_layer_rejects_bad_arguments():
    args = layer_args(2, 1, 2, 4, dtype=F32)
    sched = schedule_args(truncation.full(2), F32)
    with pytest.raises(ValueError, match="k_top"):
        TB.sab_layer(**args, **sched, k_top=0, k_att=1, scorer="mlp", provisional=False)
    with pytest.raises(ValueError, match="scorer"):
        TB.sab_layer(**args, **sched, k_top=1, k_att=1, scorer="dot", provisional=False)
    with pytest.raises(TypeError, match="att_wm"):
        TB.sab_layer(**dict(args, att_wm=args["att_wm"].double()), **sched, k_top=1, k_att=1, scorer="mlp",
                     provisional=False)
    with pytest.raises(TypeError, match="x: .*int64"):
        TB.sab_layer(**dict(args, x=args["x"].long()), **sched, k_top=1, k_att=1, scorer="mlp",
                     provisional=False)


@pytest.mark.parametrize("attention,slot_state", [("mlp", "final"), ("linear", "provisional")])
def test_sablstm_module_triton_matches_reference(attention, slot_state):
    """SABLSTM(backend="triton") end to end: 2 layers, batch_first, k_trunc, float32."""
    kw = dict(num_layers=2, batch_first=True, k_top=2, k_att=2, k_trunc=3, attention=attention,
              slot_state=slot_state)
    ref = SABLSTM(4, 16, backend="reference", **kw)
    tri = SABLSTM(4, 16, backend="triton", **kw)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 4)
    results = []
    for model in (ref, tri):
        y, (h_n, c_n) = model(x)
        loss = (y * torch.linspace(-1, 1, 16)).sum() + h_n.square().sum() + c_n.sum()
        results.append((y, h_n, c_n, torch.autograd.grad(loss, list(model.parameters()))))
    (y_r, h_r, c_r, g_r), (y_t, h_t, c_t, g_t) = results
    for name, a, b in (("output", y_t, y_r), ("h_n", h_t, h_r), ("c_n", c_t, c_r)):
        assert_close(a, b, F32, name)
    for (name, _), a, b in zip(ref.named_parameters(), g_t, g_r):
        if attention == "linear" and name.startswith(("att_wh", "att_b")):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)   # zero up to rounding
        else:
            assert_close(a, b, F32, f"d {name}")


@pytest.mark.parametrize("fn_name,kw,grad_tol", [
    ("lstm_layer", {}, 3e-2),
    # SAB's gradient goes through (dw - Σ w dw) / Z: the reference itself, run in bfloat16, is ~5% off
    ("sab_layer", dict(k_top=2, k_att=2, scorer="mlp", provisional=True), 0.25),
])
def test_bfloat16_layers(fn_name, kw, grad_tol):
    """bfloat16 storage, float32 accumulation: close to the float32 reference on the same rounded inputs
    (coarse: this catches wrong casts and wrong buffers, not the last bit)."""
    sab = fn_name == "sab_layer"
    a32 = layer_args(8, 3, 5, 16, dtype=F32, sab=sab)
    a16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in a32.items()}
    a_ref = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    sched = truncation.full(8)
    out_ref, g_ref = run_with_grads(getattr(R, fn_name), a_ref, schedule_args(sched, F32), **kw)
    out, g = run_with_grads(getattr(TB, fn_name), a16, schedule_args(sched, torch.bfloat16), **kw)
    assert out[0].dtype == torch.bfloat16
    for name, a, b in zip(("y", "h_n", "c_n"), out, out_ref):
        assert (a.float() - b).abs().max() <= 3e-2 * b.abs().max(), name
    for name in g_ref:
        assert g[name].dtype == torch.bfloat16, name
        assert (g[name].float() - g_ref[name]).abs().max() <= grad_tol * g_ref[name].abs().max(), name


def test_auto_picks_triton_for_cuda_tensors():
    from fastrnn import backends
    assert TB.available()
    assert backends.resolve("auto", "cuda") == "triton"
    assert backends.layer_functions("triton", torch.device("cpu")) == (TB.lstm_layer, TB.sab_layer)  # interpreter


def test_lstm_module_triton_matches_reference():
    """fastrnn.LSTM(backend="triton") end to end: 2 layers, an ARTBP schedule, float32."""
    from fastrnn import LSTM
    ref, tri = LSTM(3, 16, num_layers=2, backend="reference"), LSTM(3, 16, num_layers=2, backend="triton")
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(7, 2, 3)
    sched = truncation.artbp(7, 2, generator=torch.Generator().manual_seed(5))
    results = []
    for model in (ref, tri):
        y, (h_n, c_n) = model(x, schedule=sched)
        loss = (y * torch.linspace(-1, 1, 16)).sum() + h_n.square().sum() + c_n.sum()
        results.append((y, h_n, c_n) + torch.autograd.grad(loss, list(model.parameters())))
    names = ["output", "h_n", "c_n"] + [f"d {name}" for name, _ in ref.named_parameters()]
    for name, a, b in zip(names, results[1], results[0]):
        assert_close(a, b, F32, name)
