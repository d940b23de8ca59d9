"""Fixed Point Propagation (fastrnn.training.fpp; seed 003, Algorithm 1, eqs. (3.6)-(3.7)): one update's
changes to W, β, s_{i-T} and s_i against the gradients of L_i recomputed through torch.nn.LSTM (float64),
M windows batched = M separate windows, the buffer, the variants, and learning CycleWorld p = 6."""
import copy
import time

import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn.tasks.cycleworld import CycleWorld, naive_accuracy
from fastrnn.training.fpp import FPP, tbptt

f64 = torch.float64


# tiny problems: on two shared cores each small fused call would wait on the thread pool
pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(T=3, B=2, I=2, H=3, layers=1, **kw):
    torch.manual_seed(0)
    core = fastrnn.LSTM(I, H, num_layers=layers, dtype=f64)
    head = torch.nn.Linear(H, 2, dtype=f64)
    opt = torch.optim.SGD([*core.parameters(), *head.parameters()], lr=0.1)
    algo = FPP(core, head, opt, T=T, batch_size=B, buffer_size=6, lam=0.7, state_lr=0.05,
               generator=torch.Generator().manual_seed(0), **kw)
    return core, head, algo


def _fill(algo, steps, B=2, I=2, seed=1):
    """Stream steps without updates (the update is replaced by a no-op) to get a buffer to test on."""
    g = torch.Generator().manual_seed(seed)
    update, algo.update = algo.update, (lambda ends=None: None)
    for _ in range(steps):
        algo.step(torch.randn(B, I, generator=g, dtype=f64), torch.randint(0, 2, (B,), generator=g))
    algo.update = update
    # perturb the stored states so s_i != ŝ_i (as after learning)
    algo.S.add_(0.3 * torch.randn(algo.S.shape, generator=g, dtype=f64))


def _reference_L(core, head, algo, i, lam):
    """L_i of eq. (3.6) through torch.nn.LSTM, with leaves for s_{i-T} and s_i: (L_i summed over rows,
    s_start leaf, s_end leaf, reference LSTM)."""
    ref = torch.nn.LSTM(core.input_size, core.hidden_size, num_layers=core.num_layers, dtype=f64)
    ref.load_state_dict(core.state_dict())
    slot = lambda t: t % algo.capacity  # noqa: E731
    T = algo.T
    x = torch.stack([algo.X[slot(t)] for t in range(i - T + 1, i + 1)])
    s0 = algo.S[slot(i - T)].clone().requires_grad_()
    s1 = algo.S[slot(i)].clone().requires_grad_()
    h0, c0 = s0[:, 0].transpose(0, 1), s0[:, 1].transpose(0, 1)
    out, (h, c) = ref(x, (h0.contiguous(), c0.contiguous()))
    s_hat = torch.stack([h, c]).permute(2, 0, 1, 3)
    ell = F.cross_entropy(head(out[-1]), algo.Y[slot(i)], reduction="none")
    L = ell + 0.5 * lam * ((s1 - s_hat) ** 2).flatten(1).sum(1)
    return L.sum(), s0, s1, ref, s_hat


@pytest.mark.parametrize("layers", [1, 2])
def test_one_update_follows_eq_3_7(layers):
    T, B = 3, 2
    core, head, algo = _setup(T=T, B=B, layers=layers)
    _fill(algo, 8)
    i = 6
    L, s0, s1, ref, s_hat = _reference_L(core, head, algo, i, 0.7)
    params = [*ref.parameters(), *head.parameters()]
    grads = torch.autograd.grad(L, params + [s0, s1])
    *g_params, g_s0, g_s1 = grads
    torch.testing.assert_close(g_s1, 0.7 * (s1 - s_hat).detach(), rtol=1e-12, atol=1e-14)  # ∇_{s_i} = λ(s_i - ŝ_i)
    S_before = algo.S.clone()
    W_before = [p.detach().clone() for p in [*core.parameters(), *head.parameters()]]
    algo.update(torch.tensor([i]))
    # W and β: one SGD step (lr 0.1) on the mean over the B rows of L_i
    for w0, p, g in zip(W_before, [*core.parameters(), *head.parameters()], g_params):
        torch.testing.assert_close(p.detach(), w0 - 0.1 * g / B, rtol=1e-10, atol=1e-13)
    # s_{i-T} and s_i: a step of 0.05 on each state's own gradient; every other state unchanged
    slot = lambda t: t % algo.capacity  # noqa: E731
    torch.testing.assert_close(algo.S[slot(i - T)], S_before[slot(i - T)] - 0.05 * g_s0, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(algo.S[slot(i)], S_before[slot(i)] - 0.05 * g_s1, rtol=1e-10, atol=1e-13)
    others = [k for k in range(algo.capacity) if k not in (slot(i - T), slot(i))]
    assert torch.equal(algo.S[others], S_before[others])


def test_m_windows_batched_equal_separate_windows():
    T, B = 2, 2
    core, head, algo = _setup(T=T, B=B, M=2)
    _fill(algo, 8)
    twin = copy.deepcopy(algo)
    twin_params = [*twin.core.parameters(), *twin.head.parameters()]
    ends = [5, 7]  # disjoint windows: states 3, 5 and 5, 7 share state 5 (end of one, start of the other)
    grads, state_grads = None, {}
    for i in ends:
        L, s0, s1, ref, _ = _reference_L(twin.core, twin.head, twin, i, 0.7)
        g = torch.autograd.grad(L, [*ref.parameters(), *twin.head.parameters(), s0, s1])
        grads = g[:-2] if grads is None else [a + b for a, b in zip(grads, g[:-2])]
        for t, gs in ((i - T, g[-2]), (i, g[-1])):
            state_grads[t] = state_grads.get(t, 0) + gs
    W_before = [p.detach().clone() for p in twin_params]
    S_before = algo.S.clone()
    algo.update(torch.tensor(ends))
    for w0, p, g in zip(W_before, [*core.parameters(), *head.parameters()], grads):
        torch.testing.assert_close(p.detach(), w0 - 0.1 * g / (2 * B), rtol=1e-10, atol=1e-13)
    for t, g in state_grads.items():
        torch.testing.assert_close(algo.S[t % algo.capacity], S_before[t % algo.capacity] - 0.05 * g,
                                   rtol=1e-10, atol=1e-13)


def test_buffer_online_state_and_variants():
    T, B = 3, 2
    core, head, algo = _setup(T=T, B=B)
    g = torch.Generator().manual_seed(5)
    seen = []
    for t in range(1, 15):
        x, y = torch.randn(B, 2, generator=g, dtype=f64), torch.randint(0, 2, (B,), generator=g)
        prev = algo.S[(t - 1) % algo.capacity].clone()
        info = algo.step(x, y)
        seen.append((x, y))
        # the new state is f_W(s_{t-1}, o_t) from the stored (learned) s_{t-1}
        with torch.no_grad():
            _, (h, c) = core(x.unsqueeze(0), (prev[:, 0].transpose(0, 1).contiguous(),
                                              prev[:, 1].transpose(0, 1).contiguous()))
        assert (info.update_loss is None) == (t < T)
        if t >= T:
            # the update may have moved s_t already: compare the data, and ends within the buffer
            ends = algo.window_ends()
            assert ends.min() >= max(T, t - 6 + T) and ends.max() <= t
    assert algo.t == 14 and algo.capacity == 7
    for t in range(8, 15):  # the buffer holds the last 6 transitions (and the state before them)
        assert torch.equal(algo.X[t % 7], seen[t - 1][0]) and torch.equal(algo.Y[t % 7], seen[t - 1][1])
    # buffer-only: the stored states never change in an update
    _, _, plain = _setup(T=T, B=B, learn_states=False)
    _fill(plain, 8)
    S = plain.S.clone()
    plain.update()
    assert torch.equal(plain.S, S)
    # online T-BPTT: always the window ending at t, from the state computed online
    core2, head2, _ = _setup(T=T, B=B)
    t_algo = tbptt(core2, head2, torch.optim.SGD([*core2.parameters(), *head2.parameters()], lr=0.1), T=T,
                   batch_size=B)
    for t in range(1, 9):
        t_algo.step(torch.randn(B, 2, dtype=f64), torch.randint(0, 2, (B,)))
        if t >= T:
            assert t_algo.window_ends().tolist() == [t]
    with pytest.raises(ValueError):
        FPP(core, head, algo.optimizer, T=5, buffer_size=3)


def test_fpp_learns_cycleworld_6_beyond_the_naive_predictor():
    """CycleWorld p = 6, LSTM with 4 units, T = 6, M = 4 windows per step, RMSprop: within 1,000 online
    steps the online accuracy of steps 700-1,000 beats always-0 (83.3 %) by 8 points on two seeds (on five
    seeds: 0.94-1.0); the state step is the optimiser's learning rate (the default)."""
    start = time.perf_counter()
    for seed in range(2):
        torch.manual_seed(seed)
        core, head = fastrnn.LSTM(1, 4), torch.nn.Linear(4, 2)
        opt = torch.optim.RMSprop([*core.parameters(), *head.parameters()], lr=0.03)
        g = torch.Generator().manual_seed(seed)
        algo = FPP(core, head, opt, T=6, M=4, generator=g)
        infos = algo.run(CycleWorld(6, 1, g), 1000)
        late = sum(i.acc for i in infos[700:]) / 300
        assert late > naive_accuracy(6) + 0.08, (seed, late)
    assert time.perf_counter() - start < 60  # CI-sized: about 2-5 s per seed


def test_step_names_x_or_y_when_their_rows_are_not_batch_size():
    torch.manual_seed(0)
    core = fastrnn.LSTM(3, 4, dtype=f64)
    head = torch.nn.Linear(4, 2, dtype=f64)
    opt = torch.optim.SGD([*core.parameters(), *head.parameters()], lr=0.1)
    algo = FPP(core, head, opt, T=4, batch_size=2)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"x: expected \[batch_size=2, input_size\], got shape \(3, 3\)"):
        algo.step(torch.randn(3, 3), y)
    with pytest.raises(ValueError, match=r"y: expected \[batch_size=2\] .* got shape \(3,\)"):
        algo.step(torch.randn(2, 3), torch.tensor([0, 1, 1]))
    assert algo.t == 0  # the refused steps left no trace
    algo.step(torch.randn(2, 3), y)
    with pytest.raises(ValueError, match=r"x, y: shapes \(2, 5\), \(2,\) differ from the first step's"):
        algo.step(torch.randn(2, 5), y)
    assert algo.t == 1
