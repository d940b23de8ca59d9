"""Fwd+bwd with two builds of the native library, before and after a kernel change, against nn.LSTM.

A library registers the `fastrnn::` ops once per process, so each build runs in its own child process, the
children in turn (A B A B ...): the ratio holds while a shared machine's speed drifts. Each child times
`--rounds` fwd+bwd rounds of nn.LSTM and the fastrnn module, interleaved, after a warm-up, and reports
the best wall and process-CPU time of each; the parent prints, per build, the best over its `--runs`
children (a loaded machine's quietest moment is the most repeatable figure) with the ratio to nn.LSTM's
best, and the before/after ratio of the bests (wall) and the median ratio of the pairs' CPU times. Shapes as bench/common.py (B=32, I=64, H=128, float32),
2 threads.

    .venv/bin/python bench/lib_vs.py --lib-vs OTHER/libfastrnn_cpu.so [--impl SAB-mlp-cpu] \
        [--T 100 300 1000] [--runs 3] [--rounds 5]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
THIS = ROOT / "fastrnn" / "_lib" / "libfastrnn_cpu.so"

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
from torch import nn
sys.path.insert(0, sys.argv[5])
import fastrnn, fastrnn._native as native
from common import B, H, I, fwd_bwd_step
native.LIBRARY = Path(sys.argv[1])
assert native.load(), native.load_error()
T, rounds, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
impl = sys.argv[6]
make = {"SAB-mlp-cpu": lambda: fastrnn.SABLSTM(I, H, backend="cpu"),
        "SAB-linear-cpu": lambda: fastrnn.SABLSTM(I, H, attention="linear", backend="cpu"),
        "LSTM-cpu": lambda: fastrnn.LSTM(I, H, backend="cpu")}[impl]
steps = {"nn.LSTM": fwd_bwd_step(nn.LSTM(I, H), T), impl: fwd_bwd_step(make(), T)}
best = {k: [float("inf"), float("inf")] for k in steps}
for f in steps.values():
    f()
for _ in range(rounds):
    for k, f in steps.items():
        w, c = time.perf_counter(), time.process_time()
        f()
        best[k] = [min(best[k][0], time.perf_counter() - w), min(best[k][1], time.process_time() - c)]
print(json.dumps(best))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib-vs", type=Path, required=True, help="the other build (the 'before')")
    parser.add_argument("--impl", default="SAB-mlp-cpu", choices=["SAB-mlp-cpu", "SAB-linear-cpu", "LSTM-cpu"])
    parser.add_argument("--T", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--runs", type=int, default=3, help="children per build and T")
    parser.add_argument("--rounds", type=int, default=5, help="fwd+bwd rounds per child (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(f"CPU: {model}, capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"{args.threads} threads; best of {args.rounds} rounds x {args.runs} children per build, "
          "ms: wall (process CPU), and wall / nn.LSTM's best wall")
    libs = {"before": args.lib_vs.resolve(), "after": THIS}
    for T in args.T:
        got = {name: [] for name in libs}
        for _ in range(args.runs):
            for name, lib in libs.items():
                proc = subprocess.run([sys.executable, "-c", CHILD, str(lib), str(T), str(args.rounds),
                                       str(args.threads), str(ROOT / "bench"), args.impl],
                                      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if proc.returncode:
                    sys.exit(proc.stderr[-3000:])
                got[name].append(json.loads(proc.stdout.splitlines()[-1]))
        best = {name: {k: [min(r[k][i] for r in runs) for i in (0, 1)] for k in runs[0]} for name, runs in got.items()}
        row = []
        for name in libs:
            b = best[name]
            row.append(f"{name}: {1e3 * b[args.impl][0]:.1f} ({1e3 * b[args.impl][1]:.1f}) "
                       f"{b[args.impl][0] / b['nn.LSTM'][0]:.2f}x nn.LSTM {1e3 * b['nn.LSTM'][0]:.1f} "
                       f"({1e3 * b['nn.LSTM'][1]:.1f})")
        wall = best["before"][args.impl][0] / best["after"][args.impl][0]
        cpu = statistics.median(b[args.impl][1] / a[args.impl][1] for a, b in zip(got["after"], got["before"]))
        print(f"T={T:<6d} {args.impl} " + " | ".join(row) + f" | before/after: wall {wall:.2f}x, cpu {cpu:.2f}x "
              "(median of pairs)", flush=True)


if __name__ == "__main__":
    main()
