"""Variable length (issue #10): `lengths=` and PackedSequence on every backend.

Each sequence's outputs, memory and final state stop at its own length (docs/CONTRACT.md, "Variable
length"): equal, per sequence, to running it alone (outputs and every gradient, float64, 1e-10 relative:
the batched and the single-sequence runs take other BLAS paths), the attention record -1 / 0 past a
length; the per-layer functions of every backend against the reference with `lengths`; the C++ ops'
argument checks and opcheck with lengths; PackedSequence in and out as torch.nn.LSTM; torch.compile and
double backward with lengths.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # the triton backend on CPU tensors

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn import reference as R, truncation as tr  # noqa: E402
from fastrnn.truncation import Schedule  # noqa: E402

from helpers import TOL, compare, layer_args, run_with_grads, schedule_args  # noqa: E402

F64 = torch.float64
ALONE = dict(rtol=1e-10, atol=1e-12)     # batched vs alone: other shapes, other BLAS paths
TOL64 = TOL[torch.float64]                # a backend vs the reference (tests/helpers.py)
BACKENDS = [b for b in ("reference", "cpu", "triton") if b in fastrnn.available_backends()]
FAST = [b for b in BACKENDS if b != "triton"]   # the interpreter is slow: triton gets the smaller grid


@pytest.fixture
def poison():
    """Every torch.empty (the ops' outputs and work buffers included) filled with NaN / max int."""
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old)


def _sliced(schedule, n):
    return Schedule(schedule.cut[:n], schedule.scale[:n])


def _weights(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64)


# ---- the module: batched with lengths == every sequence alone ---------------------------------------

# (name, constructor kwargs, schedule: None (k_trunc), "artbp" or "fixed3")
MODELS = [
    ("lstm", dict(num_layers=2), None),
    ("lstm-artbp", dict(num_layers=1, bias=False), "artbp"),
    ("sab-mlp-prov", dict(num_layers=2, k_top=2, k_att=2, k_trunc=3, attention="mlp",
                          slot_state="provisional"), None),
    ("sab-mlp-final", dict(k_top=2, k_att=1, attention="mlp", slot_state="final", attn_size=3), "artbp"),
    ("sab-linear-final", dict(num_layers=2, k_top=3, k_att=2, attention="linear", slot_state="final"),
     "fixed3"),
    ("sab-linear-prov", dict(k_top=1, k_att=3, k_trunc=4, attention="linear", slot_state="provisional"), None),
]


def _model(name, kwargs, backend):
    cls = fastrnn.LSTM if name.startswith("lstm") else fastrnn.SABLSTM
    return cls(3, 4, backend=backend, dtype=F64, **kwargs)


def _loss(y, h_n, c_n, wy, wh, wc):
    return (y * wy).sum() + (h_n * wh).sum() + (c_n * wc).sum()


def _check_against_alone(model, lengths, T, schedule=None, batch_first=False, attention=False, seed=0):
    """Runs the batch with `lengths` (padding = NaN) and every sequence alone; compares outputs, final
    states, the attention record and the gradients of x, h0, c0 and every parameter."""
    torch.manual_seed(seed)
    B, L, H = len(lengths), model.num_layers, model.hidden_size
    lens = torch.tensor(lengths)
    x = torch.randn(T, B, 3, dtype=F64)
    x[torch.arange(T).unsqueeze(1) >= lens] = float("nan")           # the padding may hold anything
    x.requires_grad_()
    h0 = (0.5 * torch.randn(L, B, H, dtype=F64)).requires_grad_()
    c0 = (0.5 * torch.randn(L, B, H, dtype=F64)).requires_grad_()
    wy, wh, wc = _weights((T, B, H), seed + 1), _weights((L, B, H), seed + 2), _weights((L, B, H), seed + 3)
    params = list(model.parameters())
    kw = dict(schedule=schedule) if schedule is not None else {}
    if attention:
        kw["return_attention"] = True
    inp = x.transpose(0, 1) if batch_first else x
    out = model(inp, (h0, c0), lengths=lengths if seed % 2 else lens, **kw)
    y, (h_n, c_n) = out[0], out[1]
    if batch_first:
        y = y.transpose(0, 1)
    assert y.shape == (T, B, H)
    grads = torch.autograd.grad(_loss(y, h_n, c_n, wy, wh, wc), [x, h0, c0, *params], allow_unused=True)

    loss_alone = 0
    for b, n in enumerate(lengths):
        kw_b = dict(schedule=_sliced(schedule, n)) if schedule is not None else {}
        if attention:
            kw_b["return_attention"] = True
        xb = x[:n, b:b + 1]
        out_b = model(xb.transpose(0, 1) if batch_first else xb, (h0[:, b:b + 1], c0[:, b:b + 1]), **kw_b)
        yb, (hb, cb) = out_b[0], out_b[1]
        if batch_first:
            yb = yb.transpose(0, 1)
        torch.testing.assert_close(y[:n, b:b + 1], yb, **ALONE, msg=lambda m: f"y of sequence {b}: {m}")
        assert torch.equal(y[n:, b], torch.zeros_like(y[n:, b])), f"y past the length of sequence {b}"
        torch.testing.assert_close(h_n[:, b:b + 1], hb, **ALONE, msg=lambda m: f"h_n of sequence {b}: {m}")
        torch.testing.assert_close(c_n[:, b:b + 1], cb, **ALONE, msg=lambda m: f"c_n of sequence {b}: {m}")
        if attention:
            for layer, (a, ab) in enumerate(zip(out[2], out_b[2])):
                assert torch.equal(a.indices[:n, b:b + 1], ab.indices), (layer, b)
                torch.testing.assert_close(a.weights[:n, b:b + 1], ab.weights, **ALONE)
                assert a.indices[n:, b].eq(-1).all() and a.weights[n:, b].eq(0).all(), (layer, b)
        loss_alone = loss_alone + _loss(yb, hb, cb, wy[:n, b:b + 1], wh[:, b:b + 1], wc[:, b:b + 1])
    grads_alone = torch.autograd.grad(loss_alone, [x, h0, c0, *params], allow_unused=True)
    names = ["x", "h0", "c0"] + [n for n, _ in model.named_parameters()]
    for name, g, ga in zip(names, grads, grads_alone):
        g = torch.zeros_like(x if name == "x" else h0) if g is None else g
        ga = torch.zeros_like(g) if ga is None else ga
        assert torch.isfinite(g).all(), f"grad {name} not finite"
        torch.testing.assert_close(g, ga, **ALONE, msg=lambda m: f"grad {name}: {m}")


def _schedule(kind, T):
    if kind is None:
        return None
    if kind == "artbp":
        return tr.artbp(T, 3.0, generator=torch.Generator().manual_seed(3))
    return tr.fixed(T, int(kind[len("fixed"):]))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name,kwargs,sched", MODELS, ids=[m[0] for m in MODELS])
def test_module_lengths_equal_sequences_alone(backend, name, kwargs, sched, poison):
    T, lengths = 11, [11, 0, 5, 1, 8]
    model = _model(name, kwargs, backend)
    _check_against_alone(model, lengths, T, _schedule(sched, T), attention=name.startswith("sab"))


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not importable")
@pytest.mark.parametrize("name,kwargs,sched", [MODELS[0], MODELS[2], MODELS[4]], ids=[MODELS[i][0] for i in (0, 2, 4)])
def test_module_lengths_equal_sequences_alone_triton(name, kwargs, sched):
    T, lengths = 6, [6, 0, 3]
    model = _model(name, kwargs, "triton")
    _check_against_alone(model, lengths, T, _schedule(sched, T), attention=name.startswith("sab"), seed=1)


@pytest.mark.parametrize("backend", FAST)
def test_lengths_with_batch_first_and_list(backend):
    model = _model(*MODELS[2][:2], backend)
    model.batch_first = True
    _check_against_alone(model, [2, 6, 6, 0], 6, batch_first=True, attention=True, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_and_zero_lengths(backend):
    """lengths all T is the call without lengths; lengths all 0 returns the initial state, zero outputs."""
    model = fastrnn.SABLSTM(3, 4, 2, k_top=2, backend=backend, dtype=F64)
    x = torch.randn(5, 3, 3, dtype=F64)
    hx = tuple(torch.randn(2, 3, 4, dtype=F64) for _ in range(2))
    y, (h, c) = model(x, hx)
    y_full, (h_full, c_full) = model(x, hx, lengths=[5, 5, 5])
    for a, b in ((y, y_full), (h, h_full), (c, c_full)):   # exact: the module drops lengths that are all T,
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # so both are the same call
    y0, (h0, c0), att = model(x, hx, lengths=torch.zeros(3, dtype=torch.int64), return_attention=True)
    assert torch.equal(y0, torch.zeros_like(y0))
    assert torch.equal(h0, hx[0]) and torch.equal(c0, hx[1])
    assert all(a.indices.eq(-1).all() and a.weights.eq(0).all() for a in att)


# ---- per-layer functions: every backend against the reference with lengths --------------------------

def _layer_modules():
    mods = {}
    if "cpu" in BACKENDS:
        from fastrnn.ops import lstm as cpu_lstm, sab as cpu_sab
        mods["cpu"] = (cpu_lstm.lstm_layer, cpu_sab.sab_layer)
    if "triton" in BACKENDS:
        from fastrnn.ops import triton_backend as TB
        mods["triton"] = (TB.lstm_layer, TB.sab_layer)
    return mods


LAYERS = _layer_modules()

# (T, lengths, H, A, scorer, provisional, k_top, k_att, schedule)
LAYER_CONFIGS = [
    (9, [9, 0, 4, 1, 7], 5, 3, "mlp", True, 2, 2, "fixed3"),
    (9, [3, 9, 0], 4, 4, "mlp", False, 3, 1, "artbp"),
    (8, [8, 2, 5, 0], 4, None, "linear", False, 2, 2, "full"),
    (8, [1, 8, 6], 6, None, "linear", True, 1, 3, "fixed2"),
]


def _layer_sched(kind, T):
    return {"full": tr.full(T), "artbp": tr.artbp(T, 3.0, generator=torch.Generator().manual_seed(1))}.get(
        kind) or tr.fixed(T, int(kind[len("fixed"):]))


@pytest.mark.parametrize("backend", sorted(LAYERS))
@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=lambda c: f"T{c[0]}-{c[4]}-{'prov' if c[5] else 'final'}")
def test_layers_match_reference_with_lengths(backend, cfg, poison):
    T, lengths, H, A, scorer, provisional, k_top, k_att, sched = cfg
    B = len(lengths)
    lens = torch.tensor(lengths)
    s = schedule_args(_layer_sched(sched, T), F64)
    lstm_fn, sab_fn = LAYERS[backend]
    for sab in (False, True):
        torch.manual_seed(2)
        args = layer_args(T, B, 3, H, A=A, scorer=scorer, sab=sab)
        kw = dict(k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True) if sab \
            else {}
        ours, ref = (run_with_grads(fn, args, s, lengths=lens, **kw)
                     for fn in ((sab_fn, R.sab_layer) if sab else (lstm_fn, R.lstm_layer)))
        compare(ours, ref, F64, scorer=scorer if sab else None)
        past = torch.arange(T).unsqueeze(1) >= lens
        assert torch.equal(ours[0][0][past], torch.zeros_like(ours[0][0][past]))
        if sab:
            assert ours[0][3].indices[past].eq(-1).all() and ours[0][3].weights[past].eq(0).all()


@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
def test_reference_layer_lengths_ignore_the_rest(used):
    """The reference's lengths: no gradient from past a row's length reaches anything (here: x past it)."""
    T, lens = 6, torch.tensor([6, 2, 0])
    args = layer_args(T, 3, 2, 3, sab=True)
    s = schedule_args(tr.full(T), F64)
    out = R.sab_layer(**args, **s, k_top=2, k_att=1, scorer="mlp", provisional=True, lengths=lens)
    (gx,) = torch.autograd.grad(out[{"y": 0, "h_n": 1, "c_n": 2}[used]].sum(), [args["x"]])
    assert gx[torch.arange(T).unsqueeze(1) >= lens].eq(0).all()


# ---- the C++ ops: argument checks and opcheck with lengths ------------------------------------------

cpu_only = pytest.mark.skipif("cpu" not in BACKENDS, reason="native library not built")


def _lstm_op_args(T=5, B=3, lengths=(5, 0, 2)):
    a = {k: v.detach() for k, v in layer_args(T, B, 2, 3, sab=False).items()}
    s = schedule_args(tr.fixed(T, 2), F64)
    return [a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], s["cut"], s["scale"],
            torch.tensor(lengths)]


def _sab_op_args(T=5, B=3, lengths=(5, 0, 2), scorer="mlp"):
    a = {k: v.detach() for k, v in layer_args(T, B, 2, 3, A=2 if scorer == "mlp" else None, scorer=scorer).items()}
    s = schedule_args(tr.fixed(T, 2), F64)
    return [a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["att_wh"], a["att_wm"], a["att_vb"], a["h0"],
            a["c0"], s["cut"], s["scale"], torch.tensor(lengths), None, 0, None, None, None,    # memory, step0, resets
            2, 2, scorer, True]


BAD_LENGTHS = [
    (lambda l: l.to(torch.int32), "lengths must have dtype int64"),
    (lambda l: l[:2], r"lengths must have shape \[B\]"),
    (lambda l: l.clone().fill_(6), r"lengths\[0\] = 6 is outside \[0, T\]"),
    (lambda l: torch.tensor([1, -1, 2]), r"lengths\[1\] = -1"),
    (lambda l: torch.stack([l, l], 1)[:, 0], "lengths must be contiguous"),
]


@cpu_only
@pytest.mark.parametrize("make,match", BAD_LENGTHS, ids=[m for _, m in BAD_LENGTHS])
def test_ops_check_lengths(make, match):
    largs = _lstm_op_args()
    sargs = _sab_op_args()
    bad_l = make(largs[9])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastrnn.lstm_forward(*largs[:9], bad_l)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastrnn.sab_forward(*sargs[:12], bad_l, *sargs[13:])
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_forward(*largs)
    x, w_ih, w_hh, _, _, h0, c0, cut, scale, _ = largs
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastrnn.lstm_backward(y, h_n, c_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, bad_l)
    out = torch.ops.fastrnn.sab_forward(*sargs)
    x, w_ih, w_hh, _, _, att_wh, att_wm, att_vb, h0, c0, cut, scale, _, _, _, _, _, _, k_top, k_att, scorer, prov = sargs
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastrnn.sab_backward(*out[:3], None, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale,
                                       bad_l, None, 0, None, None, None, out[0], *out[3:11], k_top, k_att, scorer,
                                       prov, True)


@cpu_only
def test_opcheck_lstm_ops_with_lengths():
    args = _lstm_op_args()
    fwd = [a.detach().requires_grad_() if a.is_floating_point() else a for a in args]
    fwd[-2] = fwd[-2].detach()   # scale
    torch.library.opcheck(torch.ops.fastrnn.lstm_forward.default, tuple(fwd))
    y, h_n, c_n, gates, cs = torch.ops.fastrnn.lstm_forward(*args)
    x, w_ih, w_hh, _, _, h0, c0, cut, scale, lengths = args
    g = [torch.randn_like(t) for t in (y, h_n, c_n)]
    torch.library.opcheck(torch.ops.fastrnn.lstm_backward.default,
                          (*g, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale, lengths))


@cpu_only
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_opcheck_sab_ops_with_lengths(scorer):
    args = _sab_op_args(scorer=scorer)
    fwd = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
           for a in args]
    fwd[11] = fwd[11].detach()   # scale
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, tuple(fwd))
    out = torch.ops.fastrnn.sab_forward(*args)
    x, w_ih, w_hh, _, _, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, _, _, _, _, _, k_top, k_att, _, prov = args
    g = [torch.randn_like(t) for t in out[:3]]
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default,
                          (*g, None, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, lengths, None, 0,
                           None, None, None, out[0], *out[3:11], k_top, k_att, scorer, prov, True))


# ---- PackedSequence --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_lstm_packed_equals_nn_lstm(backend, enforce_sorted):
    """PackedSequence in and out, as torch.nn.LSTM: the same data, batch_sizes, sorted/unsorted indices,
    h_n/c_n in the original batch order, and the same gradients."""
    ours = fastrnn.LSTM(3, 4, 2, backend=backend, dtype=F64)
    theirs = nn.LSTM(3, 4, 2, dtype=F64)
    theirs.load_state_dict(ours.state_dict())
    lengths = [6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4]
    x = torch.randn(6, 4, 3, dtype=F64, requires_grad=True)
    hx = tuple((0.5 * torch.randn(2, 4, 4, dtype=F64)).requires_grad_() for _ in range(2))
    def packed():
        return pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)

    (po, (h, c)), (pt, (ht, ct)) = ours(packed(), hx), theirs(packed(), hx)
    assert type(po) is type(pt)
    assert torch.equal(po.batch_sizes, pt.batch_sizes)
    for a, b in ((po.sorted_indices, pt.sorted_indices), (po.unsorted_indices, pt.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in ((po.data, pt.data), (h, ht), (c, ct)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    wd, wh, wc = _weights(po.data.shape, 1), _weights(h.shape, 2), _weights(h.shape, 3)
    g1 = torch.autograd.grad(_loss(po.data, h, c, wd, wh, wc), [x, *hx, *ours.parameters()])
    g2 = torch.autograd.grad(_loss(pt.data, ht, ct, wd, wh, wc), [x, *hx, *theirs.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sablstm_packed_equals_lengths(backend):
    model = fastrnn.SABLSTM(3, 4, 2, k_top=2, backend=backend, dtype=F64)
    lengths = [3, 5, 1]
    x = torch.randn(5, 3, 3, dtype=F64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    po, (h, c), att = model(packed, return_attention=True)
    y, (h2, c2), att2 = model(x, lengths=lengths, return_attention=True)
    padded, lens = pad_packed_sequence(po)
    assert lens.tolist() == lengths
    for a, b in ((padded, y), (h, h2), (c, c2)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(att, att2):
        assert torch.equal(a.indices, b.indices)
    assert torch.equal(po.sorted_indices, packed.sorted_indices)
    assert torch.equal(po.unsorted_indices, packed.unsorted_indices)


# ---- torch.compile and double backward with lengths ------------------------------------------------

@cpu_only
@torch._inductor.config.patch(force_disable_caches=True)
def test_compile_fullgraph_module_with_lengths():
    torch.manual_seed(0)
    cpu = fastrnn.SABLSTM(3, 5, 2, k_top=3, backend="cpu", dtype=F64)
    ref = fastrnn.SABLSTM(3, 5, 2, k_top=3, backend="reference", dtype=F64)
    ref.load_state_dict(cpu.state_dict())
    x = torch.randn(9, 3, 3, dtype=F64)
    lengths = torch.tensor([9, 4, 0])
    y, (h, c) = torch.compile(cpu, fullgraph=True)(x, lengths=lengths)
    (y.sum() + h.square().sum() + c.sum()).backward()
    ry, (rh, rc) = ref(x, lengths=lengths)
    (ry.sum() + rh.square().sum() + rc.sum()).backward()
    for a, b in ((y, ry), (h, rh), (c, rc)):
        torch.testing.assert_close(a, b, **TOL64)
    for (name, p), (_, rp) in zip(cpu.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, rp.grad, **TOL64, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("sab", [False, True], ids=["lstm", "sab"])
def test_double_backward_with_lengths(backend, sab):
    """create_graph=True recomputes through the reference, which must see the lengths too."""
    torch.manual_seed(0)
    make = (lambda b: fastrnn.SABLSTM(3, 4, k_top=2, backend=b, dtype=F64)) if sab else \
        (lambda b: fastrnn.LSTM(3, 4, 2, backend=b, dtype=F64))
    ref, ours = make("reference"), make(backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 3, dtype=F64, requires_grad=True)
    lengths = [6, 2, 0]

    def penalty(model):
        y, (h_n, c_n) = model(x, lengths=lengths)
        params = list(model.parameters())
        first = torch.autograd.grad((y * y.detach().sin()).sum() + h_n.sum() + c_n.sum(), [x, *params],
                                    create_graph=True)
        return torch.autograd.grad(sum((g ** 2).sum() for g in first), [x, *params])

    for a, b in zip(penalty(ours), penalty(ref)):
        torch.testing.assert_close(a, b, **TOL64)
