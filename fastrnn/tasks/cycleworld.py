"""CycleWorld and StochasticWorld (Nath, Fixed Point Propagation, seed 003, section 4.1 and appendix A).

Online prediction streams: at every step the agent sees one observation bit x_t and must predict a target
bit y_t from the history x_1..x_t. Both are unbounded streams with ``take(n) -> (x [n, B, 1] float,
y [n, B] int64)`` (the interface of `fastrnn.training.artbp` and `fastrnn.training.fpp`); B independent
copies run side by side.

CycleWorld(p): a deterministic cycle of p steps whose observation is 1 at the cycle's p-th step and 0
elsewhere. The target is the next observation bit, y_t = x_{t+1}: the model must count the steps since
the last 1. Always predicting 0 is right (p - 1)/p of the time: 83 % for p = 6, 90 % for p = 10 (the
thesis' reference levels, `naive_accuracy`). Each copy starts at a random phase (``generator``).

StochasticWorld (the thesis' version of r2rt.com's task, dependencies at 5 and 12 steps): x_t is 0 or 1
with probability 1/2; y_t is 1 with probability 50 %, raised by 50 points (to 100 %) if x_{t-5} = 1 and
lowered by 25 points if x_{t-12} = 1:

    P(y_t = 1 | x_{t-5} = 0, x_{t-12} = 0) = 0.50      P(y_t = 1 | x_{t-5} = 1, x_{t-12} = 0) = 1.00
    P(y_t = 1 | x_{t-5} = 0, x_{t-12} = 1) = 0.25      P(y_t = 1 | x_{t-5} = 1, x_{t-12} = 1) = 0.75

Cross-entropies (nats) of the three predictors the thesis quotes (`STOCHASTIC_REFERENCE`): knowing
neither dependency 0.66, the 5-step one 0.51, both 0.45 (the Bayes optimum). The 12 observations before
the stream starts are drawn too, so every y_t has both of its causes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

LAGS = (5, 12)
P_Y1 = {(0, 0): 0.50, (1, 0): 1.00, (0, 1): 0.25, (1, 1): 0.75}  # (x_{t-5}, x_{t-12}) -> P(y_t = 1)


def naive_accuracy(p: int) -> float:
    """CycleWorld(p): the accuracy of always predicting 0, (p - 1) / p."""
    return (p - 1) / p


def _bernoulli_entropy(q: float) -> float:
    return -sum(v * math.log(v) for v in (q, 1 - q) if v > 0)


def stochastic_reference() -> dict:
    """The exact cross-entropies (nats) of StochasticWorld's three reference predictors."""
    none = _bernoulli_entropy(sum(P_Y1.values()) / 4)
    five = sum(_bernoulli_entropy((P_Y1[(a, 0)] + P_Y1[(a, 1)]) / 2) for a in (0, 1)) / 2
    both = sum(_bernoulli_entropy(q) for q in P_Y1.values()) / 4
    return {"none": none, "lag5": five, "both": both}


STOCHASTIC_REFERENCE = stochastic_reference()  # {'none': 0.6616, 'lag5': 0.5192, 'both': 0.4545}


class CycleWorld:
    """The p-step cycle as a stream of ``batch_size`` copies at random phases."""

    def __init__(self, p: int, batch_size: int = 1, generator: Optional[torch.Generator] = None):
        if not isinstance(p, int) or p < 2:
            raise ValueError(f"p must be an int >= 2, got {p!r}")
        self.p, self.batch_size = p, batch_size
        self.phase = torch.randint(0, p, (batch_size,), generator=generator)  # step of the cycle at t = 0
        self.t = 0

    def observation(self, t: Tensor) -> Tensor:
        """x at absolute steps ``t`` [n, 1] for every copy: 1 at the cycle's last step (index p - 1)."""
        return (((t + self.phase) % self.p) == self.p - 1).to(torch.int64)

    def take(self, n: int):
        t = torch.arange(self.t, self.t + n).unsqueeze(1)
        self.t += n
        x = self.observation(t)
        y = self.observation(t + 1)
        return x.unsqueeze(-1).to(torch.float32), y


class StochasticWorld:
    """StochasticWorld as a stream of ``batch_size`` independent copies."""

    def __init__(self, batch_size: int = 1, generator: Optional[torch.Generator] = None):
        self.batch_size, self.generator = batch_size, generator
        self.history = self._bits(max(LAGS))  # x_{t-12} .. x_{t-1} before the first step

    def _bits(self, n: int) -> Tensor:
        return (torch.rand(n, self.batch_size, generator=self.generator) < 0.5).to(torch.int64)

    def take(self, n: int):
        x = self._bits(n)
        full = torch.cat([self.history, x])                      # [12 + n, B]
        h = max(LAGS)
        x5, x12 = full[h - LAGS[0]:h - LAGS[0] + n], full[:n]    # x_{t-5}, x_{t-12} for t = 0..n-1
        p = 0.5 + 0.5 * x5 - 0.25 * x12
        y = (torch.rand(n, self.batch_size, generator=self.generator) < p).to(torch.int64)
        self.history = full[-h:]
        return x.unsqueeze(-1).to(torch.float32), y

    @staticmethod
    def probability(x: Tensor, t: int) -> Tensor:
        """P(y_t = 1) given the whole observation sequence ``x`` [T, B] (t >= 12): for tests."""
        return 0.5 + 0.5 * x[t - LAGS[0]].double() - 0.25 * x[t - LAGS[1]].double()
