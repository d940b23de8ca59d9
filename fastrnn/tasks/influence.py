"""Influence balancing (Tallec & Ollivier, seed 002, section 6.1, eqs. (15)-(16)).

A row of p + n agents; at every step each agent keeps half of its state and receives half of the state
of its right neighbour, and the p leftmost agents receive the signal +θ, the n rightmost -θ:

    s_{t+1} = A s_t + (θ, ..., θ, -θ, ..., -θ)^T           (15)   A_{k,k} = A_{k,k+1} = 1/2, 0 elsewhere
    ℓ_t = 1/2 (s^1_t - 1)^2                                 (16)   a target on the leftmost agent

θ is a scalar. Agent k's signal reaches agent 1 only after about k steps: θ's short-term influence on s^1
is positive, its long-term one negative. At the fixed point s^1 = 2 (p - n) θ, so the loss is minimal at
θ* = 1 / (2 (p - n)) (-1/6 for the paper's p = 10, n = 13). A gradient blind to dependencies longer than
the truncation gets the sign of dθ wrong and diverges (the paper's Figure 3: truncated BPTT with L = 10,
100 diverges; ARTBP with L0 = 16, alpha = 6 converges on 5 of 5 runs, with η_t = η0 / sqrt(1 + t),
η0 = 3e-4, plain gradient steps, online over one unbounded stream).

Not in the paper (chosen here, stated in the suite): the initial state s_0 = 0 and θ_0 = 0. The stream has
no inputs: `InfluenceBalancing` takes a dummy input [T, 1, 1] only for its length, so it fits the
``core(x, hx) -> (out, hx_n)`` interface of `fastrnn.training.artbp`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fastrnn.truncation import Schedule, full

P, N = 10, 13  # the paper's positive and negative agents


def transition(p: int = P, n: int = N, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """(A [p+n, p+n], the signal direction b [p+n] = (1, ..., 1, -1, ..., -1)) of eq. (15)."""
    if p < 0 or n < 0 or p + n < 1:
        raise ValueError(f"need p, n >= 0 and p + n >= 1 agents, got p={p}, n={n}")
    d = p + n
    A = 0.5 * torch.eye(d, dtype=dtype) + 0.5 * torch.diag(torch.ones(d - 1, dtype=dtype), 1)
    b = torch.cat([torch.ones(p, dtype=dtype), -torch.ones(n, dtype=dtype)])
    return A, b


def optimal_theta(p: int = P, n: int = N) -> float:
    """θ* = 1 / (2 (p - n)): the fixed point's s^1 = 2 (p - n) θ equals the target 1."""
    if p == n:
        raise ValueError("p == n: θ has no influence on the fixed point")
    return 1.0 / (2 * (p - n))


class _Recurrence(torch.autograd.Function):
    """Eq. (15) over T steps with a truncation schedule, in numpy: forward the states, backward the
    adjoint recursion of seed 002's eq. (11) (λ_t = ∂ℓ/∂s_t + scale[t+1] λ_{t+1} A where step t+1 is
    not cut). Much faster than one autograd node per step for the 10^5-step online runs."""

    @staticmethod
    def forward(ctx, theta, s0, A, b, cut, scale, T):
        A_np, b_np, s = A.numpy(), b.numpy(), s0.detach().numpy()
        th = float(theta)
        out = np.empty((T,) + s.shape)
        for t in range(T):
            s = s @ A_np.T + th * b_np
            out[t] = s
        ctx.save_for_backward(A, b, cut, scale)
        states = torch.from_numpy(out)
        return states, states[-1].clone()

    @staticmethod
    def backward(ctx, g_states, g_last):
        A, b, cut, scale = ctx.saved_tensors
        A_np, T = A.numpy(), cut.shape[0]
        g = g_states.numpy() if g_states is not None else None
        k = np.where(cut.numpy(), 0.0, scale.numpy())  # the factor on the edge into step t - 1
        lam = g_last.numpy().copy() if g_last is not None else np.zeros_like(g[0])
        lam_sum = np.zeros_like(lam)                   # Σ_t λ_t: ∂/∂θ = Σ_t λ_t · b
        for t in range(T - 1, -1, -1):
            if g is not None:
                lam = lam + g[t]
            lam_sum += lam
            lam = k[t] * (lam @ A_np)
        d_theta = torch.tensor(float((lam_sum @ b.numpy()).sum()), dtype=torch.float64)
        return d_theta, torch.from_numpy(lam), None, None, None, None, None


class InfluenceBalancing(nn.Module):
    """Eq. (15) as a recurrent core: ``forward(x [T, B, 1], hx [B, p+n] or None, *, schedule=None) ->
    (states [T, B, p+n], s_T)``. ``x`` is ignored (only its length and batch size are used); ``theta`` is
    the one parameter. ``schedule`` (fastrnn.truncation) cuts and scales the recurrent gradient as for
    fastrnn.LSTM; `reference_forward` is the same map as plain autograd (one node per step), the oracle."""

    def __init__(self, p: int = P, n: int = N, theta: float = 0.0):
        super().__init__()
        A, b = transition(p, n)
        self.p, self.n = p, n
        self.register_buffer("A", A)
        self.register_buffer("b", b)
        self.theta = nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))

    def _initial(self, x, hx):
        return hx if hx is not None else torch.zeros(x.shape[1], self.p + self.n, dtype=torch.float64)

    def forward(self, x: Tensor, hx: Tensor | None = None, *, schedule: Schedule | None = None):
        T = x.shape[0]
        if T == 0:
            raise ValueError("InfluenceBalancing: empty input")
        schedule = full(T) if schedule is None else schedule
        if len(schedule) != T:
            raise ValueError(f"schedule has length {len(schedule)} but the input has T={T} steps")
        return _Recurrence.apply(self.theta, self._initial(x, hx), self.A, self.b, schedule.cut,
                                 schedule.scale.to(torch.float64), T)

    def reference_forward(self, x: Tensor, hx: Tensor | None = None):
        """The plain-autograd map (no schedule): for tests, and the step-by-step path of `run_core`."""
        s = self._initial(x, hx)
        drive = self.theta * self.b
        states = []
        for _ in range(x.shape[0]):
            s = s @ self.A.T + drive
            states.append(s)
        return torch.stack(states), s


def loss(states: Tensor, target: float = 1.0) -> Tensor:
    """Eq. (16) summed over the steps (and the batch): Σ_t 1/2 (s^1_t - target)^2."""
    return 0.5 * ((states[..., 0] - target) ** 2).sum()


def inputs(T: int, batch_size: int = 1) -> Tensor:
    """The dummy input of ``T`` steps (the system has none)."""
    return torch.zeros(T, batch_size, 1, dtype=torch.float64)


class InfluenceStream:
    """The unbounded stream of the online experiment: dummy inputs, no targets (eq. (16)'s target is 1)."""

    def __init__(self, batch_size: int = 1):
        self.batch_size = batch_size

    def take(self, n: int):
        return inputs(n, self.batch_size), None
