"""Multi-process training: DistributedDataParallel (gloo) on 2 CPU processes, each on half of the batch, gives
the parameters one process gets on the whole batch after N Adam steps, for LSTM and SABLSTM on the cpu
backend; and the experiment runner's data-parallel mode (`torchrun ... --ddp`) trains a run that way.

Tolerance: float64, rtol 1e-11 / atol 1e-13 on every parameter after 4 Adam steps (measured: LSTM bitwise
equal, SABLSTM 2.6e-15 relative at most). The two computations differ only in summation order (each process
reduces the weight gradients over its own rows, then gloo sums the two halves); Adam's normalisation can
magnify that where a gradient entry is tiny, hence the margin. The runner's test compares float32 runs
(rtol 1e-5).
"""
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastrnn

ROOT = Path(__file__).resolve().parents[1]
STEPS, B, T, I, H = 4, 6, 12, 3, 8
TOL = dict(rtol=1e-11, atol=1e-13)
KINDS = ("lstm", "sab")

pytestmark = pytest.mark.skipif(not dist.is_available() or "cpu" not in fastrnn.available_backends(),
                                reason="needs torch.distributed and the cpu backend")


def _model(kind):
    torch.manual_seed(0)
    if kind == "lstm":
        return fastrnn.LSTM(I, H, num_layers=2, backend="cpu", dtype=torch.float64)
    return fastrnn.SABLSTM(I, H, k_top=3, k_att=2, k_trunc=4, attention="mlp", backend="cpu", dtype=torch.float64)


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(T, B, I, generator=g, dtype=torch.float64),
            torch.randn(T, B, H, generator=g, dtype=torch.float64))


def _train(model, rank=0, world=1):
    """STEPS Adam steps on rows [rank B/world, (rank+1) B/world) of each batch; mean squared error."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    n = B // world
    for step in range(STEPS):
        x, target = _batch(step)
        y, (h_n, c_n) = model(x[:, rank * n:(rank + 1) * n])
        loss = (y - target[:, rank * n:(rank + 1) * n]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for kind in KINDS:
        model = _model(kind)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = _train(ddp, rank, world)
        torch.save(model.state_dict(), Path(out_dir) / f"{kind}-rank{rank}.pt")
        del ddp, opt  # a DDP reducer alive at destroy_process_group can make gloo abort at exit
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_two_processes_matches_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for kind in KINDS:
        single = _model(kind)
        _train(single)
        ranks = [torch.load(tmp_path / f"{kind}-rank{r}.pt") for r in range(2)]
        for name, expected in single.state_dict().items():
            # both processes hold identical parameters, equal to the single process's
            torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=f"{kind} {name}")
            torch.testing.assert_close(ranks[0][name], expected, **TOL, msg=lambda m: f"{kind} {name}: {m}")
        start = _model(kind).state_dict()
        assert any(not torch.equal(start[n], p) for n, p in ranks[0].items())  # it did train


def test_runner_data_parallel_mode_under_torchrun_matches_a_single_process_run(tmp_path):
    args = ["copy", "--method", "sab", "--attention", "mlp", "--T", "5", "--hidden", "8", "--batch-size", "4",
            "--eval-batches", "1", "--log-every", "2", "--budget", "0", "--max-iters", "4", "--attn-at",
            "--backend", "cpu", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "fastrnn.experiments", *args, "--out", str(tmp_path / "ddp"), "--ddp"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 iterations on 2 processes" in proc.stdout
    record = json.loads((tmp_path / "ddp" / "runs" / "copy-T5-sab-s0" / "record.json").read_text())
    assert record["world_size"] == 2 and record["iterations"] == 4 and len(record["history"]) == 2

    from fastrnn.experiments.__main__ import main as cli
    assert cli([*args, "--no-progress", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "runs" / "copy-T5-sab-s0" / "record.json").read_text())
    # the same run: the same losses (means over the two halves) and the same weights, float32
    for a, b in zip(record["history"], one["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["acc"] == pytest.approx(b["acc"], abs=1e-6)
    ckpt = [torch.load(tmp_path / d / "runs" / "copy-T5-sab-s0" / "checkpoint.pt", weights_only=True)["model"]
            for d in ("ddp", "one")]
    for name in ckpt[1]:
        torch.testing.assert_close(ckpt[0][name], ckpt[1][name], rtol=1e-5, atol=1e-6, msg=name)
