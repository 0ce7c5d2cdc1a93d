"""Training: the engine, two-decay EMA, LR schedule, torch.distributed glue and the hardware planner."""

from jitkit.train.ema import EMA
from jitkit.train.engine import NonFiniteLossError, StopTraining, batch_plan, train
from jitkit.train.schedule import lr_at, scaled_lr

__all__ = ["EMA", "NonFiniteLossError", "StopTraining", "batch_plan", "lr_at", "scaled_lr", "train"]
