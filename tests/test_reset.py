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
from helpers import TOL, backend_params, layer_args, leaves

f64 = torch.float64
RESET_BACKENDS = ["reference", *backend_params(
    [b for b in fastrnn.available_backends() if b != "reference"
     and getattr(_backends.layer_functions(b, torch.device("cpu"))[1], "supports_reset", False)])]
NO_RESET_BACKENDS = [b for b in fastrnn.available_backends()
                     if not getattr(_backends.layer_functions(b, torch.device("cpu"))[1], "supports_reset", False)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _sab_layer(backend):
    return _backends.layer_functions(backend, torch.device("cpu"))[1]


def _mask(T, B, where):
    reset = torch.zeros(T, B, dtype=torch.bool)
    for t, b in where:
        reset[t, b] = True
    return reset


def _tol(backend, exact=False):
    if backend == "reference":
        return dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-14)
    return TOL[f64]


def _grads(loss, named):
    gs = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(named.items(), gs)}


def _weighted(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=f64)).sum() for o in outputs)


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
            y, h, c, att, new = reference.sab_layer(**piece, cut=sched["cut"][a:e], scale=sched["scale"][a:e],
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
    # name: (T, B, resets, streaming)
    "mixed": (11, 4, [(0, 1), (4, 0), (5, 0), (9, 0), (3, 2), (10, 2)], False),
    "none": (8, 3, [], False),
    "stream": (9, 3, [(2, 0), (0, 2), (6, 2)], True),
}


@pytest.mark.parametrize("backend", RESET_BACKENDS)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("provisional", [True, False])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_reset_equals_pieces(backend, scorer, provisional, case):
    T, B, where, streaming = LAYER_CASES[case]
    I, H, k_att = 3, 4, 2
    torch.manual_seed(3)
    args = layer_args(T, B, I, H, A=5 if scorer == "mlp" else None, scorer=scorer)
    sched = dict(cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T, dtype=f64))
    sched["cut"][5] = True            # a schedule cut of its own, and a scale, inside some pieces
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
