"""The ``shapes`` metric: does a generated image show its class, and how sharply?

For each image (uint8 [3, S, S]):

- foreground F = pixels whose max channel > 100 (the background of the data set is black);
- colour = the palette entry nearest (Euclidean, RGB) to the mean colour of F;
- shape = argmax over the spec's own shapes k of the best IoU

      IoU_k = max over sizes L ∈ [S/2, 3S/4] and positions (r, c) ∈ [0, S−L]²  of  |F ∩ M| / |F ∪ M|

  where M is ``jitkit.data.shapes.shape_mask(k, L)`` placed with its top-left corner at (r, c).

An image is correct when colour and shape are both right (class = colour·4 + shape). The mean best IoU is
a sharpness measure: an exact shape scores 1, a blurry blob much less.

Computation: |F ∩ M| at every position is a cross-correlation of F with the L×L mask, i.e. one
``conv2d`` per size with the 4 shape masks as output channels; |F ∪ M| = |F| + |M| − |F ∩ M|. This is
exact (integer counts in float32) and needs no [candidates × pixels] matrix, so it stays small at S = 64.

Shape key: N images, S side, K = 4 shapes, L mask side, R = S − L + 1 positions per axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FG_THRESHOLD = 100


def _as_uint8_tensor(images: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach().cpu()
    if t.dim() != 4 or t.shape[1] != 3 or t.shape[2] != t.shape[3]:
        raise ValueError(f"shapes metric expects uint8 images of shape [N, 3, S, S], found {list(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(
            f"shapes metric expects uint8 images (0..255), found dtype {t.dtype}; "
            "convert with jitkit.diffusion.to_uint8 first"
        )
    return t


def size_range(S: int) -> list[int]:
    """The sides L the data set draws from: every integer in [S/2, 3S/4]."""
    lo, hi = S // 2, (3 * S) // 4
    return list(range(lo, hi + 1))


def classify_shapes(images: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recover (colour index, shape index, best IoU of the chosen shape, class index) of each image.

    images: uint8 [N, 3, S, S] (numpy or tensor). Images with no foreground get colour −1, shape −1,
    IoU 0 and class −1 (never correct).
    """
    from jitkit.data.shapes import COLORS, SHAPES, shape_mask

    x = _as_uint8_tensor(images)
    N, _, S, _ = x.shape
    if N == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, np.zeros(0), e
    xf = x.float()  # [N,3,S,S]
    fg = (xf.amax(dim=1) > FG_THRESHOLD).float()  # [N,S,S]
    area = fg.sum(dim=(1, 2))  # [N]
    has_fg = area > 0

    # colour: mean of the foreground pixels, nearest palette entry
    mean_rgb = (xf * fg[:, None]).sum(dim=(2, 3)) / area.clamp_min(1)[:, None]  # [N,3]
    palette = torch.tensor([rgb for _, rgb in COLORS], dtype=torch.float32)  # [C,3]
    color = torch.cdist(mean_rgb, palette).argmin(dim=1)  # [N]

    # shape: best IoU over sizes and positions, per shape
    K = len(SHAPES)
    best = torch.zeros(N, K)
    fg4 = fg[:, None]  # [N,1,S,S]
    for L in size_range(S):
        masks = torch.stack(
            [torch.as_tensor(np.asarray(shape_mask(k, L), dtype=np.float32)) for k in range(K)]
        )
        inter = F.conv2d(fg4, masks[:, None])  # [N,K,R,R]: |F ∩ M| at each top-left (r, c)
        m_area = masks.sum(dim=(1, 2))  # [K]
        union = area[:, None, None, None] + m_area[None, :, None, None] - inter
        iou = (inter / union.clamp_min(1)).flatten(2).amax(dim=2)  # [N,K]
        best = torch.maximum(best, iou)
    best_iou, shape = best.max(dim=1)  # [N]

    color = torch.where(has_fg, color, torch.full_like(color, -1))
    shape = torch.where(has_fg, shape, torch.full_like(shape, -1))
    best_iou = torch.where(has_fg, best_iou, torch.zeros_like(best_iou))
    cls = torch.where(has_fg, color * K + shape, torch.full_like(color, -1))
    return color.numpy(), shape.numpy(), best_iou.double().numpy(), cls.numpy()


def shapes_metrics(images: Any, labels: Any) -> dict[str, Any]:
    """Class, colour and shape accuracy and mean best IoU of generated ``shapes`` images.

    images: uint8 [N, 3, S, S] (numpy or tensor); labels: int [N], the classes they were generated for.
    Returns ``accuracy`` (colour and shape both right), ``color_accuracy``, ``shape_accuracy``,
    ``mean_iou`` (mean best IoU, sharpness), ``n`` and ``per_class`` {class name: accuracy} for the classes
    present.
    """
    from jitkit.data.shapes import SHAPES, class_names

    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    n_img = len(images)
    if len(y) != n_img:
        raise ValueError(f"shapes metric: {n_img} images but {len(y)} labels; expected one label per image")
    names = class_names()
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise ValueError(
            f"shapes metric: labels must lie in [0, {len(names) - 1}] (the {len(names)} shapes classes), "
            f"found {int(y.min())}..{int(y.max())}"
        )
    color, shape, iou, cls = classify_shapes(images)
    K = len(SHAPES)
    ok_color = color == y // K
    ok_shape = shape == y % K
    ok = ok_color & ok_shape
    n = len(y)
    per_class = {names[c]: float(ok[y == c].mean()) for c in np.unique(y)}
    return {
        "accuracy": float(ok.mean()) if n else 0.0,
        "color_accuracy": float(ok_color.mean()) if n else 0.0,
        "shape_accuracy": float(ok_shape.mean()) if n else 0.0,
        "mean_iou": float(iou.mean()) if n else 0.0,
        "n": int(n),
        "per_class": per_class,
    }


def format_shapes_metrics(m: dict[str, Any]) -> str:
    """One line for logs: ``shapes: accuracy 0.988 (colour 1.000, shape 0.988), mean IoU 0.953, n 256``."""
    return (
        f"shapes: accuracy {m['accuracy']:.3f} (colour {m['color_accuracy']:.3f}, shape {m['shape_accuracy']:.3f}), "
        f"mean IoU {m['mean_iou']:.3f}, n {m['n']}"
    )


def blur(images: Any, k: int = 3, passes: int = 1) -> np.ndarray:
    """Box-blur uint8 images [N, 3, S, S] ``passes`` times with a k×k kernel (edges replicated)."""
    x = _as_uint8_tensor(images).float()
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()
