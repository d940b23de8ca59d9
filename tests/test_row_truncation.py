"""Per-row truncation schedules at the SAB layer (docs/SPEC.md section 3 per row, docs/CONTRACT.md "Per-row
truncation"): `cut` (bool) and `scale` [T, B], row b truncated by column b. Every backend's sab_layer against
the reference (whose per-row rule is recurrent_input row by row): outputs and every gradient, float64 and
float32 (tests/helpers.py TOL), random cuts and scales != 1 per row, NaN-poisoned buffers; with a carried
memory and with lengths; [T, B] with equal columns is the [T] schedule exactly; the cpu ops' opcheck and the
argument errors of every backend (the LSTM layers keep [T] only)."""
import pytest
import torch

from fastrnn import reference, truncation

from helpers import (BACKENDS, assert_equal_results, backend_params, compare, layer_args, layer_fn, only,
                     run_with_grads)
from test_sab import backward_inputs, op_inputs

F64, F32 = torch.float64, torch.float32

pytestmark = pytest.mark.usefixtures("one_thread")


def row_schedule(T, B, dtype, seed=0):
    """A random [T, B] schedule: about a third of the (step, row) pairs cut, scales in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    cut = torch.rand(T, B, generator=g) < 0.3
    scale = (0.5 + torch.rand(T, B, generator=g, dtype=F64)).to(dtype)
    return cut, scale


# (T, B, scorer, provisional, streaming, lengths)
CASES = [
    pytest.param(9, 5, "mlp", True, False, False, id="mlp-provisional"),
    pytest.param(9, 5, "linear", False, False, False, id="linear-final"),
    pytest.param(8, 3, "mlp", False, True, False, id="mlp-stream"),
    pytest.param(8, 4, "mlp", True, False, True, id="mlp-lengths"),
]


def _run(backend, dtype, T, B, scorer, provisional, streaming, lengths):
    torch.manual_seed(1)
    args = layer_args(T, B, 3, 4, A=5 if scorer == "mlp" else None, scorer=scorer, dtype=dtype)
    kw = dict(k_top=2, k_att=2, scorer=scorer, provisional=provisional)
    if streaming:
        args["memory"] = (torch.randn(B, 3, 4, dtype=F64) * 0.5).to(dtype).requires_grad_()
        kw.update(step0=5)
    if lengths:
        kw.update(lengths=torch.tensor([T, 0, 3, T - 1][:B]))
    cut, scale = row_schedule(T, B, dtype)
    sched = dict(cut=cut, scale=scale)
    ours = run_with_grads(layer_fn(backend, "sab_layer"), args, sched, **kw)
    compare(ours, run_with_grads(reference.sab_layer, args, sched, **kw), dtype, scorer)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("T,B,scorer,provisional,streaming,lengths", CASES)
def test_row_schedule_matches_reference(backend, dtype, T, B, scorer, provisional, streaming, lengths, poison):
    _run(backend, dtype, T, B, scorer, provisional, streaming, lengths)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_equal_columns_are_the_shared_schedule(backend):
    """[T, B] whose columns are all one [T] schedule gives the [T] schedule's results, bit for bit."""
    T, B = 9, 4
    sched = truncation.artbp(T, 2.0, generator=torch.Generator().manual_seed(3))
    cut, scale = sched.cut, sched.scale
    results = []
    columns = (cut.unsqueeze(1).expand(T, B).contiguous(), scale.unsqueeze(1).expand(T, B).contiguous())
    for c, s in ((cut, scale), columns):
        torch.manual_seed(2)
        args = layer_args(T, B, 3, 4)
        fn = reference.sab_layer if backend == "reference" else layer_fn(backend, "sab_layer")
        results.append(run_with_grads(fn, args, dict(cut=c, scale=s), k_top=2, k_att=2, scorer="mlp",
                                      provisional=True, need_attention=True))
    assert_equal_results(*results)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_a_cut_row_passes_no_gradient_back(backend):
    """Row b cut at step t: nothing of steps >= t reaches step t-1 of that row along h and c, while the other
    rows' gradients cross (only the slots carry it back, and with k_top >= |M| there are none to carry here:
    the loss sits on step T-1's output and the memory holds only h0 until step 1 writes)."""
    T, B = 2, 3
    torch.manual_seed(0)
    args = layer_args(T, B, 3, 4)
    cut = torch.zeros(T, B, dtype=torch.bool)
    cut[1, 1] = True
    scale = torch.ones(T, B, dtype=F64)
    fn = reference.sab_layer if backend == "reference" else layer_fn(backend, "sab_layer")
    y, *_ = fn(**args, cut=cut, scale=scale, k_top=2, k_att=5, scorer="mlp", provisional=True)
    (dx,) = torch.autograd.grad(y[1].sum(), [args["x"]])
    assert torch.equal(dx[0, 1], torch.zeros_like(dx[0, 1]))
    assert dx[0, 0].abs().sum() > 0 and dx[0, 2].abs().sum() > 0


@pytest.mark.parametrize("backend", backend_params())
def test_second_order_row_schedule_equals_reference(backend):
    """create_graph=True recomputes through the reference with the [T, B] schedule (ops/glue.py)."""
    T, B = 6, 3
    cut, scale = row_schedule(T, B, F64, seed=4)
    out = {}
    for name in ("reference", backend):
        torch.manual_seed(5)
        args = layer_args(T, B, 3, 4)
        fn = reference.sab_layer if name == "reference" else layer_fn(name, "sab_layer")
        y, h, c, _ = fn(**args, cut=cut, scale=scale, k_top=2, k_att=2, scorer="mlp", provisional=False)
        named = list(args.values())
        g = torch.autograd.grad((y * y).sum() + (h * c).sum(), named, create_graph=True)
        out[name] = torch.autograd.grad(sum((t * t).sum() for t in g), named)
    for a, b in zip(out[backend], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@only("cpu")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_row_schedule(scorer):
    fwd = list(op_inputs(scorer, True, T=6, B=3))
    fwd[10], fwd[11] = row_schedule(6, 3, F64)
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, tuple(fwd))
    fwd = [t.detach() if isinstance(t, torch.Tensor) else t for t in fwd]
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.randn_like(t) for t in out[:3]])
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, tuple(args))


def _bad_schedule(cut=None, scale=None):
    T, B = 5, 2
    good_cut, good_scale = row_schedule(T, B, F64)
    return (good_cut if cut is None else cut(good_cut)), (good_scale if scale is None else scale(good_scale))


# (cut, scale) builders from a good [T, B] = [5, 2] pair, the cpu op's message, the Python layers' message
SCHEDULE_ERRORS = [
    (dict(scale=lambda s: s[:, 0].contiguous()), r"scale must be \[T, B\] like cut, got shape \[5\]",
     r"scale must have shape \[T, B\] = \[5, 2\], got \[5\]"),
    (dict(cut=lambda c: c.t().contiguous(), scale=lambda s: s.t().contiguous()), r"cut must have shape \[5, 2\]",
     r"cut must have shape \[T\] = \[5\] \(or \[T, B\] = \[5, 2\]"),
    (dict(cut=lambda c: c.to(torch.int64)), "cut must have dtype Bool", "cut must be a torch.bool tensor"),
    (dict(scale=lambda s: s.float()), "scale must have dtype Double", r"scale must be a torch.float64 tensor"),
    (dict(cut=lambda c: c.t().contiguous().t()), "cut must be contiguous", None),
    (dict(cut=lambda c: c.unsqueeze(2), scale=lambda s: s.unsqueeze(2)), r"cut must be \[T\] or \[T, B\]",
     r"cut must have shape \[T\] = \[5\]"),
]


@only("cpu")
@pytest.mark.parametrize("make,text,_", SCHEDULE_ERRORS, ids=[e[1] for e in SCHEDULE_ERRORS])
def test_cpu_ops_check_row_schedule(make, text, _):
    fwd = list(op_inputs("mlp", False, T=5, B=2))
    fwd[10], fwd[11] = _bad_schedule(**make)
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_forward: {text}"):
        torch.ops.fastrnn.sab_forward(*fwd)
    good = list(op_inputs("mlp", False, T=5, B=2))
    out = torch.ops.fastrnn.sab_forward(*good)
    args = backward_inputs(good, out, [torch.zeros_like(t) for t in out[:3]])
    args[12], args[13] = _bad_schedule(**make)
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_backward: {text}"):
        torch.ops.fastrnn.sab_backward(*args)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
@pytest.mark.parametrize("make,_,text", [e for e in SCHEDULE_ERRORS if e[2]], ids=[e[1] for e in SCHEDULE_ERRORS if e[2]])
def test_python_layers_check_row_schedule(backend, make, _, text):
    args = {k: v.detach() for k, v in layer_args(5, 2, 3, 4).items()}
    cut, scale = _bad_schedule(**make)
    fn = reference.sab_layer if backend == "reference" else layer_fn(backend, "sab_layer")
    with pytest.raises((ValueError, TypeError), match=text):
        fn(**args, cut=cut, scale=scale, k_top=2, k_att=2, scorer="mlp", provisional=True)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
@pytest.mark.parametrize("op", ["sab_layer", "lstm_layer"])
@pytest.mark.parametrize("which,value,text", [
    ("cut", None, r"cut must be a torch.bool tensor, got NoneType"),
    ("cut", [False] * 5, r"cut must be a torch.bool tensor, got list"),
    ("scale", None, r"scale must be a torch.float64 tensor \(the dtype of x\), got NoneType"),
    ("scale", 1.0, r"scale must be a torch.float64 tensor \(the dtype of x\), got float"),
])
def test_layers_name_a_missing_or_non_tensor_schedule(backend, op, which, value, text):
    """cut / scale None or not a tensor: every backend's layer names the argument and what it expects (the cpu
    and cuda ops' dispatcher said only "tensor does not have a device")."""
    args = {k: v.detach() for k, v in layer_args(5, 2, 3, 4, sab=op == "sab_layer").items()}
    sched = {"cut": torch.zeros(5, dtype=torch.bool), "scale": torch.ones(5, dtype=F64), which: value}
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True) if op == "sab_layer" else {}
    fn = getattr(reference, op) if backend == "reference" else layer_fn(backend, op)
    with pytest.raises(TypeError, match=text):
        fn(**args, **sched, **kw)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_lstm_layers_keep_a_shared_schedule(backend):
    """fastrnn.LSTM has no resets: its layers take the [T] schedule only."""
    args = {k: v.detach() for k, v in layer_args(5, 2, 3, 4, sab=False).items()}
    cut, scale = row_schedule(5, 2, F64)
    fn = reference.lstm_layer if backend == "reference" else layer_fn(backend, "lstm_layer")
    with pytest.raises((RuntimeError, ValueError), match=r"cut must (be|have shape) \[T\]"):
        fn(**args, cut=cut, scale=scale)
