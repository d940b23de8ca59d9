"""fastrnn.LSTM on the CPU backend against torch.nn.LSTM and the reference, fwd+bwd, B=32, I=64, H=128,
float32, 2 threads (bench/conftest.py). The issue's target: fastrnn.LSTM(backend="cpu") <= 1.1x nn.LSTM.

Run: .venv/bin/python -m pytest bench/test_bench_lstm.py --benchmark-group-by=param:T \
         --benchmark-columns=min,median,max
Each T is one group, so the ratios come from one table. Timings on a shared 2-core machine are noisy:
compare min columns from the same run. The reference runs up to T=300 (at T=1000 one round takes
over a minute).
"""
import pytest
from torch import nn

import fastrnn
from common import H, I

CPU = "cpu" in fastrnn.available_backends()

MODULES = {
    "nn.LSTM": lambda: nn.LSTM(I, H),
    "fastrnn-cpu": lambda: fastrnn.LSTM(I, H, backend="cpu"),
    "fastrnn-reference": lambda: fastrnn.LSTM(I, H, backend="reference"),
}


@pytest.mark.skipif(not CPU, reason="cpu backend not built (scripts/build_native.sh)")
@pytest.mark.parametrize("impl,T", [(impl, T) for T in (100, 300, 1000) for impl in MODULES
                                     if not (impl.endswith("reference") and T > 300)])
def test_lstm_fwd_bwd(run, impl, T):
    rounds = 1 if impl.endswith("reference") else (7 if T <= 300 else 5)
    run(MODULES[impl](), T, rounds=rounds)
