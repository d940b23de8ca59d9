"""Copy-task training curves, float32 against the cpu backend's bfloat16 mixed precision (issue #12).

Two runs of the experiment runner (fastrnn.experiments.train.Run, BPTT, same seed, same batches) step in
turn, one of them under torch.autocast("cpu", dtype=torch.bfloat16) (training and evaluation); every
--every iterations both are evaluated on the runner's held-out set. Prints the curves side by side.

    PYTHONPATH=. .venv/bin/python bench/bf16_copy.py [--T 20] [--iters 3000] [--every 250] [--seed 0]
"""
import argparse
import contextlib
import tempfile
import time

import torch

from fastrnn import training
from fastrnn.experiments import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=20)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="bptt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the runner does
    precisions = {"float32": contextlib.nullcontext, "mixed": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: train.Run(train.Config(task="copy", T=args.T, method=args.method, max_iters=args.iters,
                                             seed=args.seed), f"{tmp}/{name}") for name in precisions}
        seconds = dict.fromkeys(precisions, 0.0)
        print(f"copy T={args.T}, {args.method}, batch 64, hidden 128, Adam, seed {args.seed}: held-out "
              f"accuracy / loss")
        print(f"{'iter':>6s} " + " ".join(f"{n:>18s}" for n in precisions))
        for it in range(1, args.iters + 1):
            for name, run in runs.items():
                with precisions[name]():
                    start = time.process_time()
                    run.step()
                    seconds[name] += time.process_time() - start
            if it % args.every == 0 or it == args.iters:
                cells = []
                for name, run in runs.items():
                    with precisions[name]():
                        m = training.evaluate(run.model, run.task, run.eval_set)
                    cells.append(f"{m['acc']:8.3f} / {m['loss']:7.4f}")
                print(f"{it:6d} " + " ".join(f"{c:>18s}" for c in cells), flush=True)
        print("CPU seconds of training: " + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()))


if __name__ == "__main__":
    main()
