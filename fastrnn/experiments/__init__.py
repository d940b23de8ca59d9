"""Experiments: train SAB / TBPTT / BPTT / ARTBP on the seed tasks, record, tabulate and plot.

    python -m fastrnn.experiments copy --method sab --T 100 --budget 120     one run
    python -m fastrnn.experiments main                                      README command 1
    python -m fastrnn.experiments suite NAME                                a reproduction suite (suites.py)
    python -m fastrnn.experiments report                                    table + plots of all runs
    torchrun --nproc_per_node 2 -m fastrnn.experiments copy ... --ddp       one run on 2 processes (ddp.py)
"""
from fastrnn.experiments.train import METHODS, Config, Run, run

__all__ = ["METHODS", "Config", "Run", "run"]
