"""The shapes metric recovers the class of the data set's own images and punishes blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jitkit.data.shapes import COLORS, SHAPES, class_names, render_shapes, shape_mask
from jitkit.eval.shapes_metric import classify_shapes, shapes_metrics


def _blur(images: np.ndarray, k: int = 3, passes: int = 2) -> np.ndarray:
    x = torch.as_tensor(images).float()
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("size", [16, 32])
def test_own_images_are_recognised(size):
    images, labels = render_shapes(per_class=16 if size == 16 else 6, size=size, seed=3)
    m = shapes_metrics(images, labels)
    assert m["n"] == len(labels)
    assert m["accuracy"] >= 0.99
    assert m["color_accuracy"] >= 0.99 and m["shape_accuracy"] >= 0.99
    # the exact mask at the exact position is among the candidates: IoU 1 for every image
    assert m["mean_iou"] > 0.999
    assert set(m["per_class"]) == set(class_names())


def test_blurred_images_score_lower():
    images, labels = render_shapes(per_class=16, size=16, seed=1)
    sharp = shapes_metrics(images, labels)
    light = shapes_metrics(_blur(images, k=3, passes=1), labels)
    heavy = shapes_metrics(_blur(images, k=5, passes=1), labels)
    assert light["mean_iou"] < sharp["mean_iou"] - 0.05
    assert heavy["mean_iou"] < light["mean_iou"]
    assert heavy["mean_iou"] < sharp["mean_iou"] - 0.1
    assert heavy["accuracy"] < sharp["accuracy"] - 0.2


def test_wrong_labels_and_tensor_input():
    images, labels = render_shapes(per_class=4, size=16, seed=2)
    # shifting every label by one shape keeps the colour right and the shape wrong
    shifted = (labels // 4) * 4 + (labels % 4 + 1) % 4
    m = shapes_metrics(torch.as_tensor(images), torch.as_tensor(shifted))
    assert m["color_accuracy"] > 0.99 and m["shape_accuracy"] < 0.01 and m["accuracy"] < 0.01
    # and one colour wrong
    other = (labels + 4) % 16
    m2 = shapes_metrics(images, other)
    assert m2["color_accuracy"] < 0.01 and m2["shape_accuracy"] > 0.99


def test_hand_made_image_and_empty_image():
    S = 16
    img = np.zeros((2, 3, S, S), dtype=np.uint8)
    L, top, left = 10, 3, 2
    mask = shape_mask(SHAPES.index("triangle"), L)
    blue = COLORS[2][1]
    for c in range(3):
        img[0, c, top : top + L, left : left + L][mask] = blue[c]
    color, shape, iou, cls = classify_shapes(img)
    assert (color[0], shape[0]) == (2, SHAPES.index("triangle"))
    assert iou[0] == pytest.approx(1.0)
    assert cls[0] == 2 * 4 + 2
    # the black image has no foreground: never correct
    assert (color[1], shape[1], cls[1]) == (-1, -1, -1) and iou[1] == 0.0
    m = shapes_metrics(img, [10, 10])
    assert m["accuracy"] == 0.5


def _brute_best_iou(img: np.ndarray) -> np.ndarray:
    """Independent loop over every shape, size in [S/2, 3S/4] and top-left position → best IoU per shape."""
    S = img.shape[-1]
    fg = img.max(0) > 100
    best = np.zeros(len(SHAPES))
    for k in range(len(SHAPES)):
        for L in range(S // 2, 3 * S // 4 + 1):
            m = shape_mask(k, L)
            for r in range(S - L + 1):
                for c in range(S - L + 1):
                    cand = np.zeros((S, S), bool)
                    cand[r : r + L, c : c + L] = m
                    union = (cand | fg).sum()
                    best[k] = max(best[k], (cand & fg).sum() / union if union else 0.0)
    return best


def test_iou_matches_brute_force_on_odd_images():
    rng = np.random.default_rng(0)
    images, _ = render_shapes(per_class=1, size=16, seed=5)
    imgs = np.concatenate([_blur(images[:3], k=5, passes=1), images[3:5].copy()])
    imgs[3, :, 2:14, 2:8] = 0  # cut a shape
    imgs[4] = (rng.random((3, 16, 16)) > 0.7) * 200  # speckle
    _, shape, iou, _ = classify_shapes(imgs)
    for n in range(len(imgs)):
        brute = _brute_best_iou(imgs[n])
        assert iou[n] == pytest.approx(brute.max(), abs=1e-6)
        assert brute[shape[n]] == pytest.approx(brute.max(), abs=1e-9)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"\[N, 3, S, S\]"):
        shapes_metrics(np.zeros((2, 16, 16), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="uint8"):
        shapes_metrics(np.zeros((1, 3, 16, 16), np.float32), [0])
    with pytest.raises(ValueError, match="labels"):
        shapes_metrics(np.zeros((2, 3, 16, 16), np.uint8), [0])
    with pytest.raises(ValueError, match=r"0, 15"):
        shapes_metrics(np.zeros((1, 3, 16, 16), np.uint8), [16])


def test_all_foreground_scores_the_largest_square():
    # a flat grey image (what an untrained model makes) is all foreground: its best match is the largest
    # square, side 3S/4, so IoU = (3/4)² whatever the colour — accuracy, not IoU alone, shows it is wrong
    img = np.full((1, 3, 16, 16), 128, dtype=np.uint8)
    color, shape, iou, _ = classify_shapes(img)
    assert shape[0] == SHAPES.index("square") and iou[0] == pytest.approx(0.5625)
