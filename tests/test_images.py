"""The one grid writer: one row per class, empty cells white, small images enlarged, atomic PNG."""

from __future__ import annotations

import numpy as np
import pytest

from jitkit import images as G

CLASSES = ["a", "b", "c"]


def test_grid_has_one_row_per_class(tmp_path):
    imgs = np.zeros((5, 3, 4, 4), dtype=np.uint8)
    for i in range(5):
        imgs[i] = 40 * (i + 1)
    y = np.array([2, 0, 2, 0, 2])
    g = G.make_grid(imgs, y, scale=1, pad=1)
    # rows: class 0 (images 1, 3), class 2 (images 0, 2, 4); 3 columns
    assert g.shape == (1 + 2 * 5, 1 + 3 * 5, 3)
    assert g[1, 1, 0] == 80 and g[1, 6, 0] == 160 and g[1, 11, 0] == 255  # empty cell stays white
    assert g[6, 1, 0] == 40 and g[6, 6, 0] == 120 and g[6, 11, 0] == 200
    p = G.save_grid(imgs, y, tmp_path / "g.png", CLASSES)
    from PIL import Image

    with Image.open(p) as im:
        assert im.size[1] == 2 + 2 * (64 + 2)  # 4-px images enlarged ×16 to 64 px
    with pytest.raises(ValueError, match=r"\.png"):
        G.save_grid(imgs, y, tmp_path / "g.jpg")
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        G.make_grid(imgs, y[:4])
