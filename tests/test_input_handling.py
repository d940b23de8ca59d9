"""Input handling of the modules (issue #10): dtypes per backend, torch.autocast as torch.nn.LSTM,
proj_size, the dropout warning, NaN / inf, the lengths argument's errors; every error names the argument.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # the triton backend on CPU tensors

import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import fastrnn  # noqa: E402

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
BACKENDS = [b for b in ("reference", "cpu", "triton") if b in fastrnn.available_backends()]
CLASSES = {"lstm": lambda **kw: fastrnn.LSTM(3, 4, 2, **kw),
           "sab": lambda **kw: fastrnn.SABLSTM(3, 4, 2, k_top=2, **kw)}
NATIVE = {"reference": (F64, F32, BF16, F16), "cpu": (F64, F32), "triton": (F64, F32, BF16)}


# ---- dtypes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=str)
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_dtype_per_backend(kind, dtype, backend):
    """A supported (dtype, backend) pair computes in the dtype; any other is ONE TypeError at the call
    naming the dtype and the backend and saying what to use instead."""
    model = CLASSES[kind](backend=backend, dtype=dtype)
    x = torch.randn(5, 2, 3, dtype=dtype)
    if dtype in NATIVE[backend]:
        y, (h, c) = model(x)
        assert y.dtype == h.dtype == c.dtype == dtype
        assert torch.isfinite(y.float()).all()
        return
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"backend '{backend}' does not compute in {name} .*backend='reference'"):
        model(x)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_auto_falls_back_to_the_reference_for_other_dtypes(dtype):
    auto = fastrnn.SABLSTM(3, 4, k_top=2, dtype=dtype)
    ref = fastrnn.SABLSTM(3, 4, k_top=2, backend="reference", dtype=dtype)
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(5, 2, 3, dtype=dtype)
    assert torch.equal(auto(x)[0], ref(x)[0])


def test_reduced_precision_reference_is_close_to_float32():
    m32 = fastrnn.LSTM(3, 4, backend="reference")
    m16 = fastrnn.LSTM(3, 4, backend="reference", dtype=BF16)
    m16.load_state_dict(m32.state_dict())
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(m16(x.to(BF16))[0].float(), m32(x)[0], rtol=0, atol=3e-2)


# ---- torch.autocast --------------------------------------------------------------------------------
# torch.nn.LSTM under torch.autocast("cpu", dtype=torch.bfloat16), measured (torch 2.13): input, hx and the
# weights are cast to bfloat16, the output and (h_n, c_n) are bfloat16 and equal to those of the model
# converted to bfloat16 (it computes in bfloat16, oneDNN's bf16 LSTM); the float32 parameters get float32
# gradients; a float64 model is left alone.

def test_nn_lstm_under_autocast_is_what_fastrnn_follows():
    theirs = nn.LSTM(3, 8, 2)
    x = torch.randn(6, 2, 3)
    with torch.autocast("cpu", dtype=BF16):
        y, (h, c) = theirs(x)
    assert y.dtype == h.dtype == c.dtype == BF16
    # bf16 tolerance, not bits: under autocast oneDNN may pick another bf16 kernel on another CPU model (AMX)
    torch.testing.assert_close(y, theirs.to(BF16)(x.to(BF16))[0], rtol=1.6e-2, atol=1e-2)
    theirs64 = nn.LSTM(3, 8).double()
    with torch.autocast("cpu", dtype=BF16):
        assert theirs64(x.double())[0].dtype == F64


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_lstm_under_autocast_as_nn_lstm(backend):
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 8, 2)
    ours = fastrnn.LSTM(3, 8, 2, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 2, 3)
    hx = tuple(0.5 * torch.randn(2, 2, 8) for _ in range(2))
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with torch.autocast("cpu", dtype=BF16):
        yt, (ht, ct) = theirs(xs[0], hx)
        y, (h, c) = ours(xs[1], hx)
    assert y.dtype == h.dtype == c.dtype == BF16
    for a, b in ((y, yt), (h, ht), (c, ct)):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-2)   # a few bf16 ulps
    (yt.float().sum() + ht.float().square().sum()).backward()
    (y.float().sum() + h.float().square().sum()).backward()
    assert xs[1].grad.dtype == F32 and all(p.grad.dtype == F32 for p in ours.parameters())
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=0, atol=5e-2)
    for (name, p), pt in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, pt.grad, rtol=5e-2, atol=5e-2, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sablstm_under_autocast(backend):
    torch.manual_seed(0)
    model = fastrnn.SABLSTM(3, 8, 2, k_top=2, backend=backend)
    x = torch.randn(6, 3, 3)
    y32, (h32, _) = model(x, lengths=[6, 4, 0])
    with torch.autocast("cpu", dtype=BF16):
        y, (h, c), att = model(x, lengths=[6, 4, 0], return_attention=True)
    assert y.dtype == h.dtype == c.dtype == att[0].weights.dtype == BF16
    assert att[0].indices.dtype == torch.int64
    torch.testing.assert_close(y.float(), y32, rtol=0, atol=3e-2)
    torch.testing.assert_close(h.float(), h32, rtol=0, atol=3e-2)
    assert torch.equal(y[4:, 1], torch.zeros_like(y[4:, 1]))
    y.float().sum().backward()
    assert all(p.grad.dtype == F32 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_leaves_float64_alone(backend):
    model = fastrnn.SABLSTM(3, 4, k_top=2, backend=backend, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    with torch.autocast("cpu", dtype=BF16):
        y, (h, _) = model(x)
    assert y.dtype == h.dtype == F64
    assert torch.equal(y, model(x)[0])


def test_autocast_takes_a_bfloat16_model_with_float32_input():
    model = fastrnn.LSTM(3, 4, backend="reference", dtype=BF16)
    with torch.autocast("cpu", dtype=BF16):
        assert model(torch.randn(5, 2, 3))[0].dtype == BF16
    with pytest.raises(TypeError, match="input dtype"):
        model(torch.randn(5, 2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_packed_sequence(backend):
    model = fastrnn.LSTM(3, 4, backend=backend)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), [2, 5, 3], enforce_sorted=False)
    with torch.autocast("cpu", dtype=BF16):
        out, (h, _) = model(packed)
    assert out.data.dtype == h.dtype == BF16


# ---- constructor arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_proj_size(kind):
    make = {"lstm": fastrnn.LSTM, "sab": fastrnn.SABLSTM}[kind]
    assert make(3, 4, proj_size=0).proj_size == 0
    make(3, 4, 1, True, False, 0.0, False, 0)              # torch.nn.LSTM's positional order
    with pytest.raises(ValueError, match="proj_size"):
        make(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        make(3, 4, proj_size=-1)


def test_lstm_bidirectional_refused():
    with pytest.raises(ValueError, match="bidirectional"):
        fastrnn.LSTM(3, 4, bidirectional=True)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_dropout_warning_as_nn_lstm(kind):
    make = {"lstm": fastrnn.LSTM, "sab": fastrnn.SABLSTM}[kind]
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        nn.LSTM(3, 4, dropout=0.3)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        make(3, 4, dropout=0.3)
    assert [(w.category, str(w.message)) for w in ours] == [(w.category, str(w.message)) for w in theirs]
    assert theirs and theirs[0].category is UserWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(3, 4, 2, dropout=0.3)
        make(3, 4, dropout=0.0)


# ---- NaN and inf -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_in_input_or_hx(backend, value):
    model = fastrnn.SABLSTM(3, 4, k_top=2, backend=backend)
    x = torch.randn(5, 2, 3)
    bad = x.clone()
    bad[2, 1, 0] = value
    with pytest.raises(ValueError, match="input contains NaN or inf"):
        model(bad)
    with pytest.raises(ValueError, match="input contains NaN or inf"):
        model(bad, lengths=[5, 3])                         # step 2 is within sequence 1's length
    with pytest.raises(ValueError, match="input contains NaN or inf"):
        model(pack_padded_sequence(bad, [5, 3], enforce_sorted=False))
    for i, name in enumerate(("h_0", "c_0")):
        hx = [torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)]
        hx[i][0, 1, 2] = value
        with pytest.raises(ValueError, match=f"hx contains NaN or inf \\({name}\\)"):
            model(x, tuple(hx))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_or_inf_past_lengths_is_ignored(backend):
    """Padding may hold anything: it is zeroed before any backend sees it, so outputs and gradients stay
    finite and equal to those of zero padding."""
    model = fastrnn.SABLSTM(3, 4, k_top=2, backend=backend, dtype=F64)
    x = torch.randn(5, 3, 3, dtype=F64)
    x[2:, 1] = float("nan")
    x[1:, 2] = float("inf")
    clean = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=F64))
    results = []
    for inp in (x, clean):
        inp = inp.clone().requires_grad_()
        y, (h, c) = model(inp, lengths=[5, 2, 1])
        (y.sum() + h.sum() + c.sum()).backward()
        results.append((y, h, c, inp.grad, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    (y, h, c, gx, gp), (y2, h2, c2, gx2, gp2) = results
    for a, b in ((y, y2), (h, h2), (c, c2), (gx, gx2), *zip(gp, gp2)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- lengths errors and other argument errors ----------------------------------------------------------

LENGTH_ERRORS = [
    (lambda: [5, 6], ValueError, r"lengths must lie in \[0, T\] with T=5"),
    (lambda: torch.tensor([-1, 2]), ValueError, r"lengths must lie in \[0, T\]"),
    (lambda: [5, 3, 2], ValueError, "lengths must hold B=2 values"),
    (lambda: torch.tensor([[5, 3]]), ValueError, r"lengths must have shape \[B\] = \[2\]"),
    (lambda: torch.tensor([5.0, 3.0]), TypeError, "lengths must be an int64 tensor or a list of ints"),
    (lambda: [5.0, 3], TypeError, "lengths must be an int64 tensor or a list of ints"),
    (lambda: "5,3", TypeError, "lengths must be an int64 tensor or a list of ints"),
]


@pytest.mark.parametrize("make,exc,match", LENGTH_ERRORS, ids=[m for _, _, m in LENGTH_ERRORS])
def test_bad_lengths(make, exc, match):
    model = fastrnn.LSTM(3, 4, backend="reference")
    with pytest.raises(exc, match=match):
        model(torch.randn(5, 2, 3), lengths=make())


def test_lengths_only_with_padded_batched_input():
    model = fastrnn.SABLSTM(3, 4, backend="reference")
    with pytest.raises(ValueError, match="lengths: only batched"):
        model(torch.randn(5, 3), lengths=[5])
    packed = pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(ValueError, match="lengths: a PackedSequence"):
        model(packed, lengths=[5, 3])


def test_lengths_accepts_other_integer_types():
    model = fastrnn.LSTM(3, 4, backend="reference", dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    y, _ = model(x, lengths=[5, 3])
    for lengths in (torch.tensor([5, 3], dtype=torch.int32), (5, 3), list(torch.tensor([5, 3]).numpy())):
        assert torch.equal(model(x, lengths=lengths)[0], y)


@pytest.mark.parametrize("call,exc,match", [
    (lambda m: m(torch.randn(5, 2, 3, dtype=F64)), TypeError, "input dtype torch.float64 does not match"),
    (lambda m: m(torch.randn(5, 2, 4)), ValueError, "input: last dimension must be input_size=3"),
    (lambda m: m("x"), TypeError, "input must be a Tensor or a PackedSequence"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
    (lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))), ValueError,
     r"hx: c_0 must have shape \(1, 2, 4\)"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call(fastrnn.SABLSTM(3, 4, backend="reference"))


# autocast is the CPU's: triton (CUDA tensors; the CPU only under the interpreter) is run without it
@pytest.mark.parametrize("backend, autocast", [(b, a) for b in BACKENDS for a in (False, True)
                                               if not (a and b == "triton")])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_strided_parameters_are_taken(kind, backend, autocast):
    """A parameter that is a strided view (transposed storage), as torch.nn.LSTM takes it: the outputs and
    gradients of the contiguous copy (the cpu SAB ops read raw row-major buffers and refused it)."""
    torch.manual_seed(0)
    strided, dense = CLASSES[kind](backend=backend), CLASSES[kind](backend=backend)
    dense.load_state_dict(strided.state_dict())
    names = ["weight_hh_l0", "weight_ih_l1"] + (["att_wm_l0"] if kind == "sab" else [])
    for name in names:
        setattr(strided, name, nn.Parameter(getattr(strided, name).detach().t().contiguous().t()))
        assert not getattr(strided, name).is_contiguous()
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ys, yd = strided(x)[0], dense(x)[0]
    ys.float().sum().backward()
    yd.float().sum().backward()
    # the same math; a BLAS may sum a transposed operand in another order (the reference's matmul)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ys, yd, **tol)
    for name in names:
        torch.testing.assert_close(getattr(strided, name).grad, getattr(dense, name).grad, **tol, msg=name)
