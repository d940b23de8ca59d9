"""Higher-order gradients (create_graph=True) through every backend equal the reference's.

The fused backward kernels are not differentiable; a backward asked for with a graph recomputes through
the reference (fastrnn/ops/glue.py). Before, the CPU ops gave silent zeros here (issue: gradient
penalties, Hessian-vector products and meta-learning trained on wrong numbers).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # the triton backend on CPU tensors

import pytest
import torch

import fastrnn

BACKENDS = [b for b in ("cpu", "triton") if b in fastrnn.available_backends()]
F64 = dict(rtol=1e-9, atol=1e-11)
MODELS = {
    "lstm": lambda backend, **kw: fastrnn.LSTM(3, 4, num_layers=2, backend=backend, **kw),
    "sab-mlp-final": lambda backend, **kw: fastrnn.SABLSTM(3, 4, k_top=2, slot_state="final", attention="mlp",
                                                           backend=backend, **kw),
    "sab-linear-provisional": lambda backend, **kw: fastrnn.SABLSTM(
        3, 4, num_layers=2, k_top=2, k_trunc=3, slot_state="provisional", attention="linear", backend=backend,
        **kw),
}


def second_order(model, x, h0):
    """A gradient penalty: d/d(x, h0, params) of |d(sum y)/dx|² + |d(sum h_n)/d params|²."""
    y, (h_n, _) = model(x, (h0, torch.zeros_like(h0)))
    params = list(model.parameters())
    first = torch.autograd.grad((y * y.detach().sin()).sum() + h_n.sum(), [x, *params], create_graph=True)
    penalty = sum((g ** 2).sum() for g in first)
    return first, torch.autograd.grad(penalty, [x, h0, *params])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_second_order_gradients_match_reference(backend, name):
    torch.manual_seed(0)
    ref = MODELS[name]("reference", dtype=torch.float64)
    ours = MODELS[name](backend, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    L = ref.num_layers
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = (0.5 * torch.randn(L, 2, 4, dtype=torch.float64)).requires_grad_()
    first_ref, second_ref = second_order(ref, x, h0)
    first, second = second_order(ours, x, h0)
    for a, b in zip(first, first_ref):
        torch.testing.assert_close(a, b, **F64)
    for a, b in zip(second, second_ref):
        torch.testing.assert_close(a, b, **F64)
    assert all(g.abs().sum() > 0 for g in second[:2]), "second-order gradients must not vanish"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_second_order_through_two_calls_matches_reference(backend, name):
    """The state of one call carried, attached, into the next call of the same model: the second call's
    recomputed backward must differentiate that call alone, not follow its h0 back into the first call (whose
    weights are the same), which would count the first call's gradient twice (ops/glue.py)."""
    torch.manual_seed(1)
    ref = MODELS[name]("reference", dtype=torch.float64)
    ours = MODELS[name](backend, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 2, 3, dtype=torch.float64, requires_grad=True)

    def second_order(model):
        y1, state = model(x[:4])
        y2, (h_n, _) = model(x[4:], state)
        params = list(model.parameters())
        first = torch.autograd.grad(y1.sum() + (y2 * y2.detach().sin()).sum() + h_n.sum(), [x, *params],
                                    create_graph=True)
        return first, torch.autograd.grad(sum((g ** 2).sum() for g in first), [x, *params])

    for got, want in zip(second_order(ours), second_order(ref)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_vector_product_float32(backend):
    torch.manual_seed(1)
    ref = fastrnn.SABLSTM(3, 8, k_top=3, backend="reference")
    ours = fastrnn.SABLSTM(3, 8, k_top=3, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 3, 3)
    v = [torch.randn_like(p) for p in ref.parameters()]

    def hvp(model):
        params = list(model.parameters())
        g = torch.autograd.grad(model(x)[0].pow(2).sum(), params, create_graph=True)
        return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)

    for a, b in zip(hvp(ours), hvp(ref)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_order_backward_still_uses_the_kernels(backend, monkeypatch):
    # Without create_graph the reference must not run: it would be correct but orders of magnitude slower.
    from fastrnn.ops import glue

    def fail(*a, **k):
        raise AssertionError("differentiable_backward ran without create_graph")

    monkeypatch.setattr(glue, "differentiable_backward", fail)
    model = fastrnn.SABLSTM(3, 4, k_top=2, backend=backend)
    x = torch.randn(5, 2, 3, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad.abs().sum() > 0
