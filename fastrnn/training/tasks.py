"""Tasks as training sees them: where batches come from, the loss on the model's logits, the metrics.

`fastrnn.tasks` makes the data (sequence generators and data sets); a `Task` here binds that data to a
model with ``output_size = n_out`` outputs per step and says which steps the loss reads:

    CopyTask      copy memory: cross-entropy over all steps; accuracy on the last 10 (SPEC section 5)
    AddingTask    adding problem: mean squared error of the last step; accuracy = within 0.04 of the sum
    MNISTTask     pixel / permuted MNIST: cross-entropy and accuracy of the last step
    PTBTask       char-level Penn Treebank: next-character cross-entropy over all steps, accuracy and
                  bits per character

``make_task(name, T)`` builds one by its command-line name (`TASKS`). Inputs and targets are time-major,
like ``nn.LSTM``: x [T, B, input_size] (token ids [T, B] when ``tokens``).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from fastrnn.tasks import adding, copying, mnist, ptb

TASKS = ("copy", "adding", "mnist", "pmnist", "ptb")


class Task(Protocol):
    """What a training loop needs from a task; every task here has these."""

    tokens: bool      # inputs are token ids (the model embeds them) rather than features
    input_size: int   # features per step, or the vocabulary size when ``tokens``
    n_out: int        # model outputs per step
    length: int       # steps per sequence

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch (x, y), drawn with ``generator``."""

    def eval_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A held-out batch: fresh sequences, or the validation split of a data set."""

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss (a scalar tensor) and metrics as floats; always ``"acc"``."""


class CopyTask:
    """Copy memory: CE over all steps, accuracy on the last 10 (SPEC section 5)."""

    tokens = False
    n_out = copying.N_CLASSES

    def __init__(self, T: int, encoding: str = "scalar"):
        self.T, self.encoding = T, encoding
        self.input_size = copying.input_size(encoding)
        self.length = T + 2 * copying.N_DIGITS

    def batch(self, batch_size, generator):
        return copying.copying_batch(self.T, batch_size, generator=generator, encoding=self.encoding)

    eval_batch = batch

    def loss(self, logits, y):
        loss = F.cross_entropy(logits.reshape(-1, self.n_out), y.reshape(-1))
        return loss, {"acc": copying.copying_accuracy(logits, y)}


class AddingTask:
    """Adding: MSE of the last step's prediction; "acc" = fraction within 0.04 of the sum."""

    tokens = False
    n_out = 1
    input_size = adding.INPUT_SIZE

    def __init__(self, T: int):
        self.T = self.length = T

    def batch(self, batch_size, generator):
        return adding.adding_batch(self.T, batch_size, generator=generator)

    eval_batch = batch

    def loss(self, logits, y):
        pred = logits[-1, :, 0]
        loss = F.mse_loss(pred, y)
        return loss, {"acc": ((pred - y).abs() < 0.04).float().mean().item()}


class MNISTTask:
    """Pixel (or permuted) MNIST: class from the last step, CE and accuracy."""

    tokens = False
    n_out = mnist.N_CLASSES
    input_size = mnist.INPUT_SIZE
    length = mnist.N_PIXELS

    def __init__(self, permute: bool, data: mnist.PixelMNIST | None = None,
                 held_out: mnist.PixelMNIST | None = None):
        if data is None:
            data = mnist.PixelMNIST.from_cache("train", permute=permute)
            held_out = mnist.PixelMNIST.from_cache("valid", permute=permute)
        self.data, self.held_out = data, held_out if held_out is not None else data

    def batch(self, batch_size, generator):
        return self.data.random_batch(batch_size, generator=generator)

    def eval_batch(self, batch_size, generator):
        return self.held_out.random_batch(batch_size, generator=generator)

    def loss(self, logits, y):
        last = logits[-1]
        return F.cross_entropy(last, y), {"acc": (last.argmax(-1) == y).float().mean().item()}


class PTBTask:
    """Char-level PTB: next-character CE over all steps; metrics bits per character and accuracy."""

    tokens = True

    def __init__(self, T: int, data: ptb.CharPTB | None = None):
        self.data = data if data is not None else ptb.CharPTB.from_cache()
        self.T = self.length = T
        self.n_out = self.input_size = len(self.data.vocab)

    def batch(self, batch_size, generator):
        return self.data.random_batch("train", batch_size, self.T, generator=generator)

    def eval_batch(self, batch_size, generator):
        return self.data.random_batch("valid", batch_size, self.T, generator=generator)

    def loss(self, logits, y):
        loss = F.cross_entropy(logits.reshape(-1, self.n_out), y.reshape(-1))
        acc = (logits.argmax(-1) == y).float().mean().item()
        return loss, {"acc": acc, "bpc": ptb.bits_per_character(loss.item())}


def make_task(name: str, T: int, encoding: str = "scalar") -> Task:
    """The task called ``name`` (one of `TASKS`); ``T``: copy delay, adding length, PTB window length."""
    if name == "copy":
        return CopyTask(T, encoding)
    if name == "adding":
        return AddingTask(T)
    if name in ("mnist", "pmnist"):
        return MNISTTask(permute=name == "pmnist")
    if name == "ptb":
        return PTBTask(T)
    raise ValueError(f"task: unknown {name!r}; choose from {TASKS}")
