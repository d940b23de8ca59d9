"""Truncation schedules (SPEC section 3): where backpropagation through time is cut, and how it is scaled.

A `Schedule` is two length-T tensors. `cut[t]`: no gradient flows from step t into step t-1 along the
recurrent path (h and c). `scale[t]`: where not cut, that gradient is multiplied by `scale[t]`. Step -1 is
the initial state (h0, c0), so `cut[0]`/`scale[0]` act on the recurrent gradient into it. The forward
pass never depends on a schedule, and SAB memory slots are never cut.

    full(T)                       full BPTT: no cuts, scale 1
    fixed(T, k)                   truncated BPTT: segments [0, k), [k, 2k), ... (this is `k_trunc`)
    artbp(T, L0, alpha=4.0)       ARTBP (Tallec & Ollivier, eq. 11 and 14): random cuts, unbiased scales

`artbp_cut_probability(delta, L0, alpha)` is eq. (14)'s c_t on its own, shared by `artbp` and the online
loop of `fastrnn.training.artbp` (which draws the cuts one subsequence at a time).
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["Schedule", "full", "fixed", "artbp", "artbp_cut_probability", "check_artbp"]


@dataclass(frozen=True)
class Schedule:
    cut: Tensor    # [T] bool
    scale: Tensor  # [T] floating

    def __post_init__(self):
        if not isinstance(self.cut, Tensor) or not isinstance(self.scale, Tensor):
            raise TypeError("Schedule: cut and scale must be tensors")
        if self.cut.dtype != torch.bool:
            raise TypeError(f"Schedule: cut must be a bool tensor, got {self.cut.dtype}")
        if not self.scale.is_floating_point():
            raise TypeError(f"Schedule: scale must be a floating tensor, got {self.scale.dtype}")
        if self.cut.dim() != 1 or self.scale.shape != self.cut.shape:
            raise ValueError(f"Schedule: cut and scale must both be [T], got {tuple(self.cut.shape)} "
                             f"and {tuple(self.scale.shape)}")
        # a data-dependent check: skipped while torch.compile traces (the module checks once, eagerly) and on
        # the meta device (no values)
        if not torch.compiler.is_compiling() and not self.scale.is_meta and not torch.isfinite(self.scale).all():
            raise ValueError("Schedule: scale must be finite")

    def __len__(self) -> int:
        return self.cut.shape[0]

    def to(self, device=None, dtype=None) -> "Schedule":
        """The same schedule with `scale` in `dtype` and both tensors on `device`."""
        return Schedule(self.cut.to(device), self.scale.to(device=device, dtype=dtype))


def _check_length(T) -> int:
    if not isinstance(T, int) or isinstance(T, bool) or T < 0:
        raise ValueError(f"T must be a non-negative int, got {T!r}")
    return T


def full(T: int) -> Schedule:
    """Full BPTT: no cuts, scale 1."""
    T = _check_length(T)
    return Schedule(torch.zeros(T, dtype=torch.bool), torch.ones(T, dtype=torch.float64))


def fixed(T: int, k: Optional[int], offset: int = 0) -> Schedule:
    """Truncated BPTT with length k: cut where t > 0 and (t - offset) % k == 0 (SPEC section 1, step 1).

    `k` None or 0 means no truncation, as `k_trunc`. `offset` (0 = SPEC's grid) shifts the grid of cuts,
    e.g. to put a task's cue and the steps that depend on it into one segment (the copy-task study).
    """
    T = _check_length(T)
    if k is None or k == 0:
        return full(T)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be None or an int >= 0, got {k!r}")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError(f"offset must be an int, got {offset!r}")
    t = torch.arange(T)
    return Schedule((t > 0) & ((t - offset) % k == 0), torch.ones(T, dtype=torch.float64))


def check_artbp(L0: float, alpha: float) -> None:
    """Raises ValueError unless ARTBP's (L0, alpha) give a cut probability c_t < 1 for every δ >= 1."""
    if not alpha > 2:
        raise ValueError(f"alpha must be > 2, got {alpha!r}")
    if not L0 > 0 or (alpha - 2) * L0 + 1 <= alpha - 1:
        raise ValueError(f"L0 must make every cut probability < 1, i.e. L0 > 1 for alpha > 2; got L0={L0!r}")


def artbp_cut_probability(delta: int, L0: float, alpha: float) -> float:
    """ARTBP's truncation probability, seed 002 eq. (14): c_t = (alpha - 1) / ((alpha - 2) * L0 + δt).

    δt = ``delta`` >= 1 is the number of steps since the last truncation: in `artbp`'s indexing, with the
    current subsequence starting at step ``last``, c_t is the probability that step t = last + δt is cut
    from step t - 1 (δt = 1: the subsequence ends after one step). Where the truncation is not taken,
    eq. (11) scales the gradient backpropagated from step t into step t - 1 by 1 / (1 - c_t). The caller
    checks (L0, alpha) once with `check_artbp`.
    """
    return (alpha - 1) / ((alpha - 2) * L0 + delta)


def artbp(T: int, L0: float, alpha: float = 4.0, generator: Optional[torch.Generator] = None) -> Schedule:
    """Anticipated Reweighted Truncated BPTT (seed 002, eq. 11 and 14).

    With δ the steps since the last cut (the sequence start counts as a cut), step t is cut from step t-1
    with probability c_t = (alpha - 1) / ((alpha - 2) * L0 + δ) (`artbp_cut_probability`); where it is
    not cut, the gradient into step t-1 is scaled by 1 / (1 - c_t). Over draws, the expected gradient is
    the full-BPTT gradient. The mean segment length is about L0; alpha > 3 keeps its variance finite (the
    paper uses 4 or 6). Requires c_t < 1 for every δ >= 1, i.e. (alpha - 2) * L0 + 1 > alpha - 1.
    """
    T = _check_length(T)
    check_artbp(L0, alpha)
    u = torch.rand(T, generator=generator, dtype=torch.float64)
    cut = torch.zeros(T, dtype=torch.bool)
    scale = torch.ones(T, dtype=torch.float64)
    last = 0
    for t in range(1, T):
        c_t = artbp_cut_probability(t - last, L0, alpha)
        if u[t] < c_t:
            cut[t] = True
            last = t
        else:
            scale[t] = 1.0 / (1.0 - c_t)
    return Schedule(cut, scale)
