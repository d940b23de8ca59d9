"""Auxiliary losses for long sequences: r-LSTM and p-LSTM (Trinh, Dai, Luong, Le; seed 001, section 3).

A main `fastrnn.LSTM` reads a long sequence and classifies it from its last state, with the classification
gradient truncated to the last ``main_trunc`` steps. At ``n_anchors`` randomly sampled anchor positions a
a decoder LSTM (a `fastrnn.LSTM`, fused engine), whose first layer starts from the main network's state
(h_a, c_a) there, either

    r-LSTM ("reconstruct", §3.1): reproduces the l inputs before the anchor, x_{a-l} .. x_{a-1}, or
    p-LSTM ("predict", §3.2):     predicts the l inputs after it, x_a .. x_{a+l-1},

reading the true previous input at each step (teacher forcing; a zero "go" input first). With L_i the
loss of the i-th sampled segment, the sum of its per-token losses (eq. (2)), the auxiliary loss is

    L_auxiliary = Σ_i L_i / Σ_i l_i                                                    (1)
    L_i = Σ_{t=1}^{l_i} TokenLoss_t                                                    (2)

with TokenLoss the cross-entropy of the decoder's distribution over the vocabulary for token inputs and
the squared L2 distance ‖x̂_t − x_t‖² for real vectors; here every segment has l_i = l and the sums run
over the batch too, so L_aux is the mean token loss. Training has the paper's two phases (§3.3):
``phase="pretrain"`` minimises L_aux only (unsupervised), ``phase="joint"`` minimises
L_supervised + aux_weight · L_aux; ``phase="supervised"`` is plain truncated BPTT (no decoder), the
baseline at the same truncation.

Where the gradients go (the "constant BPTT cost" of §4.1). The main network first runs over the whole
sequence without a graph, in segments split at the anchors and at the starts of the gradient windows,
carrying hx from segment to segment (the same states as one pass: no op change). Then two kinds of
windows run again with a graph from those recorded states: for each anchor the ``aux_trunc`` steps before
it (default l; §5.2 sets the auxiliary BPTT length to l), all anchors batched into one fused call whose
final state is the decoder's initial state; and the last ``main_trunc`` steps for the classifier. So the
decoder's gradient reaches the main LSTM through the anchor state and goes ``aux_trunc`` steps back into
it, the classification gradient ``main_trunc`` steps, whatever the sequence length; the backward cost is
n·aux_trunc + main_trunc steps. Anchors are shared by the rows of a batch (one set per batch), which is
what lets the windows batch; r-anchors are drawn in [max(l, aux_trunc), T], p-anchors in
[aux_trunc, T − l].

Not implemented (paper details): scheduled sampling of the decoder's inputs (it would need one step per
call), drop-connect in the feed-forward heads, and the ablation variants (reversed order, segments
spreading past the anchor).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastrnn.modules import LSTM

__all__ = ["AuxiliaryLSTM", "AuxLosses", "PHASES"]

PHASES = ("pretrain", "joint", "supervised")


class AuxLosses(NamedTuple):
    total: Tensor                # what to backpropagate for the phase
    main: Optional[Tensor]       # L_supervised (None in "pretrain")
    aux: Optional[Tensor]        # L_auxiliary, eq. (1) (None in "supervised")
    logits: Optional[Tensor]     # the classifier's logits [B, n_classes] (None in "pretrain")
    anchors: Optional[Tensor]    # the anchor positions used


class AuxiliaryLSTM(nn.Module):
    """A sequence classifier with the r-LSTM / p-LSTM auxiliary loss (seed 001).

    input_size      features per step, or the vocabulary size with ``embedding_size`` (token inputs [T, B])
    mode            "r" (reconstruct the l inputs before each anchor) or "p" (predict the l after it)
    l               segment length; ``n_anchors`` segments per batch
    main_trunc      steps the classification gradient reaches back from the last step (None: all)
    aux_trunc       steps the decoder's gradient reaches back into the main LSTM from an anchor (default l)
    decoder_layers  the decoder's layers (the paper: 2; layer 0 starts from the main state, the others at 0)
    classifier_hidden  None: a linear classifier; else a two-layer feed-forward one (the paper: 256)
    """

    def __init__(self, input_size: int, hidden_size: int, n_classes: int, *, mode: str = "r", l: int = 20,
                 n_anchors: int = 1, main_trunc: Optional[int] = None, aux_trunc: Optional[int] = None,
                 embedding_size: Optional[int] = None, decoder_layers: int = 1,
                 classifier_hidden: Optional[int] = None, aux_weight: float = 1.0, backend: str = "auto",
                 dtype=None):
        super().__init__()
        if mode not in ("r", "p"):
            raise ValueError(f"mode must be 'r' or 'p', got {mode!r}")
        for name, v in (("l", l), ("n_anchors", n_anchors)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.mode, self.l, self.n_anchors = mode, l, n_anchors
        self.main_trunc, self.aux_trunc = main_trunc, (l if aux_trunc is None else aux_trunc)
        if self.aux_trunc < 1 or (main_trunc is not None and main_trunc < 1):
            raise ValueError("main_trunc and aux_trunc must be >= 1")
        self.aux_weight = float(aux_weight)
        self.tokens = embedding_size is not None
        factory = {"dtype": dtype}
        self.embedding = nn.Embedding(input_size, embedding_size, **factory) if self.tokens else None
        width = embedding_size if self.tokens else input_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.rnn = LSTM(width, hidden_size, backend=backend, **factory)
        if classifier_hidden:
            self.classifier = nn.Sequential(nn.Linear(hidden_size, classifier_hidden, **factory), nn.ReLU(),
                                            nn.Linear(classifier_hidden, n_classes, **factory))
        else:
            self.classifier = nn.Linear(hidden_size, n_classes, **factory)
        self.decoder = LSTM(width, hidden_size, num_layers=decoder_layers, backend=backend, **factory)
        self.decoder_head = nn.Linear(hidden_size, input_size, **factory)  # logits over the vocabulary, or x̂

    # ---- pieces ----------------------------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """The main LSTM's input: embedded tokens, or ``x`` itself."""
        return self.embedding(x) if self.tokens else x

    def forward(self, x: Tensor) -> Tensor:
        """Inference: the class logits [B, n_classes] after one pass over ``x`` (no truncation)."""
        _, (h, _) = self.rnn(self.encode(x))
        return self.classifier(h[-1])

    def anchor_range(self, T: int) -> tuple:
        """The anchors' allowed positions [low, high] (a = the state after reading x_0 .. x_{a-1})."""
        if self.mode == "r":
            low, high = max(self.l, self.aux_trunc), T
        else:
            low, high = self.aux_trunc, T - self.l
        if low > high:
            raise ValueError(f"a sequence of {T} steps is too short for l={self.l}, aux_trunc={self.aux_trunc}")
        return low, high

    def sample_anchors(self, T: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n_anchors`` positions drawn uniformly (with replacement) from `anchor_range`, sorted."""
        low, high = self.anchor_range(T)
        return torch.randint(low, high + 1, (self.n_anchors,), generator=generator).sort().values

    def states_at(self, e: Tensor, points) -> dict:
        """The main LSTM's (h, c) after reading e[:p] for every p in ``points`` (no graph): one pass in
        segments split at the points, carrying hx. {p: (h [1, B, H], c)}; p = 0 is the zero state."""
        T, B = e.shape[0], e.shape[1]
        zeros = e.new_zeros(self.rnn.num_layers, B, self.hidden_size)
        states, hx, at = {0: (zeros, zeros)}, None, 0
        with torch.no_grad():
            for p in sorted({int(p) for p in points if 0 < int(p) <= T}):
                _, hx = self.rnn(e[at:p].detach(), hx)
                states[p], at = hx, p
        return states

    def _windows(self, e: Tensor, ends: list, length: int, states: dict):
        """The main LSTM with a graph over e[end - length : end] for every end, batched: final (h, c),
        rows grouped by end ([layers, len(ends) * B, H])."""
        x = torch.cat([e[a - length:a] for a in ends], dim=1)
        h0 = torch.cat([states[a - length][0] for a in ends], dim=1)
        c0 = torch.cat([states[a - length][1] for a in ends], dim=1)
        _, hx = self.rnn(x, (h0, c0))
        return hx

    def aux_loss(self, x: Tensor, e: Tensor, anchors: list, states: dict) -> Tensor:
        """Eq. (1)-(2) for the given anchors: decoders started from the anchor states (with a graph)."""
        B, l = e.shape[1], self.l
        h_a, c_a = self._windows(e, anchors, self.aux_trunc, states)        # [1, n*B, H]
        if self.mode == "r":
            spans = [(a - l, a) for a in anchors]
        else:
            spans = [(a, a + l) for a in anchors]
        target = torch.cat([x[s:t] for s, t in spans], dim=1)                # [l, n*B] or [l, n*B, I]
        fed = torch.cat([e[s:t - 1] for s, t in spans], dim=1)               # teacher forcing
        rows = len(anchors) * B
        dec_in = torch.cat([e.new_zeros(1, rows, e.shape[2]), fed])           # a zero "go" input first
        layers = self.decoder.num_layers
        h0 = torch.cat([h_a[-1:], h_a.new_zeros(layers - 1, rows, self.hidden_size)])
        c0 = torch.cat([c_a[-1:], c_a.new_zeros(layers - 1, rows, self.hidden_size)])
        out, _ = self.decoder(dec_in, (h0, c0))
        pred = self.decoder_head(out)                                        # [l, n*B, V or I]
        if self.tokens:
            token_loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
        else:
            token_loss = ((pred - target) ** 2).sum(-1).reshape(-1)
        return token_loss.sum() / (len(anchors) * B * l)                      # Σ_i L_i / Σ_i l_i

    def losses(self, x: Tensor, y: Optional[Tensor] = None, *, phase: str = "joint",
               generator: Optional[torch.Generator] = None, anchors=None) -> AuxLosses:
        """The phase's losses on a batch: ``x`` [T, B] tokens or [T, B, I], ``y`` [B] class labels."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        T = x.shape[0]
        if phase != "pretrain":
            B = x.shape[1] if x.dim() >= 2 else None
            if y is None or not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != B:
                got = "None" if y is None else (f"shape {tuple(y.shape)}" if isinstance(y, Tensor)
                                                 else type(y).__name__)
                raise ValueError(f"y: expected [B={B}] class labels (one per sequence of x, shape "
                                 f"{tuple(x.shape)}) for phase {phase!r}, got {got}")
        e = self.encode(x)
        K = T if self.main_trunc is None else min(self.main_trunc, T)
        if phase != "supervised":
            anchors = self.sample_anchors(T, generator) if anchors is None else torch.as_tensor(anchors)
            low, high = self.anchor_range(T)
            if anchors.numel() == 0 or anchors.min() < low or anchors.max() > high:
                raise ValueError(f"anchors must lie in [{low}, {high}], got {anchors.tolist()}")
            anchor_list = anchors.tolist()
        else:
            anchors, anchor_list = None, []
        points = [a - self.aux_trunc for a in anchor_list] + anchor_list + [T - K]
        states = self.states_at(e, points)
        main = logits = aux = None
        if phase != "pretrain":
            h, _ = self._windows(e, [T], K, states)
            logits = self.classifier(h[-1])
            main = F.cross_entropy(logits, y)
        if phase != "supervised":
            aux = self.aux_loss(x, e, anchor_list, states)
        if phase == "pretrain":
            total = aux
        elif phase == "supervised":
            total = main
        else:
            total = main + self.aux_weight * aux
        return AuxLosses(total, main, aux, logits, anchors)
