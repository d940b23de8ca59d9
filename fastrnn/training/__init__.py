"""Training of the recurrent models: the model, the tasks' losses and one training iteration.

    fastrnn.training.model    SequenceModel: embedding or raw input -> LSTM / SABLSTM core -> per-step head
    fastrnn.training.tasks    the Task interface (batches, loss, metrics) and the seed tasks behind it
    fastrnn.training.step     train_step: batch -> truncation schedule -> forward -> loss -> backward
                              -> clip -> optimiser update, with per-phase hooks; evaluate (held out)
    fastrnn.training.artbp    OnlineTrainer: ARTBP online (seed 002 §5) / truncated BPTT over a stream
    fastrnn.training.fpp      FPP: Fixed Point Propagation (seed 003, Algorithm 1) and online T-BPTT
    fastrnn.training.auxiliary  AuxiliaryLSTM: r-LSTM / p-LSTM auxiliary losses (seed 001)

Training methods that change what an iteration does (streaming the recurrent state across batches,
ARTBP's online loop, the auxiliary losses of r-LSTM / p-LSTM, Fixed Point Propagation) join this package
as one module each. Dependencies run one way: `fastrnn.experiments` (runs, records, plots) uses this
package, which uses `fastrnn.modules`, `fastrnn.truncation` and `fastrnn.tasks`, never the reverse.
"""
from fastrnn.training.artbp import ARTBPSampler, FixedLength, OnlineTrainer, TensorStream, run_core
from fastrnn.training.auxiliary import AuxiliaryLSTM, AuxLosses
from fastrnn.training.fpp import FPP
from fastrnn.training.model import SequenceModel
from fastrnn.training.step import PHASES, StepResult, evaluate, train_step
from fastrnn.training.tasks import TASKS, AddingTask, CopyTask, MNISTTask, PTBTask, Task, make_task

__all__ = ["SequenceModel", "PHASES", "StepResult", "evaluate", "train_step", "TASKS", "Task", "CopyTask",
           "AddingTask", "MNISTTask", "PTBTask", "make_task", "OnlineTrainer", "ARTBPSampler", "FixedLength",
           "TensorStream", "run_core", "FPP", "AuxiliaryLSTM", "AuxLosses"]
