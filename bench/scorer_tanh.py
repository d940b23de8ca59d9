"""Throughput of the SAB-mlp scorer's tanh, in G tanh/s per core (issue #12: >= 4), before and after.

Kernel level: builds bench/scorer_tanh.cpp against csrc/ with the SIMD flags of CMakeLists.txt (the level
torch's kernels dispatch to, or --capability) and times, on one thread by its CPU time, the float tanh
alone (L1-resident input) and one row's scores over n slots of A = 128 keys as the forward scans them,
with the keys in L1/L2 (32 KB), L3 (2 MB) and DRAM (64 MB), and the DRAM-sized keys only summed (read_65536:
the rate one core streams them in, the ceiling of any scan from DRAM); then the tanh's largest and mean error
in ulp against tanh in double. --concurrent 2 runs two copies of the harness at once (as the op's two threads
scan at once; each copy's figures are per core). --vs REV builds the same harness against csrc/ of a git revision too and runs the
two in turn, A B A B ..., so the ratio holds while a shared machine's speed drifts.

Op level (--op T ...): the forward of SABLSTM (B=32, I=64, H=128, one thread) with the mlp and the linear
scorer; their difference in CPU time is the scorer's (plus the per-step query GEMM), its tanh count
B * A * sum_t (1 + t // k_att). --lib-vs PATH runs the same in turn with another build of the library.

    .venv/bin/python bench/scorer_tanh.py [--vs REV] [--runs 5] [--capability AVX512|AVX2|DEFAULT]
                                          [--op 1000 ...] [--lib-vs path/to/libfastrnn_cpu.so]
"""
import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {  # as CMakeLists.txt
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": ["-DCPU_CAPABILITY=DEFAULT"],
}


def machine() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return (f"{model} ({', '.join(simd) or 'no AVX2'}), {len(os.sched_getaffinity(0))} cores visible, "
            f"torch {torch.__version__}")


def sources(rev: str, into: Path) -> Path:
    """csrc/ of git revision `rev`, extracted under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "csrc"], check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "csrc"


def build(csrc: Path, capability: str, out: Path) -> Path:
    tile = "mlp_scores(" in (csrc / "cpu" / "sab_rows.h").read_text()
    cmd = [os.environ.get("CXX", "c++"), "-O3", "-std=c++20", *FLAGS[capability],
           *(["-DFASTRNN_BENCH_TILE"] if tile else []), f"-I{csrc}", f"-I{csrc / 'include'}",
           *(f"-I{p}" for p in include_paths()), str(ROOT / "bench" / "scorer_tanh.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"build failed: {shlex.join(cmd)}\n{proc.stderr[-4000:]}")
    return out


def run_kernels(exe: Path, rounds: int, scale: float, concurrent: int = 1) -> dict:
    """The harness's figures; with `concurrent` copies running at once, each figure the copies' mean."""
    procs = [subprocess.Popen([str(exe), str(rounds), str(scale)], stdout=subprocess.PIPE, text=True)
             for _ in range(concurrent)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"{exe} failed")
    runs = [{line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()} for out in outs]
    return {k: [statistics.mean(r[k][i] for r in runs) for i in range(len(runs[0][k]))] for k in runs[0]}


OP_CHILD = r"""
import sys, time, torch
from pathlib import Path
import fastrnn, fastrnn._native as native
native.LIBRARY = Path(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
T, B, I, H = int(sys.argv[2]), 32, 64, 128
x = torch.randn(T, B, I)
out = []
with torch.no_grad():
    for kind in ("mlp", "linear"):
        m = fastrnn.SABLSTM(I, H, attention=kind, backend="cpu")
        m(x)
        best = 1e30
        for _ in range(int(sys.argv[3])):
            c = time.process_time(); m(x); best = min(best, time.process_time() - c)
        out.append(best)
print(*out)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs", metavar="REV", help="also build against csrc/ of this git revision (the 'before')")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs of each build (median quoted)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per run (best kept)")
    parser.add_argument("--scale", type=float, default=1.0, help="work per round")
    parser.add_argument("--concurrent", type=int, default=1, help="copies of the harness run at once")
    parser.add_argument("--capability", choices=list(FLAGS), default=torch.backends.cpu.get_cpu_capability())
    parser.add_argument("--op", type=int, nargs="*", metavar="T", help="also the op-level rate at these T")
    parser.add_argument("--lib-vs", type=Path, help="the library to compare with at op level (the 'before')")
    args = parser.parse_args()
    capability = args.capability if args.capability in FLAGS else "DEFAULT"
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}; kernels built for {capability}")
    with tempfile.TemporaryDirectory() as tmp:
        builds = {"this tree": build(ROOT / "csrc", capability, Path(tmp) / "after")}
        if args.vs:
            builds = {args.vs: build(sources(args.vs, Path(tmp) / "src"), capability, Path(tmp) / "before"), **builds}
        results = {name: [] for name in builds}
        for _ in range(args.runs):
            for name, exe in builds.items():
                results[name].append(run_kernels(exe, args.rounds, args.scale, args.concurrent))
    print(f"\nkernels, G tanh/s per core (read_65536: G floats/s), {args.concurrent} at once (median of {args.runs} "
          f"alternating runs, each the best of {args.rounds})")
    keys = list(results[next(iter(results))][0])
    rates = [k for k in keys if k != "ulp"]  # the 'before' revision's harness may lack read_65536
    rates = [k for k in rates if all(k in r for runs in results.values() for r in runs)]
    print(f"  {'':22s}" + "".join(f"{k:>14s}" for k in rates) + "   tanh error (ulp max / mean)")
    med = {}
    for name, runs in results.items():
        med[name] = {k: statistics.median(r[k][0] for r in runs) for k in rates}
        ulp = runs[0]["ulp"]
        print(f"  {name:22s}" + "".join(f"{med[name][k]:14.2f}" for k in rates) + f"   {ulp[0]:.2f} / {ulp[1]:.3f}")
    if args.vs:
        a, b = med[args.vs], med["this tree"]
        print(f"  {'speed-up':22s}" + "".join(f"{b[k] / a[k]:13.2f}x" for k in rates))
    print("  scores_<KB>: the keys' size; largest |score - score in double| of the last run: "
          + ", ".join(f"{name}: " + " ".join(f"{results[name][-1][k][1]:.1e}" for k in rates if k.startswith("scores"))
                      for name in results))
    if "read_65536" in rates:
        b = med["this tree"]
        print(f"  from DRAM the scan runs at {b['scores_65536'] / b['read_65536']:.0%} of the rate the keys stream in")

    if args.op:
        libs = {"this tree": ROOT / "fastrnn" / "_lib" / "libfastrnn_cpu.so"}
        if args.lib_vs:
            libs = {str(args.lib_vs): args.lib_vs, **libs}
        print("\nop level: SABLSTM forward, B=32 I=64 H=128 A=128 k_att=2, one thread, no grad; "
              f"best of 3 per run, median of {args.runs} alternating runs")
        for T in args.op:
            n_tanh = 32 * 128 * sum(1 + t // 2 for t in range(T))
            times = {name: [] for name in libs}
            for _ in range(args.runs):
                for name, lib in libs.items():
                    proc = subprocess.run([sys.executable, "-c", OP_CHILD, str(lib), str(T), "3"], check=True,
                                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                    times[name].append([float(v) for v in proc.stdout.split()])
            for name, ts in times.items():
                mlp = statistics.median(t[0] for t in ts)
                lin = statistics.median(t[1] for t in ts)
                print(f"  T={T:<6d} {name:40s} mlp {1e3 * mlp:9.1f} ms  linear {1e3 * lin:8.1f} ms  "
                      f"scorer {n_tanh / (mlp - lin) / 1e9:5.2f} G tanh/s ({n_tanh / 1e9:.2f} G tanh)")


if __name__ == "__main__":
    main()
