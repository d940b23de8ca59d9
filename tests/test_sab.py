"""sab_layer of every backend in fastrnn.available_backends() (the reference aside) against
fastrnn.reference.sab_layer: outputs, every gradient and the attention record, on many random
configurations (both scorers, provisional and final slots, k_top >= T, k_top = 1, A != H, B = 0, I = 0,
exact ties, several backward chunks), in float64 (1e-9 relative) and float32 (tests/helpers.py TOL); every
freshly allocated buffer poisoned with NaN; determinism; the SABLSTM module end to end; bfloat16 where the
backend takes it. Then the backend-specific checks, marked per backend: the cpu ops' opcheck, argument
errors and torch.compile(fullgraph=True); the triton layer's argument errors.

Under TRITON_INTERPRET=1 one SAB step forward and backward costs the triton backend ~0.2 s, so triton runs
a representative subset of the configurations (TRITON_CONFIGS below) and of the long and determinism
cases; every other case runs on every backend.
"""
import pytest
import torch

import fastrnn
from fastrnn import reference, truncation
from fastrnn.ops import sab as cpu_sab

from helpers import (BACKENDS, BF16_BACKENDS, NEW_SLOTS_VIEW_CASES, TOL, assert_bf16_close, assert_equal_results, backend_params,
                     check_layer, layer_args, layer_fn, only, reference_case, run_with_grads, schedule_args,
                     shares_memory)

# (T, B, I, H, A, k_top, k_att, scorer, provisional, schedule, bias)
CONFIGS = [
    (1, 2, 3, 4, 4, 5, 1, "mlp", False, "full", True),         # T = 1: one slot (h0)
    (1, 3, 2, 5, None, 1, 2, "linear", True, "full", True),
    (9, 3, 4, 5, 7, 2, 1, "mlp", False, "fixed3", True),        # |M| crosses k_top early, A != H
    (9, 3, 4, 5, 3, 2, 1, "mlp", True, "fixed3", False),        # bias None
    (12, 2, 3, 6, 6, 3, 2, "mlp", False, "artbp", True),
    (12, 2, 3, 6, 6, 3, 2, "mlp", True, "artbp", True),
    (16, 4, 5, 8, 5, 1, 3, "mlp", False, "full", True),         # k_top = 1
    (16, 4, 5, 8, None, 1, 3, "linear", False, "fixed4", True),
    (10, 2, 3, 4, 4, 12, 1, "mlp", False, "fixed4", True),      # k_top >= T: |M| never exceeds k_top
    (10, 2, 3, 4, None, 12, 1, "linear", True, "full", True),
    (20, 3, 4, 6, 9, 5, 2, "mlp", True, "fixed5", True),        # the module defaults k_top=5, k_att=2
    (20, 3, 4, 6, None, 5, 2, "linear", False, "artbp", True),
    (20, 3, 4, 6, None, 5, 2, "linear", True, "fixed5", False),
    (14, 1, 2, 3, 2, 4, 3, "mlp", True, "full", True),          # B = 1
    (13, 5, 3, 17, 11, 3, 2, "mlp", False, "artbp", True),      # H, A not multiples of the SIMD width
    (13, 5, 3, 17, None, 3, 2, "linear", True, "fixed2", True),
    (60, 4, 3, 8, 8, 5, 1, "mlp", True, "artbp", True),         # 61 slots: long runs of the ranking
    (60, 4, 3, 8, None, 4, 1, "linear", False, "fixed7", True),
    (6, 2, 0, 1, 2, 2, 1, "mlp", True, "full", True),          # I = 0, H = 1
    (5, 0, 3, 4, 3, 2, 1, "mlp", False, "fixed2", True),        # B = 0
]
# H = 16 (a 16-wide tile of the Triton kernels), both scorers and slot states, every schedule kind
LAYER_CONFIGS = [
    (8, 3, 5, 16, 12, 2, 1, "mlp", False, "full", True),        # A != H
    (8, 3, 5, 16, None, 3, 2, "mlp", True, "fixed3", True),
    (8, 3, 5, 16, None, 1, 3, "mlp", False, "artbp", True),     # k_top = 1
    (8, 3, 5, 16, None, 2, 1, "linear", False, "fixed3", True),
    (8, 3, 5, 16, None, 4, 2, "linear", True, "full", True),    # |M| <= k_top throughout
]
SHORT_CONFIGS = [
    (1, 2, 3, 16, None, 2, 1, "mlp", False, "full", True),      # T = 1
    (3, 2, 3, 16, None, 2, 5, "mlp", False, "full", True),      # k_att > T: the memory stays at h0
]
# float32: errors grow with T as |h_t| grows (docs/SPEC.md section 1), so the float32 cases stay at T <= 24
F64_CONFIGS = CONFIGS + LAYER_CONFIGS + SHORT_CONFIGS
F32_CONFIGS = [c for c in CONFIGS if c[0] <= 24][::2] + LAYER_CONFIGS
# Under TRITON_INTERPRET=1 one SAB step forward and backward costs the triton backend ~0.2 s: triton runs
# LAYER_CONFIGS in float64 and float32, SHORT_CONFIGS in float64, and of CONFIGS (float64) (2.5 to 12 s each there) the ones
# that add what those do not cover: T = 1 (both scorers), bias None, I = 0 with H = 1, and B = 0. The other
# features (A != H, k_top = 1, |M| <= k_top, k_att > T, both scorers and slot states, every schedule kind)
# are in LAYER_CONFIGS and SHORT_CONFIGS.
TRITON_CONFIGS = LAYER_CONFIGS + SHORT_CONFIGS + [CONFIGS[i] for i in (0, 1, 3, 18, 19)]


def cfg_id(c):
    return "-".join(map(str, c))


def cases(configs, triton=TRITON_CONFIGS):
    """(backend, cfg) for every backend and configuration; triton only for those in `triton`."""
    return [pytest.param(b, c, id=f"{b}-{cfg_id(c)}", marks=getattr(pytest.mark, b))
            for b in BACKENDS for c in configs if b != "triton" or c in triton]


def make_schedule(name, T, seed=0):
    if name == "full":
        return truncation.full(T)
    if name == "artbp":
        return truncation.artbp(T, 3.0, generator=torch.Generator().manual_seed(seed))
    return truncation.fixed(T, int(name[len("fixed"):]))


def sab_kw(cfg, need_attention=True):
    T, B, I, H, A, k_top, k_att, scorer, provisional, sched, bias = cfg
    return dict(k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=need_attention)


def check_cfg(backend, cfg, dtype, seed=0):
    """sab_layer of `backend` vs the reference on the configuration `cfg`; the reference's result is
    computed once per (cfg, dtype, seed) and shared by the backends. Returns (ours, ref)."""
    T, B, I, H, A, k_top, k_att, scorer, provisional, sched, bias = cfg
    schedule = make_schedule(sched, T, seed)
    kw = sab_kw(cfg)

    def make_args():
        torch.manual_seed(seed)
        return layer_args(T, B, I, H, A=A, scorer=scorer, bias=bias, dtype=dtype)

    args, ref = reference_case(("sab", cfg, dtype, seed), make_args, "sab_layer", schedule, dtype, **kw)
    return check_layer(backend, "sab_layer", args, schedule, dtype, ref=ref, **kw)


def run_backend(backend, cfg, dtype, seed=0, need_attention=True):
    """run_with_grads of `backend`'s sab_layer on the configuration's arguments."""
    T, B, I, H, A, k_top, k_att, scorer, provisional, sched, bias = cfg
    torch.manual_seed(seed)
    args = layer_args(T, B, I, H, A=A, scorer=scorer, bias=bias, dtype=dtype)
    s = schedule_args(make_schedule(sched, T, seed), dtype)
    return run_with_grads(layer_fn(backend, "sab_layer"), args, s, **sab_kw(cfg, need_attention))


# ---------------------------------------------------------------- every backend vs the reference

@pytest.mark.parametrize("backend,cfg", cases(F64_CONFIGS))
def test_float64_matches_reference(backend, cfg, poison):
    check_cfg(backend, cfg, torch.float64)


@pytest.mark.parametrize("backend,cfg", cases(F32_CONFIGS, triton=LAYER_CONFIGS))
def test_float32_matches_reference(backend, cfg, poison):
    check_cfg(backend, cfg, torch.float32)


def test_poison_is_active(poison):
    assert torch.isnan(torch.empty(3)).all()


# Bit-identical reruns at the fixed thread count (tests/conftest.py). triton: a shorter sequence (the
# cpu case takes ~12 s under the interpreter), still past k_top slots.
DETERMINISM = {"cpu": (30, 6, 4, 16, 16, 5, 2, "mlp", False, "artbp", True),
               "triton": (5, 6, 4, 16, 16, 2, 1, "mlp", False, "artbp", True)}


@pytest.mark.parametrize("backend", backend_params())
def test_deterministic(backend):
    cfg = DETERMINISM.get(backend, DETERMINISM["cpu"])
    assert_equal_results(run_backend(backend, cfg, torch.float32), run_backend(backend, cfg, torch.float32))


# The cpu backward folds the weight gradients (and d att_wh) in chunks of at most 64 steps per thread
# (csrc/cpu/sab_backward.cpp, chunk_steps). T = 197 = 3 * 64 + 5 is prime: several chunks, the first one
# swept partial, and a multiple of no chunk length. The shapes stay small (64-step chunks): at this T, wider
# ones (B=33, H=33) or final slots already put the float64 forward (y) or dc0 beyond 1e-9 of the reference.
# Not on triton: its reverse sweep has no chunks, and T = 197 takes ~40 s per case under the interpreter.
LONG_CONFIGS = [
    (197, 3, 4, 8, 6, 5, 2, "mlp", True, "fixed10", True),
    (197, 4, 3, 8, 8, 3, 3, "mlp", True, "artbp", False),
    (197, 2, 3, 6, None, 5, 2, "linear", False, "artbp", True),
]
CHUNKED = [b for b in BACKENDS if b != "triton"]


@pytest.mark.parametrize("backend", backend_params(CHUNKED))
@pytest.mark.parametrize("cfg", LONG_CONFIGS, ids=cfg_id)
def test_several_chunks_match_reference(backend, cfg, poison):
    check_cfg(backend, cfg, torch.float64)


@pytest.mark.parametrize("backend", backend_params(CHUNKED))
def test_several_chunks_deterministic(backend):
    T = 197
    args = layer_args(T, 5, 4, 16, A=16, scorer="mlp", dtype=torch.float32)
    s = schedule_args(make_schedule("artbp", T), torch.float32)
    kw = dict(k_top=5, k_att=2, scorer="mlp", provisional=True)
    fn = layer_fn(backend, "sab_layer")
    assert_equal_results(run_with_grads(fn, args, s, **kw), run_with_grads(fn, args, s, **kw))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
def test_unused_outputs(backend, used):
    """Gradients of unused outputs arrive as None (not materialized) and count as zero."""
    T, B, I, H = 7, 3, 2, 5
    args = layer_args(T, B, I, H, A=4, scorer="mlp", dtype=torch.float64)
    s = schedule_args(truncation.fixed(T, 3), torch.float64)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=False)
    pick = {"y": 0, "h_n": 1, "c_n": 2}[used]
    named = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    grads = torch.autograd.grad(layer_fn(backend, "sab_layer")(**args, **s, **kw)[pick].sum(),
                                list(named.values()))
    rgrads = torch.autograd.grad(reference.sab_layer(**args, **s, **kw)[pick].sum(), list(named.values()),
                                 allow_unused=True)
    for name, g, rg in zip(named, grads, rgrads):
        torch.testing.assert_close(g, torch.zeros_like(g) if rg is None else rg, **TOL[torch.float64],
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_exact_ties(backend, scorer):
    """Zero weights and state make every slot 0, so all scores tie exactly. While |M| <= k_top every
    slot is selected; after that the (k_top+1)-th score equals the top ones, so ã = relu(0) = 0 for all
    and nothing is selected (docs/CONTRACT.md tie rules)."""
    T, B, H, k_top = 6, 2, 4, 2
    args = layer_args(T, B, 3, H, A=H, scorer=scorer, dtype=torch.float64)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"):
            args[name].zero_()
    kw = dict(k_top=k_top, k_att=1, scorer=scorer, provisional=False, need_attention=True)
    ours, _ = check_layer(backend, "sab_layer", args, truncation.full(T), torch.float64, **kw)
    idx = ours[0][3].indices
    assert idx[0, :, 0].eq(0).all() and idx[1, :, :2].eq(torch.tensor([0, 1])).all()
    assert idx[2:].eq(-1).all()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("attention,slot_state", [("mlp", "final"), ("linear", "provisional")])
def test_sablstm_module_matches_reference(backend, attention, slot_state):
    """SABLSTM(backend=...) end to end: 2 layers, batch_first, k_trunc, float32."""
    kw = dict(num_layers=2, batch_first=True, k_top=2, k_att=2, k_trunc=3, attention=attention,
              slot_state=slot_state)
    ref = fastrnn.SABLSTM(4, 16, backend="reference", **kw)
    ours = fastrnn.SABLSTM(4, 16, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 4)
    results = []
    for model in (ref, ours):
        y, (h_n, c_n) = model(x)
        loss = (y * torch.linspace(-1, 1, 16)).sum() + h_n.square().sum() + c_n.sum()
        results.append((y, h_n, c_n, torch.autograd.grad(loss, list(model.parameters()))))
    (y_r, h_r, c_r, g_r), (y_o, h_o, c_o, g_o) = results
    for name, a, b in (("output", y_o, y_r), ("h_n", h_o, h_r), ("c_n", c_o, c_r)):
        torch.testing.assert_close(a, b, **TOL[torch.float32], msg=lambda m: f"{name}: {m}")
    for (name, _), a, b in zip(ref.named_parameters(), g_o, g_r):
        if attention == "linear" and name.startswith(("att_wh", "att_b")):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)   # zero up to rounding
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float32], msg=lambda m: f"d {name}: {m}")


# ---------------------------------------------------------------- bfloat16

@pytest.mark.parametrize("backend", backend_params(BF16_BACKENDS))
def test_bfloat16(backend):
    """bfloat16 storage, float32 accumulation: close to the float32 reference on the same rounded inputs
    (tests/helpers.py BF16_TOL)."""
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True)
    a32 = layer_args(8, 3, 5, 16, dtype=torch.float32)
    a16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in a32.items()}
    a_ref = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    sched = truncation.full(8)
    out_ref, g_ref = run_with_grads(reference.sab_layer, a_ref, schedule_args(sched, torch.float32), **kw)
    out, g = run_with_grads(layer_fn(backend, "sab_layer"), a16, schedule_args(sched, torch.bfloat16), **kw)
    assert_bf16_close(out, g, out_ref, g_ref)


@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b not in BF16_BACKENDS]))
def test_bfloat16_rejected(backend):
    """Backends without bfloat16 say so instead of computing in another dtype."""
    args = {k: v.detach().to(torch.bfloat16) for k, v in layer_args(3, 2, 3, 4, dtype=torch.float32).items()}
    with pytest.raises((RuntimeError, TypeError), match="float32"):
        layer_fn(backend, "sab_layer")(**args, **schedule_args(truncation.full(3), torch.bfloat16), k_top=2,
                                       k_att=1, scorer="mlp", provisional=False)


# ---------------------------------------------------------------- cpu: opcheck

def op_inputs(scorer, requires_grad, T=5, B=2, I=3, H=4, k_top=2, k_att=2, S0=None, step0=0, reset=None,
              slot_offset=None, row_step0=None):
    """sab_forward's arguments; S0: a carried memory [B, S0, H] (None: a fresh sequence); reset, slot_offset,
    row_step0: the per-row arguments (docs/CONTRACT.md "Per-row resets")."""
    args = layer_args(T, B, I, H, A=3 if scorer == "mlp" else None, scorer=scorer)
    if S0 is not None:
        args["memory"] = (torch.randn(B, S0, H, dtype=torch.float64) * 0.5).requires_grad_()
    if not requires_grad:
        args = {k: (v.detach() if v is not None else None) for k, v in args.items()}
    s = schedule_args(truncation.fixed(T, 2), torch.float64)
    return (args["x"], args["w_ih"], args["w_hh"], args["b_ih"], args["b_hh"], args["att_wh"], args["att_wm"],
            args["att_vb"], args["h0"], args["c0"], s["cut"], s["scale"], None, args.get("memory"), step0,
            reset, slot_offset, row_step0, k_top, k_att, scorer, True)


def backward_inputs(fwd, out, grads, grad_new_slots=None):
    """sab_backward's arguments after `out = sab_forward(*fwd)`: `grads` of (y, h_n, c_n), grad_new_slots."""
    (x, w_ih, w_hh, b_ih, _, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory, step0, reset, slot_offset,
     row_step0, k_top, k_att, scorer, provisional) = fwd
    return [*grads, grad_new_slots, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, memory,
            step0, reset, slot_offset, row_step0, out[0], *out[3:11], k_top, k_att, scorer, provisional,
            b_ih is not None]


@only("cpu")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_forward(scorer):
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, op_inputs(scorer, True))


@only("cpu")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_backward(scorer):
    fwd = op_inputs(scorer, False)
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.randn_like(t) for t in out[:3]])
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, tuple(args))


# Streaming: a memory of S0 = 3 slots, the call starting at global step 3 (off the k_att = 2 grid), so that
# it writes S1 = (3 + 5) // 2 - 3 // 2 = 3 slots.
@only("cpu")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_forward_with_memory(scorer):
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, op_inputs(scorer, True, S0=3, step0=3))


@only("cpu")
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_backward_with_memory(scorer):
    fwd = op_inputs(scorer, False, S0=3, step0=3)
    out = torch.ops.fastrnn.sab_forward(*fwd)
    assert out[11].shape == (2, 3, 4)
    args = backward_inputs(fwd, out, [torch.randn_like(t) for t in out[:3]], torch.randn_like(out[11]))
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, tuple(args))


@only("cpu")
@pytest.mark.parametrize("T,B,k_att", NEW_SLOTS_VIEW_CASES)
@pytest.mark.parametrize("provisional", [True, False], ids=["provisional", "final"])
def test_opcheck_forward_new_slots_is_fresh(T, B, k_att, provisional):
    """new_slots is a new tensor where the written states' slice is contiguous as it stands (one slot; one
    row with k_att = 1): no output of the op shares memory with another (opcheck's schema check rejects
    outputs that alias), hhat and y included."""
    args = op_inputs("mlp", True, T=T, B=B, k_att=k_att)[:-1] + (provisional,)
    out = torch.ops.fastrnn.sab_forward(*args)
    assert out[11].shape == (B, T // k_att, 4)
    for i in range(11):
        assert not shares_memory(out[11], out[i]), f"new_slots aliases output {i}"
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, args)


# ---------------------------------------------------------------- cpu: argument errors

def _bad(args, i, value):
    args = list(args)
    args[i] = value
    return tuple(args)


F64 = torch.float64
ERROR_CASES = [
    # (argument index, replacement builder, expected text)
    (2, lambda a: a[2][:, :3].contiguous(), "w_hh"),
    (1, lambda a: a[1].float(), "w_ih"),
    (8, lambda a: a[8].t().contiguous().t(), "h0"),                  # transposed view of a [B, H]
    (9, lambda a: a[9][:1], "c0"),
    (7, lambda a: a[7][:2], "att_vb"),
    (5, lambda a: a[5].t(), "att_wh"),
    (10, lambda a: a[10].to(torch.int64), "cut"),
    (11, lambda a: a[11][:2], "scale"),
    (3, lambda a: None, "b_ih and b_hh"),
    (18, lambda a: 0, "k_top"),
    (19, lambda a: 0, "k_att"),
    (20, lambda a: "dot", "scorer"),
    (0, lambda a: a[0][:0], "x"),
    (13, lambda a: torch.zeros(3, 2, 5, dtype=F64), r"memory must have shape \[B, S0, H\]"),
    (13, lambda a: torch.zeros(3, 0, 4, dtype=F64), r"memory must have shape .*S0 >= 1"),
    (13, lambda a: torch.zeros(3, 2, 4), "memory must have dtype"),
    (13, lambda a: torch.zeros(3, 4, 2, dtype=F64).transpose(1, 2), "memory must be contiguous"),
    (14, lambda a: -1, "step0 must be >= 0"),
]


@only("cpu")
@pytest.mark.parametrize("i,make,text", ERROR_CASES, ids=[c[2] for c in ERROR_CASES])
def test_forward_errors_name_the_argument(i, make, text):
    args = op_inputs("mlp", False, B=3, H=4)
    with pytest.raises(RuntimeError, match=text):
        torch.ops.fastrnn.sab_forward(*_bad(args, i, make(args)))


@only("cpu")
def test_forward_refuses_lengths_with_memory():
    args = _bad(op_inputs("mlp", False, B=3, H=4, S0=2), 12, torch.tensor([5, 2, 0]))
    with pytest.raises(RuntimeError, match="fastrnn::sab_forward: lengths cannot be combined with memory"):
        torch.ops.fastrnn.sab_forward(*args)


# In sab_backward's arguments (backward_inputs): grad_new_slots 3, lengths 14, memory 15, step0 16, reset 17,
# slot_offset 18, row_step0 19, idx 24.
BACKWARD_ERROR_CASES = [
    (24, lambda a: a[24][:, :, :1].contiguous(), "idx"),
    (3, lambda a: torch.zeros(2, 2, 4, dtype=F64), r"grad_new_slots must have shape \[2, 3, 4\]"),
    (3, lambda a: torch.zeros(2, 3, 4), "grad_new_slots must have dtype"),
    (15, lambda a: a[15][:, :2].contiguous(), "slot_keys must have shape"),   # another S0: slot_keys disagree
    (15, lambda a: a[15].float(), "memory must have dtype"),
    (16, lambda a: -1, "step0 must be >= 0"),
    (14, lambda a: torch.tensor([5, 2]), "lengths cannot be combined with memory"),
]


@only("cpu")
@pytest.mark.parametrize("i,make,text", BACKWARD_ERROR_CASES, ids=[c[2] for c in BACKWARD_ERROR_CASES])
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_backward_errors_name_the_argument(scorer, i, make, text):
    fwd = op_inputs(scorer, False, S0=3, step0=3)
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.zeros_like(t) for t in out[:3]], torch.zeros_like(out[11]))
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_backward: {text}"):
        torch.ops.fastrnn.sab_backward(*_bad(args, i, make(args)))


@only("cpu")
def test_backward_refuses_lengths_with_grad_new_slots():
    fwd = op_inputs("mlp", False)
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.zeros_like(t) for t in out[:3]], torch.zeros_like(out[11]))
    args[14] = torch.tensor([5, 2])
    with pytest.raises(RuntimeError, match="fastrnn::sab_backward: lengths cannot be combined with grad_new_slots"):
        torch.ops.fastrnn.sab_backward(*args)


# ---------------------------------------------------------------- cpu: torch.compile
# Without the caches: a cache entry compiled against an older build of the ops (another output list)
# would be reused, since the cache key does not cover a custom op's schema.
no_compile_cache = torch._inductor.config.patch(force_disable_caches=True)


@only("cpu")
@no_compile_cache
def test_compile_fullgraph_sab_layer():
    cfg = (7, 2, 3, 4, 5, 2, 2, "mlp", True, "fixed3", True)
    T, B, I, H, A, k_top, k_att, scorer, provisional, sched, bias = cfg
    args = layer_args(T, B, I, H, A=A, scorer=scorer, dtype=torch.float64)
    s = schedule_args(make_schedule(sched, T), torch.float64)
    kw = dict(k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional)

    def f(**a):
        y, h_n, c_n, att = cpu_sab.sab_layer(**a, need_attention=True, **kw)
        return y, h_n, c_n, att.indices

    compiled = torch.compile(f, fullgraph=True)
    out, grads = run_with_grads(compiled, args, s)
    rout, rgrads = run_with_grads(reference.sab_layer, args, s, need_attention=True, **kw)
    for a, b in zip(out[:3], rout[:3]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert torch.equal(out[3], rout[3].indices)
    for name in grads:
        torch.testing.assert_close(grads[name], rgrads[name], **TOL[torch.float64],
                                   msg=lambda m: f"grad {name}: {m}")


@only("cpu")
@no_compile_cache
def test_compile_fullgraph_module():
    torch.manual_seed(0)
    kw = dict(num_layers=2, k_top=3, k_att=2, dtype=torch.float64)
    cpu = fastrnn.SABLSTM(3, 5, backend="cpu", **kw)
    ref = fastrnn.SABLSTM(3, 5, backend="reference", **kw)
    ref.load_state_dict(cpu.state_dict())
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    compiled = torch.compile(cpu, fullgraph=True)
    y, (h, c) = compiled(x)
    (y.sum() + h.square().sum() + c.sum()).backward()
    ry, (rh, rc) = ref(x)
    (ry.sum() + rh.square().sum() + rc.sum()).backward()
    for a, b in ((y, ry), (h, rh), (c, rc)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    for (name, p), (_, rp) in zip(cpu.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, rp.grad, **TOL[torch.float64], msg=lambda m: f"grad {name}: {m}")


# ---------------------------------------------------------------- triton: argument errors

@only("triton")
def test_triton_sab_layer_checks_state_and_schedule_shapes():
    """h0, c0 (and with them the memory) must have x's batch size and the schedule x's length, as the cpu
    op checks: a batch-1 h0 / memory with batch-2 x read out of bounds, a short cut passed the forward and
    failed in backward with an IndexError, a long one was silently accepted."""
    fn = layer_fn("triton", "sab_layer")
    args = {k: v.detach() for k, v in layer_args(5, 2, 3, 4).items()}
    sched = schedule_args(truncation.full(5), torch.float64)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True)
    memory = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"h0 must have shape \[B, H\] = \[2, 4\], got \[1, 4\]"):
        fn(**dict(args, h0=args["h0"][:1], c0=args["c0"][:1]), **sched, memory=memory[:1], step0=6, **kw)
    with pytest.raises(ValueError, match=r"c0 must have shape \[B, H\] = \[2, 4\], got \[2, 3\]"):
        fn(**dict(args, c0=args["c0"][:, :3]), **sched, **kw)
    with pytest.raises(ValueError, match=r"memory must be \[B, S0, H\] = \[2"):
        fn(**args, **sched, memory=memory[:1], step0=6, **kw)
    for n in (3, 8):
        with pytest.raises(ValueError, match=rf"cut must have shape \[T\] = \[5\] \(or \[T, B\] = \[5, 2\].*got \[{n}\]"):
            fn(**args, cut=torch.zeros(n, dtype=torch.bool), scale=sched["scale"], **kw)
        with pytest.raises(ValueError, match=rf"scale must have shape \[T\] = \[5\], got \[{n}\]"):
            fn(**args, cut=sched["cut"], scale=torch.ones(n, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match=r"h0 must have shape \[B, H\]"):
        layer_fn("triton", "lstm_layer")(**{k: args[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "c0")},
                                         h0=args["h0"][:1], **sched)


@only("triton")
def test_triton_sab_layer_rejects_bad_arguments():
    fn = layer_fn("triton", "sab_layer")
    args = layer_args(2, 1, 2, 4, dtype=torch.float32)
    sched = schedule_args(truncation.full(2), torch.float32)
    with pytest.raises(ValueError, match="k_top"):
        fn(**args, **sched, k_top=0, k_att=1, scorer="mlp", provisional=False)
    with pytest.raises(ValueError, match="scorer"):
        fn(**args, **sched, k_top=1, k_att=1, scorer="dot", provisional=False)
    with pytest.raises(TypeError, match="att_wm"):
        fn(**dict(args, att_wm=args["att_wm"].double()), **sched, k_top=1, k_att=1, scorer="mlp",
           provisional=False)
    with pytest.raises(TypeError, match="x: .*int64"):
        fn(**dict(args, x=args["x"].long()), **sched, k_top=1, k_att=1, scorer="mlp", provisional=False)
