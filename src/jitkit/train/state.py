"""A training run's checkpoints: what is saved besides the config (weights, EMAs, state.pt, meta.json), and
how a run continues from one.

state.pt holds the position (step, epoch, step in epoch, images seen, effective batch, world size), the
optimiser state (gathered to whole tensors under FSDP2), the fp16 scaler and the RNG states. Weights and
optimiser state are gathered on every rank (collectives under FSDP2); only rank 0 writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jitkit.checkpoint import (
    Checkpoint,
    check_state_dict,
    link_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_dir_name,
)
from jitkit.config import ModelConfig, RunConfig
from jitkit.runtime import dist
from jitkit.train.ema import EMA
from jitkit.train.optim import load_optimizer_state

__all__ = ["TrainState", "gather_weights", "resumed_step", "rng_state", "run_position", "write_checkpoint"]


def gather_weights(model: nn.Module, ema: EMA) -> dict[str, dict[str, torch.Tensor]]:
    """``model``, ``ema1`` and ``ema2`` state dicts of whole CPU tensors on rank 0 (empty dicts elsewhere).

    Under FSDP2 a collective: the shards are gathered one tensor at a time to rank 0's host
    (:func:`jitkit.runtime.dist.state_dict_to_main`), so no GPU holds a whole model beside its shards.
    """
    return {
        "model": dist.state_dict_to_main(model.state_dict()),
        "ema1": dist.state_dict_to_main(ema.averaged_state_dict(model, 1)),
        "ema2": dist.state_dict_to_main(ema.averaged_state_dict(model, 2)),
    }


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global CPU generator's state, and the device's on CUDA."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def run_position(step: int, steps_per_epoch: int, effective_batch: int, world_size: int) -> dict[str, int]:
    """Where a run stands after ``step`` optimiser steps (saved in state.pt)."""
    return {
        "step": step,
        "epoch": step // steps_per_epoch,
        "step_in_epoch": step % steps_per_epoch,
        "images_seen": step * effective_batch,
        "effective_batch": effective_batch,
        "world_size": world_size,
    }


def write_checkpoint(
    run_dir: Path,
    *,
    config: RunConfig,
    classes: list[str],
    weights: dict[str, dict[str, torch.Tensor]],
    position: dict[str, int],
    optimizer: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    lr: float,
    reason: str,
    keep: int,
    precision: dict[str, Any] | None = None,
) -> Path:
    """RUN/checkpoints/last (weights from :func:`gather_weights`, state.pt, meta.json), and a numbered hard
    link to it of which the last ``keep`` are kept (none if 0). ``reason``: why it was saved (periodic, epoch,
    end, interrupted). ``precision``: ``{"precision": resolved, "record": why}``, kept in meta.json."""
    state = {
        **position,
        "optimizer": optimizer,
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(device),
    }
    meta = {"step": position["step"], "epoch": position["epoch"], "reason": reason}
    meta.update(effective_batch=position["effective_batch"], lr=lr, world_size=position["world_size"])
    if precision is not None:  # the resolved training precision and why (a resumed "auto" run keeps it)
        meta.update(precision=precision["precision"], precision_choice=precision.get("record", {}))
    root = run_dir / "checkpoints"
    path = save_checkpoint(root / "last", config=config, classes=classes, **weights, state=state, meta=meta)
    if keep > 0:
        link_checkpoint(path, root / step_dir_name(position["step"]))
        prune_checkpoints(root, keep)
    return path


def resumed_step(step: int, old_batch: int, new_batch: int, n_data: int) -> int:
    """The step at which a run saved at ``step`` with effective batch ``old_batch`` continues with
    ``new_batch``: the same epoch, at the first step whose images start at or after those seen in it."""
    if old_batch == new_batch:
        return step
    epoch, in_epoch = divmod(step, max(1, n_data // old_batch))
    return epoch * (n_data // new_batch) + math.ceil(in_epoch * old_batch / new_batch)


@dataclass
class TrainState:
    """What a checkpoint holds besides the config and the run's position: the model (plain, and as trained:
    DDP/FSDP-wrapped), the optimiser, the two EMAs and the fp16 scaler. ``sharded``: FSDP2 across ranks."""

    model: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA
    scaler: torch.amp.GradScaler | None
    sharded: bool

    def gather(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """(weights of :func:`gather_weights`, the whole optimizer state dict); collectives under FSDP2."""
        weights = gather_weights(self.model, self.ema)
        return weights, dist.full_optimizer_state(self.wrapped, self.optimizer, self.sharded)

    def restore(self, ck: Checkpoint, model_cfg: ModelConfig) -> dict[str, Any]:
        """Load ``ck``'s weights (checked against ``model_cfg``), EMAs (the weights where it has none),
        optimiser state (through the wrapped module) and scaler; return its state.pt."""
        check_state_dict(self.model, ck.model, ck.config.model, model_cfg)
        dist.load_model_state(self.model, ck.model)
        for which, sd in (("1", ck.ema1), ("2", ck.ema2)):
            self.ema.load_averaged(which, sd if sd is not None else ck.model)
        st = ck.state or {}
        if "optimizer" in st:
            load_optimizer_state(self.wrapped, self.optimizer, st["optimizer"], sharded=self.sharded)
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        return st
