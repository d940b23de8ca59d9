"""A torch.profiler trace of the runner's training iteration, on the CPU and on CUDA when there is one.

Profiles a few iterations of `fastrnn.training.train_step` (the experiments' iteration: data, forward, loss,
backward, clip, update) for one configuration of bench/train_step.py (default: the main job's SAB on copy
T=100, batch 64, hidden 128), writes a Chrome trace per device and prints the ops that took the most time.
The iteration's phases and fastrnn's own ranges (`fastrnn.profiling`) show in the trace by name
(`fastrnn.train_step.forward`, ...).

    .venv/bin/python bench/profile.py [--config sab|sab-mlp32|tbptt|bptt] [--device all|cpu|cuda]
                                      [--iters 5] [--warmup 3] [--top 15] [--out results/profile]

Open a trace (results/profile/trace_<config>_<device>.json) in https://ui.perfetto.dev or chrome://tracing.
Under Nsight Systems the same ranges come out as NVTX ranges (README, "Profiling").
"""
import sys

if __name__ == "profile":
    # This file has the name of the standard library's `profile`, which `cProfile` imports (pytest-benchmark
    # and torch import cProfile). Where bench/ comes first on sys.path (pytest run in bench/, or this script
    # run directly) that import finds this file: hand the importer the real module instead (the import
    # system returns what sys.modules holds once this file has run).
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location("profile", f"{sysconfig.get_paths()['stdlib']}/profile.py")
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["profile"] = _real
    _spec.loader.exec_module(_real)

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

SAB = dict(method="sab", slot_state="provisional", k_top=5, k_att=2, k_trunc=20)
CONFIGS = {  # as bench/train_step.py
    "sab": dict(SAB, attention="linear"),  # the main job's SAB
    "sab-mlp32": dict(SAB, attention="mlp", attn_size=32),
    "tbptt": dict(method="tbptt", k_trunc=20),
    "bptt": dict(method="bptt"),
}


class _OnDevice:
    """A task whose batches are moved to ``device`` (the tasks draw them on the CPU)."""

    def __init__(self, task, device):
        self.task, self.device = task, device

    def __getattr__(self, name):
        return getattr(self.task, name)

    def batch(self, batch_size, generator):
        x, y = self.task.batch(batch_size, generator)
        return x.to(self.device), y.to(self.device)


def profile_device(name: str, device: str, args, out: Path) -> Path:
    """Profiles ``args.iters`` iterations on ``device`` after ``args.warmup``; writes and returns the trace."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastrnn import backends, training
    from fastrnn.experiments import train

    cfg = train.Config(task="copy", T=args.T, batch_size=args.batch_size, hidden=args.hidden, max_iters=1,
                       backend="auto", **CONFIGS[name])
    with tempfile.TemporaryDirectory() as tmp:
        run = train.Run(cfg, Path(tmp) / name)
    model = run.model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    task = _OnDevice(run.task, device)

    def step():
        training.train_step(model, task, opt, run.gen, batch_size=cfg.batch_size,
                            truncation=lambda length, g: train.schedule_for(cfg, length, g), clip=cfg.clip)

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(args.iters):
            with torch.profiler.record_function(f"iteration {i}"):
                step()
        if device == "cuda":
            torch.cuda.synchronize()
    trace = out / f"trace_{name}_{device}.json"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    backend = type(model.rnn).__name__ + ", backend " + backends.resolve(cfg.backend, device)
    print(f"\n== {name} on {device} ({backend}): {args.iters} iterations of copy T={args.T}, batch "
          f"{args.batch_size}, hidden {args.hidden}; top {args.top} ops by self time ==")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    print(f"trace: {trace}")
    return trace


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS), default="sab")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="all: the CPU, and CUDA when there is a GPU")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--out", default="results/profile")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the runner does
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda: no CUDA device here")
        devices.remove("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return [profile_device(args.config, device, args, out) for device in devices]


if __name__ == "__main__":
    main()
