"""The cpu backend's bfloat16 mixed precision (docs/SPEC.md "bfloat16 mixed precision"): the op
fastrnn::lstm_mixed_forward / lstm_mixed_backward with each GEMM kernel this machine can run, against its
plain-autograd oracle fastrnn.reference_bf16 (outputs and the gradient of every input), on NaN-poisoned
buffers; its argument errors; opcheck; fastrnn.LSTM under torch.autocast; and that it really is mixed
(neither the float32 math nor the emulation it replaced).

Tolerances, relative to the largest element of each result (the worst measured here over 4 seeds, every
kernel and schedule, with weights of torch.nn.LSTM's scale 1/sqrt(H)): the kernels sum in float32 in
another order than the oracle. One step (T = 1) has nothing else: at most 4e-7 (STEP_TOL = 1e-5), while the
float32 math is 2.4e-3 or more away, so this tight check catches any rounding a kernel skips. Over more
steps a 1-ulp difference in a float32 sum can flip the bfloat16 rounding of an h or dG element (2^-8
relative), which then propagates: at most 1.8e-4 at T = 2, 1.1e-3 at T = 12, 1.4e-3 at T = 100..300 with
B = 32, H = 128 (SEQUENCE_TOL = 5e-3).
"""
import functools

import pytest
import torch

import fastrnn
from fastrnn import reference as R
from fastrnn import reference_bf16 as RB
from fastrnn import truncation as tr
from fastrnn.ops import lstm as cpu_lstm

from helpers import only

STEP_TOL = 1e-5
SEQUENCE_TOL = 5e-3
NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


CAPS = cpu_lstm.bf16_capabilities() if "cpu" in fastrnn.available_backends() else None


def kernel_params(auto=False):
    """Every kernel (and "auto" if asked); one this machine cannot run is skipped with the reason (emulated
    runs everywhere)."""
    runs = {"emulated": True, "mkl": CAPS and CAPS["mkl"], "avx512bf16": CAPS and CAPS["avx512bf16"]}
    if auto:
        runs["auto"] = True
    return [pytest.param(k, id=k, marks=pytest.mark.skipif(not ok, reason=f"this machine cannot run '{k}'"))
            for k, ok in runs.items()]


def layer_inputs(T, B, I, H, bias=True, seed=0):
    """Leaf float32 tensors: x, h0, c0 of scale 0.5, weights of torch.nn.LSTM's scale 1/sqrt(H) (larger
    weights make the recurrence chaotic and every rounding difference grows without bound)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(scale, *shape):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()
    w = H ** -0.5
    return dict(x=leaf(0.5, T, B, I), w_ih=leaf(w, 4 * H, I), w_hh=leaf(w, 4 * H, H),
                b_ih=leaf(w, 4 * H) if bias else None, b_hh=leaf(w, 4 * H) if bias else None,
                h0=leaf(0.5, B, H), c0=leaf(0.5, B, H))


def run(fn, inputs, schedule, lengths=None, **kw):
    """(y, h_n, c_n) and the gradient of every input of a fixed random weighting of them, as one list."""
    args = [inputs[n] for n in NAMES]
    out = fn(*args, schedule.cut, schedule.scale.float(), lengths=lengths, **kw)
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out)
    leaves = [t for t in args if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)   # h0, c0 unused behind a cut at t = 0
    return [o.detach() for o in out] + [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


@functools.lru_cache(maxsize=None)
def oracle(T, B, I, H, bias, kind, lengths=None):
    """run() of reference_bf16 on layer_inputs(T, B, I, H, bias) under SCHEDULES[kind], computed once for
    all the kernels compared with it (lengths: a tuple or None)."""
    lengths = None if lengths is None else torch.tensor(lengths)
    return run(RB.lstm_layer, layer_inputs(T, B, I, H, bias), SCHEDULES[kind](T), lengths)


def check_kernel(kernel, T, B, I, H, bias, kind, tol, lengths=None):
    inputs, schedule = layer_inputs(T, B, I, H, bias), SCHEDULES[kind](T)
    got = run(cpu_lstm.lstm_layer, inputs, schedule, None if lengths is None else torch.tensor(lengths),
              bf16_gemm=kernel)
    assert_results_close(got, oracle(T, B, I, H, bias, kind, lengths), tol)


def max_rel_error(got, ref):
    """The largest |got - ref| of each result relative to that result's largest |ref|, over all results."""
    return max(float((a - b).detach().abs().max() / b.abs().max().clamp_min(1e-30))
               for a, b in zip(got, ref) if b.numel())


def assert_results_close(got, ref, tol):
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and not a.isnan().any()
    err = max_rel_error(got, ref)
    assert err <= tol, f"max error {err:.2e} relative to the largest element > {tol}"


SCHEDULES = {"full": tr.full, "fixed": lambda T: tr.fixed(T, 2), "long": lambda T: tr.fixed(T, 50),
             "custom": lambda T: tr.Schedule(torch.arange(T) % 3 == 0,
                                             torch.rand(T, dtype=torch.float64, generator=torch.Generator().manual_seed(T)) + 0.5)}
# (T, B, I, H, bias): H = 17 and 33 an odd K for the pair-interleaved packing and columns that are no
# multiple of 16; B = 33 uneven row blocks and row tiles; T = 1 the single step; I = 0 a GEMM with K = 0.
SHORT = [(1, 1, 1, 1, True), (6, 3, 4, 17, True), (12, 4, 6, 32, False), (9, 33, 7, 16, True),
         (15, 5, 3, 33, True), (4, 3, 0, 5, True)]


def cfg_id(c):
    return "T{}B{}I{}H{}{}".format(*c[:4], "" if c[4] else "-nobias")


KINDS = ["full", "fixed", "custom"]


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("cfg", SHORT, ids=cfg_id)
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_matches_the_oracle_tightly(kernel, cfg, kind, poison):
    _, B, I, H, bias = cfg
    check_kernel(kernel, 1, B, I, H, bias, kind, STEP_TOL)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("cfg", SHORT, ids=cfg_id)
@pytest.mark.parametrize("kind", KINDS)
def test_sequences_match_the_oracle(kernel, cfg, kind, poison):
    check_kernel(kernel, *cfg, kind, SEQUENCE_TOL)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("T, B, I, H", [(300, 32, 64, 128), (100, 7, 5, 40)])
def test_long_sequences_match_the_oracle(kernel, T, B, I, H):
    check_kernel(kernel, T, B, I, H, True, "long", SEQUENCE_TOL)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
def test_lengths(kernel, poison):
    check_kernel(kernel, 8, 5, 3, 20, True, "fixed", SEQUENCE_TOL, lengths=(8, 0, 3, 1, 6))


@only("cpu")
def test_it_is_the_mixed_math():
    """Far from the float32 math (so every rounding happens), and the oracle itself is not the float32 one."""
    inputs, schedule = layer_inputs(1, 3, 4, 17), tr.full(1)
    mixed, oracle = run(cpu_lstm.lstm_layer, inputs, schedule, bf16_gemm="auto"), run(RB.lstm_layer, inputs, schedule)
    fp32 = run(R.lstm_layer, inputs, schedule)
    assert max_rel_error(oracle, fp32) > 100 * STEP_TOL
    assert max_rel_error(mixed, fp32) > 100 * STEP_TOL


@only("cpu")
def test_oracle_rounds_each_gemm_operand():
    """reference_bf16's product: r(a) r(b) forward; r(g) r(b)^T and r(a)^T r(g) backward."""
    a, b = torch.randn(5, 7, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    g = torch.randn(5, 3)
    r = lambda t: t.bfloat16().float()  # noqa: E731
    out = RB.bf16_matmul(a, b)
    da, db = torch.autograd.grad(out, (a, b), g)
    torch.testing.assert_close(out, r(a) @ r(b), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(da, r(g) @ r(b).t(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(db, r(a).t() @ r(g), rtol=1e-6, atol=1e-6)


@only("cpu")
def test_kernels_agree_with_each_other():
    """Every kernel this machine runs gives the oracle's math: they differ in the order of float32 sums only."""
    inputs, schedule = layer_inputs(5, 4, 6, 24), tr.full(5)
    results = [run(cpu_lstm.lstm_layer, inputs, schedule, bf16_gemm=p.values[0]) for p in kernel_params()
               if not p.marks or not p.marks[0].args[0]]
    for other in results[1:]:
        assert max_rel_error(other, results[0]) <= SEQUENCE_TOL


@only("cpu")
def test_capabilities_and_auto():
    assert CAPS["auto"] in ("emulated", "mkl", "avx512bf16")
    if CAPS["amx"] and CAPS["mkl"]:
        assert CAPS["auto"] == "mkl"
    elif CAPS["avx512bf16"]:
        assert CAPS["auto"] == "avx512bf16"
    else:
        assert CAPS["auto"] == "emulated"


def _op_args(dtype=torch.float32):
    a = layer_inputs(4, 3, 5, 6)
    a = {k: v.detach().to(dtype) for k, v in a.items()}
    s = tr.fixed(4, 2)
    return [a[n] for n in NAMES] + [s.cut, s.scale.to(dtype)]


@only("cpu")
@pytest.mark.parametrize("gemm, message", [
    ("bf16", "gemm must be 'auto', 'emulated', 'mkl' or 'avx512bf16', got 'bf16'"),
    ("", "gemm must be"),
])
def test_unknown_kernel_is_refused(gemm, message):
    with pytest.raises(RuntimeError, match=f"fastrnn::lstm_mixed_forward: {message}"):
        torch.ops.fastrnn.lstm_mixed_forward(*_op_args(), None, gemm)


@only("cpu")
@pytest.mark.parametrize("kernel, capability", [("mkl", "mkl"), ("avx512bf16", "avx512bf16")])
def test_a_kernel_runs_where_the_cpu_has_it_and_is_refused_elsewhere(kernel, capability):
    """Forced: where the CPU has the kernel it runs (finite outputs); where it lacks it, a RuntimeError naming
    it, never a crash. Which branch a machine takes depends on its CPU; each asserts."""
    if CAPS[capability]:
        y = torch.ops.fastrnn.lstm_mixed_forward(*_op_args(), None, kernel)[0]
        assert y.isfinite().all()
        return
    with pytest.raises(RuntimeError, match=f"gemm='{kernel}' needs"):
        torch.ops.fastrnn.lstm_mixed_forward(*_op_args(), None, kernel)


@only("cpu")
def test_float64_is_refused():
    with pytest.raises(RuntimeError, match="fastrnn::lstm_mixed_forward: x must be float32, got Double"):
        torch.ops.fastrnn.lstm_mixed_forward(*_op_args(torch.float64), None, "auto")
    args = _op_args()
    args[2] = args[2].double()
    with pytest.raises(RuntimeError, match="fastrnn::lstm_mixed_forward: w_hh must have dtype Float"):
        torch.ops.fastrnn.lstm_mixed_forward(*args, None, "auto")


@only("cpu")
def test_backward_checks_its_arguments():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale = _op_args()
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_mixed_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale,
                                                                   None, "emulated")
    args = [torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, w_ih, w_hh, h0, c0, y, gates,
            cs, cut, scale, None]
    with pytest.raises(RuntimeError, match="fastrnn::lstm_mixed_backward: gemm must be"):
        torch.ops.fastrnn.lstm_mixed_backward(*args, "nope")
    args[9] = gates[:, :, :-1].contiguous()
    with pytest.raises(RuntimeError, match="fastrnn::lstm_mixed_backward: gates must have shape"):
        torch.ops.fastrnn.lstm_mixed_backward(*args, "emulated")


@only("cpu")
def test_opcheck():
    args = _op_args()
    torch.library.opcheck(torch.ops.fastrnn.lstm_mixed_forward.default, args + [None, "emulated"])
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale = args
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_mixed_forward(*args, None, "emulated")
    bwd = [torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), x, w_ih, w_hh, h0, c0, y, gates, cs,
           cut, scale, None, "emulated"]
    torch.library.opcheck(torch.ops.fastrnn.lstm_mixed_backward.default, bwd)


@only("cpu")
def test_double_backward_goes_through_the_oracle():
    """create_graph=True: the op's backward recomputes through reference_bf16 (ops/glue.py)."""
    inputs, schedule = layer_inputs(4, 2, 3, 5), tr.full(4)
    args = [inputs[n] for n in NAMES] + [schedule.cut, schedule.scale.float()]

    def grad_norm(fn, **kw):
        y, _, _ = fn(*args, **kw)
        (gw,) = torch.autograd.grad(y.square().sum(), inputs["w_hh"], create_graph=True)
        return torch.autograd.grad(gw.square().sum(), inputs["w_ih"])[0]
    # the kernels' y (their float32 sums) enters the second-order term: SEQUENCE_TOL, not exact
    got, ref = grad_norm(cpu_lstm.lstm_layer, bf16_gemm="emulated"), grad_norm(RB.lstm_layer)
    assert max_rel_error([got], [ref]) <= SEQUENCE_TOL


# ---------------------------------------------------------------- fastrnn.LSTM under torch.autocast

def _module_case(num_layers=2):
    torch.manual_seed(3)
    model = fastrnn.LSTM(4, 12, num_layers=num_layers, backend="cpu")
    x = torch.randn(10, 3, 4)
    hx = (torch.randn(num_layers, 3, 12) * 0.5, torch.randn(num_layers, 3, 12) * 0.5)
    return model, x, hx


def _oracle_module(model, x, hx):
    """The stack of layers by hand on reference_bf16: float32 inputs unrounded, outputs rounded at the end."""
    s = tr.full(x.shape[0])
    h_n, c_n = [], []
    for layer in range(model.num_layers):
        p = [getattr(model, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        x, h, c = RB.lstm_layer(x, *p, hx[0][layer], hx[1][layer], s.cut, s.scale.float())
        h_n.append(h)
        c_n.append(c)
    return [t.bfloat16() for t in (x, torch.stack(h_n), torch.stack(c_n))]


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params(auto=True))
def test_module_under_autocast(kernel, monkeypatch):
    """Outputs in bfloat16 as torch.nn.LSTM under autocast; float32 gradients for the float32 parameters and
    input; equal to the layers of the oracle. FASTRNN_BF16_GEMM picks the kernel."""
    monkeypatch.setenv("FASTRNN_BF16_GEMM", kernel)
    model, x, hx = _module_case()
    x.requires_grad_()
    params = list(model.parameters()) + [x]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h_n, c_n) = model(x, hx)
    assert y.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum() + h_n.float().sum(), params)
    assert all(g.dtype == torch.float32 for g in grads)
    ref = _oracle_module(model, x, hx)
    ref_grads = torch.autograd.grad(ref[0].float().sum() + ref[1].float().sum(), params)
    for a, b in zip((y, h_n, c_n), ref):    # bfloat16 outputs: equal, or one rounding apart
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-6)
    assert max_rel_error(grads, ref_grads) <= SEQUENCE_TOL


@only("cpu")
@pytest.mark.parametrize("value", ["fastest", "AUTO", " auto"])
def test_module_forced_kernel_error(monkeypatch, value):
    monkeypatch.setenv("FASTRNN_BF16_GEMM", value)
    model, x, hx = _module_case(1)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="FASTRNN_BF16_GEMM="):
        model(x, hx)


@only("cpu")
def test_empty_kernel_variable_is_auto(monkeypatch):
    model, x, hx = _module_case(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setenv("FASTRNN_BF16_GEMM", "")
        y_empty = model(x, hx)[0]
        monkeypatch.setenv("FASTRNN_BF16_GEMM", "auto")
        y_auto = model(x, hx)[0]
    assert torch.equal(y_empty, y_auto)


@only("cpu")
@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("make", [fastrnn.LSTM, functools.partial(fastrnn.SABLSTM, k_top=2, k_att=2)],
                         ids=["LSTM", "SABLSTM"])
def test_torch_func_grad_under_autocast(backend, make):
    """Inside a torch.func transform the mixed path runs its oracle (docs/CONTRACT.md; reference_bf16's
    lstm_layer or sab_layer): the same gradient as plain autograd through the module (the mixed ops)."""
    torch.manual_seed(0)
    model = make(4, 5, backend=backend)
    x = torch.randn(6, 3, 4)

    def loss(inp):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(inp)[0].float().sum()
    grad = torch.func.grad(loss)(x)
    x_ = x.clone().requires_grad_()
    loss(x_).backward()
    assert max_rel_error([grad], [x_.grad]) <= SEQUENCE_TOL



@pytest.mark.parametrize("make", [fastrnn.LSTM, fastrnn.SABLSTM], ids=["LSTM", "SABLSTM"])
def test_torch_func_vmap_and_jvp_under_autocast(make):
    """vmap and jvp (README: torch.func transforms run the oracle with backend="auto") under autocast: vmap
    equals a loop over the samples, and jvp's tangent is the float32 one to bfloat16 rounding."""
    torch.manual_seed(0)
    model = make(3, 8)
    xs, t = torch.randn(4, 6, 2, 3), torch.randn(6, 2, 3)

    def loss(inp):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(inp)[0].float().sum()
    assert torch.equal(torch.func.vmap(loss)(xs), torch.stack([loss(x) for x in xs]))
    _, tangent = torch.func.jvp(loss, (xs[0],), (t,))
    _, tangent32 = torch.func.jvp(lambda inp: model(inp)[0].sum(), (xs[0],), (t,))
    assert (tangent - tangent32).detach().abs() <= 2e-2 * tangent32.detach().abs()


def test_bf16_matmul_jvp_rounds_the_tangents():
    """The oracle's forward mode: d(r(a) r(b)) along (ta, tb) is r(ta) r(b) + r(a) r(tb)."""
    r = lambda u: u.bfloat16().float()
    a, b, ta, tb = (torch.randn(3, 4), torch.randn(4, 5), torch.randn(3, 4), torch.randn(4, 5))
    out, tangent = torch.func.jvp(RB.bf16_matmul, (a, b), (ta, tb))
    assert torch.equal(out, r(a) @ r(b))
    torch.testing.assert_close(tangent, r(ta) @ r(b) + r(a) @ r(tb), rtol=1e-6, atol=1e-6)
