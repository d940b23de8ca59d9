"""Data-parallel runs: one run trained by several processes with `torch.nn.parallel.DistributedDataParallel`.

    torchrun --nproc_per_node 2 -m fastrnn.experiments copy --method sab --budget 600 --ddp

Every process holds the whole model. Each iteration, every process draws the run's whole batch
(``--batch-size``, the global batch) from the same generator, then trains on its own equal slice of it
(process r of W takes rows [r B/W, (r+1) B/W)); DDP averages the gradients, so the update is the one a
single process would make on the whole batch (the same parameters up to floating-point summation order;
tests/test_ddp.py) and a data-parallel run is the same run as a single-process one: same name, same
checkpoint, resumable either way. The truncation schedule is drawn after the batch from the same
generator, so every process uses the same one. The wall-clock budget is read from the mean of the
processes' training times, so all stop at the same iteration.

Process 0 alone shows progress, evaluates, snapshots the attention and writes checkpoints and the record;
each process reads the checkpoint when resuming, so ``--out`` must be on a filesystem every machine sees.
The process group is gloo (CPU tensors) from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    rank: int
    world_size: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torchrun (or anything that sets its environment)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init(backend: str = "gloo") -> Context:
    """Joins the process group described by torchrun's environment variables."""
    if not launched():
        raise SystemExit("--ddp: launch with torchrun, e.g. `torchrun --nproc_per_node 2 -m fastrnn.experiments "
                         "copy ... --ddp` (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set)")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size())


def shutdown(*, barrier: bool = True) -> None:
    """Leaves the process group. The caller drops its DDP-wrapped models first: gloo can abort at interpreter
    exit when a DDP reducer outlives the group, so they are collected here before it is destroyed. After a
    failure, ``barrier=False``: the other processes may never get there (torchrun then stops them)."""
    gc.collect()
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module) -> nn.Module:
    """``model`` under DistributedDataParallel (CPU: no device ids). DDP broadcasts process 0's parameters."""
    return nn.parallel.DistributedDataParallel(model)


class ShardedTask:
    """``task`` as process ``rank`` of ``world_size`` sees it: the training batch is the task's whole batch,
    drawn as one process would draw it, narrowed to this process's rows. Inputs are time-major
    ([T, B, ...]: rows on dim 1); targets have their rows on their last dim ([T, B] or [B])."""

    def __init__(self, task, rank: int, world_size: int):
        self.task, self.rank, self.world_size = task, rank, world_size

    def __getattr__(self, name):
        return getattr(self.task, name)

    def batch(self, batch_size, generator):
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} is not divisible by the {self.world_size} processes")
        x, y = self.task.batch(batch_size, generator)
        n = batch_size // self.world_size
        return x.narrow(1, self.rank * n, n), y.narrow(y.dim() - 1, self.rank * n, n)


def mean_across(values: list) -> list:
    """The mean over the processes of each float in ``values`` (one all_reduce)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def same_across(value: int, what: str) -> None:
    """Raises unless every process holds the same ``value``."""
    t = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0].item() != -t[1].item():
        raise RuntimeError(f"the processes disagree on {what} ({-t[1].item()} .. {t[0].item()}): resuming needs "
                           "the run's checkpoint where every process can read it (--out on a shared filesystem)")
