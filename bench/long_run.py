"""A long training run on the cpu backend, printing the process's resident memory (RSS) as it goes: any
growth per iteration (a leaked tensor, a cache that keeps growing, an autograd graph kept alive) shows as
a rising RSS long after the warm-up.

The loop: SABLSTM (cpu backend, float32, mlp scorer, provisional slots, k_trunc) of B=8, T=30, H=32 and a
linear readout, Adam, fresh random inputs and targets every iteration. tests/test_long_run.py runs 1000 of
these iterations; docs/ROBUSTNESS.md records a run of this script.

    .venv/bin/python bench/long_run.py [--iters 20000] [--every 1000] [--threads 2] [--backend cpu]
"""
import argparse
import os
import time

import torch

import fastrnn

B, T, I, H = 8, 30, 8, 32


def rss_mib() -> float:
    """The resident set size of this process in MiB (/proc/self/statm; no psutil needed)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_step(backend: str = "cpu", seed: int = 0):
    """A training iteration as a function of no arguments (returns the loss as a float)."""
    torch.manual_seed(seed)
    rnn = fastrnn.SABLSTM(I, H, k_top=5, k_att=2, k_trunc=10, attention="mlp", slot_state="provisional",
                          backend=backend)
    head = torch.nn.Linear(H, 1)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> float:
        x = torch.randn(T, B, I)
        target = torch.randn(T, B, 1)
        y, _ = rnn(x)
        loss = torch.nn.functional.mse_loss(head(y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=20000)
    parser.add_argument("--every", type=int, default=1000, help="print RSS every N iterations")
    parser.add_argument("--warmup", type=int, default=100, help="RSS growth is counted from this iteration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    step = make_step(args.backend)
    start, base = time.perf_counter(), None
    print(f"iters={args.iters} backend={args.backend} threads={args.threads} B={B} T={T} H={H}; "
          f"RSS at start {rss_mib():.1f} MiB", flush=True)
    for i in range(1, args.iters + 1):
        loss = step()
        if i == args.warmup:
            base = rss_mib()
        if i % args.every == 0 or i == args.iters:
            rss = rss_mib()
            growth = "" if base is None else f"  (+{rss - base:.2f} MiB since iteration {args.warmup})"
            print(f"iter {i:7d}  {time.perf_counter() - start:7.1f} s  loss {loss:.4f}  RSS {rss:.1f} MiB{growth}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
