"""The user-facing modules: `fastrnn.LSTM` and `fastrnn.SABLSTM`, drop-in for `torch.nn.LSTM`.

They hold the parameters (named and initialised as in `torch.nn.LSTM`, so its `state_dict` loads
unchanged), check every input once, handle `batch_first`, unbatched input, `hx`, dropout between layers
and the truncation schedule, and call one per-layer function of the chosen backend for each layer.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends
from .ops.attention import SABAttention
from .truncation import Schedule, fixed

__all__ = ["LSTM", "SABLSTM"]


def _check_int(name: str, value, minimum: int):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class _LSTMBase(nn.Module):
    """Parameters, checks and the layer loop shared by LSTM and SABLSTM."""

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, backend,
                 device, dtype):
        super().__init__()
        _check_int("input_size", input_size, 1)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_layers", num_layers, 1)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.backend = backends.check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        # Resolve now, outside any torch.compile trace: an unusable explicit backend fails here with its
        # reason, and forward finds its functions in the cache.
        backends.layer_functions(backend, torch.device(device) if device is not None else torch.device("cpu"))
        H = hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * H, layer_input, **factory)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * H, H, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * H, **factory)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * H, **factory)))

    def _lstm_parameters(self, layer: int):
        w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}")

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's initialisation: every parameter uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Accepted for torch.nn.LSTM compatibility: the weights are always used as they are stored."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s + f", backend={self.backend!r}"

    # ---- input handling -------------------------------------------------------------------------

    def _prepare(self, input, hx, schedule, default_trunc):
        """Checks the inputs; returns (x [T, B, I] contiguous, h0 [L, B, H], c0, cut, scale, batched)."""
        ref = self.weight_ih_l0
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input: last dimension must be input_size={self.input_size}, "
                             f"got shape {tuple(input.shape)}")
        if input.dtype != ref.dtype:
            raise TypeError(f"input dtype {input.dtype} does not match the parameters' dtype {ref.dtype}")
        if input.device != ref.device:
            raise ValueError(f"input is on {input.device} but the parameters are on {ref.device}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if self.batch_first and batched:
            x = x.transpose(0, 1)
        x = x.contiguous()
        T, B = x.shape[0], x.shape[1]
        h0, c0 = self._initial_state(hx, B, batched, x)
        if not torch.compiler.is_compiling():
            if torch.isnan(x).any():
                raise ValueError("input contains NaN")
            if torch.isnan(h0).any() or torch.isnan(c0).any():
                raise ValueError("hx contains NaN")
        if schedule is None:
            schedule = fixed(T, default_trunc)
        elif not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastrnn.truncation.Schedule, got {type(schedule).__name__}")
        elif len(schedule) != T:
            raise ValueError(f"schedule has length {len(schedule)} but the input has T={T} steps")
        schedule = schedule.to(device=x.device, dtype=x.dtype)
        return x, h0, c0, schedule.cut, schedule.scale, batched

    def _initial_state(self, hx, B, batched, x):
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            zeros = torch.zeros(L, B, H, dtype=x.dtype, device=x.device)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
            raise TypeError("hx must be a tuple (h_0, c_0) of two tensors")
        expected = (L, B, H) if batched else (L, H)
        states = []
        for name, state in zip(("h_0", "c_0"), hx):
            if tuple(state.shape) != expected:
                raise ValueError(f"hx: {name} must have shape {expected}, got {tuple(state.shape)}")
            if state.dtype != x.dtype:
                raise TypeError(f"hx: {name} dtype {state.dtype} does not match input dtype {x.dtype}")
            if state.device != x.device:
                raise ValueError(f"hx: {name} is on {state.device} but input is on {x.device}")
            states.append((state if batched else state.unsqueeze(1)).contiguous())
        return states[0], states[1]

    def _finish(self, y, h_n, c_n, batched):
        if not batched:
            return y.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, (h_n, c_n)

    def _run_layers(self, x, h0, c0, cut, scale, layer_fn):
        """Runs `layer_fn(layer, x, h0, c0, cut, scale) -> (y, h_n, c_n, extra)` over the layers."""
        if x.shape[0] == 0:                               # T = 0: empty output, the initial state
            y = x.new_empty(0, x.shape[1], self.hidden_size)
            return y, h0, c0, []
        hs, cs, extras = [], [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, h_n, c_n, extra = layer_fn(layer, x, h0[layer], c0[layer], cut, scale)
            hs.append(h_n)
            cs.append(c_n)
            extras.append(extra)
        return x, torch.stack(hs), torch.stack(cs), extras


class LSTM(_LSTMBase):
    """A multi-layer LSTM with exactly `torch.nn.LSTM`'s math, parameters and state_dict, plus a
    truncation `schedule` (fastrnn.truncation) for truncated BPTT / ARTBP and a choice of backend.

    backend: "auto" (the fastest available for the input's device), "reference" (plain autograd),
    "cpu" (fused C++), "triton".
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, *, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, backend,
                         device, dtype)
        self.reset_parameters()

    def forward(self, input: Tensor, hx=None, *, schedule: Optional[Schedule] = None):
        x, h0, c0, cut, scale, batched = self._prepare(input, hx, schedule, None)
        lstm_layer, _ = backends.layer_functions(self.backend, x.device)

        def layer_fn(layer, x, h0, c0, cut, scale):
            return (*lstm_layer(x, *self._lstm_parameters(layer), h0, c0, cut, scale), None)

        y, h_n, c_n, _ = self._run_layers(x, h0, c0, cut, scale, layer_fn)
        return self._finish(y, h_n, c_n, batched)


class SABLSTM(_LSTMBase):
    """An LSTM with Sparse Attentive Backtracking (Ke et al.; SPEC.md sections 1-2).

    At every step the provisional state ĥ_t scores the memory of past states (one slot every `k_att`
    steps, plus h0), keeps the `k_top` best above the (k_top+1)-th score, and adds their normalised
    weighted sum: h_t = ĥ_t + Σ w_j m_j. Backward sends gradient only through the selected slots and the
    threshold slot, and along the recurrent chain until the next truncation cut (`k_trunc`, or a
    `schedule` passed to forward, which replaces `k_trunc` for that call). Memory slots are never cut.

    attention: "mlp" (default; a_j = att_v · tanh(att_wh @ ĥ_t + att_wm @ m_j), the authors' development
        code, query dependent) or "linear" (the paper's eq. 1, a_j = att_wm · m_j + att_wh · ĥ_t + att_b).
        In "linear" the query term is the same for every slot, so it cancels in the sparsifier: the
        selection does not depend on the current state, and att_wh, att_b get no gradient once the memory
        holds more than k_top slots (as in the original release).
    slot_state: "provisional" (default: slots hold ĥ_t, so |h_t| <= 2 when |h0| <= 1; the form that learns
        the copying task, see the README) or "final" (the paper's model, kept to reproduce it: slots hold
        h_t, which already contains the summaries of earlier slots, so |h_t| grows with the number of hops
        and the selection favours late, large slots).
    attn_size: the mlp scorer's width A (default hidden_size).

    forward(input, hx=None, *, schedule=None, return_attention=False) -> output, (h_n, c_n)
    [, attention]: a list with one `SABAttention(indices, weights, slot_steps)` per layer, indices and
    weights [T, B, k_top] (T-major whatever batch_first; [T, k_top] for unbatched input).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 k_top: int = 5, k_att: int = 2, k_trunc: Optional[int] = None, attention: str = "mlp",
                 attn_size: Optional[int] = None, slot_state: str = "provisional", backend: str = "auto",
                 device=None, dtype=None):
        if bidirectional:
            raise ValueError("bidirectional=True is not supported: the SAB memory is causal")
        _check_int("k_top", k_top, 1)
        _check_int("k_att", k_att, 1)
        if k_trunc is not None:
            _check_int("k_trunc", k_trunc, 0)
        if attention not in ("mlp", "linear"):
            raise ValueError(f"attention must be 'mlp' or 'linear', got {attention!r}")
        if attn_size is not None:
            if attention == "linear":
                raise ValueError("attn_size applies to the 'mlp' scorer only")
            _check_int("attn_size", attn_size, 1)
        if slot_state not in ("final", "provisional"):
            raise ValueError(f"slot_state must be 'final' or 'provisional', got {slot_state!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, backend,
                         device, dtype)
        self.bidirectional = False
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, k_trunc
        self.attention, self.slot_state = attention, slot_state
        self.attn_size = (attn_size or hidden_size) if attention == "mlp" else None
        factory = {"device": device, "dtype": dtype}
        H = hidden_size
        for layer in range(num_layers):
            if attention == "mlp":
                A = self.attn_size
                shapes = {"att_wh": (A, H), "att_wm": (A, H), "att_v": (A,)}
            else:
                shapes = {"att_wh": (H,), "att_wm": (H,), "att_b": (1,)}
            for name, shape in shapes.items():
                self.register_parameter(f"{name}_l{layer}", nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LSTM weights as torch.nn.LSTM; att_wh, att_wm uniform in ±1/sqrt(H); att_v in ±1/sqrt(A);
        att_b zero."""
        super().reset_parameters()
        for layer in range(self.num_layers):
            if self.attention == "mlp":
                bound = 1.0 / math.sqrt(self.attn_size)
                nn.init.uniform_(getattr(self, f"att_v_l{layer}"), -bound, bound)
            else:
                nn.init.zeros_(getattr(self, f"att_b_l{layer}"))

    def _attention_parameters(self, layer: int):
        last = "att_v" if self.attention == "mlp" else "att_b"
        return tuple(getattr(self, f"{name}_l{layer}") for name in ("att_wh", "att_wm", last))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", k_top={self.k_top}, k_att={self.k_att}, k_trunc={self.k_trunc}, attention={self.attention!r}"
        if self.attention == "mlp" and self.attn_size != self.hidden_size:
            s += f", attn_size={self.attn_size}"
        return s + f", slot_state={self.slot_state!r}"

    def forward(self, input: Tensor, hx=None, *, schedule: Optional[Schedule] = None,
                return_attention: bool = False):
        x, h0, c0, cut, scale, batched = self._prepare(input, hx, schedule, self.k_trunc)
        _, sab_layer = backends.layer_functions(self.backend, x.device)

        def layer_fn(layer, x, h0, c0, cut, scale):
            return sab_layer(x, *self._lstm_parameters(layer), *self._attention_parameters(layer), h0, c0,
                             cut, scale, k_top=self.k_top, k_att=self.k_att, scorer=self.attention,
                             provisional=self.slot_state == "provisional", need_attention=return_attention)

        y, h_n, c_n, attention = self._run_layers(x, h0, c0, cut, scale, layer_fn)
        output = self._finish(y, h_n, c_n, batched)
        if not return_attention:
            return output
        if x.shape[0] == 0:
            attention = [self._empty_attention(x) for _ in range(self.num_layers)]
        if not batched:
            attention = [SABAttention(a.indices.squeeze(1), a.weights.squeeze(1), a.slot_steps)
                         for a in attention]
        return (*output, attention)

    def _empty_attention(self, x):
        B = x.shape[1]
        return SABAttention(torch.empty(0, B, self.k_top, dtype=torch.int64, device=x.device),
                            x.new_empty(0, B, self.k_top),
                            torch.full((1,), -1, dtype=torch.int64, device=x.device))
