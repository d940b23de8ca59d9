"""The naive reference against torch.nn.LSTM: the baseline the fused backends are measured from."""
import pytest
from torch import nn

import fastrnn
from common import H, I


@pytest.mark.parametrize("T", [100, 300])
@pytest.mark.parametrize("impl", ["nn.LSTM", "LSTM-reference", "SAB-mlp-reference", "SAB-linear-reference"])
def test_reference_fwd_bwd(run, impl, T):
    module = {
        "nn.LSTM": lambda: nn.LSTM(I, H),
        "LSTM-reference": lambda: fastrnn.LSTM(I, H, backend="reference"),
        "SAB-mlp-reference": lambda: fastrnn.SABLSTM(I, H, backend="reference"),
        "SAB-linear-reference": lambda: fastrnn.SABLSTM(I, H, attention="linear", backend="reference"),
    }[impl]()
    run(module, T, rounds=3 if T <= 100 else 1)
