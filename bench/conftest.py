"""Benchmark settings shared by every suite: 2 threads, and the `run` fixture timing fwd+bwd.

Run: .venv/bin/python -m pytest bench/ --benchmark-group-by=param:T --benchmark-columns=min,median,max
Each suite puts nn.LSTM in the same group as the backends, so the ratios come from one run.
"""
import pytest
import torch

from common import fwd_bwd_step

torch.set_num_threads(2)


@pytest.fixture
def run(benchmark):
    """Benchmarks fwd+bwd of a module over `rounds` rounds after one warm-up."""
    def go(module, T, rounds=5, **kw):
        step = fwd_bwd_step(module, T, **kw)
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    return go
