"""ARTBP online training (fastrnn.training.artbp; seed 002, sections 3-5): the sampler follows eq. (14),
the online loop's gradient is exactly unbiased (every truncation pattern enumerated, float64) and
statistically so over draws, while truncated BPTT's is biased where it matters (influence balancing)."""
import itertools
import math

import pytest
import torch

import fastrnn
from fastrnn import truncation
from fastrnn.tasks import influence
from fastrnn.training.artbp import (ARTBPSampler, FixedLength, OnlineTrainer, TensorStream, run_core,
                                    scale_grad)
from helpers import backend_params

f64 = torch.float64


# tiny problems: on two shared cores each small fused call would wait on the thread pool
pytestmark = pytest.mark.usefixtures("one_thread")


def test_truncation_artbp_keeps_its_draws():
    # artbp() now calls the shared c_t helper: the same cuts and scales as the inline formula it had.
    for seed in range(3):
        T, L0, alpha = 300, 4.0, 6.0
        u = torch.rand(T, generator=torch.Generator().manual_seed(seed), dtype=f64)
        cut, scale, last = torch.zeros(T, dtype=torch.bool), torch.ones(T, dtype=f64), 0
        for t in range(1, T):
            c_t = (alpha - 1) / ((alpha - 2) * L0 + (t - last))
            if u[t] < c_t:
                cut[t], last = True, t
            else:
                scale[t] = 1.0 / (1.0 - c_t)
        s = truncation.artbp(T, L0, alpha, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(s.cut, cut) and torch.equal(s.scale, scale)


def test_sampler_schedule_and_length_law():
    L0, alpha = 5.0, 4.0
    sampler = ARTBPSampler(L0, alpha, generator=torch.Generator().manual_seed(0))
    s = sampler.schedule(6)
    assert s.cut.tolist() == [True] + [False] * 5 and s.scale[0] == 1
    for j in range(1, 6):
        assert s.scale[j].item() == 1.0 / (1.0 - (alpha - 1) / ((alpha - 2) * L0 + j))
    # the drawn lengths follow P(L = k) = c(k) prod_{j<k} (1 - c(j)): compare frequencies of 1..4, and >= 5
    draws = torch.tensor([sampler.draw_length() for _ in range(6000)])
    probs = [sampler.length_probability(k) for k in range(1, 5)]
    probs.append(sampler.length_probability(5, at_least=True))
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    counts = [int((draws == k).sum()) for k in range(1, 5)] + [int((draws >= 5).sum())]
    chi2 = sum((c - 6000 * p) ** 2 / (6000 * p) for c, p in zip(counts, probs))
    assert chi2 < 20.5  # chi-square, 4 degrees of freedom: p < 0.0004 under the law
    # the remaining-steps cap
    assert all(sampler.draw_length(remaining=3) <= 3 for _ in range(50))
    assert FixedLength(4).next_schedule(remaining=2).cut.tolist() == [True, False]
    with pytest.raises(ValueError):
        ARTBPSampler(1.0, 4.0)


class _Replay(ARTBPSampler):
    """ARTBP's schedules for a given list of lengths (to enumerate the truncation patterns)."""

    def __init__(self, L0, alpha, lengths):
        super().__init__(L0, alpha)
        self.lengths = list(lengths)

    def draw_length(self, remaining=None):
        return self.lengths.pop(0)


def _compositions(T):
    """Every split of T steps into subsequences: lists of lengths."""
    for bits in itertools.product([0, 1], repeat=T - 1):
        lengths, run = [], 1
        for b in bits:
            if b:
                lengths.append(run)
                run = 1
            else:
                run += 1
        yield lengths + [run]


def _lstm_setup(core_kind):
    torch.manual_seed(1)
    T, B, I, H = 7, 2, 3, 4
    fast = fastrnn.LSTM(I, H, dtype=f64)
    head = torch.nn.Linear(H, 2, dtype=f64)
    if core_kind == "nn":
        core = torch.nn.LSTM(I, H, dtype=f64)
        core.load_state_dict(fast.state_dict())
    else:
        core = fast
    x = torch.randn(T, B, I, dtype=f64)
    y = torch.randn(T, B, 2, dtype=f64)
    h0 = (torch.randn(1, B, H, dtype=f64) * 0.5, torch.randn(1, B, H, dtype=f64) * 0.5)
    loss_fn = lambda out, tgt: ((head(out) - tgt) ** 2).sum()  # noqa: E731  (summed over steps)
    params = list(core.parameters()) + list(head.parameters())
    return core, x, y, h0, loss_fn, params


def _expected_gradient(sampler_cls, core, x, y, h0, loss_fn, params, L0, alpha):
    """Σ over every truncation pattern of its ARTBP probability times the online loop's summed gradient."""
    law = ARTBPSampler(L0, alpha)
    expected, total_p = [torch.zeros_like(p) for p in params], 0.0
    for lengths in _compositions(x.shape[0]):
        p = math.prod(law.length_probability(l) for l in lengths[:-1])
        p *= law.length_probability(lengths[-1], at_least=True)
        total_p += p
        for q in params:
            q.grad = None
        trainer = OnlineTrainer(core, loss_fn, None, sampler_cls(L0, alpha, lengths), accumulate=True, hx=h0)
        segments = trainer.run(TensorStream(x, y))
        assert [s.length for s in segments] == lengths
        for e, q in zip(expected, params):
            e += p * q.grad
    assert total_p == pytest.approx(1.0, abs=1e-12)
    return expected


class _NoCompensation(_Replay):
    def schedule(self, length):
        s = super().schedule(length)
        return truncation.Schedule(s.cut, torch.ones_like(s.scale))


@pytest.mark.parametrize("core_kind", ["fastrnn", "nn"])
def test_online_artbp_is_exactly_unbiased(core_kind):
    """Proposition 1 through the online loop: Σ over all 2^(T-1) truncation patterns of P(pattern) times
    the summed subsequence gradients equals the full-BPTT gradient (float64, to rounding); the same
    average without the compensation factors of eq. (11) does not."""
    core, x, y, h0, loss_fn, params = _lstm_setup(core_kind)
    out, _ = run_core(core, x, h0, truncation.full(x.shape[0]))
    full = torch.autograd.grad(loss_fn(out, y), params)
    expected = _expected_gradient(_Replay, core, x, y, h0, loss_fn, params, 2.0, 4.0)
    for e, f in zip(expected, full):
        torch.testing.assert_close(e, f, rtol=1e-10, atol=1e-12)
    biased = _expected_gradient(_NoCompensation, core, x, y, h0, loss_fn, params, 2.0, 4.0)
    assert max((b - f).abs().max().item() for b, f in zip(biased, full)) > 1e-3


def test_run_core_step_path_matches_the_fused_schedule():
    """An nn.LSTM core (one step per call, scale hooks on the state) and fastrnn.LSTM (the schedule
    inside the op) give the same outputs and gradients, the initial state's included (cut[0] False)."""
    core, x, y, h0, loss_fn, params = _lstm_setup("nn")
    fast = fastrnn.LSTM(3, 4, dtype=f64)
    fast.load_state_dict(core.state_dict())
    sched = truncation.artbp(x.shape[0], 2.0, generator=torch.Generator().manual_seed(4))
    assert not sched.cut[0] and sched.cut[1:].any() and (sched.scale > 1).any()
    results = []
    for c in (core, fast):
        hx = tuple(s.clone().requires_grad_() for s in h0)
        out, (h_n, c_n) = run_core(c, x, hx, sched)
        loss = (out ** 2).sum() + (h_n * c_n).sum()
        results.append([out, h_n, c_n, *torch.autograd.grad(loss, [*c.parameters(), *hx])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # scale_grad: identity forward, scaled backward
    v = torch.ones(3, dtype=f64, requires_grad=True)
    (scale_grad(v, 2.5) * torch.arange(3.0, dtype=f64)).sum().backward()
    assert v.grad.tolist() == [0.0, 2.5, 5.0]


def test_online_trainer_carries_the_state_and_steps_per_subsequence():
    torch.manual_seed(3)
    T, B, I, H = 40, 2, 3, 5
    core = fastrnn.LSTM(I, H, dtype=f64)
    x = torch.randn(T, B, I, dtype=f64)
    y_full, (h_full, c_full) = core(x)
    # lr 0: the parameters stay, the carried state runs the stream exactly as one pass
    opt = torch.optim.SGD(core.parameters(), lr=0.0)
    trainer = OnlineTrainer(core, lambda out, y: out.sum(), opt,
                            ARTBPSampler(4.0, 4.0, generator=torch.Generator().manual_seed(0)))
    segments = trainer.run(TensorStream(x))
    assert sum(s.length for s in segments) == T and trainer.t == T and len(segments) > 3
    assert [s.start for s in segments] == [sum(s.length for s in segments[:i]) for i in range(len(segments))]
    torch.testing.assert_close(trainer.hx[0], h_full, rtol=0, atol=1e-14)
    torch.testing.assert_close(trainer.hx[1], c_full, rtol=0, atol=1e-14)
    assert not trainer.hx[0].requires_grad
    # one SGD step per subsequence at the rate lr(t) of its first step
    core2 = fastrnn.LSTM(I, H, dtype=f64)
    w0 = core2.weight_hh_l0.detach().clone()
    first = x[:3]
    out, _ = core2(first, schedule=FixedLength(3).next_schedule())
    g = torch.autograd.grad((out ** 2).sum(), core2.weight_hh_l0)[0]
    trainer = OnlineTrainer(core2, lambda out, y: (out ** 2).sum(), torch.optim.SGD(core2.parameters(), lr=1.0),
                            FixedLength(3))
    stream = TensorStream(x)
    seg = trainer.step(stream, lr=0.125)
    assert (seg.start, seg.length, seg.lr) == (0, 3, 0.125)
    torch.testing.assert_close(core2.weight_hh_l0.detach(), w0 - 0.125 * g, rtol=0, atol=1e-14)
    # an unbounded stream: run(steps=) stops exactly there, the last subsequence cut short
    unbounded = influence.InfluenceStream()
    ib = influence.InfluenceBalancing()
    trainer = OnlineTrainer(ib, lambda out, y: influence.loss(out), torch.optim.SGD(ib.parameters(), lr=1e-4),
                            ARTBPSampler(16, 6, generator=torch.Generator().manual_seed(1)))
    trainer.run(unbounded, steps=250)
    assert trainer.t == 250
    ts, means = trainer.running_mean_loss()
    assert ts[-1] == 250 and len(means) == len(trainer.segments)
    with pytest.raises(ValueError):
        OnlineTrainer(ib, influence.loss, None, FixedLength(3))


def _influence_gradients(sampler_factory, draws, theta=0.1, T=60):
    core = influence.InfluenceBalancing(theta=theta)
    x = influence.inputs(T)
    out = []
    for _ in range(draws):
        core.theta.grad = None
        OnlineTrainer(core, lambda o, y: influence.loss(o), None, sampler_factory(), accumulate=True
                      ).run(TensorStream(x))
        out.append(core.theta.grad.item())
    return torch.tensor(out, dtype=f64)


def test_online_artbp_gradient_is_unbiased_over_draws_and_truncated_bptt_is_not():
    """Influence balancing (seed 002 §6.1), theta = 0.1, 60 steps from s_0 = 0: the mean online ARTBP
    gradient (L0 = 16, alpha = 6, 800 draws) is the full-BPTT gradient within 4 standard errors; truncated
    BPTT (L = 10, 30) has the wrong sign; random truncations without eq. (11)'s factors are biased."""
    T = 60
    core = influence.InfluenceBalancing(theta=0.1)
    out, _ = core(influence.inputs(T), schedule=truncation.full(T))
    full = torch.autograd.grad(influence.loss(out), core.theta)[0].item()
    g = torch.Generator().manual_seed(0)
    artbp = _influence_gradients(lambda: ARTBPSampler(16, 6, generator=g), 800)
    se = artbp.std().item() / math.sqrt(len(artbp))
    assert abs(artbp.mean().item() - full) < 4 * se
    for L in (10, 30):
        tbptt = _influence_gradients(lambda: FixedLength(L), 1).item()
        assert tbptt * full < 0 and abs(tbptt - full) > 8 * se
    uncompensated = _influence_gradients(lambda: _Uncompensated(16, 6, generator=g), 300)
    se_u = uncompensated.std().item() / math.sqrt(len(uncompensated))
    assert abs(uncompensated.mean().item() - full) > 10 * se_u


class _Uncompensated(ARTBPSampler):
    def schedule(self, length):
        s = super().schedule(length)
        return truncation.Schedule(s.cut, torch.ones_like(s.scale))


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_sablstm_online_carries_the_whole_state(backend):
    """A SABLSTM core carries its whole SABState between subsequences, memory included and detached
    (docs/SPEC.md sections 4 and 8): the outputs of the consecutive subsequences are the one-shot forward
    over the stream (the carried memory is used), the final state is the one-shot state (every slot of the
    stream, its true steps), and the accumulated gradient is the sum of the subsequences' gradients from
    detached states (the drawn truncation cuts the memory too)."""
    torch.manual_seed(5)
    sab = fastrnn.SABLSTM(2, 3, num_layers=2, k_top=2, k_att=2, dtype=f64, backend=backend)
    x = torch.randn(12, 2, 2, dtype=f64)
    outs = []

    def loss_fn(out, y):
        outs.append(out.detach())
        return (out ** 2).sum()

    trainer = OnlineTrainer(sab, loss_fn, None, FixedLength(5), accumulate=True)
    trainer.run(TensorStream(x))
    assert [s.length for s in trainer.segments] == [5, 5, 2]
    y_full, (h_full, c_full), state_full = sab(x, return_state=True)
    torch.testing.assert_close(torch.cat(outs), y_full.detach(), rtol=0, atol=1e-14)
    state = trainer.hx
    assert isinstance(state, fastrnn.SABState) and not state.requires_grad and state.step == 12
    assert torch.equal(state.slot_steps, state_full.slot_steps) and state.num_slots == 7
    torch.testing.assert_close(state.h, h_full.detach(), rtol=0, atol=1e-14)
    for ours, full in zip(state.layers, state_full.layers):
        torch.testing.assert_close(ours.memory, full.memory.detach(), rtol=0, atol=1e-14)
    grads = [p.grad.clone() for p in sab.parameters()]
    assert grads[1].abs().sum() > 0
    # the same subsequences by hand: schedules with cut[0], state detached in between
    expected = [torch.zeros_like(p) for p in sab.parameters()]
    carried = None
    for a, b in ((0, 5), (5, 10), (10, 12)):
        kw = {} if carried is None else dict(state=carried)
        out, _, carried = sab(x[a:b], schedule=FixedLength(b - a).next_schedule(), return_state=True, **kw)
        for e, g in zip(expected, torch.autograd.grad((out ** 2).sum(), list(sab.parameters()))):
            e += g
        carried = carried.detach()
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("core_cls", [fastrnn.SABLSTM, fastrnn.LSTM, torch.nn.LSTM], ids=["SABLSTM", "LSTM", "nn.LSTM"])
def test_online_trainer_refuses_a_batch_first_core(core_cls):
    """The stream's chunks are time-major [T, B, I]: a batch_first core would read the subsequence length as
    the batch (silently, when they are equal), so OnlineTrainer refuses it, naming batch_first; unbatched
    streams ([T, I], where batch_first does not apply) and the same core with batch_first=False run."""
    torch.manual_seed(0)
    kw = dict(k_top=2) if core_cls is fastrnn.SABLSTM else {}
    x, y = torch.randn(12, 3, 2), torch.randn(12, 3, 4)
    loss = lambda out, tgt: ((out - tgt) ** 2).sum()                    # noqa: E731
    core = core_cls(2, 4, batch_first=True, **kw)
    trainer = OnlineTrainer(core, loss, None, FixedLength(3), accumulate=True)     # segment length == B
    with pytest.raises(ValueError, match="batch_first"):
        trainer.run(TensorStream(x, y))
    assert trainer.segments == [] and all(p.grad is None for p in core.parameters())
    OnlineTrainer(core, lambda out, tgt: out.pow(2).sum(), None, FixedLength(4), accumulate=True).run(
        TensorStream(x[:, 0]))
    core.batch_first = False
    segments = OnlineTrainer(core, loss, None, FixedLength(3), accumulate=True).run(TensorStream(x, y))
    assert [s.length for s in segments] == [3, 3, 3, 3]


def test_tensor_stream_checks_that_y_has_one_row_per_step_of_x():
    with pytest.raises(ValueError, match=r"y: expected a tensor with one row per step of x \(200 steps\), "
                                         r"got shape \(50, 1, 1\)"):
        TensorStream(torch.randn(200, 1, 1), torch.randn(50, 1, 1))
    with pytest.raises(ValueError, match=r"x: expected a time-major tensor"):
        TensorStream(torch.tensor(1.0))
    stream = TensorStream(torch.randn(5, 1, 1), torch.randn(5, 1))
    assert stream.remaining() == 5 and TensorStream(torch.randn(5, 1, 1)).take(2)[1] is None
