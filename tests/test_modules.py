"""The modules: drop-in behaviour against torch.nn.LSTM, layering, state handling, and bad input."""
import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import reference as R
from fastrnn import truncation as tr
from helpers import only

f64 = torch.float64
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
# float64 results of one backend computed along two BLAS paths (other shapes, other call structure): equal
# up to the last bits only, so not compared bit for bit.
CHAINED = dict(rtol=1e-12, atol=1e-14)


def _grads(out, params, x, hx):
    y, (h, c) = out
    g = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=f64).to(o.dtype)).sum() for o in (y, h, c))
    return torch.autograd.grad(loss, [x, *hx, *params])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers,bias,batch_first", [(1, True, False), (2, True, True), (2, False, False)])
def test_lstm_reference_equals_nn_lstm(dtype, num_layers, bias, batch_first):
    ours = fastrnn.LSTM(3, 5, num_layers, bias=bias, batch_first=batch_first, backend="reference", dtype=dtype)
    theirs = nn.LSTM(3, 5, num_layers, bias=bias, batch_first=batch_first, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 6, 3, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(num_layers, 4 if batch_first else 6, 5, dtype=dtype, requires_grad=True)
               for _ in range(2))
    out_o, out_t = ours(x, hx), theirs(x, hx)
    for a, b in zip((out_o[0], *out_o[1]), (out_t[0], *out_t[1])):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for a, b in zip(_grads(out_o, list(ours.parameters()), x, hx), _grads(out_t, list(theirs.parameters()), x, hx)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_lstm_unbatched_input_like_nn_lstm():
    ours, theirs = fastrnn.LSTM(3, 4, 2, backend="reference", dtype=f64), nn.LSTM(3, 4, 2, dtype=f64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, dtype=f64)
    hx = (torch.randn(2, 4, dtype=f64), torch.randn(2, 4, dtype=f64))
    (y1, (h1, c1)), (y2, (h2, c2)) = ours(x, hx), theirs(x, hx)
    assert y1.shape == (5, 4) and h1.shape == (2, 4)
    for a, b in ((y1, y2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(a, b, **TOL[f64])


def test_nn_lstm_state_dict_loads_into_sablstm_lstm_part():
    theirs = nn.LSTM(3, 4, 2)
    sab = fastrnn.SABLSTM(3, 4, 2, backend="reference")
    result = sab.load_state_dict(theirs.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(f"{n}_l{k}" for n in ("att_wh", "att_wm", "att_v") for k in (0, 1))
    assert torch.equal(sab.weight_hh_l1, theirs.weight_hh_l1)


def test_parameter_shapes_follow_the_spec():
    mlp = fastrnn.SABLSTM(3, 4, attn_size=6)
    assert mlp.att_wh_l0.shape == (6, 4) and mlp.att_wm_l0.shape == (6, 4) and mlp.att_v_l0.shape == (6,)
    lin = fastrnn.SABLSTM(3, 4, attention="linear")
    assert lin.att_wh_l0.shape == (4,) and lin.att_wm_l0.shape == (4,) and lin.att_b_l0.shape == (1,)
    assert lin.weight_ih_l0.shape == (16, 3) and lin.bias_hh_l0.shape == (16,)


@pytest.mark.parametrize("attention", ["mlp", "linear"])
def test_sablstm_layers_chain_the_reference_layer(attention):
    m = fastrnn.SABLSTM(3, 4, 2, k_top=2, k_att=2, k_trunc=3, attention=attention, slot_state="final",
                        backend="reference", dtype=f64)
    x = torch.randn(7, 2, 3, dtype=f64)
    y, (h_n, c_n), att = m(x, return_attention=True)
    sched = tr.fixed(7, 3)
    inp = x
    for layer in range(2):
        last = "att_v" if attention == "mlp" else "att_b"
        p = [getattr(m, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                    "att_wh", "att_wm", last)]
        zeros = torch.zeros(2, 4, dtype=f64)
        inp, h, c, a = R.sab_layer(inp, *p, zeros, zeros, sched.cut, sched.scale, k_top=2, k_att=2,
                                   scorer=attention, provisional=False, need_attention=True)
        # Layer-by-layer here vs the module's own loop: today the same calls, but the module is free to
        # batch its work differently (views into the [L, B, H] state, a hoisted input projection), which
        # moves the last bit through another BLAS path. 1e-12 relative still catches a wrong parameter,
        # state or layer order (those differ by O(0.1)).
        torch.testing.assert_close(h_n[layer], h, **CHAINED)
        torch.testing.assert_close(c_n[layer], c, **CHAINED)
        assert torch.equal(att[layer].indices, a.indices)            # integers: the same slots
    torch.testing.assert_close(y, inp, **CHAINED)


def test_schedule_replaces_k_trunc():
    m = fastrnn.SABLSTM(2, 3, k_trunc=2, backend="reference", dtype=f64)
    x = torch.randn(6, 1, 2, dtype=f64, requires_grad=True)
    (g_default,) = torch.autograd.grad(m(x)[0][-1].sum(), x)
    (g_full,) = torch.autograd.grad(m(x, schedule=tr.full(6))[0][-1].sum(), x)
    (g_fixed,) = torch.autograd.grad(m(x, schedule=tr.fixed(6, 2))[0][-1].sum(), x)
    assert torch.equal(g_default, g_fixed) and not torch.equal(g_default, g_full)


def test_batch_first_and_unbatched_sab():
    m = fastrnn.SABLSTM(3, 4, batch_first=True, backend="reference", dtype=f64)
    x = torch.randn(2, 5, 3, dtype=f64)
    y, (h, c), att = m(x, return_attention=True)
    assert y.shape == (2, 5, 4) and h.shape == (1, 2, 4) and att[0].indices.shape == (5, 2, 5)
    y_u, (h_u, c_u), att_u = m(x[0], return_attention=True)
    assert att_u[0].indices.shape == (5, 5) and h_u.shape == (1, 4)
    # Not bit-exact: the unbatched call is a B=1 run and MKL may take another GEMM path for one row than
    # for two (on an AVX-512/AMX host the two differ by ~1e-17). A wrong row, a batch_first transpose
    # mix-up or a state of the other sequence would differ by O(0.1).
    torch.testing.assert_close(y_u, y[0], **CHAINED)
    torch.testing.assert_close(h_u, h[:, 0], **CHAINED)
    torch.testing.assert_close(c_u, c[:, 0], **CHAINED)
    assert torch.equal(att_u[0].indices, att[0].indices[:, 0])      # integers: the same slots


def test_empty_sequence_returns_initial_state():
    m = fastrnn.SABLSTM(3, 4, 2, backend="reference")
    hx = (torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    y, (h, c), att = m(torch.randn(0, 2, 3), hx, return_attention=True)
    assert y.shape == (0, 2, 4) and torch.equal(h, hx[0]) and torch.equal(c, hx[1])
    assert att[0].indices.shape == (0, 2, 5)
    y, (h, c) = fastrnn.LSTM(3, 4).forward(torch.randn(0, 2, 3))
    assert y.shape == (0, 2, 4) and (h == 0).all()


def test_dropout_between_layers_only_in_training():
    m = fastrnn.LSTM(3, 4, 2, dropout=0.5, backend="reference", dtype=f64)
    x = torch.randn(5, 2, 3, dtype=f64)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    m.train()
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(2)
    b = m(x)[0]
    assert not torch.equal(a, b)


def test_available_backends_and_auto():
    names = fastrnn.available_backends()
    assert "reference" in names
    m = fastrnn.SABLSTM(2, 3)
    y, _ = m(torch.randn(4, 1, 2))
    assert y.shape == (4, 1, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k_top=0), "k_top"), (dict(k_att=0), "k_att"), (dict(k_trunc=-1), "k_trunc"),
    (dict(bidirectional=True), "bidirectional"), (dict(backend="gpu"), "backend"),
    (dict(attention="dot"), "attention"), (dict(slot_state="both"), "slot_state"),
    (dict(attention="linear", attn_size=3), "attn_size"), (dict(hidden_size=0), "hidden_size"),
    (dict(dropout=2.0), "dropout"),
])
def test_bad_constructor_arguments(kwargs, match):
    base = dict(input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match=match):
        fastrnn.SABLSTM(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs,match", [
    (dict(k_top=1.5), "k_top"), (dict(input_size=4.0), "input_size"), (dict(k_att=True), "k_att"),
    (dict(num_layers="2"), "num_layers"),
])
def test_non_integer_sizes_are_type_errors_as_in_nn_lstm(kwargs, match):
    with pytest.raises(TypeError, match=match):
        fastrnn.SABLSTM(**{**dict(input_size=3, hidden_size=4), **kwargs})


def test_numpy_integers_are_accepted_as_sizes():
    np = pytest.importorskip("numpy")
    m = fastrnn.SABLSTM(np.int64(3), np.int32(4), k_top=np.int64(2), backend="reference")
    assert type(m.k_top) is int and type(m.hidden_size) is int
    assert m(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in fastrnn.available_backends()])
def test_torch_func_transforms_use_the_reference_under_auto_and_refuse_fast_backends(backend):
    from torch.func import functional_call, grad
    model = fastrnn.SABLSTM(3, 4, k_top=2, dtype=f64)
    x = torch.randn(6, 2, 3, dtype=f64)
    params = dict(model.named_parameters())
    got = grad(lambda p: functional_call(model, p, (x,))[0].square().sum())(params)
    expected = torch.autograd.grad(model(x)[0].square().sum(), list(params.values()))
    for (name, g), e in zip(got.items(), expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
    model.backend = backend
    with pytest.raises(RuntimeError, match=f"backend='{backend}'.*torch.func"):
        grad(lambda p: functional_call(model, p, (x,))[0].sum())(params)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.SABLSTM])
def test_vmap_over_a_batch_of_inputs_under_auto(cls):
    """vmap (and vmap of grad) as README promises: the input checks do not read batched values."""
    from torch.func import grad, vmap
    torch.manual_seed(0)
    model = cls(3, 4, dtype=f64)
    xs = torch.randn(5, 6, 2, 3, dtype=f64)
    torch.testing.assert_close(vmap(lambda x: model(x)[0])(xs), torch.stack([model(x)[0] for x in xs]),
                               rtol=1e-12, atol=1e-14)
    expected = torch.stack([torch.autograd.grad(model(x)[0].square().sum(), x)[0]
                            for x in xs.clone().requires_grad_().unbind()])
    torch.testing.assert_close(vmap(grad(lambda x: model(x)[0].square().sum()))(xs), expected,
                               rtol=1e-12, atol=1e-14)


def test_integer_input_and_boolean_lengths_are_type_errors():
    m = fastrnn.LSTM(3, 4, backend="reference")
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(5, 2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="lengths"):
        m(torch.randn(5, 2, 3), lengths=[True, 1])


@pytest.mark.parametrize("make_input,exc,match", [
    (lambda: torch.randn(5, 2, 4), ValueError, "input_size"),
    (lambda: torch.randn(5, 2, 3, 1), ValueError, "input"),
    (lambda: torch.randn(5, 2, 3, dtype=f64), TypeError, "dtype"),
    (lambda: torch.full((5, 2, 3), float("nan")), ValueError, "NaN"),
    (lambda: [1, 2, 3], TypeError, "input"),
    (lambda: torch.randn(5, 2, 3, device="meta"), ValueError, "input is on meta"),
])
def test_bad_input(make_input, exc, match):
    m = fastrnn.SABLSTM(3, 4, backend="reference")
    with pytest.raises(exc, match=match):
        m(make_input())


@pytest.mark.parametrize("hx,exc,match", [
    ((torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)), ValueError, "h_0"),
    ((torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)), ValueError, "c_0"),
    ((torch.zeros(1, 2, 4, dtype=f64), torch.zeros(1, 2, 4)), TypeError, "h_0"),
    (torch.zeros(1, 2, 4), TypeError, "hx"),
    ((torch.zeros(1, 2, 4), torch.full((1, 2, 4), float("nan"))), ValueError, "hx"),
])
def test_bad_hx(hx, exc, match):
    m = fastrnn.SABLSTM(3, 4, backend="reference")
    with pytest.raises(exc, match=match):
        m(torch.randn(5, 2, 3), hx)


def test_bad_schedule_length_and_type():
    m = fastrnn.SABLSTM(3, 4, backend="reference")
    with pytest.raises(ValueError, match="schedule"):
        m(torch.randn(5, 2, 3), schedule=tr.full(4))
    with pytest.raises(TypeError, match="schedule"):
        m(torch.randn(5, 2, 3), schedule=torch.zeros(5))


@pytest.mark.parametrize("bias", [True, False])
def test_all_weights_and_mode_as_nn_lstm(bias):
    theirs = torch.nn.LSTM(3, 4, 2, bias=bias)
    ours = fastrnn.LSTM(3, 4, 2, bias=bias, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    assert ours.mode == theirs.mode == "LSTM"
    assert [[tuple(p.shape) for p in layer] for layer in ours.all_weights] == \
        [[tuple(p.shape) for p in layer] for layer in theirs.all_weights]
    assert all(a is getattr(ours, n) for layer, names in zip(ours.all_weights, theirs._all_weights)
               for a, n in zip(layer, names))


def test_triton_is_listed_only_where_it_has_a_device():
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import torch, fastrnn; print('triton' in fastrnn.available_backends(), torch.cuda.is_available())"
    listed, cuda = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()
    assert listed == cuda   # without TRITON_INTERPRET=1, triton runs only on CUDA tensors


# The meta device (shape inference, `with torch.device("meta")` model construction): as nn.LSTM, a forward
# gives outputs of the right shapes and dtypes, without values. The layers run the cpu ops' fake kernels.
@only("cpu")   # meta runs the cpu ops' fake kernels
@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.SABLSTM])
@pytest.mark.parametrize("batch_first", [False, True])
def test_meta_device_gives_the_shapes_of_the_cpu_run(cls, backend, batch_first):
    kw = dict(num_layers=2, batch_first=batch_first, backend=backend)
    if cls is fastrnn.SABLSTM:
        kw["k_trunc"] = 3
    x = torch.randn(7, 2, 4)
    on_cpu = cls(4, 8, **kw)
    on_meta = cls(4, 8, device="meta", **kw)
    out_cpu, out_meta = on_cpu(x), on_meta(x.to("meta"))
    for a, b in zip((out_cpu[0], *out_cpu[1]), (out_meta[0], *out_meta[1])):
        assert b.is_meta and (b.shape, b.dtype) == (a.shape, a.dtype)
    out_meta[0].sum().backward()
    for p in on_meta.parameters():
        assert p.grad.is_meta and p.grad.shape == p.shape
    if cls is fastrnn.SABLSTM:      # streaming: a meta state continues a meta stream
        y, _, state = on_meta(x.to("meta"), return_state=True)
        _, _, state = on_meta(x.to("meta"), state=state, return_state=True)
        _, _, state_cpu = on_cpu(torch.cat([x, x], 1 if batch_first else 0), return_state=True)
        assert state.step == state_cpu.step == 2 * x.shape[1 if batch_first else 0]
        assert state.layers[1].memory.shape == state_cpu.layers[1].memory.shape


@only("cpu")   # meta runs the cpu ops' fake kernels
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.SABLSTM])
def test_meta_device_under_torch_compile_as_the_readme_says(cls):
    """torch.compile on the meta device (README, "Building the native code"): with gradients recorded the
    aot_eager backend traces the ops' autograd formulas and fake kernels (meta outputs and parameter
    gradients of the right shapes); inductor works under no_grad, and with gradients fails on plain torch
    ops as on ours (its joint-graph pass swaps a meta output the backward reads for an empty_strided made
    after it). When the last check stops failing, torch has fixed it and the README sentence must go."""
    torch._dynamo.reset()
    model = cls(3, 4, device="meta")
    x = torch.randn(5, 2, 3, device="meta")
    y = torch.compile(model, backend="aot_eager")(x)[0]
    assert y.is_meta and y.shape == (5, 2, 4) and y.requires_grad
    y.sum().backward()
    assert all(p.grad.is_meta and p.grad.shape == p.shape for p in model.parameters())
    with torch.no_grad():
        assert torch.compile(model)(x)[0].shape == (5, 2, 4)
    inductor_bug = "empty_strided_default.*used before it has been defined"
    for fn, arg in ((model, x), (torch.exp, torch.randn(4, 3, device="meta", requires_grad=True))):
        torch._dynamo.reset()
        with pytest.raises(Exception, match=inductor_bug):
            torch.compile(fn)(arg)
    torch._dynamo.reset()


def test_meta_device_model_built_then_materialised_as_nn_lstm():
    with torch.device("meta"):
        m = fastrnn.SABLSTM(3, 5)
    m = m.to_empty(device="cpu")
    m.reset_parameters()
    y, _ = m(torch.randn(6, 2, 3))
    assert torch.isfinite(y).all() and y.abs().sum() > 0


def test_meta_device_refuses_what_needs_values():
    x = torch.randn(5, 2, 3, device="meta")
    with pytest.raises(ValueError, match="meta device.*reference"):
        fastrnn.LSTM(3, 4, backend="reference", device="meta")(x)
    with pytest.raises(ValueError, match="reset on the meta device"):
        fastrnn.SABLSTM(3, 4, device="meta")(x, reset=torch.zeros(5, 2, dtype=torch.bool, device="meta"))


@only("cpu")
@pytest.mark.parametrize("op", ["lstm", "sab"])
@pytest.mark.parametrize("arg", ["cut", "scale", "h0", "w_hh"])
def test_op_argument_on_meta_beside_cpu_input_is_refused(op, arg):
    """One meta tensor among CPU ones makes the dispatcher pick the fake kernel: its outputs would be
    uninitialised memory. The op refuses, naming the argument."""
    from fastrnn.ops.lstm import lstm_layer
    from fastrnn.ops.sab import sab_layer
    T, B, I, H = 5, 3, 2, 4
    args = dict(x=torch.randn(T, B, I), w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H),
                b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H), h0=torch.zeros(B, H), c0=torch.zeros(B, H),
                cut=torch.zeros(T, dtype=torch.bool), scale=torch.ones(T))
    args[arg] = args[arg].to("meta")
    with pytest.raises(RuntimeError, match=f"{arg} must be on cpu \\(the device of x\\), got meta"):
        if op == "lstm":
            lstm_layer(**args)
        else:
            sab_layer(**args, att_wh=torch.randn(H, H), att_wm=torch.randn(H, H), att_vb=torch.randn(H), k_top=2,
                      k_att=2, scorer="mlp", provisional=True)
