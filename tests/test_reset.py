"""Per-row resets (issue #11; docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets"): `reset[t, b]`
restarts row b's (h, c), memory and step counter before step t. The property every test checks: a call with
resets equals running each row's pieces separately (the first from the given hx / state, the later ones
from zeros), outputs, (h_n, c_n), attention and every gradient.

Layer level: the per-row path of each backend whose sab_layer supports resets against the plain path run
piece by piece (the reference's per-row path is that, literally; a fast backend is held to it). Module
level: SABLSTM(reset=) against the same module run row by row and piece by piece."""
import pytest
import torch

import fastrnn
from fastrnn import backends as _backends
from fastrnn import reference
from fastrnn.ops.streaming import PAD_STEP, reset_plan
from helpers import (TOL, assert_bf16_close, backend_params, compare, layer_args, leaves, only, run_with_grads,
                     sab_model)

f64 = torch.float64


def _cpu_sab_layer(backend):
    """The backend's sab_layer for CPU tensors, or None for a backend that takes GPU tensors only (cuda; triton
    without TRITON_INTERPRET: tests/test_cuda.py runs those, importing this file's helpers)."""
    try:
        return _backends.layer_functions(backend, torch.device("cpu"))[1]
    except ValueError:
        return None


FAST_RESET_BACKENDS = [b for b in fastrnn.available_backends() if b != "reference"
                       and _cpu_sab_layer(b) is not None]
RESET_BACKENDS = ["reference", *backend_params(FAST_RESET_BACKENDS)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _sab_layer(backend):
    return _backends.layer_functions(backend, torch.device("cpu"))[1]


def _mask(T, B, where):
    reset = torch.zeros(T, B, dtype=torch.bool)
    for t, b in where:
        reset[t, b] = True
    return reset


def _tol(backend):
    """float64: 1e-12 relative (the cpu kernels sum in another order than the pieces); triton: TOL, as its
    other float64 tests (tl.dot tiles, and under the interpreter tanh as 2·sigmoid(2x) - 1)."""
    return TOL[f64] if backend == "triton" else dict(rtol=1e-12, atol=1e-14)


def _grads(loss, named):
    gs = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(named.items(), gs)}


def _weighted(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=f64).to(o.device)).sum() for o in outputs)


def _assert_close(a, b, tol, what):
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


# ---- layer level ----------------------------------------------------------------------------------

def _pieces_layer(args, sched, reset, *, memory, slot_offset, row_step0, step0, **opts):
    """The contract of a per-row call, computed from the plain path (reference.sab_layer without per-row
    arguments) row by row and piece by piece: (y, h_n, c_n, indices, weights, new_slots)."""
    T, B = args["x"].shape[:2]
    H = args["h0"].shape[1]
    S0 = 1 if memory is None else memory.shape[1]
    ys, hs, cs, idxs, ws, news = [], [], [], [], [], []
    for b in range(B):
        # a [T, B] schedule: the row's own column (docs/CONTRACT.md "Per-row truncation")
        row_cut, row_scale = ((sched["cut"][:, b], sched["scale"][:, b]) if sched["cut"].dim() == 2
                              else (sched["cut"], sched["scale"]))
        starts = [t for t in range(T) if reset[t, b]]
        bounds = sorted({0, *starts, T})
        table, appended, parts = S0, [], []
        h, c = args["h0"][b:b + 1], args["c0"][b:b + 1]
        for a, e in zip(bounds[:-1], bounds[1:]):
            if a in starts:
                h0 = c0 = args["h0"].new_zeros(1, H)
                mem, counter, base = None, 0, table
                appended.append(h0[0])
                table += 1
            else:
                h0, c0, counter = args["h0"][b:b + 1], args["c0"][b:b + 1], int(row_step0[b])
                off = int(slot_offset[b])
                mem, base = (None, 0) if memory is None else (memory[b:b + 1, off:], off)
            piece = {**args, "x": args["x"][a:e, b:b + 1], "h0": h0, "c0": c0}
            y, h, c, att, new = reference.sab_layer(**piece, cut=row_cut[a:e], scale=row_scale[a:e],
                                                    memory=mem, step0=counter, return_slots=True,
                                                    need_attention=True, **opts)
            parts.append((y, torch.where(att.indices >= 0, att.indices + base, att.indices), att.weights))
            appended.extend(new[0].unbind(0))
            table += new.shape[1]
        ys.append(torch.cat([p[0] for p in parts]))
        idxs.append(torch.cat([p[1] for p in parts]))
        ws.append(torch.cat([p[2] for p in parts]))
        hs.append(h)
        cs.append(c)
        news.append(appended)
    S1 = max(len(n) for n in news)
    new_slots = torch.stack([torch.stack(n + [args["h0"].new_zeros(H)] * (S1 - len(n))) for n in news])
    return (torch.cat(ys, 1), torch.cat(hs), torch.cat(cs), torch.cat(idxs, 1), torch.cat(ws, 1), new_slots)


LAYER_CASES = {
    # name: (T, B, resets, streaming, row_schedule: a [T, B] schedule, random per row)
    "mixed": (11, 4, [(0, 1), (4, 0), (5, 0), (9, 0), (3, 2), (10, 2)], False, False),
    "none": (8, 3, [], False, False),
    "stream": (9, 3, [(2, 0), (0, 2), (6, 2)], True, False),
    "mixed-row-schedule": (11, 4, [(0, 1), (4, 0), (5, 0), (9, 0), (3, 2), (10, 2)], False, True),
    "stream-row-schedule": (9, 3, [(2, 0), (0, 2), (6, 2)], True, True),
}


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("provisional", [True, False])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_reset_equals_pieces(backend, scorer, provisional, case):
    T, B, where, streaming, row_schedule = LAYER_CASES[case]
    I, H, k_att = 3, 4, 2
    torch.manual_seed(3)
    args = layer_args(T, B, I, H, A=5 if scorer == "mlp" else None, scorer=scorer)
    if row_schedule:                  # each row its own cuts and scales
        sched = dict(cut=torch.rand(T, B) < 0.3, scale=0.5 + torch.rand(T, B, dtype=f64))
    else:
        sched = dict(cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T, dtype=f64))
        sched["cut"][5] = True        # a schedule cut of its own, and a scale, inside some pieces
        sched["scale"][7] = 0.5
    reset = _mask(T, B, where)
    if streaming:                     # rows carry different slot counts and counters in
        S0 = 4
        memory = (torch.randn(B, S0, H, dtype=f64) * 0.5).requires_grad_()
        slot_offset = torch.tensor([1, 0, 3], dtype=torch.int64)
        row_step0 = torch.tensor([5, 7, 0], dtype=torch.int64)
        step0 = 9
    else:
        memory, slot_offset, row_step0, step0 = None, torch.zeros(B, dtype=torch.int64), torch.full(
            (B,), 0, dtype=torch.int64), 0
    opts = dict(k_top=2, k_att=k_att, scorer=scorer, provisional=provisional)
    inputs = {**leaves(args), **({"memory": memory} if memory is not None else {})}

    y, h_n, c_n, att, new = _sab_layer(backend)(
        **args, **sched, **opts, need_attention=True, memory=memory, step0=step0, return_slots=True, reset=reset,
        slot_offset=slot_offset if streaming else None, row_step0=row_step0 if streaming else None)
    got = _grads(_weighted((y, h_n, c_n, new)), inputs)
    ey, eh, ec, eidx, ew, enew = _pieces_layer(args, sched, reset, memory=memory, slot_offset=slot_offset,
                                               row_step0=row_step0, step0=step0, **opts)
    want = _grads(_weighted((ey, eh, ec, enew)), inputs)

    tol = _tol(backend)
    for name, a, b in (("y", y, ey), ("h_n", h_n, eh), ("c_n", c_n, ec), ("new_slots", new, enew),
                       ("weights", att.weights, ew)):
        _assert_close(a, b, tol, name)
    assert torch.equal(att.indices, eidx)
    plan = reset_plan(T, B, k_att, torch.device("cpu"), S0=1 if memory is None else memory.shape[1], step0=step0,
                      reset=reset, slot_offset=slot_offset if streaming else None,
                      row_step0=row_step0 if streaming else None)
    assert torch.equal(att.slot_steps[:, att.slot_steps.shape[1] - plan.new_steps.shape[1]:], plan.new_steps)
    assert new.shape[1] == int(plan.appended.max())
    for name in want:
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            continue                  # rounding noise on both sides (SPEC section 1.5)
        _assert_close(got[name], want[name], tol, f"d{name}")
    if not streaming:                 # a row reset at step 0 never reads its h0, c0
        for b in {b for t, b in where if t == 0}:
            assert torch.equal(got["h0"][b], torch.zeros(H, dtype=f64))
            assert torch.equal(got["c0"][b], torch.zeros(H, dtype=f64))
    else:                             # padding of the carried memory gets exactly zero
        for b, off in enumerate(slot_offset.tolist()):
            assert torch.equal(got["memory"][b, :off], torch.zeros(off, H, dtype=f64))


def test_reset_plan_bookkeeping():
    # row 0: reset at 3; row 1: resets at 0, 5, 6; row 2: none (k_att = 2, fresh call)
    reset = _mask(9, 3, [(3, 0), (0, 1), (5, 1), (6, 1)])
    plan = reset_plan(9, 3, 2, torch.device("cpu"), reset=reset)
    assert plan.counter.t().tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 0, 0, 1, 2],
                                         [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    assert plan.appended.tolist() == [5, 6, 4]
    assert plan.new_steps.tolist() == [[1, 2, 4, 6, 8, PAD_STEP], [-1, 1, 3, 4, 5, 7],
                                       [1, 3, 5, 7, PAD_STEP, PAD_STEP]]
    assert plan.base.tolist() == [2, 5, 0]
    assert plan.counter_end.tolist() == [6, 3, 9]


def test_layer_rows_without_reset_equal_plain():
    T, B, I, H = 8, 3, 2, 4
    args = layer_args(T, B, I, H)
    sched = dict(cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T, dtype=f64))
    opts = dict(k_top=2, k_att=2, scorer="mlp", provisional=True, need_attention=True, return_slots=True)
    plain = reference.sab_layer(**args, **sched, **opts)
    rows = reference.sab_layer(**args, **sched, **opts, row_step0=torch.zeros(B, dtype=torch.int64))
    for a, b in zip((*plain[:3], plain[4]), (*rows[:3], rows[4])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.equal(plain[3].indices, rows[3].indices)
    assert torch.equal(plain[3].slot_steps.expand(B, -1), rows[3].slot_steps)


def test_layer_per_row_arguments_checked():
    T, B, I, H = 4, 2, 2, 3
    args = layer_args(T, B, I, H)
    sched = dict(cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T, dtype=f64))
    opts = dict(k_top=2, k_att=2, scorer="mlp", provisional=True)
    bad = [dict(reset=torch.zeros(T, B)), dict(reset=torch.zeros(B, T, dtype=torch.bool)),
           dict(slot_offset=torch.ones(B, dtype=torch.int64)), dict(row_step0=torch.zeros(B)),
           dict(row_step0=torch.full((B,), -1, dtype=torch.int64)),
           dict(reset=torch.zeros(T, B, dtype=torch.bool), lengths=torch.full((B,), T, dtype=torch.int64))]
    for kw in bad:
        name = next(iter(kw))
        with pytest.raises(ValueError, match=name if name != "reset" or "lengths" not in kw else "lengths"):
            reference.sab_layer(**args, **sched, **opts, **kw)


# ---- module level ---------------------------------------------------------------------------------

I, H = 3, 4


def _model(backend, seed=0, **kw):
    return sab_model(I, H, backend, seed, **kw)


def _pieces_module(sab, x, reset, hx):
    """Each row of x [T, B, I] alone, split at its resets, through `sab` (the first piece from hx, the others
    from hx=None). Returns (y [T, B, H], h_n, c_n, per layer the selected slots' global steps [T, B, k_top]
    and weights)."""
    T, B = x.shape[:2]
    L = sab.num_layers
    ys, hs, cs, steps, weights = [], [], [], [], []
    for b in range(B):
        starts = [t for t in range(T) if reset[t, b]]
        bounds = sorted({0, *starts, T})
        parts = []
        for a, e in zip(bounds[:-1], bounds[1:]):
            kw = {} if a in starts else dict(hx=(hx[0][:, b:b + 1], hx[1][:, b:b + 1]))
            y, (h, c), att = sab(x[a:e, b:b + 1], return_attention=True, **kw)
            sel = [torch.where(r.indices >= 0, r.slot_steps[r.indices.clamp(min=0)] + a, r.indices)
                   for r in att]     # the pieces number their steps from 0: shift to the call's steps
            parts.append((y, sel, [r.weights for r in att]))
        ys.append(torch.cat([p[0] for p in parts]))
        hs.append(h)
        cs.append(c)
        steps.append([torch.cat([p[1][k] for p in parts]) for k in range(L)])
        weights.append([torch.cat([p[2][k] for p in parts]) for k in range(L)])
    return (torch.cat(ys, 1), torch.cat(hs, 1), torch.cat(cs, 1),
            [torch.cat([s[k] for s in steps], 1) for k in range(L)],
            [torch.cat([w[k] for w in weights], 1) for k in range(L)])


def _selected_steps(att):
    """The global step of every selected slot of a per-row record [T, B, k_top] (-1 padding stays -1; a
    piece's fresh slot is the step before the piece)."""
    idx = att.indices
    steps = att.slot_steps.unsqueeze(0).expand(idx.shape[0], -1, -1).gather(2, idx.clamp(min=0))
    return torch.where(idx >= 0, steps, idx)


MODULE_RESETS = [(0, 1), (3, 0), (4, 0), (9, 0), (6, 2), (11, 3), (12, 1)]   # row 4: none; T = 13, B = 5


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("slot_state", ["provisional", "final"])
@pytest.mark.parametrize("num_layers,batch_first,k_trunc", [(1, False, None), (1, False, 3), (2, True, 3)])
def test_module_reset_equals_pieces(backend, scorer, slot_state, num_layers, batch_first, k_trunc):
    """With k_trunc, each piece run alone is cut on its own steps (u > 0, u % k_trunc == 0): the call with
    resets cuts every row on the steps counted from its last reset."""
    T, B = 13, 5
    sab = _model(backend, attention=scorer, slot_state=slot_state, num_layers=num_layers, batch_first=batch_first,
                 k_trunc=k_trunc)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    hx = tuple((torch.randn(num_layers, B, H, dtype=f64) * 0.5).requires_grad_() for _ in range(2))
    reset = _mask(T, B, MODULE_RESETS)
    xin, rin = (x.transpose(0, 1), reset.t()) if batch_first else (x, reset)
    y, (h_n, c_n), att = sab(xin, hx, reset=rin, return_attention=True)
    if batch_first:
        y = y.transpose(0, 1)
    named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": x, "h0": hx[0], "c0": hx[1]}
    got = _grads(_weighted((y, h_n, c_n)), named)

    sab.batch_first = False           # the pieces run time-major
    ey, eh, ec, esteps, eweights = _pieces_module(sab, x, reset, hx)
    want = _grads(_weighted((ey, eh, ec)), named)

    tol = _tol(backend)
    for name, a, b in (("y", y, ey), ("h_n", h_n, eh), ("c_n", c_n, ec)):
        _assert_close(a, b, tol, name)
    for k in range(num_layers):
        assert att[k].slot_steps.shape[0] == B
        assert torch.equal(_selected_steps(att[k]), esteps[k]), f"layer {k}: selected slots"
        _assert_close(att[k].weights, eweights[k], tol, f"layer {k}: weights")
    for name in want:
        if scorer == "linear" and (name.startswith("datt_wh") or name.startswith("datt_b")):
            continue                  # rounding noise on both sides (SPEC section 1.5)
        _assert_close(got[name], want[name], tol, name)
    for b in (1,):                    # reset at t = 0: hx of that row is never read
        assert torch.equal(got["h0"][:, b], torch.zeros(num_layers, H, dtype=f64))
        assert torch.equal(got["c0"][:, b], torch.zeros(num_layers, H, dtype=f64))


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("slot_state", ["provisional", "final"])
@pytest.mark.parametrize("k_trunc", [None, 3])
def test_streaming_chunks_across_resets_equal_one_shot(backend, scorer, slot_state, k_trunc):
    """k_trunc: a per-row state carries each row's step counter (row_steps), so the chunks cut every row where
    the one-shot call does (and that, test_module_reset_equals_pieces, where its pieces run alone do)."""
    T, B = 13, 5
    chunks = [(0, 5), (5, 6), (6, 13)]     # resets at a chunk's start, inside chunks, at t = 0
    sab = _model(backend, attention=scorer, slot_state=slot_state, num_layers=2, k_trunc=k_trunc)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    reset = _mask(T, B, MODULE_RESETS + [(4, 2)])
    y, (h_n, c_n), att = sab(x, reset=reset, return_attention=True)
    named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": x}
    want = _grads(_weighted((y, h_n, c_n)), named)

    state, ys, atts = None, [], []
    for i, (a, e) in enumerate(chunks):
        kw = dict(state=state) if state is not None else {}
        # the middle chunk has no reset of its own: a per-row state continues without reset=
        rkw = {} if i == 1 else dict(reset=reset[a:e])
        yc, (hc, cc), attc, state = sab(x[a:e], return_state=True, return_attention=True, **kw, **rkw)
        assert state.per_row and state.row_steps.shape == (B,)
        ys.append(yc)
        atts.append(attc)
    assert not bool(reset[5].any())
    yc = torch.cat(ys)
    got = _grads(_weighted((yc, hc, cc)), named)
    tol = _tol(backend)
    for name, a, b in (("y", yc, y), ("h_n", hc, h_n), ("c_n", cc, c_n)):
        _assert_close(a, b, tol, name)
    for k in range(2):
        sel = torch.cat([_selected_steps(attc[k]) for attc in atts])
        assert torch.equal(sel, _selected_steps(att[k])), f"layer {k}: selected slots"
    for name in want:
        if scorer == "linear" and (name.startswith("datt_wh") or name.startswith("datt_b")):
            continue
        _assert_close(got[name], want[name], tol, name)
    # the state's rows hold their current piece only: row 1 (reset at 12) holds its fresh slot and nothing else
    assert state.slot_steps[1].tolist()[-1] == 11 and (state.slot_steps[1] >= -1).sum() == 1
    assert state.row_steps.tolist() == [4, 1, 7, 2, 13]


def test_reset_chunk_boundary_needs_no_state_change():
    """Calls without reset= on a per-row state, and a reset exactly at a chunk's first step."""
    T, B = 8, 2
    sab = _model("reference")
    x = torch.randn(T, B, I, dtype=f64)
    reset = _mask(T, B, [(4, 0)])
    y, _ = sab(x, reset=reset)
    y1, _, st = sab(x[:4], return_state=True)
    assert not st.per_row
    y2, _, st = sab(x[4:], state=st, reset=reset[4:], return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2]), y, rtol=1e-12, atol=1e-14)
    assert st.per_row and st.row_steps.tolist() == [4, 8]


def test_unbatched_reset_and_state_round_trip(tmp_path):
    T = 9
    sab = _model("reference", max_slots=3)
    x = torch.randn(T, I, dtype=f64)
    reset = torch.zeros(T, dtype=torch.bool)
    reset[5] = True
    y, (h, c), att = sab(x, reset=reset, return_attention=True)
    ey, (eh, ec) = sab(x[5:])
    torch.testing.assert_close(y[5:], ey, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(h, eh, rtol=1e-12, atol=1e-14)
    assert att[0].indices.shape == (T, 2) and att[0].slot_steps.dim() == 1
    y1, _, st = sab(x[:7], reset=reset[:7], return_state=True)
    assert st.row_steps.shape == () and st.slot_steps.tolist() == [4, 6] and st.layers[0].memory.shape == (2, H)
    path = tmp_path / "state.pt"
    torch.save(st.detach(), path)
    back = torch.load(path, weights_only=True)
    assert torch.equal(back.row_steps, st.row_steps)
    y2, _ = sab(x[7:], state=back)
    torch.testing.assert_close(torch.cat([y1, y2]), y, rtol=1e-12, atol=1e-14)


def test_max_slots_per_row():
    T, B = 12, 3
    sab = _model("reference", k_att=1, max_slots=4)
    x = torch.randn(T, B, I, dtype=f64)
    reset = _mask(T, B, [(9, 0), (10, 2)])
    _, _, st = sab(x, reset=reset, return_state=True)
    # row 0: fresh slot (step 8) and the slots of steps 9..11, row 1: the newest 4, row 2: step 9, 10, 11
    assert st.slot_steps.tolist() == [[8, 9, 10, 11], [8, 9, 10, 11], [PAD_STEP, 9, 10, 11]]
    assert torch.equal(st.layers[0].memory[2, 0], torch.zeros(H, dtype=f64))
    assert st.row_steps.tolist() == [3, 12, 2]


def test_reset_argument_errors():
    sab = _model("reference", batch_first=True)
    x = torch.randn(2, 5, I, dtype=f64)        # [B, T, I]
    with pytest.raises(TypeError, match="reset"):
        sab(x, reset=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="reset"):
        sab(x, reset=[[False] * 5] * 2)
    with pytest.raises(ValueError, match=r"reset must have shape \[B, T\]"):
        sab(x, reset=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset is on meta"):
        sab(x, reset=torch.zeros(2, 5, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="reset cannot be combined with lengths"):
        sab(x, reset=torch.zeros(2, 5, dtype=torch.bool), lengths=[5, 3])
    with pytest.raises(ValueError, match=r"\[T\] \(unbatched"):
        sab(x[0], reset=torch.zeros(2, 5, dtype=torch.bool))


# ---- cpu: the ops ---------------------------------------------------------------------------------

def _op_inputs(scorer, requires_grad, streaming):
    from test_sab import op_inputs
    B, T = 3, 6
    reset = _mask(T, B, [(0, 1), (2, 0), (3, 0), (5, 2)])
    if streaming:
        return op_inputs(scorer, requires_grad, T=T, B=B, S0=3, step0=3, reset=reset,
                         slot_offset=torch.tensor([0, 2, 1]), row_step0=torch.tensor([3, 0, 8]))
    return op_inputs(scorer, requires_grad, T=T, B=B, reset=reset)


@pytest.mark.cpu
@pytest.mark.skipif("cpu" not in fastrnn.available_backends(), reason="cpu backend unavailable")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("streaming", [False, True])
def test_opcheck_with_resets(scorer, streaming):
    from test_sab import backward_inputs
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, _op_inputs(scorer, True, streaming))
    fwd = _op_inputs(scorer, False, streaming)
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.randn_like(t) for t in out[:3]], torch.randn_like(out[11]))
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, tuple(args))


# sab_forward's arguments: lengths 12, memory 13, step0 14, reset 15, slot_offset 16, row_step0 17
OP_ERRORS = [
    (15, lambda a: a[15].to(torch.int64), "reset must have dtype Bool"),
    (15, lambda a: a[15][:, :2].contiguous(), r"reset must have shape \[6, 3\]"),
    (15, lambda a: a[15].t().contiguous().t(), "reset must be contiguous"),
    (16, lambda a: torch.tensor([0, 3, 1]), r"slot_offset\[1\] = 3 must lie in \[0, S0\)"),
    (16, lambda a: torch.tensor([0, 1], dtype=torch.int64), r"slot_offset must have shape \[3\]"),
    (17, lambda a: torch.tensor([0, -2, 1]), r"row_step0\[1\] = -2 must be >= 0"),
    (17, lambda a: torch.tensor([0, 1, 1], dtype=torch.int32), "row_step0 must have dtype Long"),
    (12, lambda a: torch.tensor([6, 6, 6]), "lengths cannot be combined"),
]


@pytest.mark.cpu
@pytest.mark.skipif("cpu" not in fastrnn.available_backends(), reason="cpu backend unavailable")
@pytest.mark.parametrize("i,make,text", OP_ERRORS, ids=[c[2] for c in OP_ERRORS])
def test_op_checks_per_row_arguments(i, make, text):
    args = list(_op_inputs("mlp", False, True))
    if i == 12:
        args[13] = None                   # lengths with memory has its own message
        args[16] = None
    args[i] = make(args)
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_forward: {text}"):
        torch.ops.fastrnn.sab_forward(*args)


@pytest.mark.parametrize("backend", backend_params(FAST_RESET_BACKENDS))
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("slot_state", ["provisional", "final"])
def test_reset_reads_no_unwritten_memory(poison, backend, scorer, slot_state):
    """Every buffer the cpu ops (or the triton layer) allocate starts as NaN (the poison fixture): a reset path
    that read an entry it never wrote (a padding slot, a fresh slot's key, a put-aside row) would show up as
    NaN."""
    T, B = 13, 5
    sab = _model(backend, attention=scorer, slot_state=slot_state, num_layers=2)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    reset = _mask(T, B, MODULE_RESETS)
    y1, _, state = sab(x[:6], reset=reset[:6], return_state=True)
    y2, (h, c) = sab(x[6:], state=state, reset=reset[6:])
    loss = _weighted((y1, y2, h, c))
    grads = torch.autograd.grad(loss, [x, *sab.parameters()])
    assert all(bool(torch.isfinite(t).all()) for t in (y1, y2, h, c, *grads))


@pytest.mark.parametrize("backend", backend_params(FAST_RESET_BACKENDS))
def test_second_order_with_resets_equals_reference(backend):
    """create_graph=True recomputes through the reference with the same per-row arguments (ops/glue.py)."""
    T, B = 9, 3
    reset = _mask(T, B, [(0, 1), (4, 0), (6, 2)])
    out = {}
    for name in ("reference", backend):
        sab = _model(name, num_layers=2)
        x = torch.randn(T, B, I, dtype=f64, generator=torch.Generator().manual_seed(5), requires_grad=True)
        y, (h, c) = sab(x, reset=reset)
        params = list(sab.parameters())
        g = torch.autograd.grad(_weighted((y, h, c)), [x, *params], create_graph=True)
        penalty = sum((t * t).sum() for t in g)
        out[name] = torch.autograd.grad(penalty, [x, *params])
    for a, b in zip(out[backend], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.cpu
@pytest.mark.skipif("cpu" not in fastrnn.available_backends(), reason="cpu backend unavailable")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_cpu_random_resets_two_threads_several_chunks(scorer):
    """Random resets over T = 197 steps (several backward chunks, csrc/cpu/sab_backward.cpp) and B = 7 rows
    split over two threads' row blocks: the cpu layer equals the reference (its pieces)."""
    T, B = 197, 7
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(T, B, I, dtype=f64, generator=g)
        reset = torch.rand(T, B, generator=g) < 0.05
        res = {}
        for backend in ("reference", "cpu"):
            sab = _model(backend, attention=scorer, k_top=3, k_att=3)
            xx = x.clone().requires_grad_()
            y, (h, c), att = sab(xx, reset=reset, return_attention=True)
            named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": xx}
            res[backend] = (y, h, c, att[0], _grads(_weighted((y, h, c)), named))
    finally:
        torch.set_num_threads(threads)
    (y, h, c, att, got), (ey, eh, ec, eatt, want) = res["cpu"], res["reference"]
    for name, a, b in (("y", y, ey), ("h_n", h, eh), ("c_n", c, ec)):
        _assert_close(a, b, _tol("cpu"), name)
    assert torch.equal(att.indices, eatt.indices) and torch.equal(att.slot_steps, eatt.slot_steps)
    for name in want:
        if scorer == "linear" and (name.startswith("datt_wh") or name.startswith("datt_b")):
            continue
        _assert_close(got[name], want[name], dict(rtol=1e-11, atol=1e-13), name)


def test_schedule_with_resets_is_one_shared_schedule():
    """A schedule= passed with reset= replaces k_trunc and reaches the layers as it is: one [T] schedule on
    the call's steps for every row alike (not re-counted from each row's reset)."""
    T, B = 13, 5
    reset = _mask(T, B, MODULE_RESETS)
    sched = fastrnn.truncation.fixed(T, 4)
    x = torch.randn(T, B, I, dtype=f64, generator=torch.Generator().manual_seed(7))
    sab = _model("reference", k_trunc=3)
    y, (h, c) = sab(x, reset=reset, schedule=sched)
    params = [getattr(sab, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "att_wh",
                                                 "att_wm", "att_v")]
    zeros = torch.zeros(B, H, dtype=f64)
    ey, eh, ec, _ = reference.sab_layer(x, *params, zeros, zeros, sched.cut, sched.scale.double(), k_top=2,
                                        k_att=2, scorer="mlp", provisional=True, reset=reset)
    want = torch.autograd.grad(_weighted((ey, eh, ec)), params)
    got = torch.autograd.grad(_weighted((y, h[0], c[0])), params)
    names = ("dw_ih", "dw_hh", "db_ih", "db_hh", "datt_wh", "datt_wm", "datt_v")
    for name, a, b in (("y", y, ey), ("h_n", h[0], eh), ("c_n", c[0], ec), *zip(names, got, want)):
        _assert_close(a, b, dict(rtol=1e-12, atol=1e-14), name)


@pytest.mark.parametrize("backend", backend_params(FAST_RESET_BACKENDS))
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_reset_k_trunc_float32_matches_reference(backend, scorer):
    """float32, resets with k_trunc over two chunks (the second continues a per-row state): the backend's
    module equals the reference's to TOL, outputs and every gradient."""
    T, B, f32 = 13, 5, torch.float32
    reset = _mask(T, B, MODULE_RESETS)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(6))
    res = {}
    for name in ("reference", backend):
        sab = _model(name, attention=scorer, num_layers=2, k_trunc=3, dtype=f32)
        xx = x.clone().requires_grad_()
        y1, _, state = sab(xx[:6], reset=reset[:6], return_state=True)
        y2, (h, c) = sab(xx[6:], state=state, reset=reset[6:])
        named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": xx}
        res[name] = ((y1, y2, h, c), _grads(_weighted((y1, y2, h, c)), named))
    (out, got), (eout, want) = res[backend], res["reference"]
    for name, a, b in zip(("y1", "y2", "h_n", "c_n"), out, eout):
        _assert_close(a, b, TOL[f32], name)
    for name in want:
        if scorer == "linear" and (name.startswith("datt_wh") or name.startswith("datt_b")):
            continue
        _assert_close(got[name], want[name], TOL[f32], name)


# ---- triton: float32, bfloat16 ------------------------------------------------------------------------

def _streaming_reset_args(dtype, scorer="mlp"):
    """A per-row streaming layer call (resets at t = 0 and inside, left-padded memory, per-row counters) in
    `dtype`: (args with memory as a leaf, the schedule, the per-row keywords)."""
    T, B, H = 7, 3, 16
    torch.manual_seed(4)
    args = layer_args(T, B, 3, H, scorer=scorer)
    args["memory"] = (torch.randn(B, 3, H, dtype=f64) * 0.5).requires_grad_()
    args = {k: v.detach().to(dtype).requires_grad_() for k, v in args.items()}
    sched = dict(cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T, dtype=dtype))
    sched["cut"][4] = True
    rows = dict(reset=_mask(T, B, [(0, 1), (2, 0), (3, 2), (5, 0)]), slot_offset=torch.tensor([2, 0, 1]),
                row_step0=torch.tensor([1, 4, 0]), step0=6)
    return args, sched, rows


@only("triton")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_triton_reset_float32_matches_reference(scorer):
    args, sched, rows = _streaming_reset_args(torch.float32, scorer)
    kw = dict(k_top=2, k_att=2, scorer=scorer, provisional=scorer == "mlp", need_attention=True, **rows)
    ours = run_with_grads(_sab_layer("triton"), args, sched, **kw)
    ref = run_with_grads(reference.sab_layer, args, sched, **kw)
    compare(ours, ref, torch.float32, scorer)


@only("triton")
def test_triton_reset_bfloat16():
    """bfloat16 storage with resets: close to the float32 reference on the same rounded inputs (BF16_TOL)."""
    a16, sched16, rows = _streaming_reset_args(torch.bfloat16)
    a32 = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    sched32 = dict(cut=sched16["cut"], scale=sched16["scale"].float())
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True, **rows)
    out, g = run_with_grads(_sab_layer("triton"), a16, sched16, **kw)
    out_ref, g_ref = run_with_grads(reference.sab_layer, a32, sched32, **kw)
    assert_bf16_close(out, g, out_ref, g_ref)


@only("triton")
def test_triton_reset_second_order_layer_with_memory():
    """create_graph=True through a per-row streaming layer call (memory, slot_offset, row_step0, resets):
    the triton layer's differentiable backward passes the per-row arguments on to the reference."""
    args, sched, rows = _streaming_reset_args(f64)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=False, return_slots=True, **rows)
    out = {}
    for name, fn in (("reference", reference.sab_layer), ("triton", _sab_layer("triton"))):
        y, h, c, _, new = fn(**args, **sched, **kw)
        named = leaves(args)
        g = torch.autograd.grad(_weighted((y, h, c, new)), list(named.values()), create_graph=True)
        penalty = sum((t * t).sum() for t in g)
        out[name] = torch.autograd.grad(penalty, list(named.values()))
    for a, b in zip(out["triton"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@only("triton")
@pytest.mark.parametrize("scorer,slot_state", [("mlp", "final"), ("linear", "provisional")])
def test_triton_random_resets_equal_reference(scorer, slot_state):
    """Random resets (several per row, some at consecutive steps) over T = 31 steps, k_att = 3: the triton
    module equals the reference (its pieces), record included."""
    T, B = 31, 5
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, dtype=f64, generator=g)
    reset = torch.rand(T, B, generator=g) < 0.12
    res = {}
    for backend in ("reference", "triton"):
        sab = _model(backend, attention=scorer, slot_state=slot_state, k_top=3, k_att=3)
        xx = x.clone().requires_grad_()
        y, (h, c), att = sab(xx, reset=reset, return_attention=True)
        named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": xx}
        res[backend] = (y, h, c, att[0], _grads(_weighted((y, h, c)), named))
    (y, h, c, att, got), (ey, eh, ec, eatt, want) = res["triton"], res["reference"]
    for name, a, b in (("y", y, ey), ("h_n", h, eh), ("c_n", c, ec)):
        _assert_close(a, b, _tol("triton"), name)
    assert torch.equal(att.indices, eatt.indices) and torch.equal(att.slot_steps, eatt.slot_steps)
    _assert_close(att.weights, eatt.weights, _tol("triton"), "weights")
    for name in want:
        if scorer == "linear" and (name.startswith("datt_wh") or name.startswith("datt_b")):
            continue
        _assert_close(got[name], want[name], _tol("triton"), name)


def test_readme_reset_example_runs():
    """The README's reset example runs as written."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "reset=reset" in b)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (64, 8, 32) and namespace["y_next"].shape == (16, 8, 32)


@pytest.mark.parametrize("backend", ["reference", *backend_params([b for b in _backends.available_backends() if b == "cpu"])])
def test_row_step_counters_stay_below_2_62(backend):
    """A per-row state's counters obey step0's bound on every backend (the cpu op once ran a counter of
    2**62 and overflowed int64 near 2**63): a state beyond it is refused, a call that would cross it too, in
    words that name the state's row_steps (the module's check), or row_step0 for a direct layer call."""
    model = fastrnn.SABLSTM(3, 4, k_top=2, backend=backend, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    _, _, state = model(x, reset=torch.zeros(5, 3, dtype=torch.bool), return_state=True)
    for value in (2 ** 62, 2 ** 63 - 3):
        with pytest.raises(ValueError, match=r"row_steps must be >= 0 and < 2\*\*62"):
            fastrnn.SABState(state.layers, step=state.step, row_steps=torch.tensor([value, 7, 5]))
    near = fastrnn.SABState(state.layers, step=state.step, row_steps=torch.tensor([2 ** 62 - 3, 7, 5]))
    # the module names what the user gave (the state's row_steps), not the layers' row_step0
    fits = r"state does not fit this call: its row_steps \(the per-row step counters\) must be >= 0 and < 2\*\*62 - T"
    with pytest.raises(ValueError, match=rf"{fits} \(T = 5.*got \[{2 ** 62 - 3}, 7, 5\]"):
        model(x, state=near)
    near.row_steps[0] = -1       # a counter changed in place, after SABState checked it
    with pytest.raises(ValueError, match=rf"{fits}.*got \[-1, 7, 5\]"):
        model(x, state=near)
    model(x[:2], state=fastrnn.SABState(state.layers, step=state.step, row_steps=torch.tensor([2 ** 62 - 3, 7, 5])))
    args = {k: v.detach() for k, v in layer_args(5, 3, 3, 4).items()}
    with pytest.raises(ValueError, match=r"row_step0 must be >= 0 and < 2\*\*62 - T"):   # the layers' own check
        _backends.layer_functions(backend, x.device)[1](
            **args, cut=torch.zeros(5, dtype=torch.bool), scale=torch.ones(5, dtype=torch.float64), k_top=2, k_att=2,
            scorer="mlp", provisional=True, row_step0=torch.tensor([2 ** 62 - 3, 7, 5]))
