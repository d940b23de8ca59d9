"""One training iteration, and the held-out evaluation that uses the same forward pass and loss.

`train_step` is the iteration every trainer and benchmark here runs, in phases (`PHASES`):

    data      draw the batch from the task, then the truncation schedule (same generator, that order)
    forward   the model over the whole sequence under the schedule
    loss      the task's loss and metrics on the logits
    backward  zero the gradients, backpropagate (truncated and scaled as the schedule says)
    clip      rescale the gradients to a total norm of at most ``clip``
    update    the optimiser's step; then the loss as a float

``on_phase_end(name)``, when given, is called as each phase ends, so a caller can time the phases
(bench/train_step.py) without a second copy of the iteration. Each phase also runs inside a profiler
range ``fastrnn.train_step.<phase>`` (`fastrnn.profiling`: NVTX for Nsight Systems and torch.profiler;
no-ops when nothing records), so a trace shows the iteration's phases (bench/profile.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from fastrnn.profiling import range as _range
from fastrnn.truncation import Schedule

PHASES = ("data", "forward", "loss", "backward", "clip", "update")

# A truncation choice: (sequence length, generator) -> the iteration's schedule, or None for the
# model's own (SABLSTM's k_trunc, or full BPTT).
Truncation = Callable[[int, torch.Generator], Optional[Schedule]]


class StepResult(NamedTuple):
    loss: float    # the training loss of the batch, before the update
    metrics: dict  # the task's metrics of the batch ("acc", ...)


def train_step(model: nn.Module, task, optimizer: torch.optim.Optimizer, generator: torch.Generator, *,
               batch_size: int, truncation: Optional[Truncation] = None, clip: Optional[float] = None,
               on_phase_end: Optional[Callable[[str], None]] = None) -> StepResult:
    """One iteration on a fresh batch of ``task`` (a `fastrnn.training.tasks.Task`); returns its loss.

    ``model(x, schedule) -> (logits, _)``; ``truncation`` draws the schedule after the batch from the
    same ``generator`` (None: no schedule), or is one fixed `Schedule` of the task's length used every
    iteration. ``clip``: the maximal gradient norm (None: no clipping).
    """
    phase_end = on_phase_end if on_phase_end is not None else _nothing
    with _range("fastrnn.train_step.data"):
        x, y = task.batch(batch_size, generator)
        schedule = _schedule(truncation, task.length, generator)
    phase_end("data")
    with _range("fastrnn.train_step.forward"):
        logits, _ = model(x, schedule)
    phase_end("forward")
    with _range("fastrnn.train_step.loss"):
        loss, metrics = task.loss(logits, y)
    phase_end("loss")
    with _range("fastrnn.train_step.backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    phase_end("backward")
    with _range("fastrnn.train_step.clip"):
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
    phase_end("clip")
    with _range("fastrnn.train_step.update"):
        optimizer.step()
        loss_value = loss.item()
    phase_end("update")
    return StepResult(loss_value, metrics)


def evaluate(model: nn.Module, task, batches) -> dict:
    """Mean loss and metrics of ``task`` over ``batches`` (a list of (x, y)), without gradients."""
    totals, n = {}, 0
    with torch.no_grad():
        for x, y in batches:
            logits, _ = model(x)
            loss, metrics = task.loss(logits, y)
            for k, v in {"loss": loss.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
    return {k: v / n for k, v in totals.items()}


def _schedule(truncation, length: int, generator) -> Optional[Schedule]:
    if truncation is None:
        return None
    if isinstance(truncation, Schedule):
        if len(truncation) != length:
            raise ValueError(f"truncation: a Schedule of length {len(truncation)}, but the task's sequences have "
                             f"{length} steps")
        return truncation
    if not callable(truncation):
        raise TypeError("truncation must be None, a callable (T, generator) -> Schedule, or a Schedule of the "
                        f"task's length; got {type(truncation).__name__}")
    return truncation(length, generator)


def _nothing(phase: str) -> None:
    pass
