"""Named sets of runs behind the README's reproduction table, run side by side at a fixed budget.

    python -m fastrnn.experiments suite NAME [--budget S] [--workers N] [--seed 0] [--out results]
    python -m fastrnn.experiments suite list
    python -m fastrnn.experiments suite influence|cycleworld|aux ...   the online-method suites (methods.py)

Each run is its own process with one thread, trained for the same wall-clock budget. By default a suite
of up to 3 runs runs them all at once (on 2 cores they share the machine equally and no core idles, as
in the main job); a larger suite runs 2 at a time (one per core); the suite then writes ``OUT/suite_NAME.md`` (the table, with what each
run cost) and ``OUT/curves_NAME.png`` (all its runs on one figure). Runs live in ``OUT/runs/<run>`` like
single runs, so ``report`` and resuming work on them too (``--resume`` continues a suite's runs).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastrnn.experiments import cli, methods, plots, records
from fastrnn.tasks import copying

# The SAB configuration of the main job: provisional slots, linear scorer (SPEC section 1).
_SAB = ["--method", "sab", "--slot-state", "provisional", "--attention", "linear", "--k-att", "2"]
_MLP = ["--method", "sab", "--slot-state", "provisional", "--attention", "mlp", "--k-att", "2"]
_COPY = ["copy", "--batch-size", "64", "--hidden", "128", "--encoding", "scalar"]


@dataclass(frozen=True)
class Suite:
    title: str
    budget: float  # default seconds of training per run
    runs: dict  # run name (without the seed) -> CLI arguments after `python -m fastrnn.experiments`
    note: str = ""


def _copy(T: int, tag: str, args: list) -> tuple:
    return f"copy-T{T}-{tag}", [*_COPY, "--T", str(T), *args]


SUITES = {
    # Why short truncations stall on copy T=100. SPEC's grid cuts where t % k == 0, so the marker
    # (step 109) ends a segment when k divides 110 (k = 5, 10): no output step can backpropagate into
    # the marker step along the chain. The offset moves a cut onto the marker step itself, so the
    # marker and the first outputs share a segment; everything else is unchanged.
    "copy-trunc": Suite(
        "copy T=100, SAB k_top=5: truncation grid vs. the marker (step 109)", 600.0, dict([
            _copy(100, "sab-k5", [*_SAB, "--k-top", "5", "--k-trunc", "5"]),
            _copy(100, "sab-k5-marker", [*_SAB, "--k-top", "5", "--k-trunc", "5", "--trunc-offset", "4"]),
            _copy(100, "sab-k10", [*_SAB, "--k-top", "5", "--k-trunc", "10"]),
            _copy(100, "sab-k10-marker", [*_SAB, "--k-top", "5", "--k-trunc", "10", "--trunc-offset", "9"]),
        ]),
        "offset 4 (k=5) and 9 (k=10) put a cut at step 109, so the segment starting at the marker "
        "holds the first 4 (9) output steps."),
    # The same question with the mlp scorer, whose selection depends on the query (SPEC step 4): does a
    # query-dependent top-k let k_trunc=5 leave the plateau?
    "copy-trunc-mlp": Suite(
        "copy T=100, SAB k_top=5, k_trunc=5, mlp scorer: truncation grid vs. the marker", 600.0, dict([
            _copy(100, "sab-mlp-k5", [*_MLP, "--k-top", "5", "--k-trunc", "5"]),
            _copy(100, "sab-mlp-k5-marker", [*_MLP, "--k-top", "5", "--k-trunc", "5", "--trunc-offset", "4"]),
        ])),
    # Table 4 of the SAB paper (adding, T=200): SAB k_trunc=5, k_top=10 against TBPTT k=20 and BPTT.
    "adding": Suite("adding T=200: SAB vs TBPTT vs BPTT", 900.0, {
        "adding-T200-sab": ["adding", "--T", "200", *_SAB, "--k-top", "10", "--k-trunc", "5",
                            "--hidden", "128", "--batch-size", "64"],
        "adding-T200-tbptt": ["adding", "--T", "200", "--method", "tbptt", "--k-trunc", "20", "--hidden", "128",
                              "--batch-size", "64"],
        "adding-T200-bptt": ["adding", "--T", "200", "--method", "bptt", "--hidden", "128", "--batch-size", "64"],
    }, "MSE of predicting the mean: 0.1667."),
    # Table 8 (pixel MNIST): hidden 128, lr 1e-3; SAB k_trunc = k_att = 14, k_top = 10.
    "mnist": Suite("pixel MNIST (784 steps): SAB vs TBPTT vs BPTT", 600.0, {
        "mnist-sab": ["mnist", "--method", "sab", "--slot-state", "provisional", "--attention", "linear",
                      "--k-top", "10", "--k-att", "14", "--k-trunc", "14", "--hidden", "128",
                      "--batch-size", "64"],
        "mnist-tbptt": ["mnist", "--method", "tbptt", "--k-trunc", "14", "--hidden", "128", "--batch-size", "64"],
        "mnist-bptt": ["mnist", "--method", "bptt", "--hidden", "128", "--batch-size", "64"],
    }, "the paper trains ~100 epochs; this budget is a fraction of one epoch per run."),
    # Table 6 (char PTB): windows of 100, batch 32, lr 2e-3; SAB k_trunc=5, k_top=5, k_att=2. Hidden 256
    # instead of the paper's 1000 (a 1000-unit LSTM does ~1 iteration/s on one core).
    "ptb": Suite("char-level PTB (windows of 100): SAB vs TBPTT vs BPTT", 600.0, {
        "ptb-sab": ["ptb", *_SAB, "--k-top", "5", "--k-trunc", "5", "--T", "100", "--hidden", "256",
                    "--batch-size", "32", "--lr", "0.002"],
        "ptb-tbptt": ["ptb", "--method", "tbptt", "--k-trunc", "5", "--T", "100", "--hidden", "256",
                      "--batch-size", "32", "--lr", "0.002"],
        "ptb-bptt": ["ptb", "--method", "bptt", "--T", "100", "--hidden", "256", "--batch-size", "32",
                     "--lr", "0.002"],
    }, "hidden 256 instead of 1000, and minutes instead of 100 epochs."),
}


def commands(suite: Suite, budget: float, seed: int, out: Path, extra: list) -> tuple:
    """(run names, one command per run): one thread each, no progress bars, no per-run report."""
    names, cmds = [], []
    for position, (name, args) in enumerate(suite.runs.items()):
        names.append(f"{name}-s{seed}")
        cmds.append([sys.executable, "-m", "fastrnn.experiments", *args, "--budget", str(budget),
                     "--seed", str(seed), "--threads", "1", "--out", str(out), "--name", names[-1],
                     "--position", str(position), "--no-report", *extra])
    return names, cmds


def run_all(cmds: list, workers: int) -> None:
    """Runs the commands, at most ``workers`` at a time; fails if any fails."""
    pending, running = list(cmds), []
    while pending or running:
        while pending and len(running) < workers:
            running.append(subprocess.Popen(pending.pop(0)))
        time.sleep(0.5)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode != 0:
                for other in running:
                    other.terminate()
                raise SystemExit(f"`{' '.join(p.args)}` failed with exit code {p.returncode}")


def digit_attention(matrix: np.ndarray) -> float:
    """Copy task: the mean attention weight the 10 output steps put on the input phase (steps 0-9).

    ``matrix`` is a snapshot of `train.attention_matrix` ([attending step, attended step + 1], batch
    mean). 1.0 means the output steps read only the digits' slots; the sparsifier gives no gradient to
    a slot it did not select, so near 0 the digits cannot be learned through the attention."""
    outputs = matrix[-copying.N_DIGITS:]
    return float(outputs[:, 1:copying.N_DIGITS + 1].sum(axis=1).mean())


def marker_attention(matrix: np.ndarray) -> float:
    """Copy task: the mean attention weight the 10 output steps put on the marker's slot (step T+9).

    The marker is the step before the outputs, s = L - 11, so its column s + 1 is the 11th from the end of
    the L + 1 columns. A weight near 1 leaves the other survivors of the top-k, among them the slots that
    hold the digits, almost nothing of the normalised sum."""
    outputs = matrix[-copying.N_DIGITS:]
    return float(outputs[:, -copying.N_DIGITS - 1].mean())


SOLVED_ACC = 0.98  # the bar for the copy task: 98 % on the output steps


def copy_baseline(records_: list) -> dict | None:
    """The memoryless baseline of the copy task (digits guessed among 8, blanks right) in the metrics of
    the learning curves, when every record is a copy run of one T; else None (nothing to draw)."""
    Ts = {r["config"]["T"] for r in records_ if r["config"]["task"] == "copy"}
    if len(Ts) != 1 or any(r["config"]["task"] != "copy" for r in records_):
        return None
    return {"acc": 1 / 8, "loss": copying.memoryless_cross_entropy(Ts.pop())}


def copy_milestones(record: dict) -> dict:
    """Copy task: the history entries (``iter``, ``time``, ...) where a run first reached each milestone.

    ``plateau``: training loss <= 1.1x the memoryless cross-entropy (blanks right, the output phase found,
    digits guessed); ``off``: training accuracy on the copy >= 0.25, twice chance; ``solved``: training
    accuracy >= 0.98. None where the run never got there."""
    baseline = copying.memoryless_cross_entropy(record["config"]["T"])
    history = record["history"]
    return {"plateau": next((h for h in history if h["loss"] <= 1.1 * baseline), None),
            "off": next((h for h in history if h["acc"] >= 0.25), None),
            "solved": next((h for h in history if h["acc"] >= SOLVED_ACC), None)}


def copy_lines(out: Path, mine: list) -> list:
    """One line per copy run: its milestones, and for SAB the attention of the output steps on the digits
    and on the marker at each snapshot."""
    lines = []
    for r in mine:
        if r["config"]["task"] != "copy":
            continue
        m = copy_milestones(r)
        at = {k: f"{h['iter']:,}" if h else "never" for k, h in m.items()}
        text = (f"- {r['name']}: at the plateau from iteration {at['plateau']}, off it from {at['off']}, "
                f"solved from {at['solved']}")
        if m["solved"]:
            text += f" ({m['solved']['time']:.0f} s of training)"
        text += f" (of {r['iterations']:,})"
        path = out / "runs" / r["name"] / "attention.npz"
        if path.exists():
            with np.load(path) as z:
                snaps = sorted(z.items(), key=lambda kv: int(kv[0].split("_")[1]))  # keys "iter_N"
                cells = ", ".join(f"{k.split('_')[1]}: {digit_attention(v):.2f} / {marker_attention(v):.2f}"
                                  for k, v in snaps)
            text += f"; attention of the output steps on the digits / on the marker at iteration {cells}"
        lines.append(text)
    return lines


def bpc_line(mine: list) -> str:
    """Language-model runs: their held-out bits per character ("" if none has one)."""
    cells = [f"{r['name']} {r['eval']['bpc']:.3f}" for r in mine if "bpc" in r["eval"]]
    return "\nHeld-out bits per character: " + ", ".join(cells) + "\n" if cells else ""


def copy_section(out: Path, mine: list) -> str:
    """The copy milestones of ``mine`` as a markdown paragraph ("" without copy runs)."""
    lines = copy_lines(out, mine)
    if not lines:
        return ""
    return ("\nCopy milestones (at the plateau: training loss <= 1.1x the memoryless cross-entropy; off it: "
            f"training accuracy >= 0.25; solved: training accuracy >= {SOLVED_ACC}; each the mean of "
            "10 iterations):\n" + "\n".join(lines) + "\n")


def write_results(name: str, suite: Suite, run_names: list, out: Path, wall_seconds: float) -> Path:
    """``out/suite_NAME.md`` (table of the suite's runs) and ``out/curves_NAME.png``."""
    by_name = {r["name"]: r for r in records.load_records(out)}
    mine = [by_name[n] for n in run_names if n in by_name]
    text = (f"## {suite.title}\n\n" + records.markdown_table(mine)
            + f"\n{len(mine)} runs, {wall_seconds / 60:.1f} min of wall time in all."
            + (f" {suite.note}" if suite.note else "") + "\n"
            + bpc_line(mine) + copy_section(out, mine))
    path = out / f"suite_{name}.md"
    path.write_text(text)
    plots.learning_curves(mine, out / f"curves_{name}.png", title=suite.title, chance=copy_baseline(mine))
    return path


def build_parser():
    """The parser of `python -m fastrnn.experiments suite NAME ...` (the suites of this module)."""
    listing = "\n".join([f"  {name:15s} {suite.title} ({len(suite.runs)} runs x {suite.budget:.0f} s)"
                          for name, suite in SUITES.items()]
                         + [f"  {name:15s} {title}" for name, title in methods.SUITES.items()])
    parser = cli.parser(
        "python -m fastrnn.experiments suite",
        "Named sets of runs behind the README's reproduction table, run side by side at a fixed budget.\n"
        "Writes OUT/suite_NAME.md (table) and OUT/curves_NAME.png; the runs live in OUT/runs/<run>.",
        epilog="suites:\n" + listing + "\n\n"
        f"{', '.join(methods.SUITES)}: online training methods with their own options, see\n"
        "  python -m fastrnn.experiments suite influence --help\n"
        "Other flags (e.g. --backend cpu, --max-iters N) are passed to every run of the other suites, see\n"
        "  python -m fastrnn.experiments --help")
    parser.add_argument("name", choices=[*SUITES, *methods.SUITES, "list"],
                        help="the suite (list: print the suites)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per run (default: the suite's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at once, one thread each (default: all if at most 3, else 2)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of every run")
    parser.add_argument("--out", default="results", help="results directory")
    parser.add_argument("--resume", action="store_true", help="continue the suite's runs from their checkpoints")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in methods.SUITES:  # online training methods (ARTBP, FPP): their own runner
        return methods.main(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.name in methods.SUITES:  # named after other flags: the online suites take them all
        rest = list(argv)
        rest.remove(args.name)
        return methods.main([args.name, *rest])
    if args.name == "list":
        for name, suite in SUITES.items():
            print(f"{name:15s} {len(suite.runs)} runs x {suite.budget:.0f} s  {suite.title}")
        for name, title in methods.SUITES.items():
            print(f"{name:15s} {title} (methods.py)")
        return 0
    suite, out = SUITES[args.name], Path(args.out)
    workers = args.workers if args.workers is not None else (len(suite.runs) if len(suite.runs) <= 3 else 2)
    if workers < 1:
        parser.error("--workers must be >= 1")
    budget = suite.budget if args.budget is None else args.budget
    names, cmds = commands(suite, budget, args.seed, out, extra)
    if not args.resume:
        for n in names:
            shutil.rmtree(out / "runs" / n, ignore_errors=True)
    print(f"suite {args.name}: {len(cmds)} runs x {budget:.0f} s, {workers} at a time", flush=True)
    start = time.perf_counter()
    run_all(cmds, workers)
    path = write_results(args.name, suite, names, out, time.perf_counter() - start)
    print(path.read_text(), end="")
    return 0
