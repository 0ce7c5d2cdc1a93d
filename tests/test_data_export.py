"""`jitkit data export` and `jitkit prepare` from the command line."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from jitkit.cli import main
from jitkit.data.cache import open_cache
from jitkit.data.export import class_grid, export_samples
from jitkit.data.shapes import class_names, render_shapes


def read_folder(d):
    with open(d / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    imgs = np.stack([np.asarray(Image.open(d / r["file"])).transpose(2, 0, 1) for r in rows])
    return rows, imgs


def test_export_shapes_roundtrip(tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            ["data", "export", "shapes", "--out", str(out), "--per-class", "3", "--size", "32", "--seed", "5"]
        )
        == 0
    )
    rows, imgs = read_folder(out)
    ref, labels = render_shapes(per_class=3, size=32, seed=5)
    assert [r["file"] for r in rows[:2]] == ["00000.png", "00001.png"] and len(rows) == 48
    np.testing.assert_array_equal(imgs, ref)
    assert [int(r["class_index"]) for r in rows] == labels.tolist()
    assert [r["class_name"] for r in rows] == [class_names()[i] for i in labels]
    assert sorted(p.name for p in out.iterdir()) == sorted([r["file"] for r in rows] + ["labels.csv"])


def test_export_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "s"
    export_samples("shapes", out, per_class=1, progress=False)
    assert main(["data", "export", "shapes", "--out", str(out), "--per-class", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    export_samples("shapes", out, per_class=2, overwrite=True, progress=False)
    assert len(list(out.glob("*.png"))) == 32
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a sample folder"):
        export_samples("shapes", mine, per_class=1, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_prepare_then_export_cache_and_folder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "src" / "train"
    for c in ("x", "y"):
        (src / c).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src / c / f"{k}.jpg")
    (src / "y" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "prepare",
                "--data",
                str(tmp_path / "src"),
                "--size",
                "16",
                "--out",
                str(cache),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "found 9 images in 2 classes (ImageNet layout:" in err and "skipped 1 unreadable" in err
    ds = open_cache(cache)
    assert len(ds) == 8

    out_c = tmp_path / "from_cache"
    assert main(["data", "export", str(cache), "--out", str(out_c), "--per-class", "2"]) == 0
    rows, imgs = read_folder(out_c)
    assert [r["class_name"] for r in rows] == ["x", "x", "y", "y"]
    np.testing.assert_array_equal(imgs, ds.images.numpy()[[0, 1, 4, 5]])

    out_f = tmp_path / "from_folder"
    assert main(["data", "export", str(tmp_path / "src"), "--out", str(out_f), "--size", "16"]) == 0
    rows_f, imgs_f = read_folder(out_f)
    assert len(rows_f) == 8
    np.testing.assert_array_equal(imgs_f, ds.images.numpy())

    assert main(["data", "export", str(cache), "--out", str(tmp_path / "z"), "--size", "32"]) == 2
    assert "holds 16px images" in capsys.readouterr().err


def test_prepare_errors_are_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jitkit prepare: error: no images in") and "empty" in err


def test_class_grid_layout(tmp_path):
    images, labels = render_shapes(per_class=4, size=16, seed=0)
    g = class_grid(images, labels, class_names(), per_class=4, cell=64, pad=2)
    assert g.shape[1] == 2 + 16 * (64 + 2)
    head = g.shape[0] - 2 - 4 * (64 + 2)
    # the cell of class 5, row 2 is image (5·4 + 2) enlarged 4× by nearest neighbour
    top, left = head + 2 * 66, 2 + 5 * 66
    cell = g[top : top + 64, left : left + 64]
    np.testing.assert_array_equal(cell[::4, ::4], images[5 * 4 + 2].transpose(1, 2, 0))
    np.testing.assert_array_equal(cell[3::4, 3::4], images[5 * 4 + 2].transpose(1, 2, 0))
    path = tmp_path / "g.png"
    export_samples("shapes", None, per_class=4, grid=path, progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), g)
