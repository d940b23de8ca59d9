"""The CPU LSTM sequence op (fastrnn::lstm_forward / lstm_backward via fastrnn.ops.lstm.lstm_layer)
against the reference and torch.nn.LSTM: outputs and every gradient, under every schedule kind; plus
opcheck, input validation, NaN-poisoned allocations and determinism."""
import pytest
import torch

from fastrnn import _native
from fastrnn import reference as R
from fastrnn import truncation as tr
from fastrnn.ops import lstm as cpu_lstm

from helpers import TOL, layer_args, run_with_grads, schedule_args

DTYPES = [torch.float64, torch.float32]
# (T, B, I, H, bias): H=17 and 33 exercise the scalar tail after the vector lanes (16 floats / 8 doubles
# per AVX-512 vector), B=33 an uneven split of batch rows between threads, T=1 the single-step path.
CONFIGS = [(1, 1, 1, 1, True), (6, 3, 4, 17, True), (12, 4, 6, 32, False), (9, 33, 7, 16, True),
           (15, 5, 3, 33, True)]


def schedules(T):
    g = torch.Generator().manual_seed(T)
    return {
        "full": tr.full(T),
        "fixed": tr.fixed(T, 3),
        "artbp": tr.artbp(T, 2.0, generator=g),
        # a cut at t=0 (no gradient into h0, c0) and arbitrary scales elsewhere
        "custom": tr.Schedule(torch.arange(T) % 4 == 0, torch.rand(T, generator=g, dtype=torch.float64) + 0.5),
    }


def lstm_args(T, B, I, H, bias, dtype):
    return layer_args(T, B, I, H, bias=bias, dtype=dtype, sab=False)


def compare(args, sched, dtype):
    """cpu_lstm vs the reference on the same inputs: outputs (y, h_n, c_n) and all gradients."""
    out, grads = run_with_grads(cpu_lstm.lstm_layer, args, schedule_args(sched, dtype))
    ref_out, ref_grads = run_with_grads(R.lstm_layer, args, schedule_args(sched, dtype))
    for name, a, b in zip(("y", "h_n", "c_n"), out, ref_out):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL[dtype], msg=lambda m: f"d{name}: {m}")
    return out, grads


def test_native_library_loads():
    assert cpu_lstm.available(), _native.load_error()


def test_missing_native_library_is_reported_not_raised(tmp_path):
    # a private copy of fastrnn._native pointed at a library that does not exist
    import importlib.util
    spec = importlib.util.spec_from_file_location("native_copy", _native.__file__)
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    native.LIBRARY = tmp_path / "libfastrnn_cpu.so"
    assert native.load() is False and native.available() is False
    assert "scripts/build_native.sh" in native.load_error()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "T{}B{}I{}H{}{}".format(*c[:4], "" if c[4] else "-nobias"))
@pytest.mark.parametrize("kind", ["full", "fixed", "artbp", "custom"])
def test_matches_reference(cfg, dtype, kind):
    T, B, I, H, bias = cfg
    sched = schedules(T)[kind]
    _, grads = compare(lstm_args(T, B, I, H, bias, dtype), sched, dtype)
    if sched.cut[0]:
        # a cut at step 0 detaches h0 and c0: their gradient must be exactly zero, not merely small
        assert grads["h0"].abs().max() == 0 and grads["c0"].abs().max() == 0


@pytest.mark.parametrize("used", [0, 1, 2], ids=["y-only", "h_n-only", "c_n-only"])
def test_gradient_through_one_output(used):
    # autograd passes None for unused outputs (materialisation is off): each alone must still be exact
    args = lstm_args(6, 3, 4, 9, True, torch.float64)
    # scaled but uncut, so that every leaf (h0 too) stays in the reference's graph
    sched = dict(cut=torch.zeros(6, dtype=torch.bool), scale=torch.linspace(0.5, 1.5, 6, dtype=torch.float64))
    leaves = [v for v in args.values() if v is not None]
    ours = torch.autograd.grad(cpu_lstm.lstm_layer(**args, **sched)[used].sum(), leaves)
    ref = torch.autograd.grad(R.lstm_layer(**args, **sched)[used].sum(), leaves)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_schedule_changes_gradient():
    # guards against a kernel that ignores cut/scale: the reference itself must see a difference here
    args = lstm_args(10, 2, 3, 5, True, torch.float64)
    _, full = run_with_grads(cpu_lstm.lstm_layer, args, schedule_args(tr.full(10), torch.float64))
    _, cut = run_with_grads(cpu_lstm.lstm_layer, args, schedule_args(tr.fixed(10, 3), torch.float64))
    assert not torch.allclose(full["w_hh"], cut["w_hh"])
    assert not torch.allclose(full["h0"], cut["h0"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_lstm(dtype, bias):
    T, B, I, H = 20, 6, 5, 24
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(I, H, bias=bias, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, requires_grad=True)
    params = [p for p in (lstm.weight_ih_l0, lstm.weight_hh_l0)] + ([lstm.bias_ih_l0, lstm.bias_hh_l0] if bias else [])
    ours = [p.detach().clone().requires_grad_() for p in params]
    w = ours + ([] if bias else [None, None])
    sched = schedule_args(tr.full(T), dtype)

    y, (h_n, c_n) = lstm(x, (h0[None], c0[None]))
    y2, h_n2, c_n2 = cpu_lstm.lstm_layer(x, *w, h0, c0, **sched)
    for name, a, b in (("y", y2, y), ("h_n", h_n2, h_n[0]), ("c_n", c_n2, c_n[0])):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")

    g = [torch.randn_like(t) for t in (y, h_n[0], c_n[0])]
    expected = torch.autograd.grad((y * g[0]).sum() + (h_n[0] * g[1]).sum() + (c_n[0] * g[2]).sum(),
                                   [x, h0, c0, *params])
    actual = torch.autograd.grad((y2 * g[0]).sum() + (h_n2 * g[1]).sum() + (c_n2 * g[2]).sum(), [x, h0, c0, *ours])
    for i, (a, b) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"gradient {i}: {m}")


def test_bias_grads_do_not_share_storage():
    args = lstm_args(4, 2, 3, 5, True, torch.float64)
    y, _, _ = cpu_lstm.lstm_layer(**args, **schedule_args(tr.full(4), torch.float64))
    y.sum().backward()
    assert args["b_ih"].grad.data_ptr() != args["b_hh"].grad.data_ptr()
    torch.testing.assert_close(args["b_ih"].grad, args["b_hh"].grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outputs_fully_written_under_nan_poisoned_allocation(dtype):
    """With deterministic mode on, torch fills every fresh torch.empty allocation (the op's outputs and
    its internal buffers) with NaN: any element the kernels fail to write shows up as NaN."""
    T, B, I, H = 7, 5, 3, 19
    args = lstm_args(T, B, I, H, True, dtype)
    old = torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.empty(3, dtype=dtype).isnan().all()  # the poisoning is really active
        out, grads = compare(args, schedules(T)["custom"], dtype)
    finally:
        torch.use_deterministic_algorithms(old)
    for t in (*out, *grads.values()):
        assert torch.isfinite(t).all()


def test_deterministic():
    args = lstm_args(30, 9, 8, 40, True, torch.float32)
    sched = schedule_args(tr.artbp(30, 4.0, generator=torch.Generator().manual_seed(0)), torch.float32)
    out1, g1 = run_with_grads(cpu_lstm.lstm_layer, args, sched)
    out2, g2 = run_with_grads(cpu_lstm.lstm_layer, args, sched)
    for a, b in zip((*out1, *g1.values()), (*out2, *g2.values())):
        assert torch.equal(a, b)


# The backward folds the weight gradients in chunks of at most 64 steps per thread (fewer for wide blocks:
# 29 for B=33, H=33 in float64 on 2 threads; csrc/cpu/lstm_backward.cpp, chunk_steps). T = 197 = 3 * 64 + 5
# is prime: several chunks, the first one swept partial, and a multiple of no chunk length. float32 only on
# the small shape: over 197 * 33 rows the float32 sums of dW_ih cancel to beyond TOL on both sides.
@pytest.mark.parametrize("cfg", [(197, 3, 4, 8, True, torch.float64), (197, 3, 4, 8, True, torch.float32),
                                 (197, 33, 5, 33, False, torch.float64)],
                         ids=lambda c: "T{}B{}I{}H{}{}-{}".format(*c[:4], "" if c[4] else "-nobias", c[5]))
def test_several_chunks(cfg):
    T, B, I, H, bias, dtype = cfg
    args = lstm_args(T, B, I, H, bias, dtype)
    sched = tr.artbp(T, 8.0, generator=torch.Generator().manual_seed(0))
    _, grads = compare(args, sched, dtype)
    _, again = run_with_grads(cpu_lstm.lstm_layer, args, schedule_args(sched, dtype))
    for name in grads:
        assert torch.equal(grads[name], again[name]), name


def _op_args(T=5, B=3, I=4, H=6, bias=True, dtype=torch.float64, requires_grad=True):
    a = lstm_args(T, B, I, H, bias, dtype)
    if not requires_grad:
        a = {k: None if v is None else v.detach() for k, v in a.items()}
    s = schedule_args(tr.fixed(T, 2), dtype)
    return [a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], s["cut"], s["scale"]]


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_forward(bias):
    torch.library.opcheck(torch.ops.fastrnn.lstm_forward.default, _op_args(bias=bias))


def test_opcheck_backward():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale = _op_args(requires_grad=False)
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale)
    args = [torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, w_ih, w_hh, h0, c0, y, gates,
            cs, cut, scale]
    torch.library.opcheck(torch.ops.fastrnn.lstm_backward.default, args)


NAMES = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "cut", "scale"]


@pytest.mark.parametrize("change, message", [
    (lambda a: {"w_ih": a["w_ih"].float()}, "w_ih must have dtype"),
    (lambda a: {"h0": a["h0"][:, :-1].contiguous()}, "h0 must have shape"),
    (lambda a: {"c0": torch.zeros(6, 3, dtype=torch.float64).t()}, "c0 must be contiguous"),
    (lambda a: {"w_hh": a["w_hh"][:, :-1].contiguous()}, "w_hh must be"),
    (lambda a: {"x": a["x"][:0]}, "T >= 1"),
    (lambda a: {"x": a["x"][0]}, "x must be"),
    (lambda a: {"x": a["x"].int()}, "x must be float32 or float64"),
    (lambda a: {"cut": a["cut"].int()}, "cut must have dtype"),
    (lambda a: {"scale": a["scale"][:-1]}, "scale must have shape"),
    (lambda a: {"b_hh": None}, "b_ih and b_hh"),
    (lambda a: {"b_ih": a["b_ih"][:-1]}, "b_ih must have shape"),
], ids=["dtype", "shape", "contiguous", "w_hh-shape", "T0", "x-dim", "x-dtype", "cut-dtype", "scale-shape",
        "bias-pair", "bias-shape"])
def test_forward_rejects_bad_input(change, message):
    args = dict(zip(NAMES, _op_args(requires_grad=False)))
    args.update(change(args))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastrnn.lstm_forward(*[args[n] for n in NAMES])


def test_backward_rejects_bad_gradient_shape():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale = _op_args(requires_grad=False)
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale)
    with pytest.raises(RuntimeError, match="dy must have shape"):
        torch.ops.fastrnn.lstm_backward(y[:-1].contiguous(), h_n, c_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut,
                                        scale)
    with pytest.raises(RuntimeError, match="gates must have shape"):
        torch.ops.fastrnn.lstm_backward(y, h_n, c_n, x, w_ih, w_hh, h0, c0, y, cs, cs, cut, scale)
