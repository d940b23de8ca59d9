"""fastrnn: recurrent networks that learn long-range dependencies, with kernels.

    fastrnn.SABLSTM      Sparse Attentive Backtracking LSTM, drop-in for torch.nn.LSTM
    fastrnn.LSTM         torch.nn.LSTM's math with truncation schedules and fast backends
    fastrnn.truncation   Schedule, full, fixed, artbp
    fastrnn.reference    the specification in plain autograd (the oracle)
"""
from . import reference, truncation
from .backends import available_backends
from .modules import LSTM, SABLSTM
from .ops.attention import SABAttention
from .truncation import Schedule

__all__ = ["LSTM", "SABLSTM", "SABAttention", "Schedule", "available_backends", "reference", "truncation"]
__version__ = "0.1.0"
