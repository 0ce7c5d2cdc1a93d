"""The shapes spec, checked against the issue's formulas written down independently here."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from jitkit.config import DataConfig
from jitkit.data import build_dataset
from jitkit.data.shapes import COLORS, SHAPES, class_names, render_shapes, shape_mask

PALETTE = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
SHAPE_ORDER = ["circle", "square", "triangle", "cross"]


@functools.cache
def spec_mask(shape: str, L: int) -> np.ndarray:
    """The issue's geometry, pixel by pixel, with pixel centres (x, y) = (j + 0.5, i + 0.5)."""
    m = np.zeros((L, L), dtype=bool)
    thick = max(2, L // 4)
    off = (L - thick) // 2
    for i in range(L):
        for j in range(L):
            x, y = j + 0.5, i + 0.5
            if shape == "circle":
                inside = math.hypot(x - L / 2, y - L / 2) <= L / 2
            elif shape == "square":
                inside = True
            elif shape == "triangle":
                inside = abs(x - L / 2) <= y / 2
            else:
                inside = off <= i < off + thick or off <= j < off + thick
            m[i, j] = inside
    return m


def test_palette_names_and_order():
    assert SHAPES == SHAPE_ORDER
    assert [n for n, _ in COLORS] == list(PALETTE)
    assert [c for _, c in COLORS] == list(PALETTE.values())
    names = class_names()
    assert len(names) == 16
    for c, color in enumerate(PALETTE):
        for s, shape in enumerate(SHAPE_ORDER):
            assert names[c * 4 + s] == f"{color}_{shape}"


@pytest.mark.parametrize("S", [16, 32])
def test_shape_mask_matches_spec(S):
    for L in range(S // 2, 3 * S // 4 + 1):
        for s, name in enumerate(SHAPE_ORDER):
            got = shape_mask(s, L)
            assert got.dtype == bool and got.shape == (L, L)
            np.testing.assert_array_equal(got, spec_mask(name, L), err_msg=f"{name} L={L}")


def test_shape_mask_hand_checked():
    # cross at L=8: thickness 2 starting at 3 -> rows/cols 3 and 4
    m = shape_mask(3, 8)
    assert m[3].all() and m[4].all() and m[:, 3].all() and m[:, 4].all()
    assert not m[0, 0] and not m[2, 2] and not m[5, 5] and m.sum() == 8 * 2 * 2 - 4
    # triangle at L=8: top row empty (|x-4| <= 0.25 has no pixel centre), bottom row full
    t = shape_mask(2, 8)
    assert not t[0].any() and t[7].all() and t[1, 3] and t[1, 4] and not t[1, 2]
    # circle at L=8: corners out, centre row full
    c = shape_mask(0, 8)
    assert not c[0, 0] and c[4].all() and c[0, 3]
    with pytest.raises(ValueError, match="shape must be"):
        shape_mask(4, 8)


def _locate(img: np.ndarray, shape: str, S: int) -> tuple[int, int, int] | None:
    """Find (L, top, left) within the spec's ranges such that the non-black pixels are exactly the shape."""
    fg = img.any(axis=0)
    for L in range(S // 2, 3 * S // 4 + 1):
        m = spec_mask(shape, L)
        for top in range(1, S - L):
            for left in range(1, S - L):
                canvas = np.zeros((S, S), dtype=bool)
                canvas[top : top + L, left : left + L] = m
                if np.array_equal(canvas, fg):
                    return L, top, left
    return None


@pytest.mark.parametrize("S,per_class", [(16, 6), (32, 2)])
def test_render_is_pixel_exact(S, per_class):
    images, labels = render_shapes(per_class=per_class, size=S, seed=3)
    assert images.dtype == np.uint8 and images.shape == (16 * per_class, 3, S, S)
    assert labels.dtype == np.int64 and np.bincount(labels, minlength=16).tolist() == [per_class] * 16
    for img, lab in zip(images, labels):
        color = list(PALETTE)[lab // 4]
        shape = SHAPE_ORDER[lab % 4]
        fg = img.any(axis=0)
        # one colour over the whole shape, within the jitter of the palette colour; background exactly black
        cols = img[:, fg].T
        assert (cols == cols[0]).all()
        assert np.abs(cols[0].astype(int) - np.array(PALETTE[color])).max() <= 15
        assert (img[:, ~fg] == 0).all()
        assert _locate(img, shape, S) is not None, f"class {lab} ({color}_{shape}) does not match the spec"


def test_placement_and_jitter_ranges():
    S = 16
    images, labels = render_shapes(per_class=200, size=S, seed=0)
    fg = images.any(axis=1)  # [N, S, S]
    # the box lies inside with a margin of at least one pixel on every side
    assert not fg[:, 0, :].any() and not fg[:, -1, :].any()
    assert not fg[:, :, 0].any() and not fg[:, :, -1].any()
    # squares reveal L, top and left directly: all values of the spec ranges occur
    sq = fg[labels % 4 == 1]
    rows = sq.any(axis=2)
    tops = rows.argmax(axis=1)
    sides = rows.sum(axis=1)
    assert set(sides.tolist()) == set(range(S // 2, 3 * S // 4 + 1))
    assert tops.min() == 1 and (tops + sides).max() == S - 1
    # colour jitter: within [-15, 15] of the palette and reaching both ends over 3,200 images
    pal = np.array(list(PALETTE.values()))[labels // 4]  # [N, 3]
    first = fg.reshape(len(fg), -1).argmax(axis=1)
    col = images.reshape(len(images), 3, -1)[np.arange(len(images)), :, first].astype(int)
    dev = col - pal
    assert dev.min() == -15 and dev.max() == 15


def test_deterministic_from_seed():
    a, la = render_shapes(per_class=5, size=16, seed=7)
    b, lb = render_shapes(per_class=5, size=16, seed=7)
    c, _ = render_shapes(per_class=5, size=16, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [12, 18, 30])
def test_bad_size(bad):
    with pytest.raises(ValueError, match="divisible by 4"):
        render_shapes(per_class=1, size=bad)


def test_build_dataset_shapes():
    ds = build_dataset(DataConfig(data="shapes", img_size=32, per_class=3, seed=1, hflip=False))
    assert len(ds) == 48 and ds.img_size == 32 and ds.classes == class_names()
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (48, 3, 32, 32)
    assert ds.labels.dtype == torch.int64
    x, y = ds[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and isinstance(y, int)
    ref, _ = render_shapes(per_class=3, size=32, seed=1)
    np.testing.assert_array_equal(ds.images.numpy(), ref)
    val = build_dataset(DataConfig(data="shapes", img_size=32, per_class=3, seed=1), split="val")
    assert not torch.equal(val.images, ds.images)
