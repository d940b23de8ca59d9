"""Suites of the online training methods ARTBP, FPP and r-LSTM (online streams, not the fixed-batch runs of
`train.Run`).

    python -m fastrnn.experiments suite influence  [--steps 100000] [--seeds 5] [--seed 0] [--out results]
    python -m fastrnn.experiments suite cycleworld [--steps 4000] [--seeds 1] [--seed 0] [--M 4] [--workers 1]
                                                   [--worlds cycle6 cycle10 stochastic] [--T ...] [--methods ...]
                                                   [--lr LR] [--state-lr LR] [--lam 1] [--buffer 1000]
                                                   [--merge JSON ...] [--out results]

influence    seed 002 §6.1 (`fastrnn.tasks.influence`, p = 10, n = 13): online truncated BPTT with
             L = 10, 100, 200 (deterministic: one run each) and online ARTBP (L0 = 16, alpha = 6) on
             ``--seeds`` seeds; plain gradient steps with η_t = η0 / sqrt(1 + t), η0 = 3e-4, θ_0 = 0,
             s_0 = 0. Table: final θ (θ* = -1/6), the average loss over steps 1..t (the paper's Figure 3
             quantity) at the end, the loss of the last 10 % of steps, and a verdict. Curves: Figure 3.
cycleworld   seed 003 §4.1-4.3 (`fastrnn.tasks.cycleworld`): FPP, its buffer-only ablation and online
             T-BPTT at the same window length T, on CycleWorld p = 6 and 10 (LSTM, 4 hidden units) and
             StochasticWorld (LSTM, 32 hidden units, 16 parallel streams); RMSprop; the online
             prediction's accuracy / cross-entropy over the last 20 % of steps against the thesis'
             reference levels (naive predictor 83 % / 90 %; 0.66 / 0.51 / 0.45 nats).
aux          seed 001 (`fastrnn.training.auxiliary`): r-LSTM against truncated BPTT with the same 14-step
             classification truncation, at equal wall-clock (``--budget`` s each, run side by side; or
             each run's own CPU seconds with ``--clock cpu``), on
             pixel MNIST pooled to 14 x 14 (196 steps; ``--side 28``: the 784-step original; `mnist_pixels`).

    python -m fastrnn.experiments suite aux [--budget 600] [--clock wall|cpu] [--side 14] [--seeds 1] [--seed 0]
                                            [--out results]

Seeds: ``--seed S --seeds N`` runs seeds S, S+1, ..., S+N-1 (default S = 0).

Each suite writes ``OUT/suite_NAME.md`` (table, settings, wall times), ``OUT/curves_NAME.png`` and
``OUT/suite_NAME.json`` (every run's curve).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import fastrnn  # noqa: E402
from fastrnn.experiments import cli  # noqa: E402
from fastrnn.tasks import cycleworld, influence  # noqa: E402
from fastrnn.training import artbp, fpp  # noqa: E402

SUITES = {
    "influence": "influence balancing (seed 002 §6.1): online truncated BPTT L=10/100/200 vs ARTBP L0=16, alpha=6",
    "cycleworld": "CycleWorld p=6/10 and StochasticWorld (seed 003 §4.1): FPP vs buffer-only vs T-BPTT at equal T",
    "aux": "auxiliary losses (seed 001): r-LSTM vs TBPTT, same 14-step truncation, equal wall-clock, MNIST 14x14",
}


# ---- influence balancing --------------------------------------------------------------------------

def influence_run(method: str, steps: int, *, L: int = 0, seed: int = 0, eta0: float = 3e-4,
                  L0: float = 16.0, alpha: float = 6.0, points: int = 200) -> dict:
    """One online run on influence balancing; returns its summary and curves (about ``points`` points)."""
    torch.set_num_threads(1)
    core = influence.InfluenceBalancing()
    opt = torch.optim.SGD(core.parameters(), lr=eta0)
    if method == "artbp":
        sampler = artbp.ARTBPSampler(L0, alpha, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = artbp.FixedLength(L)
    trainer = artbp.OnlineTrainer(core, lambda out, y: influence.loss(out), opt, sampler)
    stream = influence.InfluenceStream()
    marks = sorted({int(round(v)) for v in torch.logspace(1, math.log10(steps), points).tolist()})
    curve = {"t": [], "mean_loss": [], "theta": []}
    total, start = 0.0, time.perf_counter()
    while trainer.t < steps:
        seg = trainer.step(stream, lr=eta0 / math.sqrt(1 + trainer.t), max_steps=steps - trainer.t)
        total += seg.loss
        if not math.isfinite(seg.loss) or abs(core.theta.item()) > 1e6:
            break                                   # diverged past float range: stop, report as is
        if (marks and trainer.t >= marks[0]) or trainer.t >= steps:   # log-spaced points
            while marks and marks[0] <= trainer.t:
                marks.pop(0)
            curve["t"].append(trainer.t)
            curve["mean_loss"].append(total / trainer.t)
            curve["theta"].append(core.theta.item())
    wall = time.perf_counter() - start
    tail = [s for s in trainer.segments if s.start >= 0.9 * steps]
    tail_loss = sum(s.loss for s in tail) / max(1, sum(s.length for s in tail))
    theta, star = core.theta.item(), influence.optimal_theta()
    verdict = ("converges" if abs(theta - star) < 0.1 * abs(star)
               else "diverges" if abs(theta - star) > abs(star) and tail_loss > 0.5 else "undecided")
    name = f"artbp-L0={L0:g}-alpha={alpha:g}-s{seed}" if method == "artbp" else f"tbptt-L={L}"
    return {"name": name, "method": method, "L": L, "seed": seed, "steps": trainer.t, "theta": theta,
            "mean_loss": total / max(1, trainer.t), "tail_loss": tail_loss, "verdict": verdict,
            "segments": len(trainer.segments), "wall_s": wall, "curve": curve}


def influence_suite(out: Path, steps: int, seeds: int, workers: int, eta0: float = 3e-4, seed: int = 0) -> Path:
    """Seeds ``seed`` .. ``seed + seeds - 1`` of ARTBP (TBPTT is deterministic: one run per L)."""
    jobs = [dict(method="tbptt", L=L) for L in (10, 100, 200)]
    jobs += [dict(method="artbp", seed=s) for s in range(seed, seed + seeds)]
    start = time.perf_counter()
    runs = _map(workers, _influence_job, [(steps, eta0, j) for j in jobs])
    wall = time.perf_counter() - start
    star = influence.optimal_theta()
    lines = [f"## Influence balancing (seed 002 §6.1): p = {influence.P}, n = {influence.N}, {steps:,} steps\n",
             f"Online, one stream; plain gradient steps, η_t = {eta0:g} / sqrt(1 + t); θ_0 = 0, s_0 = 0; "
             f"θ* = {star:.4f}. ARTBP: L0 = 16, alpha = 6.\n",
             "| run | subsequences | final θ | avg loss over 1..t | loss, last 10 % | verdict | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['segments']:,} | {r['theta']:.4g} | {r['mean_loss']:.4g} | "
                     f"{r['tail_loss']:.3g} | {r['verdict']} | {r['wall_s']:.1f} |")
    n_conv = sum(r["verdict"] == "converges" for r in runs if r["method"] == "artbp")
    lines.append(f"\nARTBP converges on {n_conv} of {seeds} seeds. Verdict: converges = |θ - θ*| < 0.1 |θ*|; "
                 f"diverges = |θ - θ*| > |θ*| (moved away from θ* since θ_0 = 0) with a last-10 % loss above "
                 f"0.5 (the loss at θ = 0). {len(runs)} runs, {wall / 60:.1f} min of wall time.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite_influence.json").write_text(json.dumps(runs))
    path = out / "suite_influence.md"
    path.write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for r in runs:
        style = dict(lw=1.5) if r["method"] == "tbptt" else dict(lw=1, alpha=0.8)
        axes[0].plot(r["curve"]["t"], r["curve"]["mean_loss"], label=r["name"], **style)
        axes[1].plot(r["curve"]["t"], r["curve"]["theta"], label=r["name"], **style)
    axes[0].set(xscale="log", yscale="log", xlabel="t (steps)", ylabel="average loss over steps 1..t",
                title="Figure 3 of seed 002")
    axes[1].axhline(star, color="gray", ls="--", lw=1, label="θ*")
    axes[1].set(xscale="log", xlabel="t (steps)", ylabel="θ", title="the parameter")
    axes[1].set_ylim(-0.5, 1.0)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out / "curves_influence.png")
    return path


def _influence_job(args):
    steps, eta0, job = args
    return influence_run(job["method"], steps, L=job.get("L", 0), seed=job.get("seed", 0), eta0=eta0)


# ---- CycleWorld / StochasticWorld -----------------------------------------------------------------

WORLDS = {
    # world: (hidden, rows, learning rate, window lengths T); the thesis: simple RNN, 4 / 32 hidden units
    "cycle6": (4, 1, 0.03, (2, 4, 6)),
    "cycle10": (4, 1, 0.03, (3, 5, 10)),
    "stochastic": (32, 16, 0.003, (5, 10, 15)),
}
METHODS = ("fpp", "buffer", "tbptt")
# The suite's step size of FPP's state variables (plain gradient descent on eq. (3.7); the thesis does not
# give it). With λ = 1 an update moves s_i onto ŝ_i (s_i - 1 · λ (s_i - ŝ_i) = ŝ_i). The FPP class's
# default, the optimiser's learning rate (0.03 here), left the states nearly where they were computed (each
# is updated about 2M times in its 1,000 steps in the buffer) and FPP failed on 6-CycleWorld at T = 2: see
# docs/reproductions/methods.md.
STATE_LR = 1.0


def _stream(world: str, rows: int, generator):
    if world.startswith("cycle"):
        return cycleworld.CycleWorld(int(world[5:]), rows, generator)
    return cycleworld.StochasticWorld(rows, generator)


def world_run(world: str, method: str, T: int, steps: int, *, seed: int = 0, M: int = 4,
              buffer_size: int = 1000, lr: float | None = None, state_lr: float | None = None,
              lam: float = 1.0, bins: int = 50) -> dict:
    """One online run: FPP (M windows, learned states), its buffer-only ablation or online T-BPTT.

    ``lr``: RMSprop's learning rate (default: the world's, `WORLDS`); ``state_lr``: the step size of the
    state variables s_{i-T}, s_i (default: `STATE_LR`); ``lam``: λ of eq. (3.6)."""
    torch.set_num_threads(1)
    hidden, rows, world_lr, _ = WORLDS[world]
    lr = world_lr if lr is None else lr
    state_lr = STATE_LR if state_lr is None else state_lr
    torch.manual_seed(seed)
    core = fastrnn.LSTM(1, hidden)
    head = torch.nn.Linear(hidden, 2)
    opt = torch.optim.RMSprop([*core.parameters(), *head.parameters()], lr=lr)
    g = torch.Generator().manual_seed(seed)
    stream = _stream(world, rows, g)
    if method == "tbptt":
        algo = fpp.tbptt(core, head, opt, T=T, batch_size=rows)
    else:
        algo = fpp.FPP(core, head, opt, T=T, batch_size=rows, M=M, buffer_size=buffer_size, lam=lam,
                       state_lr=state_lr, learn_states=method == "fpp", generator=g)
    start = time.perf_counter()
    infos = algo.run(stream, steps)
    wall = time.perf_counter() - start
    acc = torch.tensor([i.acc for i in infos], dtype=torch.float64)
    ce = torch.tensor([i.loss for i in infos], dtype=torch.float64)
    tail = slice(int(0.8 * steps), steps)
    per = steps // bins
    return {"name": f"{world}-{method}-T{T}-s{seed}", "world": world, "method": method, "T": T, "seed": seed,
            # the settings the algorithm ran with (T-BPTT: M = 1, a buffer of T, whatever was passed)
            "steps": steps, "lr": lr, "state_lr": algo.state_lr, "lam": algo.lam, "M": algo.M,
            "buffer_size": algo.capacity - 1,
            "acc": acc[tail].mean().item(), "ce": ce[tail].mean().item(), "wall_s": wall,
            "curve": {"t": [per * (k + 1) for k in range(bins)],
                      "acc": acc[:per * bins].view(bins, per).mean(1).tolist(),
                      "ce": ce[:per * bins].view(bins, per).mean(1).tolist()}}


def _world_job(args):
    world, method, T, steps, seed, kw = args
    return world_run(world, method, T, steps, seed=seed, **kw)


def cycleworld_suite(out: Path, steps: int, seeds: int, workers: int, worlds=tuple(WORLDS), M: int = 4,
                     seed: int = 0, Ts=None, methods=METHODS, lr: float | None = None,
                     state_lr: float | None = None, lam: float = 1.0, buffer_size: int = 1000) -> Path:
    """Seeds ``seed`` .. ``seed + seeds - 1`` of every cell: ``methods`` x the windows T of each world
    (``Ts``: only those of them, or these T on every world); ``lr``, ``state_lr``, ``lam``,
    ``buffer_size``: as in `world_run`, for every run."""
    kw = {"M": M, "lr": lr, "state_lr": state_lr, "lam": lam, "buffer_size": buffer_size}
    jobs = [(w, m, T, steps * (2 if w == "stochastic" else 1), s, kw)
            for w in worlds for T in (Ts or WORLDS[w][3]) for m in methods for s in range(seed, seed + seeds)]
    start = time.perf_counter()
    runs = _map(workers, _world_job, jobs)
    wall = time.perf_counter() - start
    return cycleworld_report(out, runs, wall, workers)


def _settings(runs) -> str:
    """The FPP settings shared by ``runs`` (one value, or the set of values)."""
    def one(key, fmt="{:g}"):
        vals = sorted({r[key] for r in runs if r["method"] != "tbptt" and key in r})
        return " / ".join(fmt.format(v) for v in vals) if vals else "?"
    states = sorted({(r["lr"], r["state_lr"]) for r in runs if r["method"] == "fpp" and "lr" in r})
    state = ("the learning rate" if states and all(a == b for a, b in states)
             else " / ".join(f"{b:g}" for b in sorted({b for _, b in states})) or "?")
    return (f"FPP: M = {one('M')} windows per step, buffer {one('buffer_size', '{:,}')}, λ = {one('lam')}, "
            f"state step = {state}")


def cycleworld_report(out: Path, runs: list, wall: float | None = None, workers: int | None = None) -> Path:
    """Writes ``OUT/suite_cycleworld.md`` (per world: mean and min-max over the seeds of each method x T
    cell), ``OUT/suite_cycleworld.json`` (``runs``) and ``OUT/curves_cycleworld.png`` (mean curve over the
    seeds, band: min-max) from the runs of `world_run` (also those merged from several suites)."""
    worlds = [w for w in WORLDS if any(r["world"] == w for r in runs)]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    ref = cycleworld.STOCHASTIC_REFERENCE
    lines = ["## FPP vs T-BPTT (seed 003 §4.1-4.3): online prediction over the last 20 % of steps\n",
             f"{_settings(runs)}; buffer-only: the same without learned states (loss ℓ only); T-BPTT: one "
             "window ending at t per step. LSTM core, RMSprop. Each cell: the mean over seeds, and (min-max) "
             "with the number of seeds n when there is more than one.\n"]
    for w in worlds:
        hidden, rows, _, _ = WORLDS[w]
        mine = [r for r in runs if r["world"] == w]
        Ts = sorted({r["T"] for r in mine})
        lrs = " / ".join(f"{v:g}" for v in sorted({r.get("lr", WORLDS[w][2]) for r in mine}))
        steps = " / ".join(f"{v:,}" for v in sorted({r["steps"] for r in mine}))
        if w.startswith("cycle"):
            p = int(w[5:])
            lines.append(f"\n### CycleWorld p = {p}: accuracy (naive predictor {cycleworld.naive_accuracy(p):.1%}); "
                         f"{steps} steps, LSTM {hidden} units, lr {lrs}\n")
            key = "acc"
        else:
            lines.append(f"\n### StochasticWorld: cross-entropy in nats (no dependency {ref['none']:.2f}, the "
                         f"5-step one {ref['lag5']:.2f}, both {ref['both']:.2f}); {steps} steps x "
                         f"{rows} streams, LSTM {hidden} units, lr {lrs}\n")
            key = "ce"
        lines += ["| T | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for T in Ts:
            cells = []
            for m in methods:
                vals = [r[key] for r in mine if r["method"] == m and r["T"] == T]
                cell = f"{sum(vals) / len(vals):.3f}" if vals else "-"
                if len(vals) > 1:
                    cell += f" ({min(vals):.3f}-{max(vals):.3f}, n={len(vals)})"
                cells.append(cell)
            lines.append(f"| {T} | " + " | ".join(cells) + " |")
    timing = f"{len(runs)} runs (seeds {', '.join(map(str, seeds))}), {sum(r['wall_s'] for r in runs) / 60:.1f} min summed over runs"
    if wall is not None:
        timing += f", {wall / 60:.1f} min of wall time ({workers} at a time)"
    lines.append(f"\n{timing}.\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite_cycleworld.json").write_text(json.dumps(runs))
    path = out / "suite_cycleworld.md"
    path.write_text("\n".join(lines))
    fig, axes = plt.subplots(len(worlds), 1, figsize=(11, 4 * len(worlds)), squeeze=False)
    styles = {"fpp": "-", "buffer": ":", "tbptt": "--"}
    for ax, w in zip(axes[:, 0], worlds):
        key = "acc" if w.startswith("cycle") else "ce"
        mine = [r for r in runs if r["world"] == w]
        Ts = sorted({r["T"] for r in mine})
        colours = {T: f"C{k}" for k, T in enumerate(Ts)}
        for T in Ts:
            for m in methods:
                cell = [r for r in mine if r["method"] == m and r["T"] == T]
                if not cell:
                    continue
                curves = torch.tensor([r["curve"][key] for r in cell])
                t = cell[0]["curve"]["t"]
                ax.plot(t, curves.mean(0), styles[m], color=colours[T], label=f"{m} T={T}", lw=1.2)
                if len(cell) > 1:
                    ax.fill_between(t, curves.min(0).values, curves.max(0).values, color=colours[T], alpha=0.08)
        if key == "acc":
            ax.axhline(cycleworld.naive_accuracy(int(w[5:])), color="gray", lw=1, label="naive predictor")
            ax.set_ylabel("online accuracy")
        else:
            for v in ref.values():
                ax.axhline(v, color="gray", lw=1, ls=":")
            ax.set_ylabel("online cross-entropy (nats)")
        n = len({r["seed"] for r in mine})
        ax.set(xlabel="step", title=f"{w}: solid FPP, dotted buffer-only, dashed T-BPTT; mean over {n} seed(s)"
               + (" (band: min-max)" if n > 1 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    _save(fig, out / "curves_cycleworld.png")
    return path


RUN_FIELDS = ("world", "method", "T", "seed", "steps", "acc", "ce", "wall_s", "curve")
# the settings every run of one cell (world, method, T) must share to be averaged
RUN_SETTINGS = ("steps", "lr", "state_lr", "lam", "M", "buffer_size")


def load_runs(paths) -> list:
    """The runs of `world_run` in these ``suite_cycleworld.json`` files, for `cycleworld_report`. ValueError,
    naming the file, for one that is missing, not JSON, not a non-empty list of runs, or given twice; for a
    run in two files (same cell and seed); and for runs of one cell whose settings (`RUN_SETTINGS`) differ."""
    runs, seen = [], {}
    for path in map(Path, paths):
        if path.resolve() in seen:
            raise ValueError(f"{path}: given twice (also as {seen[path.resolve()]})")
        seen[path.resolve()] = path
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: holds no runs (expected a non-empty list of runs, as in suite_cycleworld.json)")
        for k, r in enumerate(data):
            if not isinstance(r, dict):
                raise ValueError(f"{path}: run {k} is not an object (expected the runs of suite_cycleworld.json)")
            missing = [f for f in RUN_FIELDS if f not in r]
            missing += [f"curve.{f}" for f in ("t", "acc", "ce") if "curve" in r and f not in (r["curve"] or {})]
            if missing:
                raise ValueError(f"{path}: run {k} lacks {', '.join(missing)} (not a run of suite_cycleworld.json)")
            if r["world"] not in WORLDS or r["method"] not in METHODS:
                raise ValueError(f"{path}: run {k}: unknown world {r['world']!r} or method {r['method']!r} "
                                 f"(expected one of {', '.join(WORLDS)} and {', '.join(METHODS)})")
            runs.append((r, path))
    cells = {}
    for r, path in runs:
        cells.setdefault((r["world"], r["method"], r["T"]), []).append((r, path))
    for (world, method, T), cell in cells.items():
        first, first_path = cell[0]
        seeds = {}
        for r, path in cell:
            name = f"{world} {method} T={T}"
            for key in RUN_SETTINGS:
                if r.get(key) != first.get(key):
                    raise ValueError(f"{name}: runs with different {key} ({first.get(key)} in {first_path}, "
                                     f"{r.get(key)} in {path}): merge only runs of the same settings")
            if r["seed"] in seeds:
                raise ValueError(f"{name} seed {r['seed']}: the same run twice (in {seeds[r['seed']]} and {path})")
            seeds[r["seed"]] = path
    return [r for r, _ in runs]


# ---- auxiliary losses on a long classification task -------------------------------------------------

AUX_RUNS = ("tbptt", "r-lstm", "r-lstm-long")
CLOCKS = ("wall", "cpu")  # what an aux run's budget counts (aux_run)


def aux_options(name: str, side: int) -> tuple:
    """(phase schedule, AuxiliaryLSTM options) of run ``name`` on side x side images. Every run's
    classification gradient reaches the last row (``side`` steps). r-lstm: seed 001 §5.2's many short
    reconstructions (8 anchors, l = 20, batched in one fused call); r-lstm-long: one long one (§4.1's
    shape: l = 600 of 784 steps with the auxiliary gradient 300 steps deep; 150 / 150 at 14 x 14)."""
    if name == "tbptt":
        return "supervised", dict(mode="r", l=20, main_trunc=side)
    if name == "r-lstm":
        return "pretrain-joint", dict(mode="r", l=20, n_anchors=8, main_trunc=side, aux_trunc=20)
    if name == "r-lstm-long":
        l, depth = (600, 300) if side == 28 else (150, 150)
        return "pretrain-joint", dict(mode="r", l=l, main_trunc=side, aux_trunc=depth)
    raise ValueError(f"unknown run {name!r}; choose from {AUX_RUNS}")


def mnist_pixels(split: str, side: int = 14):
    """Pixel MNIST at side x side (28: as is; 14: 2 x 2 average pooling, 196 steps): one pixel per step.
    A sequence classification that needs memory: the last rows (all the truncated classification gradient
    reaches) are blank in almost every image, so the class must be carried from the digit's pixels, tens
    to hundreds of steps before the end."""
    from fastrnn.data import load_mnist

    if side not in (14, 28):
        raise ValueError(f"side must be 14 or 28, got {side}")
    x, y = load_mnist()[split]
    x = torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 28, 28)
    if side == 14:
        x = torch.nn.functional.avg_pool2d(x, 2)
    return x.reshape(-1, side * side), torch.as_tensor(y, dtype=torch.int64)


def aux_run(name: str, budget: float, *, seed: int = 0, side: int = 14, hidden: int = 64, batch: int = 64,
            lr: float = 1e-3, pretrain_fraction: float = 0.2, eval_every: float = 30.0, eval_n: int = 2000,
            clock: str = "wall") -> dict:
    """One run of the auxiliary-loss comparison for ``budget`` seconds of training (evaluation excluded).

    ``clock``: what the budget (and the curve's time, the evaluation interval, the pre-training share)
    counts: "wall" seconds, or "cpu" seconds of this process (one thread), which a machine shared with
    other work does not shorten, so runs on a loaded machine still get equal compute."""
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {CLOCKS}, got {clock!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    from fastrnn.training.auxiliary import AuxiliaryLSTM

    torch.set_num_threads(1)
    phases, options = aux_options(name, side)
    torch.manual_seed(seed)
    model = AuxiliaryLSTM(1, hidden, 10, **options)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    xs, ys = mnist_pixels("train", side)
    xv, yv = mnist_pixels("valid", side)
    xv, yv = xv[:eval_n].t().unsqueeze(-1).contiguous(), yv[:eval_n]
    curve = {"time": [], "iter": [], "acc": [], "loss": []}

    def evaluate(elapsed, it, loss):
        with torch.no_grad():
            acc = sum((model(xv[:, k:k + 500]).argmax(-1) == yv[k:k + 500]).sum().item()
                      for k in range(0, eval_n, 500)) / eval_n
        for key, v in (("time", elapsed), ("iter", it), ("acc", acc), ("loss", loss)):
            curve[key].append(v)

    elapsed, wall, it, next_eval, recent = 0.0, 0.0, 0, 0.0, []
    while elapsed < budget:
        if elapsed >= next_eval:
            evaluate(elapsed, it, sum(recent) / len(recent) if recent else float("nan"))
            next_eval += eval_every
            recent = []
        start, wall_start = now(), time.perf_counter()
        idx = torch.randint(0, len(ys), (batch,), generator=g)
        x, y = xs[idx].t().unsqueeze(-1).contiguous(), ys[idx]
        phase = phases if phases == "supervised" else (
            "pretrain" if elapsed < pretrain_fraction * budget else "joint")
        out = model.losses(x, y, phase=phase, generator=g)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        elapsed += now() - start
        wall += time.perf_counter() - wall_start
        it += 1
        recent.append(out.total.item())
    evaluate(elapsed, it, sum(recent) / len(recent) if recent else float("nan"))
    return {"name": f"{name}-s{seed}", "method": name, "seed": seed, "iterations": it, "train_s": elapsed,
            "wall_s": wall, "clock": clock, "acc": curve["acc"][-1], "best_acc": max(curve["acc"]), "curve": curve, "options": options,
            "phases": phases, "side": side}


def _aux_job(args):
    name, budget, seed, side, clock = args
    return aux_run(name, budget, seed=seed, side=side, clock=clock)


def aux_suite(out: Path, budget: float, seeds: int, workers: int, side: int = 14, seed: int = 0,
              clock: str = "wall") -> Path:
    """Seeds ``seed`` .. ``seed + seeds - 1`` of every run; ``clock``: see `aux_run`."""
    jobs = [(name, budget, s, side, clock) for s in range(seed, seed + seeds) for name in AUX_RUNS]
    start = time.perf_counter()
    runs = _map(workers, _aux_job, jobs)
    wall = time.perf_counter() - start
    long_l, long_depth = aux_options("r-lstm-long", side)[1]["l"], aux_options("r-lstm-long", side)[1]["aux_trunc"]
    equal = "wall-clock" if clock == "wall" else "CPU time"
    lines = [f"## Auxiliary losses (seed 001): r-LSTM vs truncated BPTT at equal {equal}, pixel MNIST "
             f"{side}x{side} ({side * side} steps)\n",
             f"LSTM 64 units, batch 64, RMSprop 1e-3, clip 1; the classification gradient reaches the last {side} "
             f"steps (one image row, blank in 89 % of the 14x14 images, 98.5 % at 28x28) in all runs; r-lstm: 8 anchors per batch, each "
             f"reconstructing the l = 20 pixels before it, decoder gradient 20 steps into the main LSTM; "
             f"r-lstm-long: 1 anchor, l = {long_l}, {long_depth} steps; both unsupervised pre-training for the "
             f"first 20 % of the budget, then joint. {budget:.0f} {clock} s of training per run (held-out evaluation "
             f"excluded), runs {workers} at a time. Accuracy on 2,000 held-out (validation) images.\n",
             f"| run | iterations | train {clock} s | train wall s | held-out acc (end) | best |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['iterations']:,} | {r['train_s']:.0f} | {r['wall_s']:.0f} | "
                     f"{r['acc']:.3f} | {r['best_acc']:.3f} |")
    lines.append(f"\n{len(runs)} runs, {wall / 60:.1f} min of wall time. Chance: 0.10.\n")
    out.mkdir(parents=True, exist_ok=True)
    tag = "aux" if side == 14 else f"aux{side}"
    (out / f"suite_{tag}.json").write_text(json.dumps(runs))
    path = out / f"suite_{tag}.md"
    path.write_text("\n".join(lines))
    fig, ax = plt.subplots(1, 1, figsize=(8, 5))
    for r in runs:
        ax.plot(r["curve"]["time"], r["curve"]["acc"], label=r["name"])
    ax.axhline(0.1, color="gray", ls="--", lw=1, label="chance")
    ax.set(xlabel=f"training time ({clock} s)", ylabel="held-out accuracy",
           title=f"MNIST {side}x{side}: r-LSTM vs TBPTT (main truncation {side})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / f"curves_{tag}.png")
    return path


# ---- shared -------------------------------------------------------------------------------------------

def _map(workers: int, fn, jobs: list) -> list:
    if workers <= 1:
        return [fn(j) for j in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=1)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


CYCLEWORLD = ("cycleworld",)
# the suites that read each option; the others refuse it (nothing given is silently ignored)
OPTION_SUITES = {"steps": ("influence", "cycleworld"), "worlds": CYCLEWORLD, "M": CYCLEWORLD, "T": CYCLEWORLD,
                 "methods": CYCLEWORLD, "lr": CYCLEWORLD, "state_lr": CYCLEWORLD, "lam": CYCLEWORLD,
                 "buffer": CYCLEWORLD, "merge": CYCLEWORLD, "budget": ("aux",), "side": ("aux",),
                 "clock": ("aux",)}
FPP_OPTIONS = ("M", "state_lr", "lam", "buffer")


def build_parser():
    """The parser of `python -m fastrnn.experiments suite influence|cycleworld|aux ...`."""
    suites = "\n".join(f"  {name:11s} {title}" for name, title in SUITES.items())
    parser = cli.parser("python -m fastrnn.experiments suite",
                        "Suites of the online training methods (ARTBP, FPP, r-LSTM). Each writes\n"
                        "OUT/suite_NAME.md (table), OUT/suite_NAME.json (every run's curve) and "
                        "OUT/curves_NAME.png.",
                        epilog="suites:\n" + suites + "\n\nSeeds: --seed S --seeds N runs seeds S, S+1, ..., "
                        "S+N-1.\nexample: python -m fastrnn.experiments suite influence --seed 3 --seeds 2")
    parser.add_argument("name", choices=list(SUITES), help="the suite")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="stream steps per run (default: influence 100000, cycleworld 4000; "
                             "StochasticWorld runs twice as many; not used by aux)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the first seed: runs seeds SEED .. SEED+SEEDS-1 (TBPTT on influence is "
                             "deterministic and runs once)")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="how many seeds, from --seed on (default: influence 5, cycleworld 1, aux 1)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="runs at once, one thread each (default: aux 3, so its runs share the machine "
                             "equally; the others 1)")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS),
                        help="cycleworld: the worlds to run")
    parser.add_argument("--M", type=positive_int, default=4, help="cycleworld: FPP windows per step (T-BPTT: 1)")
    parser.add_argument("--T", type=positive_int, nargs="+", default=None,
                        help="cycleworld: only these window lengths T (default: each world's, e.g. 2 4 6 on cycle6)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="cycleworld: the methods to run")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="cycleworld: RMSprop learning rate of every run (default: the world's, 0.03 on "
                             "CycleWorld, 0.003 on StochasticWorld)")
    parser.add_argument("--state-lr", type=positive_float, default=None,
                        help=f"cycleworld: step size of FPP's state variables (default: {STATE_LR:g}: with "
                             "λ = 1 an update moves s_i onto ŝ_i)")
    parser.add_argument("--lam", type=positive_float, default=1.0, help="cycleworld: FPP's λ of eq. (3.6)")
    parser.add_argument("--buffer", type=positive_int, default=1000,
                        help="cycleworld: FPP's buffer size (transitions, at least the longest T)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="cycleworld: run nothing; write OUT's table and curves from the runs in these "
                             "suite_cycleworld.json files (e.g. seeds run separately; the runs of one cell "
                             "must share their settings); takes no run options")
    parser.add_argument("--out", default="results", help="results directory")
    parser.add_argument("--budget", type=positive_float, default=600.0, help="aux: training seconds per run")
    parser.add_argument("--clock", default="wall", choices=CLOCKS,
                        help="aux: what --budget counts: wall seconds, or each run's own CPU seconds (one "
                             "thread; equal compute on a machine shared with other work)")
    parser.add_argument("--side", type=int, default=14, choices=(14, 28), help="aux: image side (28: 784 steps)")
    return parser


def _check(parser, args, argv) -> None:
    """Refuses what the types cannot see: options the suite would ignore, repeats, a buffer below T."""
    flags = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = {flags[w.split("=")[0]]: w.split("=")[0] for w in argv if w.split("=")[0] in flags}
    for dest, flag in given.items():
        if args.name not in OPTION_SUITES.get(dest, SUITES):
            parser.error(f"argument {flag}: not an option of suite {args.name} "
                         f"(only of {', '.join(OPTION_SUITES[dest])})")
    if args.merge:
        run = [flag for dest, flag in given.items() if dest not in ("merge", "out")]
        if run:
            parser.error(f"argument --merge: takes no run options (it runs nothing), got {', '.join(run)}")
        return
    if args.name != "cycleworld":
        return
    for dest in ("worlds", "T", "methods"):
        values = getattr(args, dest) or []
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            parser.error(f"argument --{dest}: given more than once: {', '.join(map(str, repeated))}")
    if set(args.methods) == {"tbptt"}:
        fpp_only = [flag for dest, flag in given.items() if dest in FPP_OPTIONS]
        if fpp_only:
            parser.error(f"argument {fpp_only[0]}: an FPP option, but --methods runs T-BPTT only")
        return
    longest = max(args.T or [T for w in args.worlds for T in WORLDS[w][3]])
    if args.buffer < longest:
        parser.error(f"argument --buffer: must be >= the longest window T = {longest}, got {args.buffer}")


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args, argv)
    out = Path(args.out)
    if args.workers is None:
        args.workers = len(AUX_RUNS) if args.name == "aux" else 1
    if args.name == "aux":
        path = aux_suite(out, args.budget, args.seeds or 1, args.workers, args.side, seed=args.seed,
                         clock=args.clock)
    elif args.name == "influence":
        path = influence_suite(out, args.steps or 100_000, args.seeds or 5, args.workers, seed=args.seed)
    elif args.merge:
        try:
            runs = load_runs(args.merge)
        except ValueError as e:
            parser.error(f"argument --merge: {e}")
        path = cycleworld_report(out, runs)
    else:
        path = cycleworld_suite(out, args.steps or 4000, args.seeds or 1, args.workers, tuple(args.worlds), args.M,
                                seed=args.seed, Ts=args.T, methods=tuple(args.methods), lr=args.lr,
                                state_lr=args.state_lr, lam=args.lam, buffer_size=args.buffer)
    print(path.read_text(), end="")
    return 0
