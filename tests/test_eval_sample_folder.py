"""The sample-folder format: labels.csv, resumable folders, refusal to mix requests, rank shares, npz."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from jitkit.config import SamplerConfig
from jitkit.diffusion.generate import balanced_labels, generate_images
from jitkit.eval import sample_folder as F

CLASSES = ["a", "b", "c"]
SCFG = SamplerConfig(method="heun", steps=3, cfg=2.0, interval=(0.0, 1.0))


@pytest.fixture(scope="module")
def denoiser(tiny):
    return tiny.denoiser(tiny.model_config(img_size=16), std=0.1)


def _close(a, b):
    d = (torch.as_tensor(np.asarray(a)).int() - torch.as_tensor(np.asarray(b)).int()).abs()
    # batched matmuls may differ in the last float bit between batch compositions: allow ±1 on rare pixels
    assert d.max() <= 1 and (d > 0).float().mean() < 1e-3


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_folder_labels_csv_and_resume(denoiser, tmp_path, monkeypatch):
    y = balanced_labels(3, per_class=3)
    out = tmp_path / "s"
    ref = generate_images(denoiser, y, SCFG, seed=1, batch_size=4, progress=False)

    # first run dies after writing one batch: no labels.csv, finished PNGs intact
    calls = {"n": 0}
    real_write = F.SampleFolder.write

    def dying_write(self, idx, imgs):
        real_write(self, idx, imgs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(F.SampleFolder, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    monkeypatch.setattr(F.SampleFolder, "write", real_write)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert not (out / "labels.csv").exists()
    assert not list(out.glob(".*tmp"))

    s = F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    assert s["skipped"] == 4 and s["generated"] == 5 and s["complete"]
    rows = _read_csv(out / "labels.csv")
    assert rows[0] == ["file", "class_index", "class_name"]
    assert rows[1:] == [[f"{i:05d}.png", str(c), CLASSES[c]] for i, c in enumerate(y.tolist())]
    imgs, labels = F.read_sample_folder(out)
    assert labels.tolist() == y.tolist()
    _close(imgs, ref)

    # a third run has nothing to do
    s = F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, batch_size=4, out_dir=out, progress=False)
    assert s["generated"] == 0 and s["skipped"] == 9


def test_resume_with_other_options_is_refused(denoiser, tmp_path):
    y = balanced_labels(3, per_class=1)
    out = tmp_path / "s"
    meta = {"seed": 1}
    F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta=meta)
    with pytest.raises(ValueError, match="different request.*seed: folder has 1, now 2"):
        F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=2, out_dir=out, progress=False, meta={"seed": 2})
    with pytest.raises(ValueError, match="num_images"):
        F.sample_to_outputs(
            denoiser, np.r_[y, 0], SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta=meta
        )


def test_three_ranks_split_without_duplicates_or_gaps(denoiser, tmp_path, monkeypatch):
    y = balanced_labels(3, num=10)
    ref = generate_images(denoiser, y, SCFG, seed=3, batch_size=10, progress=False)
    made: list[int] = []
    real = generate_images

    def spy(*a, indices=None, **kw):
        made.extend(indices)
        return real(*a, indices=indices, **kw)

    monkeypatch.setattr(F, "generate_images", spy)
    out, npz = tmp_path / "s", tmp_path / "s.npz"
    summaries = [
        F.sample_to_outputs(
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
    imgs, labels = F.read_sample_folder(out)
    assert labels.tolist() == y.tolist()
    _close(imgs, ref)
    a, ly, cls = F.load_npz(npz)
    assert ly.tolist() == y.tolist() and cls == CLASSES
    _close(a, ref)
    assert not list(tmp_path.glob(".*part*"))


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    y = np.array([0, 2, 1, 1, 0])
    p = F.save_npz(tmp_path / "x.npz", torch.as_tensor(imgs), y, CLASSES)
    with np.load(p) as z:
        assert z["arr_0"].shape == (5, 8, 8, 3)  # NHWC, the ADM evaluation layout
    a, ly, cls = F.load_npz(p)
    assert np.array_equal(a, imgs) and ly.tolist() == y.tolist() and cls == CLASSES
    with pytest.raises(ValueError, match=r"\.npz"):
        F.save_npz(tmp_path / "x.png", imgs, y)
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        F.load_npz(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "kw",
    [
        dict(per_class=2),
        dict(num=10),
        dict(num=2),
        dict(classes=[4, 1, 4], per_class=2),
        dict(classes=[2], num=3),
        {},
    ],
)
def test_label_plan_gives_the_labels_of_balanced_labels(kw):
    want = balanced_labels(5, **kw)
    plan = F.LabelPlan.balanced(5, **kw)
    assert len(plan) == len(want) and plan.array().tolist() == want.tolist()
    idx = np.arange(len(want))[::-1]
    assert plan.labels(idx).tolist() == want[idx].tolist()
    assert F.LabelPlan.of(want).runs == plan.runs and F.LabelPlan.of(want).digest() == plan.digest()


def test_label_plan_refuses_what_balanced_labels_refuses():
    for kw, needle in [
        (dict(classes=[5]), r"\[0, 4\]"),
        (dict(per_class=1, num=3), "either"),
        (dict(num=0), "num must be >= 1"),
        (dict(per_class=0), "per_class must be >= 1"),
        (dict(classes=[]), "classes is empty"),
    ]:
        with pytest.raises(ValueError, match=needle):
            F.LabelPlan.balanced(5, **kw)


def test_a_billion_labels_cost_a_few_numbers():
    plan = F.LabelPlan.balanced(1000, num=10**9 + 7)
    assert len(plan) == 10**9 + 7 and len(plan.runs) == 1000
    # the first 7 classes get one more: class 0 holds indices 0 … 1,000,000
    assert plan.labels([0, 1_000_000, 1_000_001, 10**9 + 6]).tolist() == [0, 0, 1, 999]
    with pytest.raises(IndexError, match="plan indices"):
        plan.labels([10**9 + 7])
    folder = F.SampleFolder("/nonexistent/never-made", plan, [str(c) for c in range(1000)])
    assert folder.meta["num_images"] == 10**9 + 7 and len(folder.meta["labels_plan"]) == 16
    first = next(folder.todo(rank=3, world_size=4, chunk=5))
    assert first.tolist() == [3, 7, 11, 15, 19]


def test_chunks_give_the_images_of_one_call(denoiser, tmp_path, monkeypatch):
    y = balanced_labels(3, num=7)
    ref = generate_images(denoiser, y, SCFG, seed=4, batch_size=2, progress=False)
    calls: list[list[int]] = []
    real = F.generate_images

    def spy(*a, indices=None, **kw):
        calls.append(list(indices))
        return real(*a, indices=indices, **kw)

    monkeypatch.setattr(F, "generate_images", spy)
    monkeypatch.setattr(F, "CHUNK_BYTES", 1)  # one batch per chunk
    out, npz = tmp_path / "s", tmp_path / "s.npz"
    s = F.sample_to_outputs(
        denoiser, y, SCFG, CLASSES, seed=4, batch_size=2, out_dir=out, npz=npz, progress=False
    )
    assert calls == [[0, 1], [2, 3], [4, 5], [6]] and s["generated"] == 7 and s["complete"]
    imgs, labels = F.read_sample_folder(out)
    assert labels.tolist() == y.tolist()
    _close(imgs, ref)
    a, ly, _ = F.load_npz(npz)
    assert ly.tolist() == y.tolist() and np.array_equal(a, imgs)
    # resumed with holes: only the missing images are made, in chunks of what is left
    for i in (1, 2, 6):
        (out / F.image_name(i)).unlink()
    (out / "labels.csv").unlink()
    calls.clear()
    s = F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=4, batch_size=2, out_dir=out, progress=False)
    assert sorted(i for c in calls for i in c) == [1, 2, 6] and s["skipped"] == 4 and s["complete"]
    _close(F.read_sample_folder(out)[0], ref)


def test_a_folder_begun_by_an_older_jitkit_resumes(denoiser, tmp_path):
    import hashlib
    import json

    y = balanced_labels(3, per_class=2)
    out = tmp_path / "s"
    out.mkdir()
    old_sha = hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()[:16]
    (out / F.META_JSON).write_text(json.dumps({"seed": 1, "num_images": 6, "labels_sha": old_sha}))
    s = F.sample_to_outputs(denoiser, y, SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta={"seed": 1})
    assert s["complete"]
    with pytest.raises(ValueError, match="different request.*labels_plan"):
        F.sample_to_outputs(
            denoiser, y[::-1], SCFG, CLASSES, seed=1, out_dir=out, progress=False, meta={"seed": 1}
        )


def test_an_npz_or_grid_that_cannot_fit_is_refused_before_any_image(denoiser, tmp_path, monkeypatch):
    plan = F.LabelPlan.balanced(3, num=10**8)
    with pytest.raises(ValueError, match=r"npz=.*100,000,000 images of 16×16 px.*GiB.*out_dir=DIR"):
        F.check_outputs_fit(plan, (3, 16, 16), npz=tmp_path / "a.npz", available=8 << 30)
    with pytest.raises(ValueError, match="grid="):
        F.check_outputs_fit(
            F.LabelPlan.balanced(3, num=10**6), (3, 16, 16), grid=tmp_path / "g.png", available=8 << 30
        )
    F.check_outputs_fit(plan, (3, 16, 16), available=1)  # a folder streams: nothing to refuse
    F.check_outputs_fit(
        F.LabelPlan.balanced(3, num=30), (3, 16, 16), npz=tmp_path / "a.npz", available=8 << 30
    )

    def never(*a, **kw):
        raise AssertionError("an image was made")

    monkeypatch.setattr(F, "generate_images", never)
    monkeypatch.setattr("jitkit.runtime.memory.host_available_memory", lambda: 1 << 30)
    with pytest.raises(ValueError, match="would need about"):
        F.sample_to_outputs(denoiser, plan, SCFG, CLASSES, npz=tmp_path / "a.npz", progress=False)
    assert not list(tmp_path.iterdir())


def test_a_bad_class_index_names_the_file_and_line(tmp_path):
    images = np.zeros((3, 3, 8, 8), np.uint8)
    f = F.SampleFolder(tmp_path / "s", [0, 1, 2], CLASSES)
    f.write(range(3), images)
    assert f.finish()
    rows = (tmp_path / "s" / "labels.csv").read_text().splitlines()
    rows[2] = "00001.png,abc,b"
    (tmp_path / "s" / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        ValueError, match=r"labels\.csv, line 3 \(00001\.png\): class_index must be an integer, found 'abc'"
    ):
        F.read_labels_csv(tmp_path / "s")
