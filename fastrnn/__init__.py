"""fastrnn: recurrent networks that learn long-range dependencies, with kernels.

    fastrnn.SABLSTM      Sparse Attentive Backtracking LSTM, drop-in for torch.nn.LSTM
    fastrnn.LSTM         torch.nn.LSTM's math with truncation schedules and fast backends
    fastrnn.SABState     what SABLSTM carries between calls to stream a long sequence (SPEC section 8)
    fastrnn.truncation   Schedule, full, fixed, artbp
    fastrnn.reference    the specification in plain autograd (the oracle)
    fastrnn.profiling    named ranges for Nsight Systems (NVTX) and torch.profiler
"""
from . import _checkout, _native, profiling, reference, truncation
from .backends import available_backends
from .modules import LSTM, SABLSTM
from .ops.attention import SABAttention
from .state import SABLayerState, SABState
from .truncation import Schedule

__all__ = ["LSTM", "SABLSTM", "SABAttention", "SABLayerState", "SABState", "Schedule", "available_backends",
           "profiling", "reference", "truncation"]
__version__ = "0.1.0"

_checkout.install()  # a source checkout on PYTHONPATH: fastrnn.kernels is its kernels/ (fastrnn/_checkout.py)

_native.warn_if_missing()  # once, naming the fix: without it backend="auto" runs CPU tensors on the reference
