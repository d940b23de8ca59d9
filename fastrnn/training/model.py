"""The sequence model trained on every task: input encoding -> recurrent core -> per-step linear head.

Token inputs (``embedding_size`` given) go through an ``nn.Embedding``, real-valued inputs straight into
the core. The core is `fastrnn.LSTM` or `fastrnn.SABLSTM` (SAB's options as keywords); the head maps every
step's hidden state to ``output_size`` logits, so a task's loss chooses which steps count. Submodules are
built in the order embedding, core, head: with one seed the initial weights are the same run to run.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fastrnn.modules import LSTM, SABLSTM

CORES = ("lstm", "sab")


class SequenceModel(nn.Module):
    """``forward(x, schedule=None, return_attention=False) -> (logits [T, B, output_size], attention)``.

    ``attention`` is the SAB core's record of the (single) layer with ``return_attention``, else None.
    ``forget_bias``: the forget gate's b_ih + b_hh start at this value (b_ih = value, b_hh = 0);
    None keeps ``nn.LSTM``'s uniform initialisation.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, core: str = "lstm",
                 embedding_size: Optional[int] = None, forget_bias: Optional[float] = None,
                 backend: str = "auto", **sab_options):
        super().__init__()
        if core not in CORES:
            raise ValueError(f"core: expected one of {CORES}, got {core!r}")
        if core == "lstm" and sab_options:
            raise TypeError(f"core 'lstm' takes no SAB options, got {sorted(sab_options)}")
        self.embedding = nn.Embedding(input_size, embedding_size) if embedding_size else None
        core_input = embedding_size or input_size
        if core == "sab":
            self.rnn = SABLSTM(core_input, hidden_size, backend=backend, **sab_options)
        else:
            self.rnn = LSTM(core_input, hidden_size, backend=backend)
        self.head = nn.Linear(hidden_size, output_size)
        if forget_bias is not None:
            H = hidden_size
            with torch.no_grad():  # the forget gate is the second quarter of the gates (i, f, g, o)
                self.rnn.bias_ih_l0[H:2 * H].fill_(forget_bias)
                self.rnn.bias_hh_l0[H:2 * H].zero_()

    def forward(self, x, schedule=None, return_attention=False):
        if self.embedding is not None:
            x = self.embedding(x)
        kwargs = {"schedule": schedule}
        if return_attention:
            out, _, attention = self.rnn(x, **kwargs, return_attention=True)
            return self.head(out), attention[0]
        out, _ = self.rnn(x, **kwargs)
        return self.head(out), None
