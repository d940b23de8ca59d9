"""SAB-LSTM on the CPU backend against nn.LSTM and the naive reference, fwd+bwd, B=32, I=64, H=128.

Run: .venv/bin/python -m pytest bench/test_bench_sab.py --benchmark-group-by=param:T \
         --benchmark-columns=min,median,max
Each T is one group, so the ratios to nn.LSTM and to the reference come from one table. The reference
runs up to T=300 (at T=1000 it takes 15-50 s and 10-18 GB: set FASTRNN_BENCH_REF1000=1 to include it).
SAB-linear also runs at T=10000: its time per token should stay flat (the linear scorer keeps its
top-k incrementally, so a step costs O(k_top), not O(|M|)). Peak memory: bench/sab_memory.py.
"""
import os

import pytest
from torch import nn

import fastrnn
from common import H, I

CPU = "cpu" in fastrnn.available_backends()
REF_T = (100, 300, 1000) if os.environ.get("FASTRNN_BENCH_REF1000") == "1" else (100, 300)

MODULES = {
    "nn.LSTM": lambda: nn.LSTM(I, H),
    "SAB-mlp-cpu": lambda: fastrnn.SABLSTM(I, H, backend="cpu"),
    "SAB-linear-cpu": lambda: fastrnn.SABLSTM(I, H, attention="linear", backend="cpu"),
    "SAB-mlp-reference": lambda: fastrnn.SABLSTM(I, H, backend="reference"),
}


@pytest.mark.skipif(not CPU, reason="cpu backend not built")
@pytest.mark.parametrize("impl,T", [(impl, T) for T in (100, 300, 1000) for impl in MODULES
                                     if not (impl.endswith("reference") and T not in REF_T)])
def test_sab_fwd_bwd(run, impl, T):
    rounds = 1 if impl.endswith("reference") else (5 if T <= 300 else 3)
    run(MODULES[impl](), T, rounds=rounds)


@pytest.mark.skipif(not CPU, reason="cpu backend not built")
@pytest.mark.parametrize("T", [10000])
@pytest.mark.parametrize("impl", ["nn.LSTM", "SAB-linear-cpu"])
def test_sab_linear_long(run, impl, T):
    """Time per token of SAB-linear at T=10000, against its own T=100..1000 rows above."""
    run(MODULES[impl](), T, rounds=2)
