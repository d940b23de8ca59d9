"""lstm_layer of every backend in fastrnn.available_backends() (the reference aside) against
fastrnn.reference.lstm_layer and torch.nn.LSTM: outputs and every gradient under every schedule kind,
float64 to 1e-9 relative and float32 to the stated tolerance (tests/helpers.py TOL), NaN-poisoned fresh
buffers, determinism. Then the backend-specific checks, marked per backend: the cpu op's library loading,
opcheck and argument errors; triton's bfloat16 and backend choice."""
import pytest
import torch

import fastrnn
from fastrnn import _native
from fastrnn import reference as R
from fastrnn import truncation as tr
from fastrnn.ops import lstm as cpu_lstm

from helpers import (BACKENDS, BF16_BACKENDS, BF16_TOL, TOL, assert_close, assert_equal_results, backend_params,
                     check_layer, layer_args, layer_fn, only, reference_case, run_with_grads, schedule_args)

DTYPES = [torch.float64, torch.float32]
KINDS = ["full", "fixed", "artbp", "custom"]
# (T, B, I, H, bias): H=17 and 33 exercise the scalar tail after the vector lanes (16 floats / 8 doubles
# per AVX-512 vector), B=33 an uneven split of batch rows between threads, T=1 the single-step path;
# H=20 spans two of the Triton kernels' 16-wide tiles when they are capped (on a GPU).
CONFIGS = [(1, 1, 1, 1, True), (6, 3, 4, 17, True), (12, 4, 6, 32, False), (9, 33, 7, 16, True),
           (15, 5, 3, 33, True), (7, 3, 5, 20, True), (7, 3, 5, 20, False)]


def cfg_id(c):
    return "T{}B{}I{}H{}{}".format(*c[:4], "" if c[4] else "-nobias")


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


def check(backend, args, sched, dtype):
    """lstm_layer of `backend` vs the reference: outputs (y, h_n, c_n) and all gradients."""
    return check_layer(backend, "lstm_layer", args, sched, dtype)[0]


# ---------------------------------------------------------------- every backend vs the reference

# Under TRITON_INTERPRET=1 a triton case costs ~0.05 s per step: triton runs every kind in both dtypes on
# T=1 and on H=20 with and without bias, and one kind per dtype, rotating, on the other shapes (the scalar
# tail H=17, H=32 without bias, B=33, H=33).
TRITON_ALL_KINDS = [c for c in CONFIGS if c[0] == 1 or c[3] == 20]


def runs_on(backend, cfg, dtype, kind):
    if backend != "triton" or cfg in TRITON_ALL_KINDS:
        return True
    return KINDS.index(kind) == (CONFIGS.index(cfg) + DTYPES.index(dtype)) % len(KINDS)


def _reference_cases():
    for backend in BACKENDS:
        for cfg in CONFIGS:
            for dtype in DTYPES:
                for kind in KINDS:
                    if runs_on(backend, cfg, dtype, kind):
                        yield pytest.param(backend, cfg, dtype, kind, marks=getattr(pytest.mark, backend),
                                           id=f"{backend}-{kind}-{cfg_id(cfg)}-{dtype}")


@pytest.mark.parametrize("backend,cfg,dtype,kind", list(_reference_cases()))
def test_matches_reference(backend, cfg, dtype, kind):
    T, B, I, H, bias = cfg
    sched = schedules(T)[kind]
    # the reference's result is computed once per case and shared by the backends
    args, ref = reference_case(("lstm", cfg, dtype, kind), lambda: lstm_args(T, B, I, H, bias, dtype), "lstm_layer",
                               sched, dtype)
    (_, grads), _ = check_layer(backend, "lstm_layer", args, sched, dtype, ref=ref)
    if sched.cut[0]:
        # a cut at step 0 detaches h0 and c0: their gradient must be exactly zero, not merely small
        assert grads["h0"].abs().max() == 0 and grads["c0"].abs().max() == 0


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("used", [0, 1, 2], ids=["y-only", "h_n-only", "c_n-only"])
def test_gradient_through_one_output(backend, used):
    # autograd passes None for unused outputs (materialisation is off): each alone must still be exact
    args = lstm_args(6, 3, 4, 9, True, torch.float64)
    # scaled but uncut, so that every leaf (h0 too) stays in the reference's graph
    sched = dict(cut=torch.zeros(6, dtype=torch.bool), scale=torch.linspace(0.5, 1.5, 6, dtype=torch.float64))
    leaves = [v for v in args.values() if v is not None]
    ours = torch.autograd.grad(layer_fn(backend, "lstm_layer")(**args, **sched)[used].sum(), leaves)
    ref = torch.autograd.grad(R.lstm_layer(**args, **sched)[used].sum(), leaves)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("backend", backend_params())
def test_schedule_changes_gradient(backend):
    # guards against a kernel that ignores cut/scale: the reference itself must see a difference here
    args = lstm_args(10, 2, 3, 5, True, torch.float64)
    fn = layer_fn(backend, "lstm_layer")
    _, full = run_with_grads(fn, args, schedule_args(tr.full(10), torch.float64))
    _, cut = run_with_grads(fn, args, schedule_args(tr.fixed(10, 3), torch.float64))
    assert not torch.allclose(full["w_hh"], cut["w_hh"])
    assert not torch.allclose(full["h0"], cut["h0"])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_lstm(backend, dtype, bias):
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
    y2, h_n2, c_n2 = layer_fn(backend, "lstm_layer")(x, *w, h0, c0, **sched)
    for name, a, b in (("y", y2, y), ("h_n", h_n2, h_n[0]), ("c_n", c_n2, c_n[0])):
        assert_close(a, b, dtype, name)

    g = [torch.randn_like(t) for t in (y, h_n[0], c_n[0])]
    expected = torch.autograd.grad((y * g[0]).sum() + (h_n[0] * g[1]).sum() + (c_n[0] * g[2]).sum(),
                                   [x, h0, c0, *params])
    actual = torch.autograd.grad((y2 * g[0]).sum() + (h_n2 * g[1]).sum() + (c_n2 * g[2]).sum(), [x, h0, c0, *ours])
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert_close(a, b, dtype, f"gradient {i}")


@pytest.mark.parametrize("backend", backend_params())
def test_bias_grads_do_not_share_storage(backend):
    args = lstm_args(4, 2, 3, 5, True, torch.float64)
    y, _, _ = layer_fn(backend, "lstm_layer")(**args, **schedule_args(tr.full(4), torch.float64))
    y.sum().backward()
    assert args["b_ih"].grad.data_ptr() != args["b_hh"].grad.data_ptr()
    torch.testing.assert_close(args["b_ih"].grad, args["b_hh"].grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_outputs_fully_written_under_nan_poisoned_allocation(backend, dtype, poison):
    """The `poison` fixture (tests/conftest.py) fills every fresh torch.empty allocation (the layer's
    outputs and its internal buffers) with NaN: any element the kernels fail to write shows up as NaN."""
    T, B, I, H = 7, 5, 3, 19
    args = lstm_args(T, B, I, H, True, dtype)
    out, grads = check(backend, args, schedules(T)["custom"], dtype)
    for t in (*out, *grads.values()):
        assert torch.isfinite(t).all()


# triton: a shorter sequence (the cpu case takes ~3 s under the interpreter)
DETERMINISM = {"cpu": (30, 9, 8, 40), "triton": (12, 9, 8, 40)}


@pytest.mark.parametrize("backend", backend_params())
def test_deterministic(backend):
    """The same call at the same thread count (tests/conftest.py) is bit-identical."""
    T, B, I, H = DETERMINISM.get(backend, DETERMINISM["cpu"])
    args = lstm_args(T, B, I, H, True, torch.float32)
    sched = schedule_args(tr.artbp(T, 4.0, generator=torch.Generator().manual_seed(0)), torch.float32)
    fn = layer_fn(backend, "lstm_layer")
    assert_equal_results(run_with_grads(fn, args, sched), run_with_grads(fn, args, sched))


# The cpu backward folds the weight gradients in chunks of at most 64 steps per thread (fewer for wide
# blocks: 29 for B=33, H=33 in float64 on 2 threads; csrc/cpu/lstm_backward.cpp, chunk_steps). T = 197 =
# 3 * 64 + 5 is prime: several chunks, the first one swept partial, and a multiple of no chunk length.
# float32 only on the small shape: over 197 * 33 rows the float32 sums of dW_ih cancel to beyond TOL on
# both sides. The rerun must be bit-identical. Not on triton: its reverse sweep has no chunks, and T = 197
# takes 10 to 60 s per case under the interpreter.
LONG_CONFIGS = [(197, 3, 4, 8, True, torch.float64), (197, 3, 4, 8, True, torch.float32),
                (197, 33, 5, 33, False, torch.float64)]


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b != "triton"]))
@pytest.mark.parametrize("cfg", LONG_CONFIGS, ids=lambda c: "{}-{}".format(cfg_id(c), c[5]))
def test_several_chunks(backend, cfg):
    T, B, I, H, bias, dtype = cfg
    args = lstm_args(T, B, I, H, bias, dtype)
    sched = tr.artbp(T, 8.0, generator=torch.Generator().manual_seed(0))
    _, grads = check(backend, args, sched, dtype)
    _, again = run_with_grads(layer_fn(backend, "lstm_layer"), args, schedule_args(sched, dtype))
    for name in grads:
        assert torch.equal(grads[name], again[name]), name


@pytest.mark.parametrize("backend", backend_params())
def test_module_matches_reference(backend):
    """fastrnn.LSTM(backend=...) end to end: 2 layers, an ARTBP schedule, float32."""
    ref = fastrnn.LSTM(3, 16, num_layers=2, backend="reference")
    ours = fastrnn.LSTM(3, 16, num_layers=2, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 2, 3)
    sched = tr.artbp(7, 2, generator=torch.Generator().manual_seed(5))
    results = []
    for model in (ref, ours):
        y, (h_n, c_n) = model(x, schedule=sched)
        loss = (y * torch.linspace(-1, 1, 16)).sum() + h_n.square().sum() + c_n.sum()
        results.append((y, h_n, c_n) + torch.autograd.grad(loss, list(model.parameters())))
    names = ["output", "h_n", "c_n"] + [f"d {name}" for name, _ in ref.named_parameters()]
    for name, a, b in zip(names, results[1], results[0]):
        assert_close(a, b, torch.float32, name)


# ---------------------------------------------------------------- bfloat16

@pytest.mark.parametrize("backend", backend_params(BF16_BACKENDS))
def test_bfloat16(backend):
    """bfloat16 storage, float32 accumulation: close to the float32 reference on the same rounded inputs
    (tests/helpers.py BF16_TOL)."""
    a32 = layer_args(8, 3, 5, 16, dtype=torch.float32, sab=False)
    a16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in a32.items()}
    a_ref = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    sched = tr.full(8)
    out_ref, g_ref = run_with_grads(R.lstm_layer, a_ref, schedule_args(sched, torch.float32))
    out, g = run_with_grads(layer_fn(backend, "lstm_layer"), a16, schedule_args(sched, torch.bfloat16))
    assert out[0].dtype == torch.bfloat16
    for name, a, b in zip(("y", "h_n", "c_n"), out, out_ref):
        assert (a.float() - b).abs().max() <= BF16_TOL["output"] * b.abs().max(), name
    for name in g_ref:
        assert g[name].dtype == torch.bfloat16, name
        assert (g[name].float() - g_ref[name]).abs().max() <= BF16_TOL["lstm_grad"] * g_ref[name].abs().max(), name


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b not in BF16_BACKENDS]))
def test_bfloat16_rejected(backend):
    """Backends without bfloat16 say so instead of computing in another dtype."""
    args = {k: v.detach().to(torch.bfloat16) for k, v in lstm_args(3, 2, 3, 4, True, torch.float32).items()}
    with pytest.raises((RuntimeError, TypeError), match="float32"):
        layer_fn(backend, "lstm_layer")(**args, **schedule_args(tr.full(3), torch.bfloat16))


# ---------------------------------------------------------------- cpu: the native library and its op

@pytest.mark.cpu
def test_native_library_loads():
    assert cpu_lstm.available(), _native.load_error()
    assert "cpu" in BACKENDS


@pytest.mark.cpu
def test_missing_native_library_is_reported_not_raised(tmp_path):
    # a private copy of fastrnn._native pointed at a library that does not exist
    import importlib.util
    spec = importlib.util.spec_from_file_location("native_copy", _native.__file__)
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    native.LIBRARY = tmp_path / "libfastrnn_cpu.so"
    assert native.load() is False and native.available() is False
    assert "scripts/build_native.sh" in native.load_error()


def _op_args(T=5, B=3, I=4, H=6, bias=True, dtype=torch.float64, requires_grad=True):
    a = lstm_args(T, B, I, H, bias, dtype)
    if not requires_grad:
        a = {k: None if v is None else v.detach() for k, v in a.items()}
    s = schedule_args(tr.fixed(T, 2), dtype)
    return [a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], s["cut"], s["scale"]]


@pytest.mark.parametrize("bias", [True, False])
@only("cpu")
def test_opcheck_forward(bias):
    torch.library.opcheck(torch.ops.fastrnn.lstm_forward.default, _op_args(bias=bias))


@only("cpu")
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
@only("cpu")
def test_forward_rejects_bad_input(change, message):
    args = dict(zip(NAMES, _op_args(requires_grad=False)))
    args.update(change(args))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastrnn.lstm_forward(*[args[n] for n in NAMES])


@only("cpu")
def test_backward_rejects_bad_gradient_shape():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale = _op_args(requires_grad=False)
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale)
    with pytest.raises(RuntimeError, match="dy must have shape"):
        torch.ops.fastrnn.lstm_backward(y[:-1].contiguous(), h_n, c_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut,
                                        scale)
    with pytest.raises(RuntimeError, match="gates must have shape"):
        torch.ops.fastrnn.lstm_backward(y, h_n, c_n, x, w_ih, w_hh, h0, c0, y, cs, cs, cut, scale)


# ---------------------------------------------------------------- triton: backend choice

@only("triton")
def test_auto_picks_triton_for_cuda_tensors():
    from fastrnn import backends
    from fastrnn.ops import triton_backend as TB
    assert TB.available()
    assert backends.resolve("auto", "cuda") == "triton"
    assert backends.layer_functions("triton", torch.device("cpu")) == (TB.lstm_layer, TB.sab_layer)  # interpreter
