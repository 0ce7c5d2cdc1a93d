"""`jitkit data export` and `jitkit prepare` from the command line."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from jitkit.cli import main
from jitkit.data.cache import open_cache
from jitkit.data.shapes import class_names, render_shapes
from jitkit.eval.export import export_samples
from jitkit.images import make_grid


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


def test_export_grid_is_the_one_grid_writers(tmp_path):
    images, labels = render_shapes(per_class=6, size=16, seed=0)
    path = tmp_path / "g.png"
    export_samples("shapes", None, per_class=6, grid=path, grid_per_class=4, progress=False)
    # the first 4 images of every class, one row per class, class names in the margin
    keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(16)])
    want = make_grid(images[keep], labels[keep], class_names())
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), want)
    # the cell of class 5, column 2 is image (5·6 + 2) enlarged 4× (16 px → 64 px) by nearest neighbour
    margin = want.shape[1] - 2 - 4 * 66
    top, left = 2 + 5 * 66, margin + 2 + 2 * 66
    cell = want[top : top + 64, left : left + 64]
    np.testing.assert_array_equal(cell[::4, ::4], images[5 * 6 + 2].transpose(1, 2, 0))


def test_interrupted_export_leaves_no_half_folder(tmp_path, monkeypatch):
    from jitkit.eval import sample_folder

    out = tmp_path / "s"
    export_samples("shapes", out, per_class=1, progress=False)
    before = sorted(p.name for p in out.iterdir())
    calls = {"n": 0}
    real = sample_folder.write_labels_csv

    def dying(*a, **kw):
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_folder, "write_labels_csv", dying)
    with pytest.raises(KeyboardInterrupt):
        export_samples("shapes", out, per_class=2, overwrite=True, progress=False)
    monkeypatch.setattr(sample_folder, "write_labels_csv", real)
    assert calls["n"] == 1
    assert sorted(p.name for p in out.iterdir()) == before  # the old folder is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no partial folder left beside it
