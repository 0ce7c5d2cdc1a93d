"""Learning rate: scaling rule and the per-step schedule (linear warm-up, then constant or half-cosine).

    lr = blr · effective_batch / 256,   effective_batch = micro_batch · accum_steps · world_size

At fractional epoch e = step / steps_per_epoch (the reference updates the LR every iteration):

    e < warmup:   lr(e) = lr · e / warmup
    constant:     lr(e) = lr
    cosine:       lr(e) = min_lr + (lr − min_lr) · ½ · (1 + cos(π · (e − warmup) / (epochs − warmup)))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

__all__ = ["lr_at", "lr_schedule", "scaled_lr", "set_lr"]


def scaled_lr(blr: float, effective_batch: int) -> float:
    """lr = blr · effective_batch / 256."""
    return blr * effective_batch / 256.0


def lr_at(
    epoch: float,
    lr: float,
    *,
    warmup_epochs: float,
    epochs: float,
    schedule: str = "constant",
    min_lr: float = 0.0,
) -> float:
    """The learning rate at fractional epoch ``epoch`` (see the module docstring)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-12)
        frac = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"schedule must be 'constant' or 'cosine', found {schedule!r}")


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (scaled by a group's ``lr_scale`` if present)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def lr_schedule(train_cfg: Any, lr: float, epochs: float) -> Callable[[float], float]:
    """fractional epoch → learning rate: :func:`lr_at` with a TrainConfig's warm-up, schedule and min_lr, for a
    run of ``epochs`` epochs at peak ``lr``."""
    tc = train_cfg
    return functools.partial(
        lr_at, lr=lr, epochs=epochs, warmup_epochs=tc.warmup_epochs, schedule=tc.schedule, min_lr=tc.min_lr
    )
