"""Shared test helpers: the backends under test, random LSTM/SAB layer arguments, ONE comparison of a
layer against the reference (outputs, attention record, every gradient) and ONE set of tolerances."""
import pytest
import torch

import fastrnn
from fastrnn import backends as _backends
from fastrnn import reference
from fastrnn.truncation import Schedule

# float64: the backends must agree with the reference to rounding (1e-9 relative). float32: they sum in
# another order than the reference, and the cpu mlp scorer uses a rational tanh (a few ulp); errors grow
# with T as |h_t| grows (docs/SPEC.md section 1), so the float32 cases stay at T <= 24. The largest float32
# error measured is the cpu SAB layer's (3.5e-5 beyond 2e-4 relative, in small elements of d w_hh); the
# LSTM layers and the triton backend stay within 1e-5 beyond it.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=1e-4)}
# The linear scorer's query term is shared by all slots and cancels in the threshold (docs/SPEC.md section
# 1): the exact gradients of att_wh and att_b are zero, both sides hold rounding noise only, bounded
# relative to the largest d att_wm.
LINEAR_QUERY_NOISE = {torch.float64: 1e-12, torch.float32: 1e-4}
# bfloat16 storage with float32 accumulation, against the float32 reference on the same rounded inputs,
# relative to the largest element: coarse (this catches wrong casts and wrong buffers, not the last bit).
# SAB's gradient goes through (dw - Σ w dw) / Z: the reference itself, run in bfloat16, is ~5% off.
BF16_TOL = dict(output=3e-2, lstm_grad=3e-2, sab_grad=0.25)

# Every backend that runs here, except the reference (the oracle they are compared with). A backend that
# is not built or importable is left out of the parametrisation (tests/test_modules.py checks the list).
BACKENDS = [b for b in fastrnn.available_backends() if b != "reference"]
# Backends whose layers take bfloat16 tensors (the cpu ops take float32 and float64 only).
BF16_BACKENDS = [b for b in BACKENDS if b == "triton"]


def sab_model(input_size, hidden_size, backend, seed=0, **kw):
    """A float64 SABLSTM (k_top=2, k_att=2 unless `kw` says otherwise) initialised from `seed`."""
    torch.manual_seed(seed)
    return fastrnn.SABLSTM(input_size, hidden_size, **{"k_top": 2, "k_att": 2, "dtype": torch.float64,
                                                       "backend": backend, **kw})


def backend_params(names=None):
    """pytest.param per backend, marked with the backend's name (`pytest -m "not triton"` deselects it)."""
    return [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in (BACKENDS if names is None else names)]


def only(backend):
    """Decorator of a backend-specific test: marked with the backend's name; it runs where that backend is
    available, else it is reported as skipped with the reason (never silently)."""
    why = "" if backend in BACKENDS else _backends._why_unavailable(backend)
    skip = pytest.mark.skipif(backend not in BACKENDS, reason=f"{backend} backend unavailable: {why}")

    def mark(test):
        return getattr(pytest.mark, backend)(skip(test))
    return mark


def layer_fn(backend, op):
    """`lstm_layer` or `sab_layer` of `backend` for CPU tensors (triton: under TRITON_INTERPRET=1)."""
    lstm_layer, sab_layer = _backends.layer_functions(backend, torch.device("cpu"))
    return {"lstm_layer": lstm_layer, "sab_layer": sab_layer}[op]


def layer_args(T, B, I, H, *, A=None, scorer="mlp", bias=True, dtype=torch.float64, scale=0.5, sab=True):
    """Random leaf tensors (requires_grad) for one layer, as a dict of the contract's argument names."""
    def leaf(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    args = dict(x=leaf(T, B, I), w_ih=leaf(4 * H, I), w_hh=leaf(4 * H, H),
                b_ih=leaf(4 * H) if bias else None, b_hh=leaf(4 * H) if bias else None)
    if sab:
        if scorer == "mlp":
            A = A or H
            args.update(att_wh=leaf(A, H), att_wm=leaf(A, H), att_vb=leaf(A))
        else:
            args.update(att_wh=leaf(H), att_wm=leaf(H), att_vb=leaf(1))
    args.update(h0=leaf(B, H), c0=leaf(B, H))
    return args


def schedule_args(schedule: Schedule, dtype):
    return dict(cut=schedule.cut, scale=schedule.scale.to(dtype))


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges of a's and b's storages overlap (an output that is a view of another)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    a0, b0 = sa.data_ptr(), sb.data_ptr()
    return a0 < b0 + sb.nbytes() and b0 < a0 + sa.nbytes()


# Streaming calls whose new_slots [B, S1, H], gathered from the states [T, B, H], is contiguous as a plain
# strided view (one slot written, S1 == 1; or one row with k_att == 1): there a backend that returns the
# view instead of a copy makes new_slots alias y or hhat. (T, B, k_att) of fresh calls.
NEW_SLOTS_VIEW_CASES = [pytest.param(3, 2, 2, id="one-slot"), pytest.param(3, 1, 1, id="one-row-k_att-1")]


def leaves(args):
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}


def run_with_grads(fn, args, sched, seed=1, **kw):
    """Runs fn(**args, **sched, **kw); backprops a fixed random weighting of (y, h_n, c_n).
    Returns (outputs, {name: grad})."""
    out = fn(**args, **sched, **kw)
    y, h_n, c_n = out[0], out[1], out[2]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum()
               for o in (y, h_n, c_n))
    named = leaves(args)
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    grads = {k: (torch.zeros_like(v) if gr is None else gr) for (k, v), gr in zip(named.items(), grads)}
    return out, grads


def assert_close(actual, expected, dtype, what):
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def assert_bf16_close(out, grads, out_ref, grads_ref, outputs=("y", "h_n", "c_n")):
    """A bfloat16 run (outputs, {name: grad}) against the float32 reference's on the same rounded inputs:
    bfloat16 results, each within BF16_TOL of the reference relative to its largest element."""
    assert out[0].dtype == torch.bfloat16
    for name, a, b in zip(outputs, out, out_ref):
        assert (a.float() - b).abs().max() <= BF16_TOL["output"] * b.abs().max(), name
    for name in grads_ref:
        assert grads[name].dtype == torch.bfloat16, name
        assert (grads[name].float() - grads_ref[name]).abs().max() <= BF16_TOL["sab_grad"] * grads_ref[name].abs().max(), name


def assert_equal_results(first, second):
    """Two runs of run_with_grads bit-identical: outputs, attention record (if any) and every gradient."""
    (out1, g1), (out2, g2) = first, second
    for name, a, b in zip(("y", "h_n", "c_n"), out1[:3], out2[:3]):
        assert torch.equal(a, b), name
    if len(out1) > 3 and out1[3] is not None:
        for name in ("indices", "weights", "slot_steps"):
            assert torch.equal(getattr(out1[3], name), getattr(out2[3], name)), name
    assert g1.keys() == g2.keys()
    for name in g1:
        assert torch.equal(g1[name], g2[name]), f"d{name}"


def compare(ours, ref, dtype, scorer=None):
    """Results of run_with_grads for a backend (`ours`) and the reference (`ref`) on the same inputs:
    outputs (y, h_n, c_n), the attention record where both have one (indices and slot steps exact), and
    every gradient, to TOL[dtype]. scorer="linear": d att_wh and d att_vb are rounding noise on both sides."""
    (out, grads), (rout, rgrads) = ours, ref
    for name, a, b in zip(("y", "h_n", "c_n"), out[:3], rout[:3]):
        assert_close(a, b, dtype, name)
    if len(out) > 3 and out[3] is not None:
        att, ratt = out[3], rout[3]
        torch.testing.assert_close(att.indices, ratt.indices, rtol=0, atol=0)
        assert_close(att.weights, ratt.weights, dtype, "attention weights")
        torch.testing.assert_close(att.slot_steps, ratt.slot_steps, rtol=0, atol=0)
    assert grads.keys() == rgrads.keys()
    for name in grads:
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            bound = LINEAR_QUERY_NOISE[dtype] * rgrads["att_wm"].abs().max()
            assert grads[name].abs().max() <= bound, name
            assert rgrads[name].abs().max() <= bound, name
            continue
        assert_close(grads[name], rgrads[name], dtype, f"d{name}")


_REFERENCE = {}


def reference_case(key, make_args, op, sched, dtype, **kw):
    """(args, reference result) of one case: `make_args()` and the reference's run_with_grads on them,
    computed once per session under `key` and shared by every backend's test of that case (the
    reference is the slow side of a cpu comparison)."""
    if key not in _REFERENCE:
        args = make_args()
        _REFERENCE[key] = args, run_with_grads(getattr(reference, op), args, schedule_args(sched, dtype), **kw)
    return _REFERENCE[key]


def check_layer(backend, op, args, sched, dtype, ref=None, **kw):
    """`op` ("lstm_layer" or "sab_layer") of `backend` vs the reference's on `args` under the Schedule
    `sched`: compare(...) of both; returns (ours, ref) as run_with_grads gives them. `ref`: the reference's
    result on the same args if already computed (reference_case)."""
    s = schedule_args(sched, dtype)
    ours = run_with_grads(layer_fn(backend, op), args, s, **kw)
    if ref is None:
        ref = run_with_grads(getattr(reference, op), args, s, **kw)
    compare(ours, ref, dtype, scorer=kw.get("scorer"))
    return ours, ref
