"""Time of one training iteration of the experiment runner, split by phase, on one thread.

The main job's question is how many iterations a method gets in its share of the machine; this times
the runner's own iteration (`Run.step`, i.e. `fastrnn.training.train_step`: data, forward, loss,
backward, clip, optimiser update) through its phase hook, for the main job's configurations (copy T=100,
batch 64, hidden 128), each method in turn for several rounds, and prints the best round's milliseconds
per phase (best: the machine's load drifts).

    .venv/bin/python bench/train_step.py [--iters 50] [--rounds 3] [--methods sab tbptt bptt sab-mlp32]
"""
import argparse
import tempfile
import time

import torch

from fastrnn.experiments import train
from fastrnn.training import PHASES

SAB = dict(method="sab", slot_state="provisional", k_top=5, k_att=2, k_trunc=20)
CONFIGS = {
    "sab": dict(SAB, attention="linear"),                    # the main job's SAB
    "sab-mlp32": dict(SAB, attention="mlp", attn_size=32),
    "tbptt": dict(method="tbptt", k_trunc=20),
    "bptt": dict(method="bptt"),
}


def time_iterations(run: train.Run, iters: int) -> dict:
    """Milliseconds per iteration of each phase, over ``iters`` iterations of ``run``."""
    total = dict.fromkeys(PHASES, 0.0)
    last = 0.0

    def phase_end(phase):
        nonlocal last
        now = time.perf_counter()
        total[phase] += now - last
        last = now

    for _ in range(iters):
        last = time.perf_counter()
        run.step(on_phase_end=phase_end)
    return {phase: 1e3 * s / iters for phase, s in total.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the runner does
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            cfg = train.Config(task="copy", T=100, batch_size=64, hidden=128, max_iters=1, **CONFIGS[name])
            runs[name] = train.Run(cfg, f"{tmp}/{name}")
            time_iterations(runs[name], 5)  # warm-up
        best = {}
        for _ in range(args.rounds):
            for name, run in runs.items():
                ms = time_iterations(run, args.iters)
                if name not in best or sum(ms.values()) < sum(best[name].values()):
                    best[name] = ms
    print(f"ms per iteration, best of {args.rounds} rounds x {args.iters} iterations, one thread")
    print(f"{'config':10s} " + " ".join(f"{p:>8s}" for p in PHASES) + f" {'total':>8s}")
    for name, ms in best.items():
        print(f"{name:10s} " + " ".join(f"{ms[p]:8.2f}" for p in PHASES) + f" {sum(ms.values()):8.2f}")


if __name__ == "__main__":
    main()
