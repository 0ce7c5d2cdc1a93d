"""Image data sets: items are (uint8 tensor [3, S, S], int label), with ``.classes`` and ``.img_size``.

Shape key: N images, S image side; images uint8 [N, 3, S, S], labels int64 [N].
"""

from __future__ import annotations

import numpy as np
import torch


class ImageDataset(torch.utils.data.Dataset):
    """Base class of jitkit image data sets.

    Subclasses set ``classes`` (index → name), ``img_size`` and ``hflip`` (flip items left-right with
    probability 1/2 in ``__getitem__``; used for training through a DataLoader).
    """

    classes: list[str]
    img_size: int
    hflip: bool = False
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _maybe_flip(self, img: torch.Tensor) -> torch.Tensor:
        if self.hflip and torch.rand(()).item() < 0.5:
            return img.flip(-1)
        return img


class InMemoryDataset(ImageDataset):
    """All images held in memory (or memory-mapped): exposes ``.images`` uint8 [N, 3, S, S] and ``.labels``
    int64 [N] so a trainer can index batches directly without a DataLoader."""

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        classes: list[str],
        *,
        hflip: bool = False,
        source: str = "",
    ) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).to(torch.int64)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, S, S], found dtype {images.dtype} shape {tuple(images.shape)}"
            )
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, found {images.shape[2]}x{images.shape[3]}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], found {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels must lie in [0, {len(classes) - 1}] for {len(classes)} classes, "
                f"found range [{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.img_size = int(images.shape[-1])
        self.hflip = hflip
        self.source = source

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._maybe_flip(self.images[i]), int(self.labels[i])

    def read_rows(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 [B, 3, S, S] and labels int64 [B] of the items at ``indices``, in that order, as one
        batch (never flipped: ``hflip`` applies to ``__getitem__`` only)."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)
