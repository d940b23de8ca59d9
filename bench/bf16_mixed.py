"""The cpu backend's bfloat16 mixed precision (issue #12) against float32, side by side in one run.

0. Accuracy: fastrnn float32 and mixed against fastrnn float64, outputs and gradients, at the shapes of 1.
   Then the ops alone (one thread, one thread's 16 rows, forward and backward apart).
1. fastrnn.LSTM fwd+bwd (B=32, I=64, H=128; T=300 and 1000; 2 threads, and 1): torch.nn.LSTM float32, fastrnn
   float32, and fastrnn under torch.autocast("cpu", bfloat16) with each GEMM kernel this machine runs
   (FASTRNN_BF16_GEMM).
2. One training iteration of the main job's shape (bench/train_step.py: copy T=100, batch 64, hidden 128,
   Adam, one thread; the runner's Run.step), float32 against the same step under autocast.
3. (--parts sab) fastrnn.SABLSTM fwd+bwd (B=32, I=64, H=128, k_top=5, k_att=2; T from --T; 1 thread), the
   linear and the mlp scorer, float32 against autocast with each kernel (the ops sab_mixed_*).
4. (--parts sab-train) part 2 with the main job's SAB model (the runner's defaults: linear scorer, k_top=5,
   k_att=2, k_trunc=20, provisional slots; clip 1).

Variants alternate within each round and the round of least process CPU time is kept (the machine is
shared); wall and CPU milliseconds are both printed, the ratios of both. The machine and its bfloat16 capabilities come first.

    PYTHONPATH=. .venv/bin/python bench/bf16_mixed.py [--rounds 5] [--reps 3] [--iters 20] [--T 300 1000]
        [--parts accuracy ops lstm train sab sab-train]
"""
import argparse
import contextlib
import os
import tempfile
import time

import torch

import fastrnn
from fastrnn.experiments import train
from fastrnn.ops.lstm import bf16_capabilities

from common import B, H, I, cpu_model, fwd_bwd_step


def kernels():
    caps = bf16_capabilities()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; AVX512_BF16: "
          f"{caps['avx512bf16']}, AMX-BF16: {caps['amx']}, MKL bf16 GEMM exported: {caps['mkl']}; "
          f"'auto' runs '{caps['auto']}'")
    return ["emulated"] + [k for k in ("mkl", "avx512bf16") if caps[k]]


@contextlib.contextmanager
def mixed(kernel):
    """torch.autocast bfloat16 with FASTRNN_BF16_GEMM=kernel (None: float32, no autocast)."""
    if kernel is None:
        yield
        return
    old = os.environ.get("FASTRNN_BF16_GEMM")
    os.environ["FASTRNN_BF16_GEMM"] = kernel
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        if old is None:
            del os.environ["FASTRNN_BF16_GEMM"]
        else:
            os.environ["FASTRNN_BF16_GEMM"] = old


def best_times(variants: dict, rounds: int, reps: int) -> dict:
    """{name: (wall ms, cpu ms)} per call of each (fn, kernel), the round of least CPU time (wall time is at
    the mercy of the machine's other work); variants alternate per round."""
    best = {}
    for _ in range(rounds):
        for name, (fn, kernel) in variants.items():
            with mixed(kernel):
                fn()  # warm
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    fn()
                wall, cpu = (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps
            if name not in best or cpu < best[name][1]:
                best[name] = (1e3 * wall, 1e3 * cpu)
    return best


def report(title, best, base):
    print(title)
    for name, (wall, cpu) in best.items():
        print(f"  {name:28s} {wall:9.1f} ms wall {cpu:9.1f} ms cpu   x{best[base][1] / cpu:5.2f} vs {base} (cpu), "
              f"x{best[base][0] / wall:5.2f} (wall)")


def lstm_fwd_bwd(T, ks, rounds, reps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H)
    ours = fastrnn.LSTM(I, H, backend="cpu")
    ours.load_state_dict(theirs.state_dict())
    variants = {"nn.LSTM float32": (fwd_bwd_step(theirs, T), None),
                "fastrnn float32": (fwd_bwd_step(ours, T), None)}
    for k in ks:
        variants[f"fastrnn mixed ({k})"] = (fwd_bwd_step(ours, T), k)
    report(f"LSTM fwd+bwd B={B} I={I} H={H} T={T}, {threads} threads", best_times(variants, rounds, reps),
           "fastrnn float32")


def op_fwd_bwd(T, ks, rounds, reps):
    """The ops alone, one thread, one thread's block of rows (B=16): lstm_forward / lstm_backward against
    lstm_mixed_forward / lstm_mixed_backward with each kernel, forward and backward timed apart."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    b = 16
    x, w_ih, w_hh = torch.randn(T, b, I), torch.randn(4 * H, I) * H ** -0.5, torch.randn(4 * H, H) * H ** -0.5
    bias, h0, cut, scale = torch.zeros(4 * H), torch.zeros(b, H), torch.zeros(T, dtype=torch.bool), torch.ones(T)
    args = (x, w_ih, w_hh, bias, bias, h0, h0, cut, scale, None)
    ops = torch.ops.fastrnn

    def variant(k):
        fwd = (lambda: ops.lstm_forward(*args)) if k is None else (lambda: ops.lstm_mixed_forward(*args, k))
        y, h_n, c_n, gates, cs = fwd()
        grads = (torch.randn_like(y), torch.zeros_like(h_n), torch.zeros_like(c_n))
        saved = (x, w_ih, w_hh, h0, h0, y, gates, cs, cut, scale, None)
        bwd = ((lambda: ops.lstm_backward(*grads, *saved)) if k is None
               else (lambda: ops.lstm_mixed_backward(*grads, *saved, k)))
        return fwd, bwd
    variants = {}
    for k in [None] + ks:
        fwd, bwd = variant(k)
        name = "float32" if k is None else k
        variants[f"{name} forward"], variants[f"{name} backward"] = (fwd, None), (bwd, None)
    best = best_times(variants, rounds, reps)
    print(f"ops alone, B={b} (one thread's rows) I={I} H={H} T={T}, 1 thread")
    for part in ("forward", "backward"):
        base = best[f"float32 {part}"][1]
        print(f"  {part:9s} " + "  ".join(f"{n}: {best[f'{n} {part}'][1]:.1f} ms (x{base / best[f'{n} {part}'][1]:.2f})"
                                        for n in ["float32"] + ks))


def sab_fwd_bwd(T, ks, rounds, reps):
    """fastrnn.SABLSTM fwd+bwd, one thread, float32 against autocast (sab_mixed_*) with each kernel."""
    torch.set_num_threads(1)
    for scorer in ("linear", "mlp"):
        torch.manual_seed(0)
        model = fastrnn.SABLSTM(I, H, k_top=5, k_att=2, attention=scorer, backend="cpu")
        variants = {"fastrnn float32": (fwd_bwd_step(model, T), None),
                    **{f"fastrnn mixed ({k})": (fwd_bwd_step(model, T), k) for k in ks}}
        report(f"SABLSTM ({scorer}) fwd+bwd B={B} I={I} H={H} T={T} k_top=5 k_att=2, 1 thread",
               best_times(variants, rounds, reps), "fastrnn float32")


def training_iteration(ks, rounds, iters, method="bptt"):
    """Run.step of the copy task (T=100: 120 steps), B=64, H=128, Adam, clip 1, one thread; method "bptt"
    (fastrnn.LSTM) or "sab" (fastrnn.SABLSTM with the runner's defaults: linear, k_top=5, k_att=2,
    k_trunc=20)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the runner does
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train.Config(task="copy", T=100, batch_size=64, hidden=128, max_iters=1, method=method)
        run = train.Run(cfg, f"{tmp}/{method}")

        def steps():
            for _ in range(iters):
                run.step()
        variants = {"float32": (steps, None), **{f"mixed ({k})": (steps, k) for k in ks}}
        best = best_times(variants, rounds, 1)
    best = {name: (wall / iters, cpu / iters) for name, (wall, cpu) in best.items()}
    model = "bptt" if method == "bptt" else "sab (linear, k_top=5, k_att=2, k_trunc=20)"
    report(f"training iteration, copy T=100 (120 steps) B=64 H=128 Adam, {model}, 1 thread, per iteration",
           best, "float32")


def results(model, x, target, kernel):
    """(y, h_n, c_n, dx, dW_ih, dW_hh, db_ih) of model on x (float32, or mixed with `kernel`), float64."""
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with mixed(kernel):
        y, (h_n, c_n) = model(x)
    (y.double() * target).sum().backward()
    grads = [x.grad, model.weight_ih_l0.grad, model.weight_hh_l0.grad, model.bias_ih_l0.grad]
    return [t.detach().double() for t in (y, h_n, c_n, *grads)]


def accuracy(T):
    """Mixed (the kernel "auto" runs) and float32 against float64, at the benchmark's shape: per result, the
    largest and the mean absolute error relative to the largest and the mean |float64 value|."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = fastrnn.LSTM(I, H, backend="cpu")
    x, target = torch.randn(T, B, I), torch.randn(T, B, H, dtype=torch.float64)
    f64 = results(model.double(), x.double(), target, None)
    f32 = results(model.float(), x, target, None)
    mix = results(model, x, target, "auto")
    print(f"accuracy, B={B} I={I} H={H} T={T}, nn.LSTM's init, x ~ N(0, 1), loss = sum(y * N(0, 1)): error "
          f"against float64, max |err| / max |ref| and mean |err| / mean |ref|")
    names = ["y", "h_n", "c_n", "dx", "dW_ih", "dW_hh", "db"]
    for label, res in (("float32", f32), ("mixed", mix)):
        cells = [f"{n} {float((a - r).abs().max() / r.abs().max()):.1e}/{float((a - r).abs().mean() / r.abs().mean()):.1e}"
                 for n, a, r in zip(names, res, f64)]
        print(f"  {label:8s} " + "  ".join(cells))


PARTS = ["accuracy", "ops", "lstm", "train", "sab", "sab-train"]
DEFAULT_PARTS = ["accuracy", "ops", "lstm", "train"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--T", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="of part 1; on a loaded machine 2 threads also time the wait for a core (OpenMP "
                             "spins), 1 thread the kernels alone")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=DEFAULT_PARTS)
    args = parser.parse_args()
    ks = kernels()
    for T in args.T if "accuracy" in args.parts else []:
        accuracy(T)
    for T in args.T if "ops" in args.parts else []:
        op_fwd_bwd(T, ks, args.rounds, args.reps)
    for T in args.T if "lstm" in args.parts else []:
        for threads in args.threads:
            lstm_fwd_bwd(T, ks, args.rounds, args.reps, threads)
    if "train" in args.parts:
        training_iteration(ks, args.rounds, args.iters)
    for T in args.T if "sab" in args.parts else []:
        sab_fwd_bwd(T, ks, args.rounds, args.reps)
    if "sab-train" in args.parts:
        training_iteration(ks, args.rounds, args.iters, method="sab")


if __name__ == "__main__":
    main()
