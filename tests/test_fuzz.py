"""Property-based fuzzing (hypothesis) of the modules across backends: every drawn configuration gives the
reference backend's outputs and gradients, or the same clear Python error, never a crash.

Drawn: shapes (T, B down to 0 and 1), layers, hyperparameters (k_top larger than the memory, k_att > T,
k_trunc, both scorers and slot states), truncation schedules, batch_first, and the memory layout of the
input and the initial state: contiguous, transposed, strided slices and expanded (stride 0) tensors.
Non-finite values are drawn too: the fast backend must do exactly what the reference does (the module's
check raises the same error for both). Bounded by `max_examples` to about a minute per backend.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # the triton backend on CPU tensors

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import truncation

BACKENDS = [b for b in ("cpu", "triton") if b in fastrnn.available_backends()]
F64 = dict(rtol=1e-9, atol=1e-10, equal_nan=True)
EXAMPLES = {"cpu": 60, "triton": 25}   # the interpreter runs Triton kernels ~100x slower


@st.composite
def configs(draw):
    sab = draw(st.booleans())
    T = draw(st.integers(0, 9))
    cfg = dict(
        sab=sab, T=T, B=draw(st.integers(0, 3)), I=draw(st.integers(1, 4)), H=draw(st.integers(1, 5)),
        num_layers=draw(st.integers(1, 2)), bias=draw(st.booleans()), batch_first=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "transposed", "strided", "expanded"])),
        hx=draw(st.sampled_from([None, "given", "expanded"])),
        schedule=draw(st.sampled_from([None, "full", "fixed", "artbp"])),
        poison=draw(st.sampled_from([None, None, None, "nan", "inf", "-inf"])),
        seed=draw(st.integers(0, 2**16)))
    if sab:
        cfg.update(k_top=draw(st.integers(1, 8)), k_att=draw(st.integers(1, T + 2)),
                   k_trunc=draw(st.sampled_from([None, 0, 1, 2, 3, T + 1])),
                   attention=draw(st.sampled_from(["mlp", "linear"])),
                   slot_state=draw(st.sampled_from(["provisional", "final"])))
    return cfg


def build(cfg, backend):
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"], backend=backend,
              dtype=torch.float64)
    if cfg["sab"]:
        return fastrnn.SABLSTM(cfg["I"], cfg["H"], k_top=cfg["k_top"], k_att=cfg["k_att"], k_trunc=cfg["k_trunc"],
                               attention=cfg["attention"], slot_state=cfg["slot_state"], **kw)
    return fastrnn.LSTM(cfg["I"], cfg["H"], **kw)


def inputs(cfg):
    """(leaves, x, hx, schedule): x and hx in the drawn layout, as views of the leaves."""
    g = torch.Generator().manual_seed(cfg["seed"])
    T, B, I, H, L = cfg["T"], cfg["B"], cfg["I"], cfg["H"], cfg["num_layers"]
    seq_first = (T, B, I)
    layout = cfg["layout"]
    if layout == "transposed":       # stored batch-major, viewed time-major (or the reverse)
        base = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    elif layout == "strided":        # every other step of a longer sequence
        base = torch.randn(2 * T, B, I, generator=g, dtype=torch.float64)
    elif layout == "expanded":       # one row broadcast over the batch (stride 0)
        base = torch.randn(T, 1, I, generator=g, dtype=torch.float64)
    else:
        base = torch.randn(*seq_first, generator=g, dtype=torch.float64)
    if cfg["poison"] and base.numel():
        base.view(-1)[torch.randint(base.numel(), (1,), generator=g)] = float(cfg["poison"])
    base.requires_grad_()
    x = {"transposed": lambda b: b.transpose(0, 1), "strided": lambda b: b[::2],
         "expanded": lambda b: b.expand(T, B, I)}.get(layout, lambda b: b)(base)
    if cfg["batch_first"]:
        x = x.transpose(0, 1)
    leaves, hx = [base], None
    if cfg["hx"] == "given":
        h0 = (0.5 * torch.randn(L, B, H, generator=g, dtype=torch.float64)).requires_grad_()
        c0 = (0.5 * torch.randn(L, B, H, generator=g, dtype=torch.float64)).requires_grad_()
        leaves += [h0, c0]
        hx = (h0, c0)
    elif cfg["hx"] == "expanded":
        h0 = (0.5 * torch.randn(L, 1, H, generator=g, dtype=torch.float64)).requires_grad_()
        leaves.append(h0)
        hx = (h0.expand(L, B, H), h0.expand(L, B, H))
    schedule = {None: None, "full": lambda: truncation.full(T), "fixed": lambda: truncation.fixed(T, 2),
                "artbp": lambda: truncation.artbp(T, 2.0, generator=g)}[cfg["schedule"]]
    return leaves, x, hx, schedule() if schedule else None


def run(cfg, backend, state):
    """Outputs and gradients (w.r.t. the input leaves and every parameter), or the exception raised."""
    model = build(cfg, backend)
    model.load_state_dict(state)
    leaves, x, hx, schedule = inputs(cfg)
    try:
        y, (h_n, c_n) = model(x, hx, schedule=schedule)
    except Exception as e:   # compared with the reference's behaviour below
        return e
    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in (y, h_n, c_n))
    wrt = leaves + list(model.parameters())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    return [y, h_n, c_n] + [torch.zeros_like(w) if gr is None else gr for w, gr in zip(wrt, grads)]


def check(cfg, backend):
    torch.manual_seed(cfg["seed"])
    state = build(cfg, "reference").state_dict()
    expected, got = run(cfg, "reference", state), run(cfg, backend, state)
    if isinstance(expected, Exception):
        assert isinstance(got, type(expected)) and str(got) == str(expected), (expected, got)
        return
    assert not isinstance(got, Exception), f"{backend} raised {got!r} where the reference computed"
    for i, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, **F64, msg=lambda m: f"{backend}, result {i}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_modules_match_reference(backend):
    @settings(max_examples=EXAMPLES[backend], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(configs())
    def prop(cfg):
        check(cfg, backend)

    prop()
