"""Image folder layouts and bad inputs (all files made in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jitkit.config import DataConfig
from jitkit.data import build_dataset
from jitkit.data.crop import UnreadableImage
from jitkit.data.folder import ImageFolderDataset, scan_folder


def put(path, color=(200, 10, 10), size=(40, 30), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        img = Image.new("RGB", size, color)
    else:
        img = Image.new(mode, size)
    img.save(path, format=fmt)
    return path


def make_classes(root, names=("cat", "dog"), per=3, exts=(".jpg", ".PNG", ".JpEg")):
    for c, name in enumerate(names):
        for k in range(per):
            put(root / name / f"{k}{exts[k % len(exts)]}", color=(50 * c, 100, 20 * k))


def test_flat_layout(tmp_path, capsys):
    make_classes(tmp_path, ("zebra", "ant", "cat"))
    ds = ImageFolderDataset(tmp_path, 16)
    assert ds.classes == ["ant", "cat", "zebra"] and ds.layout == "flat"
    assert len(ds) == 9 and sorted(ds.targets.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    err = capsys.readouterr().err
    assert "found 9 images in 3 classes (flat class folders:" in err
    x, y = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and y == 0
    # labels follow the sorted names: "ant" was written with red 50, "zebra" with red 0 (JPEG: ±3)
    for label, red in ((0, 50), (2, 0)):
        for i in np.flatnonzero(ds.targets == label):
            assert abs(ds[int(i)][0][0, 8, 8].item() - red) <= 3


def test_imagenet_layout_and_val(tmp_path, capsys):
    make_classes(tmp_path / "train", ("n01", "n02"), per=2)
    make_classes(tmp_path / "val", ("n01", "n02"), per=1)
    ds = build_dataset(DataConfig(data=str(tmp_path), img_size=16))
    assert ds.layout == "imagenet" and len(ds) == 4 and ds.classes == ["n01", "n02"]
    assert f"(ImageNet layout: {tmp_path / 'train'})" in capsys.readouterr().err
    val = build_dataset(DataConfig(data=str(tmp_path), img_size=16), split="val")
    assert len(val) == 2 and not val.hflip


def test_single_folder_is_one_class(tmp_path, capsys):
    d = tmp_path / "myimgs"
    for k in range(4):
        put(d / f"im{k}.bmp")
    put(d / "sub" / "ignored.txt", fmt="PNG")  # not an image name: the subfolder holds no images
    ds = ImageFolderDataset(d, 8)
    assert ds.layout == "single" and ds.classes == ["myimgs"] and len(ds) == 4
    assert "found 4 images in 1 class (single folder" in capsys.readouterr().err


def test_extensions_any_case_and_hidden_files(tmp_path):
    for name in ("a.JPG", "b.jpeg", "c.Png", "d.WEBP", "e.bmp", "f.txt", ".hidden.jpg", "._g.jpg"):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "txt": "PNG"}
        put(tmp_path / "c" / name, fmt=fmt[name.rsplit(".", 1)[1].lower()])
    scan = scan_folder(tmp_path)
    assert sorted(os.path.basename(f) for f in scan.files) == ["a.JPG", "b.jpeg", "c.Png", "d.WEBP", "e.bmp"]


def test_symlinks_followed(tmp_path):
    real = tmp_path / "store" / "cats"
    for k in range(2):
        put(real / f"{k}.png")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(real, data / "cats", target_is_directory=True)
    (data / "dogs").mkdir()
    put(tmp_path / "store" / "d0.png")
    os.symlink(tmp_path / "store" / "d0.png", data / "dogs" / "d0.png")
    os.symlink(data, data / "dogs" / "loop", target_is_directory=True)  # a loop must not hang
    scan = scan_folder(data)
    assert scan.classes == ["cats", "dogs"] and len(scan.files) >= 3
    assert scan.labels.count(0) == 2


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="empty"):
        ImageFolderDataset(tmp_path, 16)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.csv").write_text("1,2")
    with pytest.raises(FileNotFoundError, match=r"no files with an image extension"):
        ImageFolderDataset(tmp_path, 16)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected 'shapes'"):
        build_dataset(DataConfig(data=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="did you mean 'shapes'"):
        build_dataset(DataConfig(data="shape"))
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        build_dataset(DataConfig(data="imagenet"))


def test_mixed_layout(tmp_path):
    make_classes(tmp_path, ("a", "b"), per=1)
    put(tmp_path / "loose.jpg")
    with pytest.raises(ValueError, match="mixed layout"):
        ImageFolderDataset(tmp_path, 16)


def _bad_folder(tmp_path):
    good = tmp_path / "c" / "good.jpg"
    put(good, size=(64, 48))
    put(tmp_path / "c" / "good2.png")
    (tmp_path / "c" / "zero.jpg").write_bytes(b"")
    (tmp_path / "c" / "text.png").write_text("this is not a png")
    data = good.read_bytes()
    (tmp_path / "c" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    return tmp_path


def test_bad_files_skipped_with_one_warning(tmp_path, capsys):
    root = _bad_folder(tmp_path)
    ds = ImageFolderDataset(root, 16)
    err = capsys.readouterr().err.strip().splitlines()
    warn = [line for line in err if line.startswith("warning")]
    assert len(warn) == 1
    assert "skipped 3 unreadable image(s) of 5" in warn[0]
    assert all(name in warn[0] for name in ("zero.jpg", "text.png", "trunc.jpg"))
    assert len(ds) == 2 and all(ds[i][0].shape == (3, 16, 16) for i in range(2))


def test_bad_files_found_while_decoding_do_not_kill_the_epoch(tmp_path, capsys):
    # without the up-front check (big folders), unreadable files are replaced by the next readable one
    root = _bad_folder(tmp_path)
    ds = ImageFolderDataset(root, 16, check=False)
    assert len(ds) == 5
    items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) and x.dtype == torch.uint8 for x, _ in items)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "unreadable image" in err


def test_bad_files_strict(tmp_path):
    root = _bad_folder(tmp_path)
    with pytest.raises(UnreadableImage, match="found 3 unreadable"):
        ImageFolderDataset(root, 16, strict=True)
    ds = ImageFolderDataset(root, 16, strict=True, check=False)
    i = [os.path.basename(ds.path_of(k)) for k in range(len(ds))].index("trunc.jpg")
    with pytest.raises(UnreadableImage, match="trunc.jpg"):
        ds[i]


def test_odd_modes_and_tiny_images_load(tmp_path):
    d = tmp_path / "c"
    put(d / "gray.png", mode="L")
    put(d / "rgba.png", mode="RGBA")
    put(d / "cmyk.jpg", mode="CMYK")
    Image.fromarray(np.full((9, 9), 65535, np.uint16)).save(d / "g16.png")
    put(d / "tiny.png", size=(3, 2))
    ds = ImageFolderDataset(tmp_path, 32)
    assert len(ds) == 5
    for i in range(5):
        x, _ = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    j = [os.path.basename(ds.path_of(k)) for k in range(5)].index("g16.png")
    assert (ds[j][0] == 255).all()


def test_hflip_for_training(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :4] = 255  # bright left edge
    Image.fromarray(img).save(tmp_path / "edge.png")
    ds = ImageFolderDataset(tmp_path, 16, hflip=True)
    torch.manual_seed(0)
    lefts = [ds[0][0][0, 8, 0].item() for _ in range(64)]
    assert 0 < lefts.count(255) < 64
    assert all(ImageFolderDataset(tmp_path, 16, verbose=False)[0][0][0, 8, 0].item() == 255 for _ in range(4))


def test_folder_classes_match_the_scan_without_listing_every_image(tmp_path):
    from jitkit.data import data_classes
    from jitkit.data.folder import folder_classes

    make_classes(tmp_path / "flat", ("zebra", "ant"), per=2)
    (tmp_path / "flat" / "empty").mkdir()  # no images: not a class
    (tmp_path / "flat" / "deep" / "a" / "b").mkdir(parents=True)
    put(tmp_path / "flat" / "deep" / "a" / "b" / "x.png")
    assert (
        folder_classes(tmp_path / "flat")
        == scan_folder(tmp_path / "flat").classes
        == ["ant", "deep", "zebra"]
    )
    make_classes(tmp_path / "inet" / "train", ("n02", "n01"), per=1)
    assert folder_classes(tmp_path / "inet") == ["n01", "n02"]
    put(tmp_path / "one" / "a.png")
    assert folder_classes(tmp_path / "one") == ["one"]  # one folder of images: one class
    assert data_classes(DataConfig(data=str(tmp_path / "one"))) == ["one"]
    assert (
        len(data_classes(DataConfig(data="shapes"))) == 16
        and data_classes(DataConfig(data="swissroll-4")) is None
    )
    put(tmp_path / "flat" / "loose.png")
    with pytest.raises(ValueError, match="mixed layout"):
        folder_classes(tmp_path / "flat")


def test_much_smaller_images_are_noted_once(tmp_path, capsys):
    from jitkit.data.folder import small_images_note

    for k in range(4):
        put(tmp_path / "c" / f"{k}.png", size=(24, 20))
    ImageFolderDataset(tmp_path, 64)
    err = capsys.readouterr().err
    assert (
        err.count("note:") == 1
        and "4 of 4 images" in err
        and "img_size=64" in err
        and "median shorter side 20px" in err
    )
    assert "warning" not in err
    ImageFolderDataset(tmp_path, 32)  # not much smaller (20 >= 32 / 2): nothing to say
    assert "note:" not in capsys.readouterr().err
    assert small_images_note([str(tmp_path / "c" / "0.png")], 256, param="size").count("size=256") == 1


def test_file_names_with_any_bytes_are_read_and_shown(tmp_path, capsys):
    from jitkit.data.folder import printable

    raw = os.fsencode(tmp_path) + b"/caf\xe9"
    os.makedirs(raw + b"/sub")
    put(Path(os.fsdecode(raw + b"/sub/\xff.png")))
    (Path(os.fsdecode(raw)) / "zero.png").write_bytes(b"")
    ds = ImageFolderDataset(tmp_path, 16)
    assert len(ds) == 1 and ds[0][0].shape == (3, 16, 16) and ds.classes == [os.fsdecode(b"caf\xe9")]
    err = capsys.readouterr().err
    assert "zero.png" in err and "'caf\\udce9/zero.png'" in err  # repr where it cannot be printed as is
    assert printable("plain/é.png") == "plain/é.png" and printable(os.fsdecode(b"\xff")) == "'\\udcff'"
