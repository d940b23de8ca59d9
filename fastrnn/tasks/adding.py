"""Adding task (SPEC section 5; Ke et al., SAB, section 4.2; Hochreiter & Schmidhuber 1997).

Each example has two channels of length ``T``: values uniform in [0, 1) and a two-hot mask marking one
entry in the first half and one in the second half (``T // 2`` splits the halves). The target is the
sum of the two marked values; the loss is the MSE on the prediction at the last step.
Time-major like ``nn.LSTM``: x ``[T, B, 2]`` (channel 0 the values, channel 1 the mask), y ``[B]``.
"""
from __future__ import annotations

import torch


def adding_batch(T: int, batch_size: int, *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
    """One batch ``(x, y)`` of the adding task with sequence length ``T``."""
    if T < 2:
        raise ValueError(f"T: must be >= 2 (one marked entry in each half), got {T}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    half = T // 2
    values = torch.rand(T, batch_size, generator=generator, dtype=dtype)
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, T, (batch_size,), generator=generator)
    mask = torch.zeros(T, batch_size, dtype=dtype)
    cols = torch.arange(batch_size)
    mask[first, cols] = 1
    mask[second, cols] = 1
    x = torch.stack([values, mask], dim=-1)
    y = values[first, cols] + values[second, cols]
    return x, y


INPUT_SIZE = 2
# MSE of always predicting the mean 1.0: Var(U + U') = 2/12. A model below it has learned something.
BASELINE_MSE = 1.0 / 6.0
