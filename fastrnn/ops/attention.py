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


def slot_steps(T: int, k_att: int, device=None, *, S0: int = 1, step0: int = 0) -> Tensor:
    """The global step of every slot of a call's memory cat(memory, new slots) [S0 + S1] int64.

    Fresh call (S0 = 1, step0 = 0): slot 0 is h0 (step -1), slot j >= 1 is written at the end of step
    j * k_att - 1. Streaming (docs/SPEC.md section 8): the S0 slots carried in are numbered as a stream
    that kept every slot since step 0 (slot j at step j * k_att - 1; the module's SABState replaces them
    with the true steps when it has dropped old slots), the new ones at the global step step0 + t after
    which they were written, (step0 + t + 1) % k_att == 0.
    """
    carried = torch.arange(S0, device=device, dtype=torch.int64) * k_att - 1
    first = (k_att - (step0 + 1) % k_att) % k_att                 # first t with (step0 + t + 1) % k_att == 0
    written = torch.arange(step0 + min(first, T), step0 + T, k_att, device=device, dtype=torch.int64)
    return torch.cat([carried, written])
