"""README command 1: SAB vs. truncated BPTT vs. full BPTT on the copying task, equal wall-clock budgets.

    python -m fastrnn.experiments main [--budget 530] [--workers 3] [--out results]

Copy T=100 (sequence length 120), scalar input, batch 64, hidden 128, Adam 1e-3, clip 1:
    sab     SABLSTM(slot_state="provisional", k_top=5, k_att=2, k_trunc=20, attention="linear")
    tbptt   LSTM, truncation every 20 steps
    bptt    LSTM, full backpropagation through time
Each run is its own process with one thread. By default all three run at once for the same wall-clock
training budget, so they share the two cores equally (about 2/3 of a core each) and the machine never
idles: 530 s each plus ~30 s of start-up, evaluation and plotting keeps the job inside 10 minutes.
(``--workers 2`` would leave a core idle while the third run trains alone.) It prints the table
(held-out accuracy on the 10 output steps, cross-entropy, iterations, tokens/s) and writes
``results.md``, the learning curves and the SAB attention heatmaps (the paper's Figure 3) as PNGs
under ``--out``.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import fastrnn
from fastrnn.experiments import cli, plots, records
from fastrnn.experiments.suites import copy_baseline, copy_section, run_all
from fastrnn.experiments.train import PRECISIONS, Config
from fastrnn.tasks import copying

METHOD_ARGS = {
    "sab": ["--slot-state", "provisional", "--k-top", "5", "--k-att", "2", "--k-trunc", "20", "--attention", "linear"],
    "tbptt": ["--k-trunc", "20"],
    "bptt": [],
}
COMMON = ["copy", "--T", "100", "--batch-size", "64", "--hidden", "128", "--encoding", "scalar", "--threads", "1"]


def commands(budget: float, out: Path, seed: int, backend: str, extra: list, precision: str = "float32") -> list:
    cmds = []
    for position, (method, margs) in enumerate(METHOD_ARGS.items()):
        cmds.append([sys.executable, "-m", "fastrnn.experiments", *COMMON, "--method", method, *margs,
                     "--budget", str(budget), "--seed", str(seed), "--backend", backend, "--out", str(out),
                     "--precision", precision, "--position", str(position), "--no-report", *extra])
    return cmds


def main(argv=None) -> int:
    parser = cli.parser("python -m fastrnn.experiments main", __doc__.split("\n")[0],
                        epilog="Other flags (e.g. --max-iters N) are passed to each of the three runs, see\n"
                               "  python -m fastrnn.experiments --help")
    parser.add_argument("--budget", type=float, default=530.0, help="wall-clock training seconds per method")
    parser.add_argument("--workers", type=int, default=len(METHOD_ARGS), help="runs at once (one thread each)")
    parser.add_argument("--out", default="results", help="results directory")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the three runs")
    parser.add_argument("--backend", default="auto", choices=fastrnn.backends.BACKENDS,
                        help="LSTM backend of the runs (auto: the fastest available)")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="bf16: every run trains in the cpu backend's bfloat16 mixed precision (runs named -bf16)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted job from its checkpoints (without it: start the three runs afresh)")
    args, extra = parser.parse_known_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    out = Path(args.out)
    backend = fastrnn.backends.resolve(args.backend, "cpu")
    print(f"main job: copy T=100, methods {list(METHOD_ARGS)}, {args.budget:.0f} s each, {args.workers} at a time, "
          f"backend {backend!r}", flush=True)
    if backend == "reference":
        print("main job: WARNING the fused CPU backend is not available (build it: see README); the reference "
              "backend is ~10x slower and SAB will not reach the copy solution in this budget", flush=True)
    names = [Config(task="copy", T=100, method=m, seed=args.seed, precision=args.precision).name for m in METHOD_ARGS]
    if not args.resume:
        for name in names:
            shutil.rmtree(out / "runs" / name, ignore_errors=True)
    start = time.perf_counter()
    run_all(commands(args.budget, out, args.seed, args.backend, extra, args.precision), args.workers)
    from fastrnn.experiments.__main__ import report  # here: __main__ imports this module

    by_name = {r["name"]: r for r in records.load_records(out)}
    mine = [by_name[name] for name in names]
    table = records.markdown_table(mine) + (
        "\nacc (held-out): accuracy on the 10 output steps of 640 fresh sequences; loss: their cross-entropy "
        "per step over all 120 steps (memoryless baseline: acc 0.125, loss "
        f"{copying.memoryless_cross_entropy(100):.4f}); acc (last 10 logs): training accuracy of the last "
        "100 iterations.\n" + copy_section(out, mine))
    (out / "main.md").write_text(table)
    print()
    print(table, end="")
    plots.learning_curves(mine, out / "main_curves.png", chance=copy_baseline(mine),
                          title=f"copy T=100: SAB vs TBPTT vs BPTT, {args.budget:.0f} s of training each")
    report(out, quiet=True)
    print(f"main job: {time.perf_counter() - start:.0f} s; table {out / 'main.md'}, curves {out / 'main_curves.png'}, "
          f"attention {out / f'attention_{names[0]}.png'}")
    return 0
