"""Serialization and compilation of the modules, LSTM and SABLSTM on the cpu backend: state_dict round trip,
torch.save/torch.load of the whole module, copy.deepcopy, torch.nn.LSTM weights in, and torch.compile with
fullgraph=True of a whole training step (forward, loss, backward).

The compiled step: dynamo traces `loss.backward()` only with `torch._dynamo.config.trace_autograd_ops`
(torch 2.13); the compiler here is "aot_eager" (dynamo + AOTAutograd: the ops' fake kernels and autograd
formulas are traced, no code is generated), which keeps the test at seconds; inductor compiles the same step
(about 10-20 s per model on 2 cores). The optimizer step stays outside the compiled region: torch.optim
inserts a graph break around every `step()` on purpose (torch/optim/optimizer.py, `_use_grad`), so no
fullgraph region can hold it.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn.tasks import copying
from fastrnn.training import SequenceModel

pytestmark = pytest.mark.skipif("cpu" not in fastrnn.available_backends(), reason="the cpu backend is not built")

I, H = 3, 8
MODULES = {
    "lstm": lambda **kw: fastrnn.LSTM(I, H, num_layers=2, backend="cpu", **kw),
    "sab": lambda **kw: fastrnn.SABLSTM(I, H, num_layers=2, k_top=3, k_att=2, k_trunc=4, attention="mlp",
                                       attn_size=5, backend="cpu", **kw),
}


def _make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    return MODULES[kind](**kw)


def _run(module, x):
    """Outputs and parameter gradients of one forward/backward."""
    module.zero_grad(set_to_none=True)
    xs = x.clone().requires_grad_()
    y, (h, c) = module(xs)
    (y.square().sum() + h.sum() + c.sum()).backward()
    return [y, h, c, xs.grad, *(p.grad for p in module.parameters())]


def _assert_same(a, b, **tol):
    tol = tol or dict(rtol=0, atol=0)
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, **tol, msg=lambda m: f"tensor {i}: {m}")


@pytest.fixture
def x():
    return torch.randn(9, 4, I)


@pytest.mark.parametrize("kind", MODULES)
def test_state_dict_round_trip(kind, x, tmp_path):
    a, b = _make(kind, 0), _make(kind, 1)
    torch.save(a.state_dict(), tmp_path / "sd.pt")
    state = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert b.load_state_dict(state, strict=True)  # no missing or unexpected keys
    _assert_same(_run(a, x), _run(b, x))


@pytest.mark.parametrize("kind", MODULES)
def test_whole_module_save_load(kind, x):
    a = _make(kind)
    buf = io.BytesIO()
    torch.save(a, buf)
    buf.seek(0)
    b = torch.load(buf, weights_only=False)
    assert type(b) is type(a) and repr(b) == repr(a) and b.backend == "cpu"
    _assert_same(_run(a, x), _run(b, x))


@pytest.mark.parametrize("kind", MODULES)
def test_deepcopy_is_independent(kind, x):
    a = _make(kind)
    b = copy.deepcopy(a)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(a.parameters(), b.parameters()))
    before = _run(a, x)
    _assert_same(before, _run(b, x))
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.1)
    _assert_same(before, _run(a, x))  # changing the copy leaves the original alone
    assert not torch.equal(_run(b, x)[0], before[0])


def test_nn_lstm_weights_load_into_lstm_and_sablstm(x):
    torch.manual_seed(3)
    ref = torch.nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    lstm = fastrnn.LSTM(I, H, num_layers=2, backend="cpu", dtype=torch.float64)
    lstm.load_state_dict(ref.state_dict(), strict=True)
    xd = x.double()
    _assert_same(_run(lstm, xd)[:4], _run(ref, xd)[:4], rtol=1e-12, atol=1e-14)
    for p, q in zip(lstm.parameters(), ref.parameters()):  # gradients too, parameter by parameter
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)

    sab = _make("sab")
    result = sab.load_state_dict(ref.float().state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(n for n, _ in sab.named_parameters() if n.startswith("att_"))
    for name, value in ref.state_dict().items():
        assert torch.equal(getattr(sab, name), value)


@pytest.mark.parametrize("core", ["lstm", "sab"])
def test_compiled_training_step_fullgraph(core):
    """forward, cross-entropy and backward in one fullgraph region; Adam outside; 3 iterations match eager."""
    torch._dynamo.reset()
    sab = dict(k_top=3, k_att=2, k_trunc=4, attention="mlp") if core == "sab" else {}
    torch.manual_seed(0)
    compiled_model = SequenceModel(1, 16, copying.N_CLASSES, core=core, backend="cpu", **sab)
    eager_model = copy.deepcopy(compiled_model)
    start = compiled_model.head.weight.detach().clone()

    def step(model, x, y):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, copying.N_CLASSES), y.reshape(-1))
        loss.backward()
        return loss.detach()

    compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (compiled_model, eager_model)]
    g = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for _ in range(3):
            x, y = copying.copying_batch(5, 4, generator=g)
            losses = []
            for model, fn, opt in zip((compiled_model, eager_model), (compiled_step, step), optimizers):
                opt.zero_grad(set_to_none=True)
                losses.append(fn(model, x, y))
                opt.step()
            torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(compiled_model.named_parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert not torch.equal(compiled_model.head.weight, start)  # it trained
    torch._dynamo.reset()
