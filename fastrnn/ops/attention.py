"""The attention record of a SAB layer (SPEC section 1, `return_attention=True`), shared by every backend."""
from typing import NamedTuple

import torch
from torch import Tensor


class SABAttention(NamedTuple):
    """The sparse attention of one SAB layer.

    indices:    [T, B, k_top] int64, the selected slots (weight > 0) in ascending slot order, -1 padding.
    weights:    [T, B, k_top], their normalised weights w_j (SPEC section 1, step 6; 0 where padded).
    slot_steps: [1 + T // k_att] int64, the time step whose state each slot holds (-1 for h0).
    """

    indices: Tensor
    weights: Tensor
    slot_steps: Tensor


def slot_steps(T: int, k_att: int, device=None) -> Tensor:
    """Slot j >= 1 is written at the end of step j * k_att - 1; slot 0 is h0 (step -1)."""
    return torch.arange(0, T // k_att + 1, device=device, dtype=torch.int64) * k_att - 1
