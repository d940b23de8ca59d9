"""Fixed Point Propagation (Nath, seed 003, Algorithm 1, eqs. (3.5)-(3.7)), and online T-BPTT on the same
buffer for comparison.

The states of a recurrent network are made explicit variables. Over a buffer of transitions
(s_t, o_t, y_t) the objective (3.5) is the prediction loss plus a quadratic penalty that makes each stored
state the image of its predecessor under the state-update f_W. With a T-step update (the operator
F_{T,W} of section 3.2) the loss of one sampled window ending at step i is

    L_i(β, W, S) = ℓ_β(ŝ_i; y_i) + λ/2 ‖s_i − ŝ_i‖²,   ŝ_i = f_W(... f_W(s_{i−T}, o_{i−T+1}) ..., o_i)   (3.6)

(ŝ_i is T applications of f_W starting from the stored state s_{i−T}, as in F_{T,W}; the text of (3.6)
writes its innermost index as s_{i−T−1}, but its gradients (3.7) and Algorithm 1 name s_{i−T}.) Its
gradient (3.7) is non-zero only for β (the head), W (the core), s_{i−T} and s_i:

    ∇_{s_{i−T}} L_i = [∇_ŝ ℓ − λ (s_i − ŝ_i)]ᵀ ∇_{s_{i−T}} ŝ_i      ∇_{s_i} L_i = λ (s_i − ŝ_i)
    ∇_W L_i        = [∇_ŝ ℓ − λ (s_i − ŝ_i)]ᵀ ∇_W ŝ_i               ∇_β L_i   = ∇_β ℓ(ŝ_i; y_i)

Here autograd computes them. Algorithm 1, one call of `FPP.step` per stream step t:

    1. s_t = f_W(s_{t−1}, o_t) from the buffer's (learned) s_{t−1}; its prediction g_β(s_t) of y_t is the
       online prediction that the learning curves score (made before any update at t);
    2. (s_t, o_t, y_t) enters the buffer, which drops its oldest transition when full (``buffer_size``);
    3. M windows of length T are sampled (ends i uniform over the buffer), batched through the fused
       engine as M·B rows of one `fastrnn.LSTM` call with hx = the stored s_{i−T}, and one update of W, β
       (the optimiser, on the mean of the L_i) and of every sampled s_{i−T} and s_i (plain gradient
       descent with ``state_lr`` on each state's own ∇L_i, eq. (3.7); duplicates add up).

The state s of an LSTM core is (h, c) of every layer; the head reads the last layer's h. λ is fixed
(the thesis fixes λ = 1 rather than increasing it). The thesis runs its M updates "in parallel and then
updates the weights for each of the processes in a sequential manner"; here the M windows share one
optimiser step on their mean gradient (one fused call), and the states each get their own gradient.

Variants (the thesis' comparisons, section 4):
    learn_states=False             the buffer-only ablation ("FPP without state updating", 4.3): windows
                                   sampled from the buffer, loss ℓ only, stored states never updated
    sample="latest", M=1, learn_states=False
                                   online T-BPTT (`tbptt`): at every step the one window ending at t,
                                   from the stored s_{t−T} (computed online), gradient T steps back
T can be changed between steps (the thesis' Decay-/Random-FPP schedules shorten it during training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPP", "StepInfo", "tbptt"]


@dataclass
class StepInfo:
    """One stream step: the online prediction's loss and accuracy (batch means, before the update), and
    the update's mean L_i (None while the buffer is shorter than a window)."""
    loss: float
    acc: float
    update_loss: Optional[float]


class FPP:
    """Fixed Point Propagation over a stream of ``batch_size`` parallel rows.

    core        a single- or multi-layer `fastrnn.LSTM` (or ``nn.LSTM``-like: ``core(x, (h0, c0)) ->
                (out, (h_n, c_n))``), time-major
    head        g_β: the last layer's h [rows, H] -> prediction (logits for ``loss_fn``)
    optimizer   over the core's and the head's parameters (the thesis uses RMSprop)
    T           window (truncation) length; M windows per step; ``buffer_size`` transitions kept
    lam         λ of (3.5)-(3.6); ``state_lr``: the step size of the state variables (default: the
                optimiser's first learning rate). Plain gradient descent at an RMSprop-sized rate (0.03)
                barely moves them: each state is updated about 2M times while in the buffer, and each
                update as a window's end closes a fraction λ·``state_lr`` of the gap s_i - ŝ_i.
                ``state_lr = 1/λ`` moves s_i onto ŝ_i; the CycleWorld suite uses 1
                (`fastrnn.experiments.methods.STATE_LR`; docs/reproductions/methods.md: at 0.03 FPP
                failed on 6-CycleWorld at T = 2)
    loss_fn     ``loss_fn(prediction, y) -> per-row loss`` (default: cross-entropy, reduction "none")
    """

    def __init__(self, core: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, *, T: int,
                 batch_size: int = 1, M: int = 1, buffer_size: int = 1000, lam: float = 1.0,
                 state_lr: Optional[float] = None, learn_states: bool = True, sample: str = "uniform",
                 loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 generator: Optional[torch.Generator] = None):
        if sample not in ("uniform", "latest"):
            raise ValueError(f"sample must be 'uniform' or 'latest', got {sample!r}")
        if T < 1 or M < 1 or buffer_size < T:
            raise ValueError(f"need T >= 1, M >= 1 and buffer_size >= T; got T={T}, M={M}, "
                             f"buffer_size={buffer_size}")
        self.core, self.head, self.optimizer = core, head, optimizer
        self.T, self.M, self.B, self.lam = T, M, batch_size, float(lam)
        self.learn_states, self.sample, self.generator = learn_states, sample, generator
        self.state_lr = float(state_lr if state_lr is not None else optimizer.param_groups[0]["lr"])
        self.loss_fn = loss_fn or (lambda pred, y: F.cross_entropy(pred, y, reduction="none"))
        p = next(core.parameters())
        self.layers, self.H = core.num_layers, core.hidden_size
        self.dtype, self.device = p.dtype, p.device
        self.capacity = buffer_size + 1            # the N newest transitions and the state before them
        self.S = torch.zeros(self.capacity, batch_size, 2, self.layers, self.H, dtype=self.dtype, device=self.device)
        self.X: Optional[Tensor] = None            # allocated at the first step (input size, target dtype)
        self.Y: Optional[Tensor] = None
        self.t = 0                                 # steps seen; S[0] is s_0 = 0

    # ---- packing (h, c) [layers, rows, H] <-> state rows [rows, 2, layers, H] ------------------------

    @staticmethod
    def _pack(h: Tensor, c: Tensor) -> Tensor:
        return torch.stack([h, c]).permute(2, 0, 1, 3)

    @staticmethod
    def _unpack(s: Tensor):
        s = s.permute(1, 2, 0, 3)                  # [2, layers, rows, H]
        return s[0].contiguous(), s[1].contiguous()

    def _slot(self, t) -> Tensor:
        return torch.as_tensor(t) % self.capacity

    # ---- Algorithm 1 ---------------------------------------------------------------------------------

    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        """One stream step: ``x`` [B, I] the observation o_t, ``y`` [B] (or [B, ...]) the target y_t."""
        if x.dim() != 2 or x.shape[0] != self.B:
            raise ValueError(f"x: expected [batch_size={self.B}, input_size], got shape {tuple(x.shape)}")
        if y.dim() < 1 or y.shape[0] != self.B:
            raise ValueError(f"y: expected [batch_size={self.B}] (or [batch_size, ...]), got shape {tuple(y.shape)}")
        if self.X is not None and (x.shape[1:] != self.X.shape[2:] or y.shape[1:] != self.Y.shape[2:]):
            raise ValueError(f"x, y: shapes {tuple(x.shape)}, {tuple(y.shape)} differ from the first step's "
                             f"{tuple(self.X.shape[1:])}, {tuple(self.Y.shape[1:])}")
        x = x.to(self.dtype)
        if self.X is None:
            self.X = torch.zeros(self.capacity, *x.shape, dtype=self.dtype, device=self.device)
            self.Y = torch.zeros(self.capacity, *y.shape, dtype=y.dtype, device=self.device)
        with torch.no_grad():                      # 1. s_t = f_W(s_{t-1}, o_t), the online prediction
            h0, c0 = self._unpack(self.S[self.t % self.capacity])
            out, (h, c) = self.core(x.unsqueeze(0), (h0, c0))
            pred = self.head(out[0])
            loss = self.loss_fn(pred, y).mean().item()
            acc = (pred.argmax(-1) == y).to(torch.float64).mean().item() if pred.dim() == y.dim() + 1 else float("nan")
        self.t += 1                                # 2. the transition enters the buffer
        slot = self.t % self.capacity
        self.S[slot] = self._pack(h, c)
        self.X[slot], self.Y[slot] = x, y
        return StepInfo(loss, acc, self.update())

    def window_ends(self) -> Optional[Tensor]:
        """The sampled window ends i (absolute steps), or None while no window fits in the buffer."""
        oldest = max(0, self.t - self.capacity + 1)  # the oldest stored state
        low = oldest + self.T
        if self.t < low:
            return None
        if self.sample == "latest":
            return torch.full((self.M,), self.t, dtype=torch.int64)
        return torch.randint(low, self.t + 1, (self.M,), generator=self.generator)

    def update(self, ends: Optional[Tensor] = None) -> Optional[float]:
        """3. One update on M windows (ends ``ends``, default sampled): W, β, s_{i−T} and s_i."""
        ends = self.window_ends() if ends is None else ends
        if ends is None:
            return None
        M, T, B = ends.shape[0], self.T, self.B
        steps = ends.view(1, M) - T + 1 + torch.arange(T).view(T, 1)       # [T, M]: o_{i-T+1} .. o_i
        x = self.X[self._slot(steps)].reshape(T, M * B, -1)
        y = self.Y[self._slot(ends)].reshape(M * B, *self.Y.shape[2:])
        start_slots, end_slots = self._slot(ends - T), self._slot(ends)
        s_start = self.S[start_slots].reshape(M * B, 2, self.layers, self.H)
        if self.learn_states:
            s_start = s_start.clone().requires_grad_()
        out, (h_n, c_n) = self.core(x, self._unpack(s_start))
        losses = self.loss_fn(self.head(out[-1]), y)
        if self.learn_states:
            s_end = self.S[end_slots].reshape(M * B, 2, self.layers, self.H).clone().requires_grad_()
            s_hat = self._pack(h_n, c_n)
            losses = losses + 0.5 * self.lam * ((s_end - s_hat) ** 2).flatten(1).sum(1)
        total = losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.learn_states:                      # each state steps on its own ∇L_i: undo the mean
            with torch.no_grad():
                for slots, leaf in ((start_slots, s_start), (end_slots, s_end)):
                    g = leaf.grad.reshape(M, B, 2, self.layers, self.H) * (M * B)
                    self.S.index_add_(0, slots, g, alpha=-self.state_lr)
        return total.item()

    def run(self, stream, steps: int, chunk: int = 256, on_step: Optional[Callable[[int, StepInfo], None]] = None):
        """``steps`` stream steps (read ``chunk`` at a time from ``stream.take``); returns the StepInfos."""
        infos = []
        while len(infos) < steps:
            x, y = stream.take(min(chunk, steps - len(infos)))
            for k in range(x.shape[0]):
                info = self.step(x[k], y[k])
                infos.append(info)
                if on_step is not None:
                    on_step(self.t, info)
        return infos


def tbptt(core: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, *, T: int, batch_size: int = 1,
          loss_fn=None) -> FPP:
    """Online truncated BPTT: at every step one update on the window ending at t, from the state s_{t−T}
    the network computed online (not a learned variable), gradient T steps back (seed 003, section 2.2)."""
    return FPP(core, head, optimizer, T=T, batch_size=batch_size, M=1, buffer_size=T, learn_states=False,
               sample="latest", loss_fn=loss_fn)
