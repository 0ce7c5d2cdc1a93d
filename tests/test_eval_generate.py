"""Generation: per-image seeds, resumable folders, rank splitting, labels.csv, npz round trip, grids."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from jitkit.config import DiffusionConfig, SamplerConfig, model_config
from jitkit.diffusion.flow import Denoiser
from jitkit.eval import generate as G
from jitkit.models import build_model

CLASSES = ["a", "b", "c"]
SCFG = SamplerConfig(method="heun", steps=3, cfg=2.0, interval=(0.0, 1.0))


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    net = build_model(model_config("JiT-T/4", img_size=16, num_classes=3))
    with torch.no_grad():  # random weights everywhere, so that outputs depend on noise, t and y
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return Denoiser(net, DiffusionConfig(), 3).eval()


def _close(a, b):
    d = (torch.as_tensor(np.asarray(a)).int() - torch.as_tensor(np.asarray(b)).int()).abs()
    # batched matmuls may differ in the last float bit between batch compositions: allow ±1 on rare pixels
    assert d.max() <= 1 and (d > 0).float().mean() < 1e-3


def test_image_depends_only_on_seed_and_index(denoiser):
    y = G.balanced_labels(3, per_class=2)
    full = G.generate_images(denoiser, y, SCFG, seed=5, batch_size=4, progress=False)
    part = G.generate_images(denoiser, y[[4, 1]], SCFG, seed=5, batch_size=1, indices=[4, 1], progress=False)
    _close(part[0], full[4])
    _close(part[1], full[1])
    other = G.generate_images(denoiser, y, SCFG, seed=6, batch_size=4, progress=False)
    assert (other.int() - full.int()).abs().float().mean() > 1.0
    assert full.dtype == torch.uint8 and full.shape == (6, 3, 16, 16)
    # different indices → different noise; same (seed, index) → same noise
    n1 = G.indexed_noise([0, 1, 0], (3, 4, 4), 1.0, seed=0)
    assert torch.equal(n1[0], n1[2]) and not torch.equal(n1[0], n1[1])
    assert G.image_seed(0, 1) != G.image_seed(1, 0)


def test_balanced_labels():
    assert G.balanced_labels(3, per_class=2).tolist() == [0, 0, 1, 1, 2, 2]
    y = G.balanced_labels(4, num=10)
    assert np.bincount(y, minlength=4).tolist() == [3, 3, 2, 2]
    assert G.balanced_labels(5, classes=[4, 1], per_class=2).tolist() == [4, 4, 1, 1]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        G.balanced_labels(3, classes=[3])
    with pytest.raises(ValueError, match="not both"):
        G.balanced_labels(3, per_class=1, num=3)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_folder_labels_csv_and_resume(denoiser, tmp_path, monkeypatch):
    y = G.balanced_labels(3, per_class=3)
    out = tmp_path / "s"
    ref = G.generate_images(denoiser, y, SCFG, seed=1, batch_size=4, progress=False)

    # first run dies after writing one batch: no labels.csv, finished PNGs intact
    calls = {"n": 0}
    real_write = G.SampleFolder.write

    def dying_write(self, idx, imgs):
        real_write(self, idx, imgs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(G.SampleFolder, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        G.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    monkeypatch.setattr(G.SampleFolder, "write", real_write)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert not (out / "labels.csv").exists()
    assert not list(out.glob(".*tmp"))

    s = G.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    assert s["skipped"] == 4 and s["generated"] == 5 and s["complete"]
    rows = _read_csv(out / "labels.csv")
    assert rows[0] == ["file", "class_index", "class_name"]
    assert rows[1:] == [[f"{i:05d}.png", str(c), CLASSES[c]] for i, c in enumerate(y.tolist())]
    imgs, labels = G.read_sample_folder(out)
    assert labels.tolist() == y.tolist()
    _close(imgs, ref)

    # a third run has nothing to do
    s = G.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    assert s["generated"] == 0 and s["skipped"] == 9


def test_resume_with_other_options_is_refused(denoiser, tmp_path):
    y = G.balanced_labels(3, per_class=1)
    out = tmp_path / "s"
    meta = {"seed": 1}
    G.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta=meta)
    with pytest.raises(ValueError, match="different request.*seed: folder has 1, now 2"):
        G.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=2, out_dir=out, progress=False, meta={"seed": 2})
    with pytest.raises(ValueError, match="num_images"):
        G.sample_to_outputs(
            denoiser, np.r_[y, 0], SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta=meta
        )


def test_three_ranks_split_without_duplicates_or_gaps(denoiser, tmp_path, monkeypatch):
    y = G.balanced_labels(3, num=10)
    ref = G.generate_images(denoiser, y, SCFG, seed=3, batch_size=10, progress=False)
    made: list[int] = []
    real = G.generate_images

    def spy(*a, indices=None, **kw):
        made.extend(indices)
        return real(*a, indices=indices, **kw)

    monkeypatch.setattr(G, "generate_images", spy)
    out, npz = tmp_path / "s", tmp_path / "s.npz"
    summaries = [
        G.sample_to_outputs(
            denoiser,
            y,
            SCFG,
            CLASSES,
            seed=3,
            batch_size=2,
            out_dir=out,
            npz=npz,
            rank=r,
            world_size=3,
            progress=False,
        )
        for r in range(3)
    ]
    assert sorted(made) == list(range(10))  # every index exactly once
    assert [s["generated"] for s in summaries] == [4, 3, 3]
    assert [bool(s.get("complete")) for s in summaries] == [False, False, True]
    imgs, labels = G.read_sample_folder(out)
    assert labels.tolist() == y.tolist()
    _close(imgs, ref)
    a, ly, cls = G.load_npz(npz)
    assert ly.tolist() == y.tolist() and cls == CLASSES
    _close(a, ref)
    assert not list(tmp_path.glob(".*part*"))
    assert [G.rank_indices(7, r, 3) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    y = np.array([0, 2, 1, 1, 0])
    p = G.save_npz(tmp_path / "x.npz", torch.as_tensor(imgs), y, CLASSES)
    with np.load(p) as z:
        assert z["arr_0"].shape == (5, 8, 8, 3)  # NHWC, the ADM evaluation layout
    a, ly, cls = G.load_npz(p)
    assert np.array_equal(a, imgs) and ly.tolist() == y.tolist() and cls == CLASSES
    with pytest.raises(ValueError, match=r"\.npz"):
        G.save_npz(tmp_path / "x.png", imgs, y)
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        G.load_npz(tmp_path / "bad.npz")


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


def test_device_resolution_explains():
    assert G.resolve_device("cpu").type == "cpu"
    assert G.resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            G.resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps, found 'tpu'"):
        G.resolve_device("tpu")
