"""Copying memory task (SPEC section 5; Ke et al., SAB, section 4.1; Hochreiter & Schmidhuber 1997).

A sequence of ``T + 20`` symbols: 10 random digits in 1..8, then ``T`` steps that are blank (0) except
the last of them, the marker 9 at position ``T + 9``, then 10 blanks. The target is blank (0) at every
step except the last 10, which must reproduce the 10 digits. 10 classes; accuracy is measured on the
last 10 steps, cross-entropy over all steps (as in the original SAB code).

Input encodings: ``"scalar"`` (the original code: the raw symbol value as one float feature, size 1)
or ``"onehot"`` (size 10). Tensors are time-major like ``nn.LSTM``: x ``[T+20, B, F]``, y ``[T+20, B]``.
"""
from __future__ import annotations

import torch

N_DIGITS = 10
N_CLASSES = 10
MARKER = 9


def copying_batch(T: int, batch_size: int, *, generator: torch.Generator | None = None, encoding: str = "scalar",
                  dtype: torch.dtype = torch.float32):
    """One batch ``(x, y)`` of the copying task with delay ``T`` (sequence length ``T + 20``)."""
    if T < 1:
        raise ValueError(f"T: must be >= 1, got {T}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if encoding not in ("scalar", "onehot"):
        raise ValueError(f"encoding: expected 'scalar' or 'onehot', got {encoding!r}")
    L = T + 2 * N_DIGITS
    digits = torch.randint(1, 9, (N_DIGITS, batch_size), generator=generator)
    symbols = torch.zeros(L, batch_size, dtype=torch.int64)
    symbols[:N_DIGITS] = digits
    symbols[T + N_DIGITS - 1] = MARKER
    y = torch.zeros(L, batch_size, dtype=torch.int64)
    y[-N_DIGITS:] = digits
    if encoding == "scalar":
        x = symbols.to(dtype).unsqueeze(-1)
    else:
        x = torch.nn.functional.one_hot(symbols, N_CLASSES).to(dtype)
    return x, y


def input_size(encoding: str) -> int:
    return 1 if encoding == "scalar" else N_CLASSES


def copying_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the last 10 steps (the copy) predicted right; logits ``[L, B, 10]``, y ``[L, B]``."""
    pred = logits[-N_DIGITS:].argmax(-1)
    return (pred == y[-N_DIGITS:]).float().mean().item()


def memoryless_cross_entropy(T: int) -> float:
    """CE (nats per step) of the best predictor that ignores the digits: blanks right, 1/8 on the copy.

    ``10 ln 8 / (T + 20)``: the plateau every method sits on before it learns to remember.
    """
    import math

    return N_DIGITS * math.log(8) / (T + 2 * N_DIGITS)
