"""``shapes``: 16 classes of coloured shapes on black, generated exactly from a seed (no download).

The spec (other tools judge samples against it, so it is exact):

* 16 classes = 4 colours × 4 shapes; class index = colour·4 + shape.
  Colours in order red (220,40,40), green (40,200,60), blue (50,90,230), yellow (230,210,40);
  shapes in order circle, square, triangle, cross; class names like ``red_circle``.
* Image size S (default 16; any S ≥ 16 divisible by 4); black background; hard edges, no anti-aliasing.
* Per image: side L uniform integer in [S/2, 3S/4]; top and left uniform integers in [1, S − L − 1];
  colour = palette colour + independent uniform integer jitter in [−15, 15] per channel, clipped to [0, 255].
* Inside the L×L box, with pixel centres (x, y) = (j + 0.5, i + 0.5) (row i, column j, from the box's
  top-left corner):
    circle   (x − L/2)² + (y − L/2)² ≤ (L/2)²
    square   the whole box
    triangle |x − L/2| ≤ y/2           (apex at the top centre, base along the bottom edge)
    cross    o ≤ i < o + w  or  o ≤ j < o + w,   w = max(2, L // 4),  o = (L − w) // 2

Sampling order (for determinism): labels are class-major (``per_class`` images of class 0, then class 1, …);
from ``numpy.random.default_rng(seed)`` draw, in this order, L [N], top [N], left [N], jitter [N, 3].

Shape key: N images, S image side, L box side; images are uint8 [N, 3, S, S] (CHW).
"""

from __future__ import annotations

import numpy as np

COLORS: list[tuple[str, tuple[int, int, int]]] = [
    ("red", (220, 40, 40)),
    ("green", (40, 200, 60)),
    ("blue", (50, 90, 230)),
    ("yellow", (230, 210, 40)),
]
SHAPES: list[str] = ["circle", "square", "triangle", "cross"]
JITTER = 15
NUM_CLASSES = len(COLORS) * len(SHAPES)


def class_names() -> list[str]:
    """The 16 class names in index order (index = colour·4 + shape): ``red_circle``, ``red_square``, …"""
    return [f"{c}_{s}" for c, _ in COLORS for s in SHAPES]


def shape_mask(shape: int, L: int) -> np.ndarray:
    """Boolean [L, L] mask of shape ``shape`` (index into SHAPES) inside an L×L box (spec geometry)."""
    if not 0 <= int(shape) < len(SHAPES):
        raise ValueError(
            f"shape must be an index in 0..{len(SHAPES) - 1} ({', '.join(SHAPES)}), found {shape}"
        )
    if L < 1:
        raise ValueError(f"box side L must be >= 1, found {L}")
    ii, jj = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")  # row i, column j: [L, L]
    y = ii + 0.5
    x = jj + 0.5
    name = SHAPES[int(shape)]
    if name == "circle":
        return (x - L / 2) ** 2 + (y - L / 2) ** 2 <= (L / 2) ** 2
    if name == "square":
        return np.ones((L, L), dtype=bool)
    if name == "triangle":
        return np.abs(x - L / 2) <= y / 2
    w = max(2, L // 4)
    o = (L - w) // 2
    return ((ii >= o) & (ii < o + w)) | ((jj >= o) & (jj < o + w))


def check_size(size: int) -> None:
    if size < 16 or size % 4:
        raise ValueError(
            f"shapes image size must be >= 16 and divisible by 4 (e.g. 16, 32, 64), found {size}"
        )


def render_shapes(per_class: int = 200, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render ``per_class`` images of each of the 16 classes.

    Returns (images uint8 [N, 3, S, S], labels int64 [N]) with N = 16·per_class, class-major order.
    """
    check_size(size)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, found {per_class}")
    S = int(size)
    n = NUM_CLASSES * int(per_class)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)  # [N]
    rng = np.random.default_rng(seed)
    sides = rng.integers(S // 2, 3 * S // 4 + 1, size=n)  # L in [S/2, 3S/4]
    tops = rng.integers(1, S - sides)  # [1, S-L-1]
    lefts = rng.integers(1, S - sides)
    jitter = rng.integers(-JITTER, JITTER + 1, size=(n, 3))
    palette = np.array([c for _, c in COLORS], dtype=np.int64)  # [4, 3]
    colors = np.clip(palette[labels // len(SHAPES)] + jitter, 0, 255).astype(np.uint8)  # [N, 3]

    masks = {(s, L): shape_mask(s, L) for s in range(len(SHAPES)) for L in range(S // 2, 3 * S // 4 + 1)}
    images = np.zeros((n, 3, S, S), dtype=np.uint8)
    for k in range(n):
        L, t, l_ = int(sides[k]), int(tops[k]), int(lefts[k])
        m = masks[(int(labels[k]) % len(SHAPES), L)]
        box = images[k, :, t : t + L, l_ : l_ + L]  # view [3, L, L]
        box[:, m] = colors[k][:, None]
    return images, labels
