"""ARTBP online training (Tallec & Ollivier, seed 002, section 5 and Figure 1c), and online truncated BPTT.

An unbounded stream is cut into subsequences one at a time. For each one the loop

    1. samples where the subsequence ends: ARTBP draws, for δt = 1, 2, ..., a truncation with the
       probability c_t of eq. (14) (`fastrnn.truncation.artbp_cut_probability`) and stops at the first one;
       truncated BPTT (`FixedLength`) always takes L steps;
    2. runs the core forward over those steps from the carried state, and backward through them with the
       compensation factors of eq. (11): the gradient from step t into step t-1 is multiplied by
       1 / (1 - c_t), where c_t was the probability of truncating between them and it was not taken;
    3. steps the optimiser on that gradient (a "partial gradient descent update", section 5);
    4. carries the final state, detached, into the next subsequence (a SABLSTM's whole `fastrnn.SABState`,
       its memory included).

Where the compensation applies. In eq. (11) the factor 1/(1 - c_t) sits on every recurrent edge that a
truncation *could* have cut but did not. The edge between two subsequences is the truncation that was
drawn (X_t = 1), so it carries no gradient and no factor: the carried state is detached, and the first
step of every subsequence has ``cut[0] = True`` in its `Schedule` (the `scale[0]` slot is unused). Inside
the subsequence, step j (j = 1, ..., L-1, counted from its first step, which is δt = j steps after the
truncation) gets ``scale[j] = 1 / (1 - c(δt = j))``. The δt of eq. (14) restarts at every subsequence:
the previous truncation is the subsequence's start. A stream that ends before the drawn truncation ends
the last subsequence there (eq. (11), t = T). By Proposition 1 (eq. (13)), summed over the subsequences
of a sequence with the parameters held fixed, the ARTBP gradient is an unbiased estimate of the full-BPTT
gradient of the summed loss (eq. (2)), which is why each subsequence's loss is the *sum* of its per-step
losses (``loss_fn`` sums over time; a per-subsequence mean would weight steps by 1/L and bias it).
``accumulate=True`` (no optimiser) adds the subsequences' gradients without stepping: the estimate of
eq. (12) for a fixed parameter, what the statistical tests average.

Cores. `fastrnn.LSTM` and `fastrnn.SABLSTM` (any module whose forward takes ``schedule=``) get the
subsequence's `Schedule` and run it fused; any other ``nn.LSTM``-like core ``core(x, hx) -> (out, hx_n)``
(torch.nn.LSTM / GRU / RNN, or a custom recurrence; hx a tensor or a tuple of tensors) runs one step per
call with the scale applied to the state's gradient between steps (`run_core`). A core whose forward
also takes ``state=`` and ``return_state=`` (`fastrnn.SABLSTM`) carries its whole streaming state
(`fastrnn.SABState`: h, c, the memory of every layer and the step counter; docs/SPEC.md section 8) from
one subsequence to the next, detached (`run_core_streaming`): the forward pass over the subsequences is
one pass over the stream, the memory included, and the drawn truncation cuts the gradient through the
memory as well as along (h, c). Proposition 1 then covers the recurrent paths only: a gradient path
through a memory slot written before the last drawn truncation is cut with no compensation factor, so
with SAB the online estimate under-weights attention links that span a truncation (docs/SPEC.md
section 4).

    trainer = OnlineTrainer(core, loss_fn, optimizer, ARTBPSampler(L0=16, alpha=6, generator=g))
    trainer.run(stream, steps=100_000, lr=lambda t: 3e-4 / math.sqrt(1 + t))
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Protocol, Tuple

import torch
from torch import Tensor, nn

from fastrnn.state import SABState
from fastrnn.truncation import Schedule, artbp_cut_probability, check_artbp

__all__ = ["ARTBPSampler", "FixedLength", "OnlineTrainer", "Segment", "TensorStream", "run_core",
           "run_core_streaming", "scale_grad", "takes_state"]


# ---- truncation samplers ---------------------------------------------------------------------------

class SegmentSampler(Protocol):
    def next_schedule(self, remaining: Optional[int] = None) -> Schedule:
        """The next subsequence's schedule: its length is the number of steps; at most ``remaining``."""


class ARTBPSampler:
    """ARTBP's subsequences (seed 002, eqs. (11) and (14)): random lengths, compensation factors.

    The length L is drawn step by step: after δt = 1, 2, ... steps the subsequence ends with probability
    c(δt) = (alpha-1) / ((alpha-2) L0 + δt); so P(L = k) = c(k) Π_{j<k} (1 - c(j)). The schedule of a
    subsequence of length L has cut[0] (the truncation it starts at) and scale[j] = 1 / (1 - c(j)) for
    j = 1, ..., L-1. The paper uses alpha = 4 (PTB) or 6 (influence balancing); the mean length is about
    L0. ``generator`` makes the draws reproducible.
    """

    def __init__(self, L0: float, alpha: float = 4.0, generator: Optional[torch.Generator] = None):
        check_artbp(L0, alpha)
        self.L0, self.alpha, self.generator = float(L0), float(alpha), generator
        self._uniforms: List[float] = []

    def cut_probability(self, delta: int) -> float:
        """c_t of eq. (14) for δt = ``delta`` steps since the last truncation."""
        return artbp_cut_probability(delta, self.L0, self.alpha)

    def _uniform(self) -> float:
        """The next uniform draw of ``generator`` (drawn 256 at a time)."""
        if not self._uniforms:
            self._uniforms = torch.rand(256, generator=self.generator, dtype=torch.float64).tolist()[::-1]
        return self._uniforms.pop()

    def draw_length(self, remaining: Optional[int] = None) -> int:
        """A subsequence length: the first δt at which a truncation is drawn (at most ``remaining``)."""
        delta = 1
        while remaining is None or delta < remaining:
            if self._uniform() < self.cut_probability(delta):
                break
            delta += 1
        return delta

    def schedule(self, length: int) -> Schedule:
        """The eq. (11) schedule of a subsequence of ``length`` steps that starts at a truncation."""
        j = torch.arange(1, length, dtype=torch.float64)
        c = (self.alpha - 1) / ((self.alpha - 2) * self.L0 + j)   # eq. (14), as artbp_cut_probability
        scale = torch.cat([torch.ones(min(length, 1), dtype=torch.float64), 1.0 / (1.0 - c)])
        cut = torch.zeros(length, dtype=torch.bool)
        cut[:1] = True
        return Schedule(cut, scale)

    def length_probability(self, length: int, *, at_least: bool = False) -> float:
        """P(L = length), or P(L >= length) with ``at_least`` (a subsequence the stream's end cut short)."""
        p = 1.0
        for j in range(1, length):
            p *= 1.0 - self.cut_probability(j)
        return p if at_least else p * self.cut_probability(length)

    def next_schedule(self, remaining: Optional[int] = None) -> Schedule:
        return self.schedule(self.draw_length(remaining))


class FixedLength:
    """Truncated BPTT online: every subsequence has ``L`` steps (the last one fewer), no compensation."""

    def __init__(self, L: int):
        if not isinstance(L, int) or isinstance(L, bool) or L < 1:
            raise ValueError(f"L must be an int >= 1, got {L!r}")
        self.L = L

    def next_schedule(self, remaining: Optional[int] = None) -> Schedule:
        length = self.L if remaining is None else min(self.L, remaining)
        cut = torch.zeros(length, dtype=torch.bool)
        cut[:1] = True
        return Schedule(cut, torch.ones(length, dtype=torch.float64))


# ---- running a core under a schedule ---------------------------------------------------------------

class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward; its gradient multiplied by ``scale`` backward."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)


def _map_state(hx, fn):
    if hx is None:
        return None
    if isinstance(hx, Tensor):
        return fn(hx)
    return type(hx)(_map_state(s, fn) for s in hx)


def detach_state(hx):
    """The state (a tensor, a nested tuple of tensors, or a `fastrnn.SABState`) detached from the graph."""
    if isinstance(hx, SABState):
        return hx.detach()
    return _map_state(hx, lambda s: s.detach())


_TAKES_SCHEDULE: dict = {}


def takes_schedule(core) -> bool:
    """Whether ``core``'s forward takes a ``schedule=`` keyword (fastrnn.LSTM, fastrnn.SABLSTM)."""
    fn = type(core).forward if isinstance(core, nn.Module) else core
    if fn not in _TAKES_SCHEDULE:
        try:
            _TAKES_SCHEDULE[fn] = "schedule" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            _TAKES_SCHEDULE[fn] = False
    return _TAKES_SCHEDULE[fn]


_TAKES_STATE: dict = {}


def takes_state(core) -> bool:
    """Whether ``core``'s forward takes ``state=`` and ``return_state=`` (fastrnn.SABLSTM's streaming)."""
    fn = type(core).forward if isinstance(core, nn.Module) else core
    if fn not in _TAKES_STATE:
        try:
            params = inspect.signature(fn).parameters
            _TAKES_STATE[fn] = "state" in params and "return_state" in params and "schedule" in params
        except (TypeError, ValueError):
            _TAKES_STATE[fn] = False
    return _TAKES_STATE[fn]


def run_core_streaming(core, x: Tensor, state, schedule: Schedule) -> Tuple[Tensor, Any]:
    """A streaming core (`takes_state`, fastrnn.SABLSTM) over ``x`` [T, B, I] under ``schedule``:
    (output, its `SABState` after the last step). ``state`` is a `SABState` to continue from, an
    ``(h_0, c_0)`` tuple to start a fresh stream from, or None (zeros)."""
    if isinstance(state, SABState):
        result = core(x, state=state, schedule=schedule, return_state=True)
    else:
        result = core(x, state, schedule=schedule, return_state=True)
    return result[0], result[-1]


def run_core(core, x: Tensor, hx, schedule: Schedule) -> Tuple[Tensor, Any]:
    """``core`` over ``x`` [T, B, I] (time-major) from ``hx`` under ``schedule``: (output, final state).

    Cores that take ``schedule=`` get it (one fused call). Others run one step per call: the state that
    enters step t is detached where ``cut[t]`` and has its gradient scaled by ``scale[t]`` otherwise, which
    is what the schedule means (fastrnn.truncation). ``hx`` None is the core's zero state."""
    if takes_schedule(core):
        return core(x, hx, schedule=schedule)
    if len(schedule) != x.shape[0]:
        raise ValueError(f"schedule has length {len(schedule)} but the input has T={x.shape[0]} steps")
    cut, scale = schedule.cut.tolist(), schedule.scale.tolist()
    outputs = []
    for t in range(x.shape[0]):
        if hx is not None:
            hx = detach_state(hx) if cut[t] else _map_state(hx, lambda s, k=scale[t]: scale_grad(s, k))
        out, hx = core(x[t:t + 1], hx)
        outputs.append(out)
    if not outputs:
        raise ValueError("run_core: empty subsequence")
    return torch.cat(outputs), hx


# ---- streams ---------------------------------------------------------------------------------------

class Stream(Protocol):
    def take(self, n: int) -> Optional[Tuple[Tensor, Any]]:
        """The next ``n`` steps (fewer at the end) as (x [n', B, I], targets of those steps); None at the end.
        A finite stream may also have ``remaining() -> int``: the loop then never draws past its end."""


class TensorStream:
    """A finite stream over time-major tensors: ``x`` [T, B, I] and ``y`` [T, ...] (or None)."""

    def __init__(self, x: Tensor, y: Optional[Tensor] = None):
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise ValueError(f"x: expected a time-major tensor [T, B, I], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if y is not None and (not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]):
            got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: expected a tensor with one row per step of x ({x.shape[0]} steps), got {got}")
        self.x, self.y, self.position = x, y, 0

    def take(self, n: int):
        if self.position >= self.x.shape[0]:
            return None
        a, b = self.position, min(self.position + n, self.x.shape[0])
        self.position = b
        return self.x[a:b], (None if self.y is None else self.y[a:b])

    def remaining(self) -> int:
        return self.x.shape[0] - self.position


# ---- the online loop -------------------------------------------------------------------------------

@dataclass
class Segment:
    """One subsequence of the online loop."""
    start: int           # stream step of its first step
    length: int
    loss: float          # its loss: the sum of its per-step losses (before the update)
    lr: Optional[float]  # the learning rate of its update (None: no update)


@dataclass
class OnlineTrainer:
    """Online training over a stream, one subsequence at a time (seed 002, section 5).

    core       fastrnn.LSTM / SABLSTM or an nn.LSTM-like ``core(x, hx) -> (out, hx_n)`` (`run_core`), fed
               time-major chunks: a core with ``batch_first=True`` is refused (ValueError) for batched streams
    loss_fn    ``loss_fn(out, y) -> scalar``: the SUM over the subsequence's steps of the per-step loss
               (eq. (2)); a head, if any, lives inside it
    optimizer  stepped once per subsequence; None with ``accumulate=True``
    sampler    `ARTBPSampler` (ARTBP) or `FixedLength` (truncated BPTT)
    clip       optional gradient-norm clipping of ``params`` (this breaks unbiasedness; off by default)
    accumulate add every subsequence's gradient into ``.grad`` and never step or zero: the summed estimate
               of eq. (12) at fixed parameters
    hx         the carried state (None = the core's zero state); detached between subsequences. For a
               streaming core (`takes_state`: fastrnn.SABLSTM) it becomes the core's `fastrnn.SABState`
               after the first subsequence (memory included); it may start as None, an (h_0, c_0) tuple
               or a SABState
    """
    core: Any
    loss_fn: Callable[[Tensor, Any], Tensor]
    optimizer: Optional[torch.optim.Optimizer]
    sampler: SegmentSampler
    clip: Optional[float] = None
    params: Optional[List[Tensor]] = None
    accumulate: bool = False
    hx: Any = None
    t: int = 0                                  # stream steps consumed so far
    segments: List[Segment] = field(default_factory=list)

    def __post_init__(self):
        if self.optimizer is None and not self.accumulate:
            raise ValueError("OnlineTrainer: give an optimizer, or accumulate=True to only sum gradients")
        if self.params is None and self.optimizer is not None:
            self.params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self, stream: Stream, lr: Optional[float] = None, max_steps: Optional[int] = None) -> Optional[Segment]:
        """One subsequence: sample its length, forward/backward with eq. (11)'s factors, update, carry.
        Returns its record, or None when the stream has ended."""
        remaining = stream.remaining() if hasattr(stream, "remaining") else None  # a finite stream's end
        if remaining is not None:
            if remaining <= 0:
                return None
            max_steps = remaining if max_steps is None else min(max_steps, remaining)
        schedule = self.sampler.next_schedule(max_steps)
        chunk = stream.take(len(schedule))
        if chunk is None or chunk[0].shape[0] == 0:
            return None
        x, y = chunk
        if x.dim() == 3 and getattr(self.core, "batch_first", False):
            raise ValueError("OnlineTrainer: the core has batch_first=True, but the stream's chunks are "
                             "time-major [T, B, I] (a batch-first core would read T as the batch): use the core "
                             "with batch_first=False (the same parameters)")
        n = x.shape[0]
        if n < len(schedule):                       # the stream ended first: eq. (11) at t = T
            schedule = Schedule(schedule.cut[:n], schedule.scale[:n])
        if not self.accumulate:
            self.optimizer.zero_grad(set_to_none=True)
        run = run_core_streaming if takes_state(self.core) else run_core
        out, hx_n = run(self.core, x, self.hx, schedule)
        loss = self.loss_fn(out, y)
        loss.backward()
        if not self.accumulate:
            if lr is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            if self.clip is not None:
                nn.utils.clip_grad_norm_(self.params, self.clip)
            self.optimizer.step()
        self.hx = detach_state(hx_n)
        segment = Segment(self.t, n, loss.item(), None if self.accumulate else lr)
        self.t += n
        self.segments.append(segment)
        return segment

    def run(self, stream: Stream, steps: Optional[int] = None,
            lr: Optional[Callable[[int], float]] = None) -> List[Segment]:
        """Subsequences until the stream ends or ``steps`` more steps are consumed. ``lr(t)``: the learning
        rate of the update of a subsequence that starts at stream step t (e.g. seed 002's η0 / sqrt(1 + t))."""
        end = None if steps is None else self.t + steps
        new = []
        while end is None or self.t < end:
            segment = self.step(stream, None if lr is None else lr(self.t),
                                None if end is None else end - self.t)
            if segment is None:
                break
            new.append(segment)
        return new

    def running_mean_loss(self) -> Tuple[List[int], List[float]]:
        """Seed 002's Figure 3 curve: (t, the average per-step loss over steps 1..t) at each subsequence's end."""
        ts, means, total = [], [], 0.0
        for s in self.segments:
            total += s.loss
            ts.append(s.start + s.length)
            means.append(total / ts[-1])
        return ts, means
