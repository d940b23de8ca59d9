"""The user-facing modules: `fastrnn.LSTM` and `fastrnn.SABLSTM`, drop-in for `torch.nn.LSTM`.

They hold the parameters (named and initialised as in `torch.nn.LSTM`, so its `state_dict` loads
unchanged), check every input once, handle `batch_first`, unbatched input, `PackedSequence` and `lengths`,
`hx`, dtypes and autocast, dropout between layers and the truncation schedule, and call one per-layer
function of the chosen backend for each layer (docs/CONTRACT.md).
"""
import math
import operator
import warnings
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, profiling
from .ops.attention import SABAttention, slot_steps
from .ops.streaming import MAX_STEP, PAD_STEP, reset_plan
from .state import SABLayerState, SABState
from .truncation import Schedule, fixed

__all__ = ["LSTM", "SABLSTM"]

# The dtypes each backend computes in. Any other floating dtype is refused at the module call
# (_check_dtype), except under torch.autocast, where a backend without kernels for the autocast dtype
# computes in float32 from operands rounded to it (_Precision).
NATIVE_DTYPES = {
    "reference": (torch.float64, torch.float32, torch.bfloat16, torch.float16),
    "cpu": (torch.float64, torch.float32),
    "triton": (torch.float64, torch.float32, torch.bfloat16),
    "cuda": (torch.float64, torch.float32, torch.bfloat16),   # csrc/cuda: float32 accumulation for bfloat16
}

# (backend, device type) -> the concrete backend "auto" stands for there; filled eagerly (outside any
# torch.compile trace), as backends.layer_functions is.
_CONCRETE = {}


def _concrete_backend(backend: str, device_type: str) -> str:
    key = (backend, device_type)
    if key not in _CONCRETE:
        _CONCRETE[key] = backends.resolve(backend, device_type)
    return _CONCRETE[key]


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_int(name: str, value, minimum: int) -> int:
    """`value` as an int (numpy integers too); TypeError if it is not an integer, ValueError if too small."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _reads_values(t: Tensor) -> bool:
    """Whether the call may look at `t`'s values for its checks: not while torch.compile traces (data-dependent
    checks would break the graph), nor inside a torch.func transform (vmap's batched tensors cannot be read
    as one bool), nor on the meta device (shape inference: tensors without values)."""
    return not torch.compiler.is_compiling() and t.device.type != "meta" and not _in_functorch_transform()


def _in_functorch_transform() -> bool:
    """True while a torch.func transform (grad, vmap, jvp, ...) runs the call (torch.compile's own tracing
    also stacks functorch interpreters: that is not a user's transform, and the ops trace there)."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


class _Precision(NamedTuple):
    """How one call computes: `dtype` the tensors the layers see, `emulate` where the backend has no kernels
    for the autocast dtype (it then computes in float32 from operands rounded to it), `autocast` whether
    torch.autocast is in effect (the layers then run with autocast off: the casts are made here), `mixed`
    the cpu backend's bfloat16 mixed precision (fastrnn.LSTM and fastrnn.SABLSTM: the layers take the float32
    tensors unrounded and round each LSTM GEMM's operands themselves; docs/SPEC.md "bfloat16 mixed
    precision")."""
    dtype: torch.dtype
    emulate: Optional[torch.dtype]
    autocast: bool
    mixed: bool = False


class _Call(NamedTuple):
    """One forward call's checked inputs, time-major: x [T, B, I] (zero past each length), h0/c0 [L, B, H],
    the schedule, lengths (int64 [B] on x's device, or None when every sequence has length T), batched,
    packed (the input PackedSequence, or None), and the precision."""
    x: Tensor
    h0: Tensor
    c0: Tensor
    cut: Tensor
    scale: Tensor
    lengths: Optional[Tensor]
    batched: bool
    packed: Optional[PackedSequence]
    precision: _Precision


class _LSTMBase(nn.Module):
    """Parameters, checks and the layer loop shared by LSTM and SABLSTM."""

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, backend,
                 device, dtype):
        super().__init__()
        input_size = _check_int("input_size", input_size, 1)
        hidden_size = _check_int("hidden_size", hidden_size, 1)
        num_layers = _check_int("num_layers", num_layers, 1)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1] (the probability of zeroing an element), "
                             f"got {dropout!r}")
        proj_size = _check_int("proj_size", proj_size, 0)
        if proj_size > 0:
            raise ValueError(f"proj_size={proj_size}: LSTM with projections (proj_size > 0) is not supported by "
                             f"fastrnn; use proj_size=0 (a linear layer on the output projects it)")
        if dropout > 0 and num_layers == 1:   # torch.nn.LSTM's warning, word for word
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.proj_size = 0
        self.backend = backends.check_backend(backend)
        factory = {"device": device, "dtype": dtype}
        # Resolve now, outside any torch.compile trace: an unusable explicit backend fails here with its
        # reason, and forward finds its functions in the cache.
        device_type = torch.device(device).type if device is not None else "cpu"
        backends.layer_functions(backend, device_type)
        _concrete_backend(backend, device_type)
        if backend == "auto":   # the reference, which "auto" falls back to for dtypes the others lack
            backends.layer_functions("reference", device_type)
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

    mode = "LSTM"   # as torch.nn.LSTM's

    @property
    def all_weights(self) -> list:
        """torch.nn.LSTM's view of the parameters: per layer [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
        return [[p for p in self._lstm_parameters(layer) if p is not None] for layer in range(self.num_layers)]

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

    def _prepare(self, input, hx, lengths, schedule, default_trunc) -> _Call:
        """Checks every input once (errors name the argument and what was expected)."""
        ref = self.weight_ih_l0
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence input carries its own lengths; pass lengths only "
                                 "with a padded tensor input")
            data = packed.data
            if not isinstance(data, Tensor) or data.dim() != 2:
                raise ValueError("input: a PackedSequence must hold [N, input_size] data, got "
                                 f"{getattr(data, 'shape', type(data).__name__)}")
        elif not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        else:
            data = input
            if input.dim() not in (2, 3):
                raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(input.shape)}")
        if data.shape[-1] != self.input_size:
            raise ValueError(f"input: last dimension must be input_size={self.input_size}, "
                             f"got shape {tuple(data.shape)}")
        if data.device != ref.device:
            raise ValueError(f"input is on {data.device} but the parameters are on {ref.device}")
        precision = self._precision(data.dtype, ref.dtype, data.device)
        if packed is not None:
            x, lens = pad_packed_sequence(packed)              # original batch order, zero padding
            batched, lengths = True, lens.to(x.device)
        else:
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if self.batch_first and batched:
                x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if lengths is not None and packed is None:
            if not batched:
                raise ValueError("lengths: only batched (3-D) input takes lengths; got 2-D (unbatched) input "
                                 "of one sequence")
            lengths = self._check_lengths(lengths, T, B, x.device)
        if lengths is not None:
            # the input past each length is ignored: zero it, so that whatever the padding holds (NaN and
            # inf included) can never reach an output or, through 0 * NaN, a gradient
            live = torch.arange(T, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
            x = torch.where(live.unsqueeze(2), x, torch.zeros((), dtype=x.dtype, device=x.device))
            if _reads_values(lengths) and B > 0 and bool((lengths == T).all()):
                lengths = None                                 # every sequence is full: nothing to stop
        x = x.contiguous()
        h0, c0 = self._initial_state(hx, B, batched, x, precision)
        if _reads_values(x):
            if not bool(torch.isfinite(x).all()):
                raise ValueError("input contains NaN or inf" + (" (within the sequences' lengths)"
                                                                 if lengths is not None else ""))
            for name, state in (("h_0", h0), ("c_0", c0)):
                if not bool(torch.isfinite(state).all()):
                    raise ValueError(f"hx contains NaN or inf ({name})")
        if schedule is None:
            schedule = fixed(T, default_trunc)
        elif not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastrnn.truncation.Schedule, got {type(schedule).__name__}")
        elif len(schedule) != T:
            raise ValueError(f"schedule has length {len(schedule)} but the input has T={T} steps")
        compute = precision.emulate or precision.dtype
        schedule = schedule.to(device=x.device, dtype=compute)
        x, h0, c0 = (self._cast(t, precision) for t in (x, h0, c0))
        return _Call(x, h0, c0, schedule.cut, schedule.scale, lengths, batched, packed, precision)

    def _precision(self, input_dtype, param_dtype, device) -> _Precision:
        """The dtype this call computes in, with ONE clear error for an unsupported (dtype, backend) pair.

        torch.autocast (measured on torch.nn.LSTM, torch 2.13, CPU, bfloat16): input, hx and the weights are
        cast to the autocast dtype unless float64, the layers compute in it and the outputs have it; a float64
        model is left alone. fastrnn does the same on every backend; one without kernels for that dtype
        (cpu; triton for float16) computes in float32 from the rounded operands and rounds its outputs,
        except fastrnn.LSTM and fastrnn.SABLSTM on cpu in bfloat16, which run the mixed precision
        (_Precision.mixed).
        """
        device_type = device.type
        if (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
                and input_dtype != torch.float64
                and param_dtype != torch.float64 and input_dtype.is_floating_point):
            dtype = torch.get_autocast_dtype(device_type)
            name = _concrete_backend(self.backend, device_type)
            emulate = None if dtype in NATIVE_DTYPES.get(name, ()) else torch.float32
            mixed = name == "cpu" and device_type == "cpu" and dtype == torch.bfloat16
            return _Precision(dtype, emulate, True, mixed)
        if not input_dtype.is_floating_point:
            raise TypeError(f"input must be a floating-point tensor, got {input_dtype}: convert it with "
                            f"input.to({param_dtype})")
        if input_dtype != param_dtype:
            raise TypeError(f"input dtype {input_dtype} does not match the parameters' dtype {param_dtype}: "
                            f"convert one (input.to({param_dtype}) or module.to({input_dtype}))")
        self._check_dtype(param_dtype, device_type)
        return _Precision(param_dtype, None, False)

    def _check_dtype(self, dtype, device_type) -> None:
        name = _concrete_backend(self.backend, device_type)
        if dtype in NATIVE_DTYPES.get(name, (dtype,)):
            return
        if self.backend == "auto" and dtype in NATIVE_DTYPES["reference"]:
            return          # "auto" falls back to the reference (_layer_functions)
        supported = ", ".join(_dtype_name(d) for d in NATIVE_DTYPES.get(name, ()))
        others = [b for b, ds in NATIVE_DTYPES.items() if dtype in ds and b != name]
        raise TypeError(
            f"{type(self).__name__}: backend {name!r} does not compute in {_dtype_name(dtype)} (it computes in "
            f"{supported}); for {_dtype_name(dtype)} use " + " or ".join(f"backend={b!r}" for b in others) +
            (" (CUDA)" if "triton" in others else "") +
            ", or convert the module and its input to float32 with module.float() (under torch.autocast a "
            "float32 module runs on every backend)")

    def _layer_functions(self, call: _Call):
        backend, device_type = self.backend, call.x.device.type
        if call.precision.mixed:
            # the cpu backend's bfloat16 mixed precision; inside a torch.func transform its plain-autograd
            # oracle, as the reference stands in for the fused ops below
            from . import reference_bf16
            if _in_functorch_transform():
                return reference_bf16.lstm_layer, reference_bf16.sab_layer
            from .ops import lstm as lstm_ops
            from .ops import sab as sab_ops
            return lstm_ops.mixed_lstm_layer, sab_ops.mixed_sab_layer
        if _in_functorch_transform():
            # The fused ops' autograd formulas are opaque to torch.func (grad, vmap, jvp, ...); plain
            # autograd through the reference is not. "auto" takes it; an explicit fast backend refuses.
            if backend == "auto":
                return backends.layer_functions("reference", device_type)
            if backend != "reference":
                raise RuntimeError(
                    f"{type(self).__name__}(backend={backend!r}) cannot run inside a torch.func transform (grad, "
                    f"vmap, jvp, ...): its fused kernels are opaque to functorch. Use backend='reference', or "
                    f"backend='auto', which falls back to it inside a transform")
        if backend == "auto" and not call.precision.autocast:
            name = _concrete_backend(backend, device_type)
            if call.precision.dtype not in NATIVE_DTYPES.get(name, ()):
                backend = "reference"
        if device_type == "meta" and _concrete_backend(backend, device_type) == "reference":
            raise ValueError(
                f"{type(self).__name__}: on the meta device (shape inference) the layers run the cpu ops' fake "
                f"kernels, which need only shapes; this call would run the reference, which reads the truncation "
                f"schedule's values (backend={self.backend!r}, dtype {_dtype_name(call.precision.dtype)}, or the "
                f"native library not built): use backend='auto' or 'cpu' with float32 or float64")
        return backends.layer_functions(backend, device_type)

    @staticmethod
    def _cast(t, precision: _Precision):
        """A tensor as the layers take it: in the autocast dtype (then float32 where emulated); float32,
        unrounded, in the mixed precision."""
        if t is None or not precision.autocast:
            return t
        if precision.mixed:
            return t.to(torch.float32)
        t = t.to(precision.dtype)
        return t if precision.emulate is None else t.to(precision.emulate)

    @staticmethod
    def _check_lengths(lengths, T, B, device) -> Tensor:
        if isinstance(lengths, Tensor):
            if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
                raise TypeError(f"lengths must be an int64 tensor or a list of ints, got a {lengths.dtype} tensor")
            if tuple(lengths.shape) != (B,):
                raise ValueError(f"lengths must have shape [B] = [{B}] (one length per sequence), got "
                                 f"{tuple(lengths.shape)}")
            lengths = lengths.to(device=device, dtype=torch.int64)
        elif isinstance(lengths, (list, tuple)):
            try:
                if any(isinstance(v, bool) for v in lengths):
                    raise TypeError
                values = [operator.index(v) for v in lengths]
            except TypeError:
                raise TypeError(f"lengths must be an int64 tensor or a list of ints, got {lengths!r}") from None
            if len(values) != B:
                raise ValueError(f"lengths must hold B={B} values (one per sequence), got {len(values)}")
            lengths = torch.tensor(values, dtype=torch.int64, device=device)
        else:
            raise TypeError(f"lengths must be an int64 tensor or a list of ints, got {type(lengths).__name__}")
        if _reads_values(lengths) and B > 0:
            if not bool(((lengths >= 0) & (lengths <= T)).all()):
                raise ValueError(f"lengths must lie in [0, T] with T={T} (the padded length), got "
                                 f"{lengths.tolist()}")
        return lengths

    def _initial_state(self, hx, B, batched, x, precision):
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
            if precision.autocast:
                if not state.is_floating_point() or state.dtype == torch.float64:
                    raise TypeError(f"hx: {name} dtype {state.dtype}: under torch.autocast the state must be a "
                                    f"floating dtype other than float64, as the input")
            elif state.dtype != x.dtype:
                raise TypeError(f"hx: {name} dtype {state.dtype} does not match input dtype {x.dtype}")
            if state.device != x.device:
                raise ValueError(f"hx: {name} is on {state.device} but input is on {x.device}")
            states.append((state if batched else state.unsqueeze(1)).contiguous())
        return states[0], states[1]

    def _finish(self, call: _Call, y, h_n, c_n):
        if call.precision.emulate is not None:
            y, h_n, c_n = (t.to(call.precision.dtype) for t in (y, h_n, c_n))
        if call.packed is not None:
            return self._pack(y, call.packed), (h_n, c_n)
        if not call.batched:
            return y.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, (h_n, c_n)

    @staticmethod
    def _pack(y, packed: PackedSequence) -> PackedSequence:
        """y [T, B, H] in the original batch order -> a PackedSequence laid out as the input one (its
        batch_sizes, sorted_indices and unsorted_indices, as torch.nn.LSTM returns)."""
        B = y.shape[1]
        if packed.sorted_indices is not None:
            y = y.index_select(1, packed.sorted_indices)
        sorted_lengths = (packed.batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)
        data = pack_padded_sequence(y, sorted_lengths, enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)

    def _run_layers(self, call: _Call, layer_fn):
        """Runs `layer_fn(layer, x, h0, c0) -> (y, h_n, c_n, extra)` over the layers."""
        x, h0, c0 = call.x, call.h0, call.c0
        if x.shape[0] == 0:                               # T = 0: empty output, the initial state
            y = x.new_empty(0, x.shape[1], self.hidden_size)
            return y, h0, c0, []
        hs, cs, extras = [], [], []
        with torch.autocast(x.device.type, enabled=False) if call.precision.autocast else _no_context():
            for layer in range(self.num_layers):
                if layer > 0 and self.dropout > 0:
                    x = F.dropout(x, self.dropout, self.training)
                x, h_n, c_n, extra = layer_fn(layer, x, h0[layer], c0[layer])
                hs.append(h_n)
                cs.append(c_n)
                extras.append(extra)
        return x, torch.stack(hs), torch.stack(cs), extras

    def _parameters_for(self, params, call: _Call):
        return tuple(self._cast(p, call.precision) for p in params)


class _no_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_CALL_DOC = """
    Inputs (as torch.nn.LSTM; T steps, B sequences, L = num_layers, H = hidden_size):
      input: [T, B, input_size] ([B, T, input_size] with batch_first), [T, input_size] (unbatched), or a
        torch.nn.utils.rnn.PackedSequence (pack_padded_sequence / pack_sequence, enforce_sorted either way;
        batch_first does not apply to it).
      hx: optional (h_0, c_0), each [L, B, H] ([L, H] unbatched), zeros if omitted; for a PackedSequence in
        the original batch order, as torch.nn.LSTM.
      lengths (keyword): padded batched input only; a [B] int64 tensor or list of ints, each in [0, T].
        Sequence b stops at lengths[b]: output[t, b] = 0 for t >= lengths[b]; (h_n, c_n)[:, b] is the state
        after its last step (its h_0, c_0 if lengths[b] == 0); the input past lengths[b] is ignored (it may
        hold anything, NaN included). Equal, per sequence, to running it alone, outputs and gradients.
      schedule (keyword): a fastrnn.truncation.Schedule of length T (truncated BPTT, ARTBP), for every layer
        and every batch row.
    Outputs: output [T, B, H] ([B, T, H] with batch_first; [T, H] unbatched; a PackedSequence with the
      input's batch_sizes, sorted_indices and unsorted_indices for a PackedSequence input), (h_n, c_n) each
      [L, B, H] ([L, H] unbatched), in the original batch order.
    dtypes: float32 and float64 on every backend; bfloat16 on "reference" and "triton"; float16 on
      "reference". backend="auto" picks the reference for a dtype its first choice lacks; an explicit backend
      refuses an unsupported dtype with a TypeError. Under torch.autocast (as torch.nn.LSTM, measured on CPU
      with bfloat16): unless the model or input is float64, input, hx and the weights are cast to the autocast
      dtype, the layers compute in it and output, h_n and c_n have it (gradients reach the float32 parameters
      as float32). A backend without kernels for that dtype ("cpu"; "triton" for float16) computes in float32
      from the operands rounded to it and rounds its outputs, as oneDNN's bfloat16 LSTM does inside
      torch.nn.LSTM; except on "cpu" in bfloat16, where LSTM and SABLSTM run the bfloat16 mixed precision
      (docs/SPEC.md section 10: the LSTM GEMMs in bfloat16 with float32 sums; float32 state, cell math,
      SABLSTM's attention and gradients; the GEMM kernel is picked at run time,
      FASTRNN_BF16_GEMM=auto|emulated|mkl|avx512bf16 forces one). (torch.nn.LSTM returns float32 for a
      PackedSequence under autocast; fastrnn treats a PackedSequence as padded input and returns the autocast
      dtype.)
    Errors: TypeError for an input, hx, lengths or schedule of the wrong type or dtype (and an unsupported
      dtype for the backend); ValueError for a wrong shape, device or length (lengths outside [0, T], lengths
      with unbatched or packed input), and for NaN or inf in the input (within the lengths) or in hx.
"""


class LSTM(_LSTMBase):
    """A multi-layer LSTM with exactly `torch.nn.LSTM`'s math, parameters and state_dict, plus a
    truncation `schedule` (fastrnn.truncation) for truncated BPTT / ARTBP and a choice of backend.

    backend: "auto" (the fastest available for the input's device and dtype), "reference" (plain autograd),
    "cpu" (fused C++), "triton". bidirectional=True and proj_size > 0 are refused (ValueError); dropout > 0
    with num_layers == 1 warns, as torch.nn.LSTM.

    forward(input, hx=None, *, lengths=None, schedule=None) -> output, (h_n, c_n)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, backend: str = "auto", device=None, dtype=None):
        if bidirectional:
            raise ValueError("bidirectional=True is not supported by fastrnn.LSTM; use bidirectional=False")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, backend,
                         device, dtype)
        self.bidirectional = False
        self.reset_parameters()

    def forward(self, input, hx=None, *, lengths=None, schedule: Optional[Schedule] = None):
        call = self._prepare(input, hx, lengths, schedule, None)
        lstm_layer, _ = self._layer_functions(call)

        def layer_fn(layer, x, h0, c0):
            params = self._parameters_for(self._lstm_parameters(layer), call)
            return (*profiling.layer(f"fastrnn.lstm.layer{layer}", lstm_layer, x, *params, h0, c0, call.cut,
                                     call.scale, lengths=call.lengths), None)

        y, h_n, c_n, _ = self._run_layers(call, layer_fn)
        return self._finish(call, y, h_n, c_n)


class SABLSTM(_LSTMBase):
    """An LSTM with Sparse Attentive Backtracking (Ke et al.; docs/SPEC.md sections 1-2).

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
    max_slots: None (default: the state carried between calls keeps every slot) or an int >= 1: after each
        call with return_state=True, the returned state keeps only the newest max_slots slots of each
        layer's memory, so memory and time per step stay bounded on an unbounded stream. This changes the
        model (docs/SPEC.md section 8): a dropped slot can no longer be selected, so results differ from the
        one-shot forward once a slot that would have been selected is gone; they are equal as long as no
        slot has been dropped. A single call never drops slots.
    backend: as fastrnn.LSTM. bidirectional=True (the memory is causal) and proj_size > 0 are refused
    (ValueError); dropout > 0 with num_layers == 1 warns, as torch.nn.LSTM.

    forward(input, hx=None, *, state=None, return_state=False, lengths=None, schedule=None,
            return_attention=False, reset=None) -> output, (h_n, c_n)[, attention][, state]
      attention: a list with one `SABAttention(indices, weights, slot_steps)` per layer, indices and
        weights [T, B, k_top] (T-major whatever batch_first, in the original batch order for a
        PackedSequence; [T, k_top] for unbatched input); past a sequence's length its indices are -1 and
        its weights 0.
      Streaming (docs/SPEC.md section 8; the SAB paper's memory of every past microstate, fed in chunks):
      return_state=True adds a `fastrnn.SABState` as the LAST result: per layer h, c [B, H], the memory
        [B, S, H] (every slot so far, oldest first; the newest max_slots with max_slots) and its slot_steps
        [S] int64 (the true global step of each slot, -1 for the first call's h0), and the step counter
        (the global index of the next step). Unbatched input gives h, c [H] and memory [S, H].
      state: a SABState of an earlier call; this call continues that sequence: the layers start from its
        (h, c) and memory, and slots are written on the global step grid ((step + t + 1) % k_att == 0).
        Chunked calls carrying the state equal the one-shot forward (outputs, attention, and gradients
        while the state stays attached: gradient flows through (h, c) and the memory into the calls that
        made it); `state.detach()` gives online truncation (no gradient into earlier calls). The schedule
        is the call's own; its cut[0] acts on the carried (h, c), never on the memory; without a schedule,
        k_trunc cuts on the stream's global steps (as the one-shot forward; a per-row state's rows on their
        own counters, state.row_steps). With a state,
        attention indices index the carried memory followed by the call's new slots, and slot_steps is the
        state's slot_steps followed by the new slots' steps.
      reset (keyword; docs/SPEC.md section 9): None or a torch.bool tensor [T, B] ([B, T] with batch_first, [T]
        unbatched). reset[t, b] restarts row b before step t: its (h, c) become zeros in every layer (no
        gradient crosses), its memory [0] and its step counter 0 (episode boundaries in RL rollouts). Equal
        to running each row's pieces separately (the first from hx / state, the later ones from hx=None),
        outputs, (h_n, c_n), attention and gradients, k_trunc included: with reset (or a per-row state) each
        row is cut on its own steps, counted from its last reset (or its row_steps), as its pieces run alone
        would be; a `schedule` passed to forward is one [T] schedule applied to every row alike, on the
        call's steps. With reset, the attention's indices index each row's
        own slot table (its carried slots, then a fresh slot per reset and every slot written, in order)
        and slot_steps is [B, S] int64 (-2 padding); the state it returns is per row (SABState.row_steps,
        slot_steps [B, S], memory left-padded with zeros), and later calls continue it with or without reset.
        TypeError for a non-bool reset, ValueError for its shape or device, or with lengths / a
        PackedSequence.
        Under torch.autocast a state is cast as hx is (a float32 state from a call outside autocast is
        taken); in bfloat16 chunks equal one shot only to bfloat16 rounding (the carried state is rounded).
      Streaming errors: TypeError if state is not a SABState or return_state not a bool; ValueError for
        state together with hx, for state or return_state with lengths or a PackedSequence (a sequence that
        ended would carry slots written on padding), for a state whose num_layers, hidden_size, batch size
        (or batched-ness), dtype or device differ from this model and input (the message names which), and
        for NaN or inf in the state.
      Under torch.autocast("cpu", dtype=torch.bfloat16) on the cpu backend (docs/SPEC.md section 10): the
        layers run fastrnn::sab_mixed_forward / sab_mixed_backward, the LSTM part's GEMMs from operands rounded
        to bfloat16 with float32 sums, the attention (scores, top-k, weights, summary), the state and every
        gradient float32, on float32 master weights; inside a torch.func transform their oracle
        fastrnn.reference_bf16.sab_layer. Output, h_n, c_n, the attention weights and a returned state are
        bfloat16, as every autocast output.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, *, k_top: int = 5, k_att: int = 2, k_trunc: Optional[int] = None,
                 attention: str = "mlp", attn_size: Optional[int] = None, slot_state: str = "provisional",
                 max_slots: Optional[int] = None, backend: str = "auto", device=None, dtype=None):
        if bidirectional:
            raise ValueError("bidirectional=True is not supported: the SAB memory is causal")
        k_top, k_att = _check_int("k_top", k_top, 1), _check_int("k_att", k_att, 1)
        if k_trunc is not None:
            k_trunc = _check_int("k_trunc", k_trunc, 0)
        if attention not in ("mlp", "linear"):
            raise ValueError(f"attention must be 'mlp' or 'linear', got {attention!r}")
        if attn_size is not None:
            if attention == "linear":
                raise ValueError("attn_size applies to the 'mlp' scorer only")
            attn_size = _check_int("attn_size", attn_size, 1)
        if slot_state not in ("final", "provisional"):
            raise ValueError(f"slot_state must be 'final' or 'provisional', got {slot_state!r}")
        if max_slots is not None:
            max_slots = _check_int("max_slots", max_slots, 1)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, backend,
                         device, dtype)
        self.bidirectional = False
        self.k_top, self.k_att, self.k_trunc = k_top, k_att, k_trunc
        self.attention, self.slot_state = attention, slot_state
        self.max_slots = max_slots
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
        s += f", slot_state={self.slot_state!r}"
        if self.max_slots is not None:
            s += f", max_slots={self.max_slots}"
        return s

    def forward(self, input, hx=None, *, state: Optional[SABState] = None, return_state: bool = False,
                lengths=None, schedule: Optional[Schedule] = None, return_attention: bool = False, reset=None):
        if not isinstance(return_state, bool):
            raise TypeError(f"return_state must be a bool (True or False), got {return_state!r}")
        streaming = state is not None or return_state
        if streaming:
            self._check_streaming(input, hx, state, lengths)
        if reset is not None and (lengths is not None or isinstance(input, PackedSequence)):
            raise ValueError("reset cannot be combined with lengths or a PackedSequence input (docs/SPEC.md "
                             "section 9)")
        call = self._prepare(input, hx, lengths, schedule, self.k_trunc)
        if reset is not None:
            reset = self._check_reset(reset, call)
        if state is not None:
            call = self._from_state(call, state)
            if schedule is None and self.k_trunc:
                # k_trunc's cuts lie on the stream's steps (global step g > 0 with g % k_trunc == 0), as in
                # the one-shot forward, not on the chunk's: cut[0] cuts the carried (h, c) when on the grid
                g = torch.arange(call.x.shape[0], device=call.x.device) + state.step
                call = call._replace(cut=(g > 0) & (g % self.k_trunc == 0))
        _, sab_layer = self._layer_functions(call)
        rows = reset is not None or (state is not None and state.per_row)     # per-row slot tables (SPEC 9)
        step0 = 0 if state is None else state.step
        # The layers see the phase of the step counter only: their computation depends on step0 % k_att
        # alone (where slots are written), so torch.compile specialises on at most k_att values rather than
        # on every step count; the steps of the new slots are relabelled below (_new_slot_steps).
        phase = step0 % self.k_att
        # the carried memory of each layer as the layers take it: [B, S0, H], contiguous, compute dtype
        memories = None if state is None else [
            self._cast(m.memory if call.batched else m.memory.unsqueeze(0), call.precision).contiguous()
            for m in state.layers]
        row_args = {}
        if rows:
            carried_steps = self._carried_row_steps(call, state)
            row_args = dict(reset=reset,
                            slot_offset=None if state is None else (carried_steps == PAD_STEP).sum(1),
                            row_step0=None if state is None or not state.per_row else
                            state.row_steps.reshape(-1).to(call.x.device))
            if schedule is None and self.k_trunc:
                call = self._row_truncation(call, step0, row_args)

        def layer_fn(layer, x, h0, c0):
            params = self._parameters_for((*self._lstm_parameters(layer), *self._attention_parameters(layer)),
                                          call)
            stream = {} if not streaming else dict(memory=None if memories is None else memories[layer],
                                                    step0=step0 if rows else phase, return_slots=True)
            stream.update(row_args)
            if rows and not streaming:
                stream["step0"] = step0
            out = profiling.layer(f"fastrnn.sab.layer{layer}", sab_layer, x, *params, h0, c0, call.cut,
                                  call.scale, k_top=self.k_top, k_att=self.k_att, scorer=self.attention,
                                  provisional=self.slot_state == "provisional", need_attention=return_attention,
                                  lengths=call.lengths, **stream)
            if streaming:                                  # (y, h_n, c_n, attention, new_slots)
                return out[0], out[1], out[2], (out[3], out[4])
            return out

        y, h_n, c_n, extras = self._run_layers(call, layer_fn)
        new_slots = None
        if streaming:
            attention = [e[0] for e in extras]
            new_slots = [e[1] for e in extras]
        else:
            attention = extras
        output = self._finish(call, y, h_n, c_n)
        result = output
        if return_attention:
            if call.x.shape[0] == 0:
                attention = [self._empty_attention(call.x) for _ in range(self.num_layers)]
            if rows and call.x.shape[0] == 0:
                attention = [a._replace(slot_steps=carried_steps) for a in attention]
            elif rows:                     # per row [B, S]: the carried slots' true steps, then the new ones'
                S0 = carried_steps.shape[1]
                attention = [a._replace(slot_steps=torch.cat([carried_steps, a.slot_steps[:, S0:]], 1))
                             for a in attention]
            elif state is not None:        # the carried slots' true steps, then the new slots' steps
                carried = state.slot_steps.to(call.x.device)
                new = self._new_slot_steps(call.x.shape[0], step0, call.x.device)
                attention = [a._replace(slot_steps=torch.cat([carried, new])) for a in attention]
            if call.precision.emulate is not None:
                attention = [a._replace(weights=a.weights.to(call.precision.dtype)) for a in attention]
            if not call.batched:
                attention = [SABAttention(a.indices.squeeze(1), a.weights.squeeze(1),
                                          a.slot_steps.squeeze(0) if rows else a.slot_steps)
                             for a in attention]
            result = (*result, attention)
        if return_state:
            if rows:
                result = (*result, self._next_row_state(call, state, memories, new_slots, *output[1],
                                                        carried_steps, row_args))
            else:
                result = (*result, self._next_state(call, state, memories, new_slots, *output[1]))
        return result

    def _row_truncation(self, call: _Call, step0: int, row_args: dict) -> _Call:
        """k_trunc with per-row step counters (SPEC section 9): each row is cut on its own steps, where its
        counter u (counting from its last reset, or its row_steps) has u > 0 and u % k_trunc == 0, as that
        row's pieces run alone would be. A [T, B] schedule, scale 1."""
        T, B, device = call.x.shape[0], call.x.shape[1], call.x.device
        counter = reset_plan(T, B, self.k_att, device, step0=step0, **row_args).counter
        return call._replace(cut=(counter > 0) & (counter % self.k_trunc == 0),
                             scale=torch.ones((T, B), dtype=call.scale.dtype, device=device))

    def _check_reset(self, reset, call: _Call) -> Tensor:
        """`reset` as the layers take it: bool [T, B] on x's device (SPEC section 9)."""
        T, B = call.x.shape[0], call.x.shape[1]
        if not isinstance(reset, Tensor):
            raise TypeError(f"reset must be a torch.bool tensor, got {type(reset).__name__}")
        if reset.dtype != torch.bool:
            raise TypeError(f"reset must be a torch.bool tensor (True where a row restarts), got {reset.dtype}")
        if call.batched:
            want = (B, T) if self.batch_first else (T, B)
            what = "[B, T] (batch_first)" if self.batch_first else "[T, B]"
        else:
            want, what = (T,), "[T] (unbatched input)"
        if tuple(reset.shape) != want:
            raise ValueError(f"reset must have shape {what} = {list(want)}, got {list(reset.shape)}")
        if reset.device != call.x.device:
            raise ValueError(f"reset is on {reset.device} but the input is on {call.x.device}")
        if reset.is_meta:
            raise ValueError("reset on the meta device: with resets each row's slot table grows with the resets "
                             "it holds, so the shapes depend on the mask's values, which meta tensors lack")
        if not call.batched:
            return reset.unsqueeze(1)
        return (reset.t() if self.batch_first else reset).contiguous()

    @staticmethod
    def _carried_row_steps(call: _Call, state: Optional[SABState]) -> Tensor:
        """[B, S0] int64: the true steps of each row's carried slots (PAD_STEP for padding)."""
        B, device = call.x.shape[1], call.x.device
        if state is None:
            return torch.full((B, 1), -1, dtype=torch.int64, device=device)
        steps = state.slot_steps.to(device)
        return steps.expand(B, -1) if steps.dim() == 1 else steps

    def _next_row_state(self, call: _Call, state, memories, new_slots, h_n, c_n, carried_steps, row_args):
        """The per-row state after this call (SPEC section 9): per row the slots of its current piece (the
        newest max_slots of them), left-padded with zeros, their true steps (PAD_STEP for padding) and the
        row's step counter."""
        T, B, device = call.x.shape[0], call.x.shape[1], call.x.device
        step0 = 0 if state is None else state.step
        if state is None:                                   # a fresh call: M = [h0]
            memories = [call.h0[layer].unsqueeze(1) for layer in range(self.num_layers)]
        S0 = carried_steps.shape[1]
        plan = reset_plan(T, B, self.k_att, device, S0=S0, step0=step0, **row_args)
        table_steps = torch.cat([carried_steps, plan.new_steps], 1)
        end = S0 + plan.appended                             # one past each row's last slot
        S = int((end - plan.base).max()) if B > 0 else 1
        if self.max_slots is not None:
            S = min(S, self.max_slots)
        src = end.unsqueeze(1) - S + torch.arange(S, device=device).unsqueeze(0)     # [B, S], right-aligned
        live = src >= plan.base.unsqueeze(1)
        src = src.clamp(min=0)
        steps = torch.where(live, table_steps.gather(1, src), torch.full_like(src, PAD_STEP))
        layers = []
        for layer in range(self.num_layers):
            table = memories[layer]
            if new_slots is not None and T > 0:
                table = torch.cat([table, new_slots[layer]], dim=1)
            H = table.shape[2]
            memory = table.gather(1, src.unsqueeze(2).expand(B, S, H))
            memory = torch.where(live.unsqueeze(2), memory, torch.zeros((), dtype=memory.dtype, device=device))
            if call.precision.emulate is not None:
                memory = memory.to(call.precision.dtype)
            if not call.batched:
                memory = memory.squeeze(0)
            layers.append(SABLayerState(h_n[layer], c_n[layer], memory, steps if call.batched else steps.squeeze(0)))
        counters = plan.counter_end if call.batched else plan.counter_end.squeeze(0)
        return SABState(layers, step0 + T, counters)

    def _check_streaming(self, input, hx, state, lengths) -> None:
        """The arguments of a streaming call (state= or return_state=True), SPEC section 8."""
        if state is not None and not isinstance(state, SABState):
            raise TypeError(f"state must be a fastrnn.SABState (returned by forward(..., return_state=True)), "
                            f"got {type(state).__name__}")
        if state is not None and hx is not None:
            raise ValueError("hx and state: give one or the other (state holds the initial (h, c) of every "
                             "layer and their memory; hx starts a fresh sequence)")
        if isinstance(input, PackedSequence):
            raise ValueError("state / return_state cannot be combined with a PackedSequence input: a sequence "
                             "that ended would carry slots written on padding (docs/SPEC.md section 8)")
        if lengths is not None:
            raise ValueError("state / return_state cannot be combined with lengths: a sequence that ended "
                             "would carry slots written on padding (docs/SPEC.md section 8)")

    def _from_state(self, call: _Call, state: SABState) -> _Call:
        """`call` with the initial (h, c) of every layer taken from `state`, after checking that the state
        fits this model and input (ValueError naming what differs)."""
        x = call.x
        if state.batched != call.batched:
            raise ValueError(f"state does not fit this call: it is the state of "
                             f"{'batched' if state.batched else 'unbatched'} input, the input is "
                             f"{'batched (3-D)' if call.batched else 'unbatched (2-D)'}")
        # under torch.autocast a state is cast as hx is: any floating dtype but float64 (e.g. the float32
        # state of a float32 model's call outside autocast) is taken, in the autocast dtype
        dtype = call.precision.dtype
        if call.precision.autocast and state.dtype != torch.float64:
            dtype = state.dtype
        checks = [("num_layers", state.num_layers, self.num_layers, "model"),
                  ("hidden_size", state.hidden_size, self.hidden_size, "model"),
                  ("batch size", state.batch_size, x.shape[1] if call.batched else None, "input"),
                  ("dtype", state.dtype, dtype, "input"),
                  ("device", state.device, x.device, "input")]
        for what, got, want, whose in checks:
            if got != want:
                raise ValueError(f"state does not fit this call: its {what} is {got}, the {whose}'s {want}")
        h0, c0 = state.h, state.c
        if not call.batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if _reads_values(h0):
            for name, t in (("h", h0), ("c", c0)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"state contains NaN or inf ({name})")
            if not all(bool(torch.isfinite(m.memory).all()) for m in state.layers):
                raise ValueError("state contains NaN or inf (memory)")
            # The layers check their row_step0 (these counters) too, but in the words of their argument, which
            # the user never passed: the counters must also leave room for this call's T steps.
            T = x.shape[0]
            if state.per_row and bool(((state.row_steps < 0) | (state.row_steps >= MAX_STEP - T)).any()):
                raise ValueError(f"state does not fit this call: its row_steps (the per-row step counters) must be "
                                 f">= 0 and < 2**62 - T (T = {T}: each counter after the call stays below 2**62), "
                                 f"got {state.row_steps.tolist()}")
        return call._replace(h0=self._cast(h0, call.precision).contiguous(),
                             c0=self._cast(c0, call.precision).contiguous())

    def _next_state(self, call: _Call, state: Optional[SABState], memories, new_slots, h_n, c_n) -> SABState:
        """The state after this call: (h_n, c_n), the carried memory followed by the new slots (the oldest
        dropped beyond max_slots), their true steps, and the step counter moved by T."""
        T, device = call.x.shape[0], call.x.device
        step0 = 0 if state is None else state.step
        if state is None:                                   # a fresh call: M = [h0]
            memories = [call.h0[layer].unsqueeze(1) for layer in range(self.num_layers)]
            carried = torch.full((1,), -1, dtype=torch.int64, device=device)
        else:
            carried = state.slot_steps.to(device)
        steps = torch.cat([carried, self._new_slot_steps(T, step0, device)])
        if self.max_slots is not None:
            steps = steps[-self.max_slots:]
        layers = []
        for layer in range(self.num_layers):
            memory = memories[layer]
            if new_slots is not None and T > 0:
                memory = torch.cat([memory, new_slots[layer]], dim=1)
            if self.max_slots is not None and memory.shape[1] > self.max_slots:
                memory = memory[:, -self.max_slots:].contiguous()    # the dropped slots' storage is freed
            if call.precision.emulate is not None:
                memory = memory.to(call.precision.dtype)
            if not call.batched:
                memory = memory.squeeze(0)
            layers.append(SABLayerState(h_n[layer], c_n[layer], memory, steps))
        return SABState(layers, step0 + T)

    def _new_slot_steps(self, T: int, step0: int, device) -> Tensor:
        """The global steps of the slots a call of T steps from step0 writes, from the phase step0 % k_att
        (the layers' step0) moved to step0: no tensor is built from the step count alone."""
        phase = step0 % self.k_att
        return slot_steps(T, self.k_att, device, S0=0, step0=phase) + (step0 - phase)

    def _empty_attention(self, x):
        B = x.shape[1]
        return SABAttention(torch.empty(0, B, self.k_top, dtype=torch.int64, device=x.device),
                            x.new_empty(0, B, self.k_top),
                            torch.full((1,), -1, dtype=torch.int64, device=x.device))


LSTM.__doc__ += _CALL_DOC
SABLSTM.__doc__ += _CALL_DOC
