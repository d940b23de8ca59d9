"""The cpu backend's bfloat16 mixed precision for the SAB layer (docs/SPEC.md section 10): the ops
fastrnn::sab_mixed_forward / sab_mixed_backward with each GEMM kernel this machine can run, against their
plain-autograd oracle fastrnn.reference_bf16.sab_layer (outputs, the attention record, new slots and the
gradient of every input), on NaN-poisoned buffers, for both scorers, both slot states, lengths, streaming
memory, per-row resets and [T, B] schedules; their argument errors; opcheck; fastrnn.SABLSTM under
torch.autocast (inside torch.func transforms: test_bf16_mixed.py's test_torch_func_grad_under_autocast);
and that the result is the mixed math (bfloat16-close to float32, not equal to it).

The kernels sum in float32 in another order than the oracle, so a top-k selection could flip on a near-tie
and change the result by far more than rounding: every comparison first asserts the attention record
(idx) equal, on random inputs where ties are unlikely (k_top below the number of slots). Tolerances are
test_bf16_mixed.py's (relative to the largest element of each result): one step with the attention over
a carried memory at STEP_TOL for the outputs, sequences at SEQUENCE_TOL. One step's gradients get
STEP_GRAD_TOL = 1e-4: unlike the LSTM layer's, their dG already holds the attention's float32 backward,
whose sums (and the cpu mlp scorer's rational tanh) differ from the oracle's by ~1e-6 relative as in the
float32 op; a 1-ulp difference can flip the bfloat16 rounding of one dG element (2^-8 relative to it)
before the GEMMs: measured up to 3.6e-5 (dx, mlp, B = 33; 0 where no rounding flips), while the float32
math is 2.4e-3 or more away. The linear scorer's d att_wh and d att_b are
rounding noise around an exact zero on both sides (tests/helpers.py LINEAR_QUERY_NOISE), bounded by the
largest d att_wm.
"""
import pytest
import torch

import fastrnn
from fastrnn import reference as R
from fastrnn import reference_bf16 as RB
from fastrnn import truncation as tr
from fastrnn.ops import sab as cpu_sab

from helpers import LINEAR_QUERY_NOISE, only
from test_bf16_mixed import STEP_TOL, SEQUENCE_TOL, CAPS, kernel_params

STEP_GRAD_TOL = 1e-4

NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "att_wh", "att_wm", "att_vb", "h0", "c0")


def sab_inputs(T, B, I, H, scorer, A=6, S0=0, bias=True, seed=0):
    """Leaf float32 tensors: x, h0, c0 (and a carried memory [B, S0, H] when S0 > 0) of scale 0.5, the LSTM
    weights of torch.nn.LSTM's scale 1/sqrt(H), the scorer's of scale 1 (distinct scores: no near-ties)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(scale, *shape):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()
    w = H ** -0.5
    att = (dict(att_wh=leaf(1, A, H), att_wm=leaf(1, A, H), att_vb=leaf(1, A)) if scorer == "mlp"
           else dict(att_wh=leaf(1, H), att_wm=leaf(1, H), att_vb=leaf(1, 1)))
    return dict(x=leaf(0.5, T, B, I), w_ih=leaf(w, 4 * H, I), w_hh=leaf(w, 4 * H, H),
                b_ih=leaf(w, 4 * H) if bias else None, b_hh=leaf(w, 4 * H) if bias else None, **att,
                h0=leaf(0.5, B, H), c0=leaf(0.5, B, H), memory=leaf(0.5, B, S0, H) if S0 else None)


def run(fn, inputs, cut, scale, **kw):
    """The float results (y, h_n, c_n[, new_slots]), the attention record's indices, and the gradient of
    every leaf input (memory included) of a fixed random weighting of the float results."""
    args = [inputs[n] for n in NAMES]
    out = fn(*args, cut, scale, memory=inputs["memory"], need_attention=True, **kw)
    floats = [out[0], out[1], out[2], *out[4:]]
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in floats if o.requires_grad)
    names = [n for n in (*NAMES, "memory") if inputs[n] is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names], allow_unused=True)
    grads = {n: torch.zeros_like(inputs[n]) if d is None else d for n, d in zip(names, grads)}
    return [o.detach() for o in floats], out[3].indices, grads


def assert_close_to_oracle(got, ref, tol, scorer, grad_tol=None):
    """Indices equal, then every float result within tol and every gradient within grad_tol (default tol)
    relative to its largest element."""
    (out, idx, grads), (rout, ridx, rgrads) = got, ref
    assert torch.equal(idx, ridx), "attention record differs (a top-k flip: choose another seed/shape)"
    assert grads.keys() == rgrads.keys()
    results = ([(f"output {i}", a, b, tol) for i, (a, b) in enumerate(zip(out, rout))] +
               [(n, grads[n], rgrads[n], tol if grad_tol is None else grad_tol) for n in grads])
    for name, a, b, bound in results:
        assert a.dtype == torch.float32 and not a.isnan().any(), name
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            bound = LINEAR_QUERY_NOISE[torch.float32] * rgrads["att_wm"].abs().max()
            assert a.abs().max() <= bound and b.abs().max() <= bound, name
            continue
        if not b.numel():
            continue
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        assert err <= bound, f"{name}: max error {err:.2e} relative to the largest element > {bound}"


def check(kernel, T, B, I, H, scorer, tol, *, grad_tol=None, provisional=True, S0=0, bias=True, seed=0,
          schedule=None, **kw):
    """The op with `kernel` against reference_bf16.sab_layer on sab_inputs(...). schedule(T, B) -> (cut,
    scale) (default: k_trunc-style cuts every 5 steps, scale 1)."""
    cut, scale = schedule(T, B) if schedule else (tr.fixed(T, 5).cut, torch.ones(T))
    options = dict(k_top=kw.pop("k_top", 2), k_att=kw.pop("k_att", 1), scorer=scorer, provisional=provisional,
                   **kw)
    ref = run(RB.sab_layer, sab_inputs(T, B, I, H, scorer, S0=S0, bias=bias, seed=seed), cut, scale, **options)
    got = run(cpu_sab.sab_layer, sab_inputs(T, B, I, H, scorer, S0=S0, bias=bias, seed=seed), cut, scale,
              bf16_gemm=kernel, **options)
    assert_close_to_oracle(got, ref, tol, scorer, grad_tol)
    return got, ref


SCORERS = ["linear", "mlp"]
SLOTS = [pytest.param(True, id="provisional"), pytest.param(False, id="final")]


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("provisional", SLOTS)
@pytest.mark.parametrize("B, H", [(3, 17), (33, 16)])
def test_one_step_over_a_memory_matches_the_oracle_tightly(kernel, scorer, provisional, B, H, poison):
    """T = 1 reading a carried memory of 5 slots (top-2 of 5): every part of the layer, one step of
    rounding; H = 17 an odd K for the packed kernels, B = 33 uneven row blocks."""
    check(kernel, 1, B, 4, H, scorer, STEP_TOL, grad_tol=STEP_GRAD_TOL, provisional=provisional, S0=5,
          return_slots=True, step0=0)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("provisional", SLOTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_sequences_match_the_oracle(kernel, scorer, provisional, bias, poison):
    check(kernel, 14, 5, 3, 20, scorer, SEQUENCE_TOL, provisional=provisional, bias=bias, k_top=3, k_att=2)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
def test_lengths(kernel, scorer, poison):
    check(kernel, 10, 5, 3, 12, scorer, SEQUENCE_TOL, lengths=torch.tensor([10, 0, 4, 1, 7]))


def _row_schedule(T, B):
    """A [T, B] schedule: row b cut every (b + 2) steps, a different scale per (step, row)."""
    g = torch.Generator().manual_seed(T * B)
    cut = (torch.arange(T).unsqueeze(1) % (torch.arange(B) + 2).unsqueeze(0)) == 0
    return cut, torch.rand(T, B, generator=g) + 0.5


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
def test_per_row_schedule(kernel, scorer, poison):
    check(kernel, 12, 4, 3, 12, scorer, SEQUENCE_TOL, schedule=_row_schedule, k_att=2)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("provisional", SLOTS)
def test_streaming_memory(kernel, scorer, provisional, poison):
    """A continued call: carried memory (its gradient dmemory), step0 off the slot grid, new_slots returned
    with a gradient (grad_new_slots)."""
    check(kernel, 9, 4, 3, 12, scorer, SEQUENCE_TOL, provisional=provisional, S0=4, step0=5, k_att=3,
          return_slots=True)


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("provisional", SLOTS)
def test_per_row_resets(kernel, scorer, provisional, poison):
    """Rows reset at different steps (step 0 included), a left-padded carried memory (slot_offset) and
    per-row step counters, new_slots returned."""
    T, B = 10, 4
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 1] = reset[4, 0] = reset[6, 2] = reset[7, 0] = True
    check(kernel, T, B, 3, 12, scorer, SEQUENCE_TOL, provisional=provisional, S0=3, k_att=2, return_slots=True,
          reset=reset, slot_offset=torch.tensor([0, 1, 2, 0]), row_step0=torch.tensor([3, 0, 5, 8]))


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params())
@pytest.mark.parametrize("scorer", SCORERS)
def test_long_sequence_matches_the_oracle(kernel, scorer):
    check(kernel, 80, 8, 6, 32, scorer, SEQUENCE_TOL, k_top=3, k_att=4)


@only("cpu")
def test_kernels_agree_with_each_other():
    """Every kernel this machine runs gives the same math: they differ in the order of float32 sums only."""
    inputs = lambda: sab_inputs(8, 4, 5, 24, "mlp")   # noqa: E731
    cut, scale = tr.full(8).cut, torch.ones(8)
    results = [run(cpu_sab.sab_layer, inputs(), cut, scale, k_top=2, k_att=2, scorer="mlp", provisional=True,
                   bf16_gemm=p.values[0]) for p in kernel_params() if not p.marks or not p.marks[0].args[0]]
    for other in results[1:]:
        assert_close_to_oracle(other, results[0], SEQUENCE_TOL, "mlp")


@only("cpu")
@pytest.mark.parametrize("scorer", SCORERS)
def test_it_is_the_mixed_math(scorer):
    """bfloat16-close to the float32 layer, and far from equal to it (so every rounding of the LSTM GEMMs
    happens), on the kernel "auto" picks. Outputs within 1e-2 (measured 4e-3); gradients within 0.1
    (measured up to 7e-2, mlp): the attention's backward divides by the weights' normaliser and the
    selected scores' differences, which amplify the LSTM part's bfloat16 rounding (tests/helpers.py
    BF16_TOL allows 0.25 for the whole layer in bfloat16). The oracle is as far from float32 as the kernel."""
    T = 12
    cut, scale = tr.full(T).cut, torch.ones(T)
    options = dict(k_top=2, k_att=2, scorer=scorer, provisional=True)
    mixed = run(cpu_sab.sab_layer, sab_inputs(T, 4, 5, 16, scorer), cut, scale, bf16_gemm="auto", **options)
    fp32 = run(R.sab_layer, sab_inputs(T, 4, 5, 16, scorer), cut, scale, **options)
    assert torch.equal(mixed[1], fp32[1])
    out_errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(mixed[0], fp32[0])]
    grad_errors = [float((mixed[2][n] - fp32[2][n]).abs().max() / fp32[2][n].abs().max())
                   for n in ("x", "w_ih", "w_hh", "h0", "c0", "att_wm")]
    assert max(out_errors) <= 1e-2 and max(grad_errors) <= 0.1
    assert min(max(out_errors), max(grad_errors)) > 100 * STEP_TOL


@only("cpu")
def test_double_backward_goes_through_the_oracle():
    """create_graph=True: the op's backward recomputes through reference_bf16.sab_layer (ops/glue.py). The
    second-order term of the LSTM weights, as test_bf16_mixed.py's: one of the attention weights (d/d att_wh
    of |dL/dw_hh|^2) is a small difference of larger terms, where the kernels' float32 y (1e-6 from the
    oracle's) moved it by 4.5 % of its largest element."""
    inputs = sab_inputs(5, 2, 3, 6, "mlp")
    args = [inputs[n] for n in NAMES] + [tr.full(5).cut, torch.ones(5)]
    options = dict(k_top=1, k_att=1, scorer="mlp", provisional=True)

    def second_order(fn, **kw):
        y = fn(*args, **options, **kw)[0]
        (gw,) = torch.autograd.grad(y.square().sum(), inputs["w_hh"], create_graph=True)
        return torch.autograd.grad(gw.square().sum(), inputs["w_ih"])[0]
    # the kernels' y (their float32 sums) enters the second-order term: SEQUENCE_TOL, not exact
    got, ref = second_order(cpu_sab.sab_layer, bf16_gemm="emulated"), second_order(RB.sab_layer)
    assert float((got - ref).abs().max() / ref.abs().max()) <= SEQUENCE_TOL


# ---------------------------------------------------------------- the ops' arguments

def _op_args(dtype=torch.float32, scorer="mlp"):
    a = {k: v.detach().to(dtype) for k, v in sab_inputs(4, 3, 5, 6, scorer).items() if v is not None}
    s = tr.fixed(4, 2)
    return ([a[n] for n in NAMES] + [s.cut, s.scale.to(dtype)] + [None, None, 0, None, None, None] +
            [2, 1, scorer, True])


@only("cpu")
@pytest.mark.parametrize("gemm, message", [
    ("bf16", "gemm must be 'auto', 'emulated', 'mkl' or 'avx512bf16', got 'bf16'"),
    ("", "gemm must be"),
])
def test_unknown_kernel_is_refused(gemm, message):
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_mixed_forward: {message}"):
        torch.ops.fastrnn.sab_mixed_forward(*_op_args(), gemm)


@only("cpu")
@pytest.mark.parametrize("kernel, capability", [("mkl", "mkl"), ("avx512bf16", "avx512bf16")])
def test_a_kernel_runs_where_the_cpu_has_it_and_is_refused_elsewhere(kernel, capability):
    """Forced: where the CPU has the kernel it runs (finite outputs); where it lacks it, a RuntimeError naming
    it, never a crash. Which branch a machine takes depends on its CPU; each asserts."""
    if CAPS[capability]:
        y = torch.ops.fastrnn.sab_mixed_forward(*_op_args(), kernel)[0]
        assert y.isfinite().all()
        return
    with pytest.raises(RuntimeError, match=f"gemm='{kernel}' needs"):
        torch.ops.fastrnn.sab_mixed_forward(*_op_args(), kernel)


@only("cpu")
def test_float64_is_refused():
    with pytest.raises(RuntimeError, match="fastrnn::sab_mixed_forward: x must be float32, got Double"):
        torch.ops.fastrnn.sab_mixed_forward(*_op_args(torch.float64), "auto")
    args = _op_args()
    args[6] = args[6].double()    # att_wm
    with pytest.raises(RuntimeError, match="fastrnn::sab_mixed_forward: att_wm must have dtype Float"):
        torch.ops.fastrnn.sab_mixed_forward(*args, "auto")
    with pytest.raises(RuntimeError, match="must be float32"):
        cpu_sab.sab_layer(*_op_args(torch.float64)[:12], k_top=2, k_att=1, scorer="mlp", provisional=True,
                          bf16_gemm="emulated")


def _backward_args(scorer="mlp"):
    args = _op_args(scorer=scorer)
    out = torch.ops.fastrnn.sab_mixed_forward(*args, "emulated")
    (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset,
     slot_offset, row_step0, k_top, k_att, scorer, provisional) = args
    y, h_n, c_n = out[:3]
    return [torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n), None, x, w_ih, w_hh, att_wh,
            att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset, slot_offset, row_step0, y,
            *out[3:11], k_top, k_att, scorer, provisional, True]


@only("cpu")
def test_backward_checks_its_arguments():
    args = _backward_args()
    with pytest.raises(RuntimeError, match="fastrnn::sab_mixed_backward: gemm must be"):
        torch.ops.fastrnn.sab_mixed_backward(*args, "nope")
    args[21] = args[21][:, :, :-1].contiguous()    # gates
    with pytest.raises(RuntimeError, match="fastrnn::sab_mixed_backward: gates must have shape"):
        torch.ops.fastrnn.sab_mixed_backward(*args, "emulated")


@only("cpu")
@pytest.mark.parametrize("scorer", SCORERS)
def test_opcheck(scorer):
    torch.library.opcheck(torch.ops.fastrnn.sab_mixed_forward.default, _op_args(scorer=scorer) + ["emulated"])
    torch.library.opcheck(torch.ops.fastrnn.sab_mixed_backward.default, _backward_args(scorer) + ["emulated"])


# ---------------------------------------------------------------- fastrnn.SABLSTM under torch.autocast

def _module_case(scorer="mlp", num_layers=2):
    torch.manual_seed(3)
    model = fastrnn.SABLSTM(4, 12, num_layers=num_layers, k_top=2, k_att=2, attention=scorer, backend="cpu")
    x = torch.randn(10, 3, 4)
    hx = (torch.randn(num_layers, 3, 12) * 0.5, torch.randn(num_layers, 3, 12) * 0.5)
    return model, x, hx


def _oracle_module(model, x, hx):
    """The stack of layers by hand on reference_bf16.sab_layer: float32 inputs unrounded, outputs rounded
    at the end; also the attention indices of every layer."""
    s = tr.full(x.shape[0])
    h_n, c_n, indices = [], [], []
    for layer in range(model.num_layers):
        p = [getattr(model, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        att = [getattr(model, f"{n}_l{layer}") for n in ("att_wh", "att_wm",
                                                         "att_v" if model.attention == "mlp" else "att_b")]
        x, h, c, record = RB.sab_layer(x, *p, *att, hx[0][layer], hx[1][layer], s.cut, s.scale.float(),
                                       k_top=model.k_top, k_att=model.k_att, scorer=model.attention,
                                       provisional=model.slot_state == "provisional", need_attention=True)
        h_n.append(h)
        c_n.append(c)
        indices.append(record.indices)
    return [t.bfloat16() for t in (x, torch.stack(h_n), torch.stack(c_n))], indices


@only("cpu")
@pytest.mark.parametrize("kernel", kernel_params(auto=True))
@pytest.mark.parametrize("scorer", SCORERS)
def test_module_under_autocast(kernel, scorer, monkeypatch):
    """Outputs in bfloat16 as every autocast output; float32 gradients for the float32 parameters and input;
    equal to the layers of the oracle. FASTRNN_BF16_GEMM picks the kernel."""
    monkeypatch.setenv("FASTRNN_BF16_GEMM", kernel)
    model, x, hx = _module_case(scorer)
    x.requires_grad_()
    params = list(model.parameters()) + [x]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h_n, c_n), attention = model(x, hx, return_attention=True)
    assert y.dtype == h_n.dtype == c_n.dtype == attention[0].weights.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum() + h_n.float().sum(), params)
    assert all(g.dtype == torch.float32 for g in grads)
    ref, ref_indices = _oracle_module(model, x, hx)
    for a, b in zip(attention, ref_indices):
        assert torch.equal(a.indices, b)
    ref_grads = torch.autograd.grad(ref[0].float().sum() + ref[1].float().sum(), params)
    for a, b in zip((y, h_n, c_n), ref):    # bfloat16 outputs: equal, or one rounding apart
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-6)
    for (name, _), a, b in zip([*model.named_parameters(), ("x", x)], grads, ref_grads):
        if scorer == "linear" and name.startswith(("att_wh", "att_b")):
            continue    # rounding noise around an exact zero on both sides (tests/helpers.py)
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        assert err <= SEQUENCE_TOL, f"d{name}: {err:.2e}"


@only("cpu")
def test_module_forced_kernel_error(monkeypatch):
    monkeypatch.setenv("FASTRNN_BF16_GEMM", "fastest")
    model, x, hx = _module_case(num_layers=1)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="FASTRNN_BF16_GEMM="):
        model(x, hx)


@only("cpu")
def test_module_streams_under_autocast():
    """Chunks carrying the state run the mixed ops too: the bfloat16 state returned, continued, equal to the
    oracle's layer on the same float32 values of the carried state."""
    torch.manual_seed(1)
    model = fastrnn.SABLSTM(3, 8, k_top=2, k_att=2, backend="cpu")
    x = torch.randn(9, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, state = model(x[:5], return_state=True)
        y, (h_n, _), state2 = model(x[5:], state=state, return_state=True)
    assert state.dtype == state2.dtype == y.dtype == torch.bfloat16
    layer = state.layers[0]
    p = [getattr(model, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "att_wh", "att_wm",
                                            "att_v")]
    s = tr.full(4)
    y_ref, h_ref, _, _ = RB.sab_layer(x[5:], *p, layer.h.float(), layer.c.float(), s.cut, s.scale.float(),
                                      k_top=2, k_att=2, scorer="mlp", provisional=True,
                                      memory=layer.memory.float(), step0=5 % 2)
    torch.testing.assert_close(y.float(), y_ref.bfloat16().float(), rtol=2 ** -7, atol=1e-6)
    torch.testing.assert_close(h_n[0].float(), h_ref.bfloat16().float(), rtol=2 ** -7, atol=1e-6)
