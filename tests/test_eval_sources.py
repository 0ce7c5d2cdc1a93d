"""jitkit.eval.sources: sample folders, npz files and data sets streamed as uint8 batches."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from jitkit.cli import main
from jitkit.data.shapes import class_names, render_shapes
from jitkit.eval.sample_folder import SampleFolder, save_npz
from jitkit.eval.sources import crop_size_needed, open_source


@pytest.fixture()
def shapes_folder(tmp_path):
    images, labels = render_shapes(per_class=2, size=16, seed=7)
    f = SampleFolder(tmp_path / "s", labels, class_names())
    f.write(range(len(labels)), images)
    assert f.finish()
    return tmp_path / "s", images, labels


@pytest.fixture()
def imagenet_layout(tmp_path):
    """PATH/train/<class> (3 images each) and PATH/val/<class> (2 each), 24×20 px."""
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "inet" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 20), (10 * i, 0, 0)).save(d / f"{i}.png")
    return tmp_path / "inet"


def test_shapes_folder_and_npz_sources(shapes_folder, tmp_path):
    src = open_source("shapes")
    assert src.n == 3200 and src.size == 16
    b = next(src.batches(100))
    assert b.dtype == torch.uint8 and b.shape == (100, 3, 16, 16)
    root, images, labels = shapes_folder
    src = open_source(root)
    got = torch.cat(list(src.batches(5)))
    assert torch.equal(got, torch.as_tensor(images)) and src.labels.tolist() == labels.tolist()
    save_npz(tmp_path / "x.npz", images, labels)
    src = open_source(tmp_path / "x.npz")
    assert torch.equal(torch.cat(list(src.batches(7))), torch.as_tensor(images)) and src.size == 16


def test_a_data_set_is_cropped_to_size(imagenet_layout):
    # an ImageNet-layout folder: PATH/val is used when it exists
    src = open_source(imagenet_layout, size=16)
    assert src.n == 4 and "split val" in src.description
    assert torch.cat(list(src.batches(3))).shape == (4, 3, 16, 16)


def test_size_is_asked_for_by_its_parameter_and_the_cli_names_the_flag(
    imagenet_layout, shapes_folder, capsys
):
    with pytest.raises(ValueError, match="size is needed") as e:
        open_source(imagenet_layout)
    assert "--size" not in str(e.value)
    assert crop_size_needed(imagenet_layout)
    root, _, _ = shapes_folder
    assert not any(
        crop_size_needed(s) for s in ("shapes", root, root.parent / "x.npz", root.parent / "missing")
    )
    out = imagenet_layout.parent / "stats.npz"
    assert main(["ref-stats", str(imagenet_layout), "--out", str(out)]) == 2
    assert "--size is needed" in capsys.readouterr().err and not out.exists()
