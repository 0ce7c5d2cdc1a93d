"""jitkit eval / ref-stats on the built-in metrics, eval hooks, and the errors that explain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jitkit.cli import main
from jitkit.config import DiffusionConfig, RunConfig, SamplerConfig, model_config, resolve_run_config
from jitkit.data.shapes import class_names, render_shapes
from jitkit.diffusion.flow import Denoiser
from jitkit.diffusion.generate import balanced_labels, generate_images
from jitkit.eval import fidelity, hooks
from jitkit.eval.sample_folder import SampleFolder, save_npz
from jitkit.eval.shapes_metric import shapes_metrics
from jitkit.models import build_model


@pytest.fixture()
def shapes_folder(tmp_path):
    images, labels = render_shapes(per_class=2, size=16, seed=7)
    f = SampleFolder(tmp_path / "s", labels, class_names())
    f.write(range(len(labels)), images)
    assert f.finish()
    return tmp_path / "s", images, labels


def test_eval_shapes_on_a_folder_and_npz(shapes_folder, tmp_path, capsys):
    root, images, labels = shapes_folder
    out = tmp_path / "r.json"
    assert main(["eval", str(root), "--metric", "shapes", "--json", str(out)]) == 0
    assert "accuracy 1.000" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["shapes"]["accuracy"] == 1.0 and res["shapes"]["n"] == 32
    # the same through an npz; with a wrong label the accuracy drops by exactly one image
    bad = labels.copy()
    bad[0] = (bad[0] + 1) % 16
    save_npz(tmp_path / "x.npz", images, bad)
    assert main(["eval", str(tmp_path / "x.npz"), "--metric", "shapes", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["shapes"]["accuracy"] == pytest.approx(31 / 32)


def test_eval_errors_explain(shapes_folder, tmp_path, capsys):
    root, images, _ = shapes_folder
    (root / "labels.csv").unlink()
    assert main(["eval", str(root), "--metric", "shapes"]) == 2
    assert "needs the class of each image" in capsys.readouterr().err
    assert main(["eval", str(root), "--metric", "fid"]) == 2
    assert "--ref stats.npz" in capsys.readouterr().err
    assert main(["eval", str(root), "--metric", "nope"]) == 2
    assert "choose from fid, is, pr, shapes, swissroll" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.npz"), "--metric", "shapes"]) == 2
    assert "not found" in capsys.readouterr().err
    # a sample folder whose labels.csv lists a missing image: interrupted sampling, say so
    f = SampleFolder(tmp_path / "t", np.zeros(3, np.int64), class_names())
    f.write([0, 1], images[:2])
    from jitkit.eval.sample_folder import write_labels_csv

    write_labels_csv(tmp_path / "t", np.zeros(3, np.int64), class_names())
    assert main(["eval", str(tmp_path / "t"), "--metric", "shapes"]) == 2
    assert "interrupted" in capsys.readouterr().err


def test_missing_inception_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(fidelity.InceptionWeightsMissing) as e:
        fidelity.find_inception_weights()
    msg = str(e.value)
    assert fidelity.INCEPTION_URL in msg and "--inception-weights" in msg and fidelity.WEIGHTS_ENV in msg
    with pytest.raises(FileNotFoundError, match="no such file"):
        fidelity.find_inception_weights(tmp_path / "nope.pth")
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(w))
    assert fidelity.find_inception_weights() == w
    monkeypatch.delenv(fidelity.WEIGHTS_ENV)
    cached = tmp_path / "hub" / "checkpoints" / fidelity.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert fidelity.find_inception_weights() == cached


def test_missing_torch_fidelity_is_explained(shapes_folder, capsys):
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here; tests/extra_eval covers it")
    except Exception:
        pass
    root, _, _ = shapes_folder
    assert main(["eval", str(root), "--metric", "is"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'jitkit[eval]'" in err and "torchvision" in err


def test_swissroll_eval(tmp_path, capsys):
    from jitkit.config import DataConfig
    from jitkit.data import build_dataset

    ds = build_dataset(DataConfig(data="swissroll-8", per_class=500, seed=0), split="train")
    np.savez(tmp_path / "sw.npz", samples=ds.data)
    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "sw.npz"), "--metric", "swissroll", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["swissroll"]
    assert r["off_manifold_energy"] < 1e-20 and r["n"] == 500
    assert r["mean_nn_dist"] < 0.2 and r["sliced_wasserstein"] < 0.2
    # a different P (another seed) puts the same points off the manifold
    assert (
        main(
            [
                "eval",
                str(tmp_path / "sw.npz"),
                "--metric",
                "swissroll",
                "--data-seed",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["swissroll"]["off_manifold_fraction"] > 0.5


def _tiny_denoiser(num_classes=16):
    torch.manual_seed(0)
    net = build_model(model_config("JiT-T/4", img_size=16, num_classes=num_classes))
    return Denoiser(net, DiffusionConfig(), num_classes).eval()


def test_shapes_hook_reports_the_metric_of_its_samples(tmp_path):
    den = _tiny_denoiser()
    scfg = SamplerConfig(method="euler", steps=2)
    cfg = resolve_run_config({"model": {"name": "JiT-T/4", "img_size": 16, "num_classes": 16}})
    cbs = hooks.make_eval_callbacks(cfg, shapes_per_class=1)
    assert len(cbs) == 1 and isinstance(cbs[0], hooks.ShapesEval)
    cb = hooks.ShapesEval(per_class=1, seed=3, sampler=scfg, progress=False)
    assert cb("epoch_end", {"denoiser": den}) is None  # only at the end
    rec = cb("end", {"denoiser": den, "step": 7, "epoch": 1, "run_dir": str(tmp_path), "config": cfg})
    labels = balanced_labels(16, per_class=1)
    expected = shapes_metrics(generate_images(den, labels, scfg, seed=3, progress=False), labels)
    assert rec["accuracy"] == expected["accuracy"] and rec["mean_iou"] == pytest.approx(expected["mean_iou"])
    logged = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 7 and logged[-1]["metric"] == "shapes"
    assert (tmp_path / "samples" / "eval-shapes-step-000007.png").is_file()


def test_fid_hook_needs_reference_stats():
    cfg = RunConfig().override({"train.eval_every_epochs": 5, "data.data": "folder"})
    with pytest.raises(ValueError, match="needs reference statistics"):
        hooks.make_eval_callbacks(cfg)
    assert hooks.make_eval_callback(RunConfig().override({"data.data": "folder"})) is None


def test_fid_schedule():
    due = [e for e in range(1, 11) if hooks.fid_due("epoch_end", e, every=4)]
    assert due == [4, 8]
    assert hooks.fid_due("end", 3, every=4) and not hooks.fid_due("end", 3, every=4, at_end=False)
    assert not any(hooks.fid_due("epoch_end", e, every=0) for e in range(1, 5))
    assert not hooks.fid_due("step", 4, every=4)


def test_image_sources(shapes_folder, tmp_path):
    from PIL import Image

    from jitkit.eval.sources import open_source

    src = open_source("shapes")
    assert src.n == 3200 and src.size == 16
    b = next(src.batches(100))
    assert b.dtype == torch.uint8 and b.shape == (100, 3, 16, 16)
    root, images, labels = shapes_folder
    src = open_source(root)
    got = torch.cat(list(src.batches(5)))
    assert torch.equal(got, torch.as_tensor(images)) and src.labels.tolist() == labels.tolist()
    # an ImageNet-layout folder: PATH/val is used when it exists, cropped to --size
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "inet" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 20), (10 * i, 0, 0)).save(d / f"{i}.png")
    src = open_source(tmp_path / "inet", size=16)
    assert src.n == 4 and "split val" in src.description
    assert torch.cat(list(src.batches(3))).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="--size"):
        open_source(tmp_path / "inet")
