"""The CPU SAB layer ops (csrc/cpu/sab_*.cpp, fastrnn/ops/sab.py) against the reference oracle.

Outputs, every gradient and the attention record, on many random configurations, in float64 (1e-9
relative) and float32; every freshly allocated buffer of the ops poisoned with NaN; opcheck on both ops;
argument errors; determinism; torch.compile(fullgraph=True) forward and backward.
"""
import pytest
import torch

import fastrnn
from fastrnn import reference, truncation
from fastrnn.ops import sab as cpu_sab

from helpers import layer_args, run_with_grads, schedule_args

pytestmark = pytest.mark.skipif(not cpu_sab.available(), reason="native library not built")

# float32 tolerance: the ops sum in another order than the reference and the mlp scorer uses a rational
# tanh (a few ulp) in float32; errors grow with T as |h_t| grows (SPEC section 1), so the float32 cases
# stay at T <= 24.
TOL32 = dict(rtol=1e-3, atol=1e-4)
TOL64 = dict(rtol=1e-9, atol=1e-11)

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


def make_schedule(name, T, seed=0):
    if name == "full":
        return truncation.full(T)
    if name == "artbp":
        return truncation.artbp(T, 3.0, generator=torch.Generator().manual_seed(seed))
    return truncation.fixed(T, int(name[len("fixed"):]))


def run_both(cfg, dtype, seed=0):
    T, B, I, H, A, k_top, k_att, scorer, provisional, sched, bias = cfg
    torch.manual_seed(seed)
    args = layer_args(T, B, I, H, A=A, scorer=scorer, bias=bias, dtype=dtype)
    s = schedule_args(make_schedule(sched, T, seed), dtype)
    kw = dict(k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True)
    ours = run_with_grads(cpu_sab.sab_layer, args, s, **kw)
    ref = run_with_grads(reference.sab_layer, args, s, **kw)
    return ours, ref, scorer


def compare(ours, ref, scorer, tol):
    (out, grads), (rout, rgrads) = ours, ref
    for name, a, b in zip(("y", "h_n", "c_n"), out[:3], rout[:3]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(out[3].indices, rout[3].indices, rtol=0, atol=0)
    torch.testing.assert_close(out[3].weights, rout[3].weights, **tol)
    torch.testing.assert_close(out[3].slot_steps, rout[3].slot_steps, rtol=0, atol=0)
    assert set(grads) == set(rgrads)
    for name in grads:
        if scorer == "linear" and name in ("att_wh", "att_s"):
            # The query term of the linear score is shared by all slots and cancels in the threshold
            # (SPEC section 1): its exact gradient is zero, both sides hold rounding noise only.
            scale = rgrads["att_wm"].abs().max()
            noise = 1e-12 if grads[name].dtype == torch.float64 else 1e-4
            assert grads[name].abs().max() <= noise * scale, name
            assert rgrads[name].abs().max() <= noise * scale, name
            continue
        torch.testing.assert_close(grads[name], rgrads[name], **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.fixture
def poison():
    """Every torch.empty (the ops' outputs and work buffers included) filled with NaN / max int."""
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_float64_matches_reference(cfg, poison):
    compare(*run_both(cfg, torch.float64), TOL64)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c[0] <= 24][::2], ids=lambda c: "-".join(map(str, c)))
def test_float32_matches_reference(cfg, poison):
    compare(*run_both(cfg, torch.float32), TOL32)


def test_poison_is_active(poison):
    assert torch.isnan(torch.empty(3)).all()


def test_deterministic():
    cfg = (30, 6, 4, 16, 16, 5, 2, "mlp", False, "artbp", True)
    (out1, g1), _, _ = run_both(cfg, torch.float32)
    (out2, g2), _, _ = run_both(cfg, torch.float32)
    for a, b in zip(out1[:3], out2[:3]):
        assert torch.equal(a, b)
    assert torch.equal(out1[3].indices, out2[3].indices) and torch.equal(out1[3].weights, out2[3].weights)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


# The backward folds the weight gradients (and d att_wh) in chunks of at most 64 steps per thread
# (csrc/cpu/sab_backward.cpp, chunk_steps). T = 197 = 3 * 64 + 5 is prime: several chunks, the first one
# swept partial, and a multiple of no chunk length. The shapes stay small (64-step chunks): at this T, wider
# ones (B=33, H=33) or final slots already put the float64 forward (y) or dc0 beyond 1e-9 of the reference.
LONG_CONFIGS = [
    (197, 3, 4, 8, 6, 5, 2, "mlp", True, "fixed10", True),
    (197, 4, 3, 8, 8, 3, 3, "mlp", True, "artbp", False),
    (197, 2, 3, 6, None, 5, 2, "linear", False, "artbp", True),
]


@pytest.mark.parametrize("cfg", LONG_CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_several_chunks_match_reference(cfg, poison):
    compare(*run_both(cfg, torch.float64), TOL64)


def test_several_chunks_deterministic():
    T = 197
    args = layer_args(T, 5, 4, 16, A=16, scorer="mlp", dtype=torch.float32)
    s = schedule_args(make_schedule("artbp", T), torch.float32)
    kw = dict(k_top=5, k_att=2, scorer="mlp", provisional=True)
    _, g1 = run_with_grads(cpu_sab.sab_layer, args, s, **kw)
    _, g2 = run_with_grads(cpu_sab.sab_layer, args, s, **kw)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
def test_unused_outputs(used):
    """Gradients of unused outputs arrive as None (not materialized) and count as zero."""
    T, B, I, H = 7, 3, 2, 5
    args = layer_args(T, B, I, H, A=4, scorer="mlp", dtype=torch.float64)
    s = schedule_args(truncation.fixed(T, 3), torch.float64)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=False)
    pick = {"y": 0, "h_n": 1, "c_n": 2}[used]
    named = {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}
    grads = torch.autograd.grad(cpu_sab.sab_layer(**args, **s, **kw)[pick].sum(), list(named.values()))
    rgrads = torch.autograd.grad(reference.sab_layer(**args, **s, **kw)[pick].sum(), list(named.values()),
                                 allow_unused=True)
    for name, g, rg in zip(named, grads, rgrads):
        torch.testing.assert_close(g, torch.zeros_like(g) if rg is None else rg, **TOL64,
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_exact_ties(scorer):
    """Zero weights and state make every slot 0, so all scores tie exactly. While |M| <= k_top every
    slot is selected; after that the (k_top+1)-th score equals the top ones, so ã = relu(0) = 0 for all
    and nothing is selected (docs/CONTRACT.md tie rules)."""
    T, B, H, k_top = 6, 2, 4, 2
    args = layer_args(T, B, 3, H, A=H, scorer=scorer, dtype=torch.float64)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"):
            args[name].zero_()
    s = schedule_args(truncation.full(T), torch.float64)
    kw = dict(k_top=k_top, k_att=1, scorer=scorer, provisional=False, need_attention=True)
    ours = run_with_grads(cpu_sab.sab_layer, args, s, **kw)
    ref = run_with_grads(reference.sab_layer, args, s, **kw)
    idx = ours[0][3].indices
    assert idx[0, :, 0].eq(0).all() and idx[1, :, :2].eq(torch.tensor([0, 1])).all()
    assert idx[2:].eq(-1).all()
    compare(ours, ref, scorer, TOL64)


# ---- opcheck ---------------------------------------------------------------------------------------

def op_inputs(scorer, requires_grad, T=5, B=2, I=3, H=4, k_top=2, k_att=2):
    args = layer_args(T, B, I, H, A=3 if scorer == "mlp" else None, scorer=scorer)
    if not requires_grad:
        args = {k: (v.detach() if v is not None else None) for k, v in args.items()}
    s = schedule_args(truncation.fixed(T, 2), torch.float64)
    return (args["x"], args["w_ih"], args["w_hh"], args["b_ih"], args["b_hh"], args["att_wh"], args["att_wm"],
            args["att_s"], args["h0"], args["c0"], s["cut"], s["scale"], k_top, k_att, scorer, True)


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_forward(scorer):
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, op_inputs(scorer, True))


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_backward(scorer):
    fwd = op_inputs(scorer, False)
    x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att, _, prov = fwd
    out = torch.ops.fastrnn.sab_forward(*fwd)
    g = [torch.randn_like(t) for t in out[:3]]
    args = (*g, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, out[0], *out[3:],
            k_top, k_att, scorer, prov, True)
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, args)


# ---- argument errors -------------------------------------------------------------------------------

def _bad(args, i, value):
    args = list(args)
    args[i] = value
    return tuple(args)


ERROR_CASES = [
    # (argument index, replacement builder, expected text)
    (2, lambda a: a[2][:, :3].contiguous(), "w_hh"),
    (1, lambda a: a[1].float(), "w_ih"),
    (8, lambda a: a[8].t().contiguous().t(), "h0"),                  # transposed view of a [B, H]
    (9, lambda a: a[9][:1], "c0"),
    (7, lambda a: a[7][:2], "att_s"),
    (5, lambda a: a[5].t(), "att_wh"),
    (10, lambda a: a[10].to(torch.int64), "cut"),
    (11, lambda a: a[11][:2], "scale"),
    (3, lambda a: None, "b_ih and b_hh"),
    (12, lambda a: 0, "k_top"),
    (13, lambda a: 0, "k_att"),
    (14, lambda a: "dot", "scorer"),
    (0, lambda a: a[0][:0], "x"),
]


@pytest.mark.parametrize("i,make,text", ERROR_CASES, ids=[c[2] for c in ERROR_CASES])
def test_forward_errors_name_the_argument(i, make, text):
    args = op_inputs("mlp", False, B=3, H=4)
    with pytest.raises(RuntimeError, match=text):
        torch.ops.fastrnn.sab_forward(*_bad(args, i, make(args)))


def test_backward_errors_name_the_argument():
    fwd = op_inputs("linear", False)
    x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att, scorer, prov = fwd
    out = torch.ops.fastrnn.sab_forward(*fwd)
    g = [torch.zeros_like(t) for t in out[:3]]
    args = [*g, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, out[0], *out[3:],
            k_top, k_att, scorer, prov, True]
    args[17] = args[17][:, :, :1].contiguous()   # idx
    with pytest.raises(RuntimeError, match="idx"):
        torch.ops.fastrnn.sab_backward(*args)


# ---- torch.compile --------------------------------------------------------------------------------
# Without the caches: a cache entry compiled against an older build of the ops (another output list)
# would be reused, since the cache key does not cover a custom op's schema.
no_compile_cache = torch._inductor.config.patch(force_disable_caches=True)


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
        torch.testing.assert_close(a, b, **TOL64)
    assert torch.equal(out[3], rout[3].indices)
    for name in grads:
        torch.testing.assert_close(grads[name], rgrads[name], **TOL64, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.skipif("cpu" not in fastrnn.available_backends(), reason="cpu backend (LSTM ops) not built")
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
        torch.testing.assert_close(a, b, **TOL64)
    for (name, p), (_, rp) in zip(cpu.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, rp.grad, **TOL64, msg=lambda m: f"grad {name}: {m}")
