"""How far each op and the main job's training iteration are from their GEMM floor (issue #12).

For each configuration this times, side by side in interleaved rounds (best of N), the fwd+bwd (or the
runner's training iteration) of each implementation and the same GEMMs alone, with torch.mm / addmm at
exactly the shapes the CPU kernels run them (csrc/cpu/lstm_*.cpp, sab_*.cpp):

  forward   input projection   [T*B, I] x [I, 4H]                  one GEMM, the op's threads
            recurrent, per step [Bb, H] x [H, 4H]                  Bb = B / threads: each thread runs
  backward  dgates W_hh, per step [Bb, 4H] x [4H, H]                  its block of rows, so the floor
            dW_hh, dW_ih (+ dx)  [H|I, T*Bb] x [T*Bb, 4H] (...)       of the wall time is one block's
  SAB-mlp   query q_t per step (forward, and recomputed backward) [Bb, H] x [H, A], slot keys per
            written slot [Bb, H] x [H, A], dq att_wh per step and dP att_wm per slot [Bb, A] x [A, H],
            d att_wh [A, T*Bb] x [T*Bb, H], d att_wm [A, S*Bb] x [S*Bb, H]   (S = T / k_att slots)
  training  + the head [T*B, H] x [H, n_out], its dW and dh

The per-block GEMMs run on one thread (the blocks run concurrently), the input projection on the op's
threads. Each GEMM is one Python call (~2 us), so the floor is slightly high: ratios are if anything low.
SAB-linear's scorer is matrix-vector work (no GEMM), so its floor is the LSTM's. The training row also
times LSTM and SAB-linear in bfloat16 mixed precision (`--precision bf16`, docs/SPEC.md section 10), against
the same float32 floor and nn.LSTM's float32 iteration.

    .venv/bin/python bench/roofline.py [--quick] [--rounds N] [--T 100 300 1000 | --T (training only)]
"""
import argparse
import math
import tempfile
import time

import torch
from torch import nn

import fastrnn
from fastrnn.experiments import train

from common import cpu_model

SAB = dict(method="sab", slot_state="provisional", k_top=5, k_att=2, k_trunc=20)


class GemmFloor:
    """The GEMMs of one LSTM/SAB fwd+bwd, preallocated, replayed by ``__call__``."""

    def __init__(self, T, B, I, H, threads, *, mlp_A=0, k_att=2, head=0, dx=True):
        self.threads = threads
        Bb = math.ceil(B / threads)
        r = lambda *s: torch.randn(*s)  # noqa: E731
        self.big = []  # (fn, args): on the op's threads
        self.small = []  # on one thread
        x, wih, bias = r(T * B, I), r(I, 4 * H), r(4 * H)
        self.big.append((torch.addmm, (bias, x, wih), dict(out=r(T * B, 4 * H))))
        h, whh, g = r(Bb, H), r(H, 4 * H), r(Bb, 4 * H)
        step_f = (torch.addmm, (g, h, whh), dict(out=r(Bb, 4 * H)))
        step_b = (torch.mm, (g, whh.t()), dict(out=r(Bb, H)))
        self.small += [step_f] * T + [step_b] * T
        xs, hs, dG = r(T * Bb, I), r(T * Bb, H), r(T * Bb, 4 * H)
        self.small.append((torch.mm, (hs.t(), dG), dict(out=r(H, 4 * H))))       # dW_hh
        self.small.append((torch.mm, (xs.t(), dG), dict(out=r(I, 4 * H))))       # dW_ih
        if dx:
            self.small.append((torch.mm, (dG, wih.t()), dict(out=r(T * Bb, I))))  # dx
        if mlp_A:
            A, S = mlp_A, math.ceil(T / k_att)
            wh, q, dq = r(H, A), r(Bb, A), r(Bb, A)
            q_step = (torch.mm, (h, wh), dict(out=q))
            back_step = (torch.mm, (dq, wh.t()), dict(out=r(Bb, H)))
            self.small += [q_step] * (2 * T + S) + [back_step] * (T + S)
            self.small.append((torch.mm, (r(T * Bb, A).t(), hs), dict(out=r(A, H))))      # d att_wh
            self.small.append((torch.mm, (r(S * Bb, A).t(), r(S * Bb, H)), dict(out=r(A, H))))  # d att_wm
        if head:
            hy, wo, dl = r(T * B, H), r(H, head), r(T * B, head)
            self.big += [(torch.addmm, (r(head), hy, wo), dict(out=r(T * B, head))),
                         (torch.mm, (dl, wo.t()), dict(out=r(T * B, H))),
                         (torch.mm, (dl.t(), hy), dict(out=r(head, H)))]
        self.flop = sum(2 * a[-2].shape[0] * a[-2].shape[1] * a[-1].shape[1] for _, a, _ in self.big + self.small)

    def __call__(self):
        torch.set_num_threads(self.threads)
        for fn, args, kw in self.big:
            fn(*args, **kw)
        torch.set_num_threads(1)
        for fn, args, kw in self.small:
            fn(*args, **kw)
        torch.set_num_threads(self.threads)


def peak_gflops(rounds: int) -> float:
    """One thread's float32 GEMM rate at a large square-ish shape ([2048, 512] x [512, 512]): the ceiling of
    any float32 GEMM here, beside which the per-step floors are read."""
    torch.set_num_threads(1)
    a, w, out = torch.randn(2048, 512), torch.randn(512, 512), torch.empty(2048, 512)
    torch.mm(a, w, out=out)
    best = float("inf")
    for _ in range(max(rounds, 3)):
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, w, out=out)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * 2048 * 512 * 512 / best / 1e9


def fwd_bwd(module, T, B, I, H):
    x = torch.randn(T, B, I, requires_grad=True)
    target = torch.randn(T, B, H)

    def step():
        module.zero_grad(set_to_none=True)
        (module(x)[0] * target).sum().backward()
    return step


class _TorchCore(nn.Module):
    """nn.LSTM behind the core's signature (``schedule`` ignored: full BPTT)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)

    def forward(self, x, schedule=None):
        return self.lstm(x)


def training_iteration(kind, tmp, iters, precision="float32"):
    """The runner's iteration (bench/train_step.py's), ``iters`` of them per call; precision "bf16": under
    autocast, the cpu backend's bfloat16 mixed precision (Config.precision)."""
    extra = dict(SAB, attention="linear") if kind == "sab" else dict(method="bptt")
    cfg = train.Config(task="copy", T=100, batch_size=64, hidden=128, max_iters=1, precision=precision, **extra)
    run = train.Run(cfg, f"{tmp}/{kind}-{precision}")
    if kind == "nn":
        rnn = run.model.rnn
        run.model.rnn = _TorchCore(rnn.input_size, rnn.hidden_size)
        run.opt = torch.optim.Adam(run.model.parameters(), lr=cfg.lr)
    for _ in range(3):
        run.step()

    def step():
        for _ in range(iters):
            run.step()
    return step, run


def configs(args, tmp):
    """[(title, threads, per-call divisor, {name: callable})], the GEMM floor first."""
    out = []
    torch.set_num_threads(1)
    runs = {k: training_iteration(k, tmp, args.iters) for k in ("nn", "lstm", "sab")}
    mixed = {k: training_iteration(k, tmp, args.iters, "bf16")[0] for k in ("lstm", "sab")}
    task = runs["sab"][1].task
    L, I, n_out = task.length, runs["sab"][1].model.rnn.input_size, runs["sab"][1].model.head.out_features
    emb = runs["sab"][1].model.embedding is not None
    out.append((f"train copy T=100 (L={L}) B=64 I={I} H=128", 1, args.iters, {
        "GEMM floor": GemmFloor(L, 64, I, 128, 1, head=n_out, dx=emb),
        "nn.LSTM": runs["nn"][0], "LSTM-cpu": runs["lstm"][0], "SAB-linear-cpu": runs["sab"][0],
        "LSTM-cpu bf16": mixed["lstm"], "SAB-linear bf16": mixed["sab"]}))
    B, I, H = 32, 64, 128
    torch.set_num_threads(2)
    for T in args.T:
        out.append((f"fwd+bwd T={T} B={B} I={I} H={H}", 2, 1, {
            "GEMM floor": GemmFloor(T, B, I, H, 2),
            "GEMM floor mlp": GemmFloor(T, B, I, H, 2, mlp_A=H),
            "nn.LSTM": fwd_bwd(nn.LSTM(I, H), T, B, I, H),
            "LSTM-cpu": fwd_bwd(fastrnn.LSTM(I, H, backend="cpu"), T, B, I, H),
            "SAB-linear-cpu": fwd_bwd(fastrnn.SABLSTM(I, H, attention="linear", backend="cpu"), T, B, I, H),
            "SAB-mlp-cpu": fwd_bwd(fastrnn.SABLSTM(I, H, backend="cpu"), T, B, I, H)}))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~30 s: fewer rounds and iterations")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--iters", type=int, help="training iterations per timed call")
    parser.add_argument("--T", type=int, nargs="*", default=[100, 300, 1000],
                        help="the fwd+bwd rows' lengths (none: the training iteration only)")
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.iters = args.iters or (2 if args.quick else 5)
    torch.set_flush_denormal(True)  # as the runner does
    print(f"CPU: {cpu_model()}  capability: {torch.backends.cpu.get_cpu_capability()}  "
          f"torch {torch.__version__}  cores visible: {len(__import__('os').sched_getaffinity(0))}")
    peak = peak_gflops(args.rounds)
    print(f"float32 GEMM peak, one thread: {peak:.0f} GFLOP/s ([2048, 512] x [512, 512])")
    print(f"best of {args.rounds} interleaved rounds; ms per call (training: per iteration); "
          "ratio = time / its GEMM floor (SAB-mlp: / the mlp floor)")
    with tempfile.TemporaryDirectory() as tmp:
        for title, threads, div, impls in configs(args, tmp):
            torch.set_num_threads(threads)
            for f in impls.values():
                f()  # warm-up
            best = dict.fromkeys(impls, float("inf"))
            for _ in range(args.rounds):
                for name, f in impls.items():
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    f()
                    best[name] = min(best[name], (time.perf_counter() - start) / (1 if name.startswith("GEMM") else div))
            floor, floor_mlp = best["GEMM floor"], best.get("GEMM floor mlp")
            gf = impls["GEMM floor"].flop / floor / 1e9
            print(f"\n{title}, {threads} thread(s); GEMM floor {1e3 * floor:.2f} ms "
                  f"({impls['GEMM floor'].flop / 1e9:.2f} GFLOP on one thread-block, {gf:.0f} GFLOP/s = "
                  f"{gf / peak:.0%} of the peak; the floor is {floor / best['nn.LSTM']:.2f}x nn.LSTM)")
            for name, v in best.items():
                if name.startswith("GEMM"):
                    continue
                base = floor_mlp if name == "SAB-mlp-cpu" else floor
                print(f"  {name:16s} {1e3 * v:9.2f} ms  {v / base:5.2f}x floor  "
                      f"{v / best['nn.LSTM']:5.2f}x nn.LSTM", flush=True)
            if floor_mlp:
                print(f"  {'(mlp floor)':16s} {1e3 * floor_mlp:9.2f} ms")


if __name__ == "__main__":
    main()
