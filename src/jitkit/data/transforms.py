"""Batch transforms applied on the training device: range conversion and random horizontal flip.

Shape key: B batch, C channels, S image side; batches are [B, C, S, S].
"""

from __future__ import annotations

import torch


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [−1, 1]:  x = u8/255·2 − 1. Keeps the tensor's device."""
    if u8.dtype != torch.uint8:
        raise ValueError(f"to_model_range expects a uint8 tensor, found dtype {u8.dtype}")
    return u8.to(torch.float32).div_(255.0).mul_(2.0).sub_(1.0)


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float in [−1, 1] → uint8: round(clip((x + 1)/2·255))."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a batch [B, C, S, S] left-right with probability 1/2 (independently).

    The coin flips are drawn on the generator's device (CPU when none is given) and moved to ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"random_hflip expects a batch [B, C, S, S], found shape {tuple(x.shape)}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(x.shape[0], generator=generator, device=gdev) < 0.5  # [B]
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)
