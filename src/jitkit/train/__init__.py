"""Training: the engine (a short loop around ``Trainer.train_step``), batching, the optimiser, two-decay EMA,
LR schedule, run folder and resume, checkpoints, reporting, signals, the callback contract and the hardware
planner. torch.distributed is reached only through :mod:`jitkit.runtime.dist`."""

from jitkit.train.batching import batch_plan
from jitkit.train.ema import EMA
from jitkit.train.engine import NonFiniteLossError, StopTraining, train
from jitkit.train.schedule import lr_at, scaled_lr

__all__ = ["EMA", "NonFiniteLossError", "StopTraining", "batch_plan", "lr_at", "scaled_lr", "train"]
