"""Fwd+bwd ratios to nn.LSTM with the implementations interleaved round by round.

pytest-benchmark times one test after another; on a shared, noisy machine the load drifts between them.
Here every round runs each implementation once, in turn, and the best round of each is compared, so
the ratios hold when the machine's speed drifts. Shapes as the issues: B=32, I=64, H=128, float32.

    .venv/bin/python bench/interleaved.py [--threads 2] [--T 100 300 1000] [--rounds 7]
"""
import argparse
import time

import torch
from torch import nn

import fastrnn
from common import H, I, fwd_bwd_step

IMPLS = {
    "nn.LSTM": lambda: nn.LSTM(I, H),
    "LSTM-cpu": lambda: fastrnn.LSTM(I, H, backend="cpu"),
    "SAB-linear-cpu": lambda: fastrnn.SABLSTM(I, H, attention="linear", backend="cpu"),
    "SAB-mlp-cpu": lambda: fastrnn.SABLSTM(I, H, backend="cpu"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--T", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  best of {args.rounds} interleaved rounds, ms (ratio to nn.LSTM)")
    print(f"{'T':>6}  " + "  ".join(f"{name:>20}" for name in IMPLS))
    for T in args.T:
        steps = {name: fwd_bwd_step(make(), T) for name, make in IMPLS.items()}
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
        base = best["nn.LSTM"]
        print(f"{T:>6}  " + "  ".join(f"{1e3 * v:>12.1f} ({v / base:.2f}x)" for v in best.values()), flush=True)


if __name__ == "__main__":
    main()
