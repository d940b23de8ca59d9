"""The runs of the experiments: one run = one task, one method, one wall-clock budget.

A `Config` names the task, the method and its hyperparameters; `build_model` turns it into a
`fastrnn.training.SequenceModel` (embedding for token tasks -> `fastrnn.SABLSTM` or `fastrnn.LSTM` ->
linear head) and `schedule_for` into each iteration's truncation schedule. `Run` repeats
`fastrnn.training.train_step` around the progress bar, history, checkpoints and record. Methods:

    sab     SABLSTM(k_top, k_att, k_trunc, slot_state, attention); truncation = its k_trunc
    tbptt   LSTM with fastrnn.truncation.fixed(L, k_trunc)
    bptt    LSTM with fastrnn.truncation.full(L)
    artbp   LSTM with a fresh fastrnn.truncation.artbp(L, L0, alpha) schedule per iteration

Adam (lr 1e-3) and gradient-norm clipping at 1.0, as in the SPEC's measurements. The budget counts
training time only (batch generation, forward, backward, update); held-out evaluation, attention
snapshots and checkpoints are outside it, so methods given equal budgets get equal compute.
A checkpoint (model, optimiser, generator state, history, elapsed time) is written every
``checkpoint_every`` seconds and at the end; a run started again in the same directory resumes from it.
A run can also be trained by several processes (``--ddp`` under torchrun, `fastrnn.experiments.ddp`): the
same run, its batch split between them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import fastrnn
from fastrnn import training, truncation
from fastrnn.experiments import records
from fastrnn.experiments.progress import DEFAULT_INTERVAL, Progress

METHODS = ("sab", "tbptt", "bptt", "artbp")
PRECISIONS = ("float32", "bf16")


@dataclass
class Config:
    task: str = "copy"
    method: str = "sab"
    T: int = 100  # copy: delay; adding: length; ptb: window length (mnist: fixed 784)
    encoding: str = "scalar"  # copy input: "scalar" (original code) or "onehot"
    batch_size: int = 64
    hidden: int = 128
    embed: int = 64  # embedding size for token tasks
    k_top: int = 5
    k_att: int = 2
    k_trunc: int = 20  # sab and tbptt (0 = none)
    trunc_offset: int = 0  # shifts the cut grid: cuts where (t - offset) % k_trunc == 0 (sab and tbptt)
    slot_state: str = "provisional"
    attention: str = "linear"  # the scorer of the SPEC's copy measurement (paper eq. 1)
    attn_size: int = 0  # the mlp scorer's attention size A (0 = hidden, SPEC's default)
    L0: float = 20.0  # artbp mean truncation length
    alpha: float = 4.0
    lr: float = 1e-3
    forget_bias: float = float("nan")  # nan: nn.LSTM's init; else b_ih+b_hh of the forget gate start here
    clip: float = 1.0
    budget: float = 60.0  # seconds of training
    max_iters: int = 0  # 0 = until the budget is spent
    seed: int = 0
    backend: str = "auto"
    threads: int = 1
    precision: str = "float32"  # "bf16": the training step under torch.autocast("cpu", bfloat16) (Run.step)
    eval_batches: int = 10
    log_every: int = 10
    checkpoint_every: float = 60.0
    attn_at: list = field(default_factory=lambda: [400, 800, 3000])  # snapshot iterations (Figure 3)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.task not in training.TASKS:
            raise ValueError(f"task: expected one of {training.TASKS}, got {self.task!r}")
        if self.attn_size < 0 or (self.attn_size and self.attention != "mlp"):
            raise ValueError(f"attn_size: expected 0, or a positive size with attention='mlp'; got {self.attn_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.budget <= 0 and self.max_iters <= 0:
            raise ValueError("budget: give a positive budget or max_iters")

    @property
    def name(self) -> str:
        T = "" if self.task in ("mnist", "pmnist") else f"-T{self.T}"
        precision = "" if self.precision == "float32" else f"-{self.precision}"
        return f"{self.task}{T}-{self.method}{precision}-s{self.seed}"


def build_model(cfg: Config, task) -> training.SequenceModel:
    """The model of a run: SABLSTM for sab, LSTM for the other methods, sized for ``task``."""
    sab = {}
    if cfg.method == "sab":
        sab = dict(k_top=cfg.k_top, k_att=cfg.k_att, k_trunc=cfg.k_trunc or None, attention=cfg.attention,
                   attn_size=cfg.attn_size or None, slot_state=cfg.slot_state)
    return training.SequenceModel(task.input_size, cfg.hidden, task.n_out, core="sab" if sab else "lstm",
                                  embedding_size=cfg.embed if task.tokens else None,
                                  forget_bias=None if math.isnan(cfg.forget_bias) else cfg.forget_bias,
                                  backend=cfg.backend, **sab)


def schedule_for(cfg: Config, length: int, generator: torch.Generator):
    """The truncation schedule of one iteration (None: the module's own k_trunc, for sab)."""
    if cfg.method == "tbptt" or (cfg.method == "sab" and cfg.trunc_offset):
        return truncation.fixed(length, cfg.k_trunc, cfg.trunc_offset)
    if cfg.method == "bptt":
        return truncation.full(length)
    if cfg.method == "artbp":
        return truncation.artbp(length, cfg.L0, cfg.alpha, generator=generator)
    return None


def attention_matrix(attention, length: int) -> np.ndarray:
    """Batch-mean attention weight ``[attending step t, attended step s + 1]`` (column 0 = h0).

    Rebuilds the paper's Figure 3 from the sparse record: slot ``indices`` map to the step that wrote
    them through ``slot_steps`` (-1 = h0)."""
    idx, w, steps = attention.indices, attention.weights, attention.slot_steps
    B = idx.shape[1]
    valid = idx >= 0
    attended = torch.where(valid, steps[idx.clamp(min=0)], torch.zeros_like(idx)) + 1  # -1 (h0) -> column 0
    rows = torch.arange(idx.shape[0]).view(-1, 1, 1).expand_as(idx)
    m = torch.zeros(length, length + 1, dtype=torch.float64)
    m.index_put_((rows[valid], attended[valid]), w[valid].double(), accumulate=True)
    return (m / B).numpy()


class Run:
    """One training run living in ``run_dir`` (checkpoint.pt, record.json, attention.npz)."""

    def __init__(self, cfg: Config, run_dir: Path, *, task=None):
        self.cfg, self.dir = cfg, Path(run_dir)
        self.task = task if task is not None else training.make_task(cfg.task, cfg.T, cfg.encoding)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.task)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.iteration, self.elapsed, self.history, self.snapshots = 0, 0.0, [], {}
        self.cpu_seconds = 0.0  # CPU time of the training steps: elapsed / cpu_seconds shows contention
        self._parallel = None  # (DDP-wrapped model, this process's slice of the task) in a data-parallel run
        self.window = {"loss": 0.0, "acc": 0.0, "n": 0}  # sums since the last history entry
        eval_gen = torch.Generator().manual_seed(10_000 + cfg.seed)  # the same held-out set every time
        self.eval_set = [self.task.eval_batch(cfg.batch_size, eval_gen) for _ in range(cfg.eval_batches)]

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"config": dataclasses.asdict(self.cfg), "model": self.model.state_dict(),
                 "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "iteration": self.iteration,
                 "elapsed": self.elapsed, "cpu_seconds": self.cpu_seconds, "history": self.history, "window": self.window,
                 "snapshots": {k: torch.from_numpy(v) for k, v in self.snapshots.items()}}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a kill mid-save leaves the old checkpoint

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, weights_only=True)
        mine, defaults = dataclasses.asdict(self.cfg), dataclasses.asdict(Config())
        for key in ("task", "method", "T", "encoding", "hidden", "k_top", "k_att", "k_trunc", "trunc_offset",
                    "attn_size", "slot_state", "attention", "batch_size", "seed", "precision"):
            theirs = state["config"].get(key, defaults[key])  # a field newer than the checkpoint: its default
            if theirs != mine[key]:
                raise ValueError(f"{self.checkpoint_path}: checkpoint has {key}={theirs!r}, "
                                 f"this run {key}={mine[key]!r}; use another --out or --name")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.iteration, self.elapsed, self.history = state["iteration"], state["elapsed"], state["history"]
        self.window, self.cpu_seconds = state["window"], state["cpu_seconds"]
        self.snapshots = {k: v.numpy() for k, v in state["snapshots"].items()}
        return True

    def snapshot_attention(self) -> None:
        if self.cfg.method != "sab":
            return
        x, _ = self.eval_set[0]
        with torch.no_grad():
            _, attention = self.model(x, return_attention=True)
        self.snapshots[f"iter_{self.iteration}"] = attention_matrix(attention, self.task.length).astype(np.float32)

    def step(self, on_phase_end=None) -> training.StepResult:
        """One training iteration of this run (``on_phase_end``: see `fastrnn.training.train_step`). With
        precision "bf16" it runs under ``torch.autocast("cpu", dtype=torch.bfloat16)``: the cpu backend's
        bfloat16 mixed precision (docs/SPEC.md section 10; float32 master weights, state and gradients); the
        held-out evaluation stays float32."""
        c = self.cfg
        model, task = self._parallel or (self.model, self.task)
        # float32 leaves the caller's autocast state alone (enabled=False would switch off an outer autocast)
        mixed = torch.autocast("cpu", dtype=torch.bfloat16) if c.precision == "bf16" else contextlib.nullcontext()
        with mixed:
            return training.train_step(model, task, self.opt, self.gen, batch_size=c.batch_size,
                                       truncation=functools.partial(schedule_for, c), clip=c.clip,
                                       on_phase_end=on_phase_end)

    def _done(self) -> bool:
        c = self.cfg
        return (c.budget > 0 and self.elapsed >= c.budget) or (c.max_iters > 0 and self.iteration >= c.max_iters)

    def train(self, *, progress: bool = True, position: int = 0, progress_interval: float = DEFAULT_INTERVAL,
              ddp=None) -> dict:
        """Trains to the budget or max_iters and writes the record (returned; None on the processes other
        than process 0 of a data-parallel run). ``progress``: a tqdm bar in a terminal, else a plain line
        every ``progress_interval`` seconds (`fastrnn.experiments.progress`). ``ddp``: this process's
        `fastrnn.experiments.ddp.Context` in a data-parallel run (None: one process)."""
        c = self.cfg
        torch.set_num_threads(c.threads)
        torch.set_flush_denormal(True)  # saturated gates make denormal gradients, slow on x86
        resumed = self.load_checkpoint()
        main = ddp is None or ddp.main
        if ddp is not None:
            from fastrnn.experiments import ddp as parallel
            parallel.same_across(self.iteration, "the iteration to resume from")
            self._parallel = (parallel.wrap(self.model), parallel.ShardedTask(self.task, ddp.rank, ddp.world_size))
        tokens_per_iter = c.batch_size * self.task.length
        last_ckpt = time.perf_counter()
        unit = "s" if c.budget > 0 else "it"
        bar = Progress(c.name, c.budget if c.budget > 0 else c.max_iters, unit, enabled=progress and main,
                       position=position, interval=progress_interval)
        self._bar_update(bar)
        while not self._done():
            start, cpu_start = time.perf_counter(), time.process_time()
            loss_value, metrics = self.step()
            seconds, acc = time.perf_counter() - start, metrics["acc"]
            self.cpu_seconds += time.process_time() - cpu_start
            if ddp is not None:  # every process logs the same means and stops at the same iteration
                loss_value, acc, seconds = parallel.mean_across([loss_value, acc, seconds])
            self.elapsed += seconds
            self.iteration += 1
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{c.name}: loss is {loss_value} at iteration {self.iteration}")
            self.window["loss"] += loss_value
            self.window["acc"] += acc
            self.window["n"] += 1
            if self.iteration % c.log_every == 0:
                n = self.window.pop("n")
                self.history.append({"iter": self.iteration, "time": round(self.elapsed, 3),
                                     **{k: v / n for k, v in self.window.items()}})
                self.window = {"loss": 0.0, "acc": 0.0, "n": 0}
                bar.set_postfix(it=self.iteration, loss=f"{self.history[-1]['loss']:.4f}",
                                acc=f"{self.history[-1]['acc']:.3f}",
                                tok_s=f"{tokens_per_iter * self.iteration / self.elapsed:,.0f}")
            self._bar_update(bar)
            if main and self.iteration in c.attn_at:
                self.snapshot_attention()
            if main and time.perf_counter() - last_ckpt >= c.checkpoint_every:
                self.save_checkpoint()
                last_ckpt = time.perf_counter()
        bar.close()
        self._parallel = None  # drops the DDP wrapper (collected before the process group goes)
        if not main:
            return None
        self.snapshot_attention()
        self.save_checkpoint()
        record = self.record(resumed)
        if ddp is not None:
            record["world_size"] = ddp.world_size
        records.write_record(self.dir / "record.json", record)
        if self.snapshots:
            np.savez(self.dir / "attention.npz", **self.snapshots)
        return record

    def _bar_update(self, bar) -> None:
        bar.update_to(min(self.elapsed, self.cfg.budget) if self.cfg.budget > 0 else self.iteration)

    def record(self, resumed: bool) -> dict:
        final = training.evaluate(self.model, self.task, self.eval_set)
        tokens = self.cfg.batch_size * self.task.length * self.iteration
        return {
            "name": self.dir.name, "config": dataclasses.asdict(self.cfg),
            "backend": type(self.model.rnn).__name__ + ":" + fastrnn.backends.resolve(self.cfg.backend, "cpu"),
            "iterations": self.iteration, "train_seconds": round(self.elapsed, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "tokens_per_second": tokens / self.elapsed if self.elapsed > 0 else 0.0,
            "eval": final, "resumed": resumed, "history": self.history,
            "attention_snapshots": sorted(self.snapshots, key=lambda k: int(k.split("_")[1])),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def run(cfg: Config, out: str | os.PathLike = "results", *, name: str | None = None, progress: bool = True,
        position: int = 0, task=None, progress_interval: float = DEFAULT_INTERVAL, ddp=None) -> dict | None:
    """Train ``cfg`` in ``out/runs/<name>`` (resuming a checkpoint found there); returns the record (None
    on the processes other than process 0 of a data-parallel run, ``ddp``: see `Run.train`)."""
    run_dir = Path(out) / "runs" / (name or cfg.name)
    return Run(cfg, run_dir, task=task).train(progress=progress, position=position,
                                              progress_interval=progress_interval, ddp=ddp)
