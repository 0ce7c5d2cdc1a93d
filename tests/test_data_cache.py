"""The prepared cache: content equals the folder's crops, resumable, bad files skipped, verified on open."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import jitkit.data.cache as cache_mod
from jitkit.config import DataConfig
from jitkit.data import build_dataset
from jitkit.data.cache import CacheMismatch, open_cache, prepare_cache
from jitkit.data.crop import UnreadableImage
from jitkit.data.folder import ImageFolderDataset


class SimulatedKill(Exception):
    pass


@pytest.fixture
def src(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for c in ("bird", "apple", "cow"):
        (root / c).mkdir(parents=True)
        for k in range(7):
            h, w = rng.integers(20, 60, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{k}.png")
    return root


def test_prepare_matches_folder(src, tmp_path):
    out = prepare_cache(src, 24, tmp_path / "cache", workers=1, chunk=5, progress=False)
    ds = open_cache(out)
    folder = ImageFolderDataset(src, 24, verbose=False)
    assert ds.classes == folder.classes == ["apple", "bird", "cow"]
    assert len(ds) == len(folder) == 21 and ds.img_size == 24
    assert ds.images.shape == (21, 3, 24, 24) and ds.images.dtype == torch.uint8
    for i in range(21):
        x, y = folder[i]
        assert torch.equal(ds.images[i], x) and int(ds.labels[i]) == y
    man = json.loads((out / "manifest.json").read_text())
    assert man["count"] == 21 and man["size"] == 24 and man["source"] == str(src.resolve())
    assert len(man["checksum"]) == 64 and not (out / "prepare-state.json").exists()
    # build_dataset detects the cache by its manifest
    bd = build_dataset(DataConfig(data=str(out), img_size=24, hflip=True))
    assert bd.images.shape == ds.images.shape and bd.hflip
    assert not build_dataset(DataConfig(data=str(out), img_size=24)).hflip  # flips are off unless asked for
    with pytest.raises(ValueError, match="re-run `jitkit prepare"):
        build_dataset(DataConfig(data=str(out), img_size=32))


def test_parallel_equals_inline(src, tmp_path):
    a = prepare_cache(src, 16, tmp_path / "a", workers=1, chunk=4, progress=False)
    b = prepare_cache(src, 16, tmp_path / "b", workers=2, chunk=4, progress=False)
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    assert ma["checksum"] == mb["checksum"]


def test_resume_after_interrupt(src, tmp_path, monkeypatch, capsys):
    calls = []
    kill = [True]
    real = cache_mod._prepare_chunk

    def flaky(images_path, count, size, start, paths):
        calls.append(start)
        if kill[0] and len(calls) == 3:
            raise SimulatedKill
        return real(images_path, count, size, start, paths)

    monkeypatch.setattr(cache_mod, "_prepare_chunk", flaky)
    out = tmp_path / "cache"
    with pytest.raises(SimulatedKill):
        prepare_cache(src, 16, out, workers=1, chunk=4, progress=False)
    assert not (out / "manifest.json").exists() and (out / "prepare-state.json").exists()
    with pytest.raises(CacheMismatch, match="unfinished.*resume"):
        open_cache(out)
    calls.clear()
    kill[0] = False
    prepare_cache(src, 16, out, workers=1, chunk=4, progress=False)
    assert "resuming: 2 of 6 chunks already done" in capsys.readouterr().err
    assert sorted(calls) == [8, 12, 16, 20]  # chunks 0 and 1 were not decoded again
    fresh = prepare_cache(src, 16, tmp_path / "fresh", workers=1, chunk=4, progress=False)
    assert torch.equal(open_cache(out).images, open_cache(fresh).images)


def test_bad_files_skipped_and_strict(src, tmp_path, capsys):
    (src / "apple" / "0zero.jpg").write_bytes(b"")
    (src / "cow" / "fake.png").write_text("hello")
    out = prepare_cache(src, 16, tmp_path / "cache", workers=1, chunk=4, progress=False)
    err = capsys.readouterr().err
    assert "found 23 images in 3 classes" in err
    warn = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warn) == 1 and "skipped 2 unreadable image(s) of 23" in warn[0] and "0zero.jpg" in warn[0]
    ds = open_cache(out)
    assert len(ds) == 21
    # rows after the skipped ones were moved down: the cache still equals the clean folder crops
    folder = ImageFolderDataset(src, 16, verbose=False)
    assert len(folder) == 21
    assert torch.equal(ds.images, torch.stack([folder[i][0] for i in range(21)]))
    assert torch.equal(ds.labels, torch.as_tensor(folder.targets))
    assert sorted(p for p, _ in ds.manifest["skipped"]) == ["apple/0zero.jpg", "cow/fake.png"]
    with pytest.raises(UnreadableImage, match="found 1 unreadable.*strict=False"):
        prepare_cache(src, 16, tmp_path / "strict", workers=1, chunk=4, progress=False, strict=True)


def test_verification_refuses_mismatch(src, tmp_path):
    out = prepare_cache(src, 16, tmp_path / "cache", workers=1, progress=False)
    images = out / "images.u8"
    data = bytearray(images.read_bytes())
    # a changed pixel: full checksum (small cache) catches it
    data[len(data) // 2 + 7] ^= 0xFF
    images.write_bytes(bytes(data))
    with pytest.raises(CacheMismatch, match="checksum mismatch.*re-run `jitkit prepare"):
        open_cache(out)
    assert len(open_cache(out, verify="none")) == 21
    # a truncated file: size check
    images.write_bytes(bytes(data[:-100]))
    with pytest.raises(CacheMismatch, match="does not match its manifest.*re-run"):
        open_cache(out)
    # a manifest count that disagrees with the data
    out2 = prepare_cache(src, 16, tmp_path / "cache2", workers=1, progress=False)
    man = json.loads((out2 / "manifest.json").read_text())
    man["count"] = 20
    (out2 / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CacheMismatch, match="expected 20 images"):
        open_cache(out2)


def test_out_folder_rules(src, tmp_path, capsys):
    out = prepare_cache(src, 16, tmp_path / "cache", workers=1, progress=False)
    prepare_cache(src, 16, out, workers=1, progress=False)
    assert "nothing to do" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="overwrite=True"):
        prepare_cache(src, 24, out, workers=1, progress=False)
    prepare_cache(src, 24, out, workers=1, progress=False, overwrite=True)
    assert open_cache(out).img_size == 24
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a jitkit cache"):
        prepare_cache(src, 16, foreign, workers=1, progress=False)


def test_cache_pickles_by_path(src, tmp_path):
    ds = open_cache(prepare_cache(src, 16, tmp_path / "cache", workers=1, progress=False))
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # not the pixels
    back = pickle.loads(blob)
    assert torch.equal(back.images, ds.images) and back.classes == ds.classes


class _Rows(torch.utils.data.Dataset):
    """One whole batch per key, read by ``CacheDataset.read_rows``."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, rows):
        return self.ds.read_rows(rows)


def test_read_rows_in_any_order_in_workers(src, tmp_path):
    ds = open_cache(prepare_cache(src, 16, tmp_path / "cache", workers=1, progress=False), verify="none")
    ds.hflip = True  # read_rows never flips
    rows = [5, 3, 4, 20, 4, 0, 1, 2]  # two runs of consecutive rows once sorted, a repeated row, the last row
    x, y = ds.read_rows(rows)
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 16, 16)
    assert torch.equal(x, ds.images[rows]) and torch.equal(y, ds.labels[rows])
    assert ds.read_rows([])[0].shape == (0, 3, 16, 16)
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 20\].*found rows 0 … 21"):
        ds.read_rows([0, 21])
    # forked DataLoader workers open the file themselves (this process already has it open)
    keys = [list(range(k, 21, 3)) for k in range(3)] * 4
    loader = torch.utils.data.DataLoader(_Rows(ds), batch_size=None, sampler=keys, num_workers=2)
    for key, (xb, yb) in zip(keys, loader):
        assert torch.equal(xb, ds.images[key]) and torch.equal(yb, ds.labels[key])
    # a file cut short after opening is reported, not returned as garbage
    (tmp_path / "cache" / "images.u8").write_bytes(b"")
    with pytest.raises(CacheMismatch, match="ended inside row 3.*re-run"):
        ds.read_rows([3])
