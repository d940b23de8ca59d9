"""Command line of the experiments (see ``fastrnn.experiments`` for the three commands)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

import fastrnn.backends
from fastrnn import training
from fastrnn.experiments import cli, ddp, main_job, plots, records, suites
from fastrnn.experiments.progress import DEFAULT_INTERVAL
from fastrnn.experiments.train import METHODS, PRECISIONS, Config, run


HELP = {
    "T": "copy: delay (sequence T+20); adding: length; ptb: window length; ignored for mnist/pmnist",
    "encoding": "copy input: scalar symbol value (original code) or one-hot",
    "batch_size": "sequences per training batch",
    "hidden": "LSTM hidden size",
    "embed": "embedding size of token inputs (ptb)",
    "k_top": "sab: memories attended to at each attention step (top-k)",
    "k_att": "sab: a memory slot is written every k_att steps",
    "k_trunc": "truncation length of sab and tbptt (0 = none)",
    "trunc_offset": "shift of the truncation grid: cuts where (t - offset) %% k_trunc == 0",
    "slot_state": "sab: the state a memory slot keeps (final: after the step; provisional: SPEC section 1.6)",
    "attention": "sab: the attention scorer (linear: paper eq. 1; mlp: a one-hidden-layer scorer)",
    "attn_size": "sab with --attention mlp: attention size A of the scorer (0 = --hidden)",
    "L0": "artbp: mean truncation length", "alpha": "artbp: alpha of the cut probability",
    "lr": "Adam learning rate",
    "forget_bias": "initial forget-gate bias (b_ih + b_hh); nan: nn.LSTM's uniform init",
    "clip": "maximal gradient norm (clipping)",
    "budget": "wall-clock seconds of training (0 = no limit; then give --max-iters)",
    "max_iters": "stop after this many iterations in total (0 = budget only)",
    "seed": "seed of the model's initialisation, the data and the truncation draws",
    "backend": "LSTM backend (auto: the fastest available on the device)",
    "threads": "torch threads of this run",
    "precision": "bf16: train under torch.autocast('cpu', bfloat16): on the cpu backend its bfloat16 mixed "
                 "precision (bf16 GEMMs, float32 state, master weights and gradients; docs/SPEC.md section 10), "
                 "on the reference bfloat16 compute as nn.LSTM under autocast; evaluation in float32; the run's "
                 "name gets -bf16",
    "eval_batches": "held-out batches for the final evaluation",
    "log_every": "iterations averaged into one history point",
    "checkpoint_every": "seconds between checkpoints",
    "attn_at": "sab: iterations at which to snapshot the attention (Figure 3)",
}
CHOICES = {"encoding": ("scalar", "onehot"), "slot_state": ("final", "provisional"),
           "attention": ("mlp", "linear"), "backend": fastrnn.backends.BACKENDS, "precision": PRECISIONS}
COMMANDS = {"main": "README command 1: SAB vs TBPTT vs BPTT on copy T=100 (`main --help`)",
            "suite": "a named suite of runs (`suite --help` lists them; `suite NAME --help`)",
            "report": "rewrite OUT/results.md and the plots from the runs under OUT/runs"}


def add_config_arguments(parser: argparse.ArgumentParser, defaults: Config) -> None:
    """One ``--flag`` per Config field (except task/method), with the field's default."""
    for f in dataclasses.fields(Config):
        if f.name in ("task", "method"):
            continue
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": value, "help": HELP.get(f.name), "choices": CHOICES.get(f.name)}
        if isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="*", **kwargs)
        else:
            parser.add_argument(flag, type=type(value), **kwargs)


def config_from_args(args, task: str, method: str) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)} - {"task", "method"}
    return Config(task=task, method=method, **{k: getattr(args, k) for k in fields})


def report(out, *, quiet: bool = False) -> None:
    """Rewrites ``out/results.md`` and the plots from every record under ``out/runs``. Without any record
    (``out`` missing or holding no runs) it writes nothing and says so."""
    out = Path(out)
    all_records = records.load_records(out)
    if not all_records:
        if not quiet:
            print(f"no runs found in {out} (runs are read from {out / 'runs'}/*/record.json)")
        return
    table = records.write_table(out, all_records)
    for task in sorted({r["config"]["task"] for r in all_records}):
        same = [r for r in all_records if r["config"]["task"] == task]
        plots.learning_curves(same, out / f"curves_{task}.png", title=f"{task}: learning curves")
    for r in all_records:
        path = out / "runs" / r["name"] / "attention.npz"
        if path.exists():
            with np.load(path) as z:
                snaps = dict(z)
            plots.attention_heatmaps(snaps, out / f"attention_{r['name']}.png", title=f"{r['name']}: attention")
    if not quiet:
        print(table.read_text(), end="")
        print(f"table: {table}; plots: {out}/*.png")


def build_parser() -> argparse.ArgumentParser:
    """The parser of one run (`python -m fastrnn.experiments TASK ...`) and of `report`."""
    tasks = "\n".join(f"  {name:8s} train one run on this task" for name in training.TASKS)
    commands = "\n".join(f"  {name:8s} {text}" for name, text in COMMANDS.items())
    parser = cli.parser(
        "python -m fastrnn.experiments",
        "Train one run on a task (its record, table and plots under --out), or run a command.",
        epilog="tasks:\n" + tasks + "\ncommands:\n" + commands + "\n\nexamples:\n"
        "  python -m fastrnn.experiments copy --method sab --T 100 --budget 120\n"
        "  python -m fastrnn.experiments main --budget 530\n"
        "  python -m fastrnn.experiments suite list\n"
        "  python -m fastrnn.experiments report --out results")
    parser.add_argument("task", choices=[*training.TASKS, *COMMANDS],
                        help="a task to train on, or a command (main and suite come first, before any flag)")
    parser.add_argument("--method", choices=METHODS, default="sab", help="training method of the run")
    parser.add_argument("--out", default="results", help="results directory (runs/, results.md, PNGs)")
    parser.add_argument("--name", default=None, help="run directory name (default: from the config, e.g. copy-T100-sab-s0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.add_argument("--no-report", action="store_true", help="skip rewriting the table and plots")
    parser.add_argument("--position", type=int, default=0, help=argparse.SUPPRESS)  # tqdm line, parallel runs
    parser.add_argument("--progress-interval", type=float, default=DEFAULT_INTERVAL,
                        help="seconds between progress lines where output is not a terminal (a terminal gets "
                             "a progress bar)")
    parser.add_argument("--ddp", action="store_true",
                        help="data-parallel: train this run on every process torchrun started, the batch split "
                             "between them (`torchrun --nproc_per_node 2 -m fastrnn.experiments copy ... --ddp`)")
    add_config_arguments(parser, Config())
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "main":
        return main_job.main(argv[1:])
    if argv and argv[0] == "suite":
        return suites.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task in ("main", "suite"):
        parser.error(f"{args.task} must be the first argument: python -m fastrnn.experiments {args.task} ... "
                     f"(see `python -m fastrnn.experiments {args.task} --help`)")
    if args.task == "report":
        report(args.out)
        return 0
    cfg = config_from_args(args, args.task, args.method)
    context = ddp.init() if args.ddp else None
    try:
        record = run(cfg, args.out, name=args.name, progress=not args.no_progress, position=args.position,
                     progress_interval=args.progress_interval, ddp=context)
    except BaseException:
        if context is not None:
            ddp.shutdown(barrier=False)
        raise
    if context is not None:
        ddp.shutdown()
    if record is None:  # a data-parallel process other than the first: process 0 reports
        return 0
    world = f" on {record['world_size']} processes" if "world_size" in record else ""
    print(f"{record['name']}: {record['iterations']} iterations{world}, held-out acc {record['eval']['acc']:.3f}, "
          f"loss {record['eval']['loss']:.4f}")
    if not args.no_report:
        report(args.out, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
