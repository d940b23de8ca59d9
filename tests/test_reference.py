"""The oracle itself: hand-checked cases of SPEC sections 1-3, gradcheck, truncation placement."""
import pytest
import torch

from fastrnn import reference as R
from fastrnn import truncation as tr

from helpers import layer_args, schedule_args

f64 = torch.float64


def sab(args, sched=None, **kw):
    T = args["x"].shape[0]
    sched = sched or tr.full(T)
    kw = {"k_top": 5, "k_att": 2, "scorer": "mlp", "provisional": False, **kw}
    return R.sab_layer(**args, **schedule_args(sched, args["x"].dtype), **kw)


# ---- sparsifier (steps 5-6) --------------------------------------------------------------------

def test_all_slots_selected_while_memory_fits_k_top():
    a = torch.tensor([[0.5, -1.0, 2.0]], dtype=f64)
    w = R.sparse_weights(a, k_top=3)
    tilde = a - (a.min() - 1)                                   # tau = min - 1
    torch.testing.assert_close(w, tilde / (tilde.sum() + 1e-7), rtol=0, atol=1e-15)
    assert (w > 0).all()


def test_threshold_is_the_k_plus_1_th_score():
    a = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]], dtype=f64)
    w = R.sparse_weights(a, k_top=2)                            # keep 0.9, 0.7; tau = 0.5
    expected = torch.tensor([[0.0, 0.4, 0.0, 0.2, 0.0]], dtype=f64)
    torch.testing.assert_close(w, expected / (0.6 + 1e-7), rtol=0, atol=1e-15)


def test_ties_at_threshold_send_gradient_to_the_lower_index_only():
    # k_top=1: ranking 0 (3.0), 1 (1.0), 2 (1.0), 3 (0.0) -> the threshold is slot 1, the lower tied index
    a = torch.tensor([[3.0, 1.0, 1.0, 0.0]], dtype=f64, requires_grad=True)
    w = R.sparse_weights(a, k_top=1)
    assert w[0, 1] == 0 and w[0, 2] == 0 and w[0, 0] > 0
    (g,) = torch.autograd.grad(w[0, 0], a)
    d = 1e-7 / (2.0 + 1e-7) ** 2                                # d/dã0 of ã0 / (ã0 + eps), ã0 = 2
    torch.testing.assert_close(g, torch.tensor([[d, -d, 0.0, 0.0]], dtype=f64), rtol=1e-6, atol=0)
    assert g[0, 2] == 0 and g[0, 3] == 0                        # the other tied slot: nothing


def test_tie_with_min_when_memory_fits_goes_to_last_ranked():
    # |M| <= k_top: tau = min - 1, its gradient to the last ranked slot (the highest index among minima)
    a = torch.tensor([[0.0, 2.0, 0.0]], dtype=f64, requires_grad=True)
    w = R.sparse_weights(a, k_top=5)
    loss = (w * torch.tensor([[1.0, 2.0, 3.0]], dtype=f64)).sum()
    (g,) = torch.autograd.grad(loss, a)
    # dL/dã_j = (c_j - Σ w c) / Z ; slot 2 also receives -Σ_j dL/dã_j through tau
    tilde = torch.tensor([1.0, 3.0, 1.0], dtype=f64)
    Z = tilde.sum() + 1e-7
    c = torch.tensor([1.0, 2.0, 3.0], dtype=f64)
    dt = (c - (tilde / Z * c).sum()) / Z
    expected = dt.clone()
    expected[2] -= dt.sum()
    torch.testing.assert_close(g[0], expected, rtol=1e-12, atol=1e-15)


def test_k_top_one_is_a_single_slot_with_weight_one():
    a = torch.tensor([[0.2, 0.8, 0.5]], dtype=f64)
    w = R.sparse_weights(a, k_top=1)
    assert w[0, 1] == pytest.approx(0.3 / (0.3 + 1e-7), abs=1e-15) and (w[0, [0, 2]] == 0).all()


# ---- the layer (steps 1-8) ---------------------------------------------------------------------

def test_single_step_by_hand():
    args = layer_args(1, 2, 3, 4)
    y, h_n, c_n, _ = sab(args)
    gates = args["x"][0] @ args["w_ih"].T + args["b_ih"] + args["h0"] @ args["w_hh"].T + args["b_hh"]
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * args["c0"] + torch.sigmoid(i) * torch.tanh(g)
    h_hat = torch.sigmoid(o) * torch.tanh(c)
    w0 = 1.0 / (1.0 + 1e-7)                                    # one slot (h0): ã = 1
    torch.testing.assert_close(y[0], h_hat + w0 * args["h0"], rtol=1e-13, atol=0)
    torch.testing.assert_close(c_n, c, rtol=1e-13, atol=0)
    torch.testing.assert_close(h_n, y[-1], rtol=0, atol=0)   # exact: h_n is the tensor stacked last into y


@pytest.mark.parametrize("provisional", [False, True])
def test_slots_hold_final_or_provisional_states(provisional):
    # k_top larger than the memory: every slot is used, so s_t tells which states the slots hold
    args = layer_args(5, 1, 3, 4)
    y, _, _, att = sab(args, k_top=10, k_att=1, provisional=provisional, need_attention=True)
    assert att.slot_steps.tolist() == [-1, 0, 1, 2, 3, 4]
    assert att.indices[4, 0].tolist() == [0, 1, 2, 3, 4] + [-1] * 5
    # rebuild s_4 from the recorded weights and the states the slots must hold
    y_prov = _provisional_states(args, provisional)
    slots = torch.cat([args["h0"], (y_prov if provisional else y)[:4, 0]])
    s4 = (att.weights[4, 0, :5, None] * slots).sum(0)
    torch.testing.assert_close(y[4, 0], y_prov[4, 0] + s4, rtol=1e-12, atol=1e-14)


def _provisional_states(args, provisional):
    """ĥ_t, recovered by rerunning each step's LSTM cell from the previous final state."""
    y, _, _, _ = sab(args, k_top=10, k_att=1, provisional=provisional)
    h_prev, c = args["h0"], args["c0"]
    out = []
    for t in range(y.shape[0]):
        c, h_hat = R.lstm_cell(args["x"][t], h_prev, c, args["w_ih"], args["w_hh"], args["b_ih"], args["b_hh"])
        out.append(h_hat)
        h_prev = y[t]
    return torch.stack(out)


def test_provisional_state_matches_final_state_stream_difference():
    args = layer_args(5, 1, 3, 4)
    y_final, _, _, _ = sab(args, k_top=10, k_att=1, provisional=False)
    y_prov, _, _, _ = sab(args, k_top=10, k_att=1, provisional=True)
    assert torch.allclose(y_final[0], y_prov[0])                 # same memory [h0] at t = 0
    assert not torch.allclose(y_final[3], y_prov[3])              # the slots differ later


def test_k_att_controls_when_slots_are_written():
    args = layer_args(7, 1, 2, 3)
    *_, att = sab(args, k_att=3, k_top=9, need_attention=True)
    assert att.slot_steps.tolist() == [-1, 2, 5]
    counts = (att.indices[:, 0] >= 0).sum(1).tolist()           # all slots selected (k_top > |M|)
    assert counts == [1, 1, 1, 2, 2, 2, 3]


def test_linear_scorer_query_terms_get_no_gradient_once_memory_exceeds_k_top():
    # the query term is added to every score, so it cancels in the sparsifier when |M| > k_top
    a = torch.randn(3, 12, dtype=f64)
    q = torch.zeros(3, 1, dtype=f64, requires_grad=True)
    w = R.sparse_weights(a + q, k_top=2)
    (gq,) = torch.autograd.grad((w * torch.randn(3, 12, dtype=f64)).sum(), q)
    assert gq.abs().max() < 1e-12
    # and in the layer: the last step (|M| = 12 > 2) gives att_b no gradient
    args = layer_args(12, 3, 2, 4, scorer="linear")
    y = sab(args, tr.Schedule(torch.ones(12, dtype=torch.bool), torch.ones(12, dtype=f64)),
            scorer="linear", k_top=2, k_att=1, provisional=True)[0]
    (g_b,) = torch.autograd.grad(y[-1].sum(), [args["att_vb"]])
    assert g_b.abs().max() < 1e-12


# ---- backward paths (section 2) ----------------------------------------------------------------

def _grad_of_last_output_wrt_inputs(fn):
    args = layer_args(8, 1, 2, 3)
    y = fn(args)
    (gx,) = torch.autograd.grad(y[-1].sum(), args["x"])
    return gx.abs().sum(dim=(1, 2))                             # per step


def test_truncation_cuts_exactly_at_segment_starts_for_the_lstm():
    sched = tr.fixed(8, 3)                                      # segments [0,3) [3,6) [6,8)
    g = _grad_of_last_output_wrt_inputs(
        lambda a: R.lstm_layer(**{k: a[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")},
                               **schedule_args(sched, f64))[0])
    assert (g[:6] == 0).all() and (g[6:] > 0).all()


def test_memory_slots_keep_their_gradient_path_across_cuts():
    sched = tr.fixed(8, 3)
    g = _grad_of_last_output_wrt_inputs(lambda a: sab(a, sched, k_top=10, k_att=1)[0])
    # y[7] reads every earlier slot; each slot t carries gradient back to its segment's start
    assert (g > 0).all()


def test_only_selected_and_threshold_slots_get_gradient():
    # provisional slots with every recurrent edge cut: slot j = ĥ_{j-1} depends on x[j-1] alone, so the
    # steps y[9] reaches are itself, its selected slot and its threshold slot
    args = layer_args(10, 1, 2, 3)
    cut_all = tr.Schedule(torch.ones(10, dtype=torch.bool), torch.ones(10, dtype=f64))
    y, _, _, att = sab(args, cut_all, k_top=1, k_att=1, provisional=True, need_attention=True)
    (gx,) = torch.autograd.grad(y[9].sum(), args["x"])
    touched = {t for t in range(10) if gx[t].abs().sum() > 0}
    chosen = att.indices[9, 0, 0].item()
    assert 9 in touched and len(touched) <= 3
    assert chosen == 0 or chosen - 1 in touched


def test_schedule_scale_multiplies_the_recurrent_gradient():
    args = layer_args(4, 2, 3, 3)
    keys = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")
    largs = {k: args[k] for k in keys}
    base = tr.full(4)
    scaled = tr.Schedule(torch.zeros(4, dtype=torch.bool), torch.tensor([1.0, 1.0, 1.0, 2.5], dtype=f64))
    (g1,) = torch.autograd.grad(R.lstm_layer(**largs, **schedule_args(base, f64))[0][3].sum(), args["x"])
    (g2,) = torch.autograd.grad(R.lstm_layer(**largs, **schedule_args(scaled, f64))[0][3].sum(), args["x"])
    # Exact: the same shapes and ops on both sides; scale[3] only acts on the edge into step 2, not on x[3].
    torch.testing.assert_close(g2[3], g1[3], rtol=0, atol=0)
    torch.testing.assert_close(g2[:3], 2.5 * g1[:3], rtol=1e-13, atol=0)


def test_scale_leaves_the_forward_bit_identical():
    args = layer_args(6, 2, 3, 4)
    sched = tr.artbp(6, 2.0, generator=torch.Generator().manual_seed(3))
    y1 = sab(args)[0]
    y2 = sab(args, sched)[0]
    assert torch.equal(y1, y2)          # exact by design: d + scale * (v - d) == v, same shapes and ops


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("provisional", [False, True])
def test_gradcheck_without_truncation(scorer, provisional):
    args = layer_args(6, 2, 2, 3, A=2 if scorer == "mlp" else None, scorer=scorer)
    names = list(args)
    sched = schedule_args(tr.full(6), f64)

    def fn(*tensors):
        y, h_n, c_n, _ = R.sab_layer(**dict(zip(names, tensors)), **sched, k_top=2, k_att=1,
                                     scorer=scorer, provisional=provisional)
        return y, h_n, c_n

    assert torch.autograd.gradcheck(fn, tuple(args.values()), eps=1e-6, atol=1e-6)


def test_reference_is_deterministic():
    args = layer_args(9, 3, 4, 5)
    y1 = sab(args, tr.fixed(9, 2), k_top=2)[0]
    y2 = sab(args, tr.fixed(9, 2), k_top=2)[0]
    assert torch.equal(y1, y2)          # the same call repeated (same shapes, threads): bit-identical
