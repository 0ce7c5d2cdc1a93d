"""Images as people look at them: the one grid writer (a PNG, one row per class, class names beside).

Shape key: N images, S side, C channels (1 or 3); grids are uint8 [H, W, 3].
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.fileio import atomic_write_bytes

__all__ = ["make_grid", "png_bytes", "save_grid", "to_hwc"]


def to_hwc(images: Any) -> np.ndarray:
    """uint8 images [N, C, S, S] or [N, S, S, C] (tensor or array) → numpy [N, S, S, C]."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 images [N, 3, S, S] or [N, S, S, 3], found {a.dtype} {list(a.shape)}"
        )
    if a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)  # [N,C,S,S] -> [N,S,S,C]
    elif a.shape[-1] not in (1, 3):
        raise ValueError(f"expected images with 1 or 3 channels, found shape {list(a.shape)}")
    return a


def png_bytes(img: np.ndarray) -> bytes:
    """One uint8 image [S, S, C] (or [S, S]) encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def _labels(labels: Any) -> np.ndarray:
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(
        -1
    )


def make_grid(
    images: Any, labels: Any, classes: Sequence[str] | None = None, *, scale: int | None = None, pad: int = 2
) -> np.ndarray:
    """One row per class present (ascending class index), images in their order → uint8 [H, W, 3].

    Small images are enlarged (nearest neighbour) to at least 64 px; with ``classes`` the row names are
    written in a left margin.
    """
    a = to_hwc(images)
    y = _labels(labels)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} images but {len(y)} labels")
    if len(a) == 0:
        raise ValueError("no images to put in a grid")
    if a.shape[-1] == 1:
        a = a.repeat(3, axis=-1)  # grey → RGB
    S = a.shape[1]
    if scale is None:
        scale = max(1, math.ceil(64 / S))
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
    T = a.shape[1]
    rows = sorted(set(y.tolist()))
    cols = max(int((y == c).sum()) for c in rows)
    margin = 0
    if classes is not None:
        margin = 8 + 6 * max(len(str(classes[c])) if 0 <= c < len(classes) else 4 for c in rows)
    H = pad + len(rows) * (T + pad)
    W = margin + pad + cols * (T + pad)
    grid = np.full((H, W, 3), 255, dtype=np.uint8)
    for r, c in enumerate(rows):
        for k, i in enumerate(np.nonzero(y == c)[0]):
            top, left = pad + r * (T + pad), margin + pad + k * (T + pad)
            grid[top : top + T, left : left + T] = a[i]
    if classes is not None:
        from PIL import Image, ImageDraw

        im = Image.fromarray(grid)
        draw = ImageDraw.Draw(im)
        for r, c in enumerate(rows):
            name = str(classes[c]) if 0 <= c < len(classes) else str(c)
            draw.text((4, pad + r * (T + pad) + T // 2 - 5), name, fill=(0, 0, 0))
        grid = np.asarray(im)
    return grid


def save_grid(
    images: Any,
    labels: Any,
    path: str | Path,
    classes: Sequence[str] | None = None,
    *,
    scale: int | None = None,
) -> Path:
    """Write :func:`make_grid` as a PNG (atomically: a crash never leaves half a file) and return its path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"a grid is written as a .png file, found the name {str(path)!r}")
    atomic_write_bytes(path, png_bytes(make_grid(images, labels, classes, scale=scale)))
    return path
