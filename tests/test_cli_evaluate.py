"""jitkit eval on the built-in metrics (cli/evaluate.py), and the errors that explain."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jitkit.cli import main
from jitkit.data.shapes import class_names, render_shapes
from jitkit.eval.sample_folder import SampleFolder, save_npz, write_labels_csv


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
    write_labels_csv(tmp_path / "t", np.zeros(3, np.int64), class_names())
    assert main(["eval", str(tmp_path / "t"), "--metric", "shapes"]) == 2
    assert "interrupted" in capsys.readouterr().err


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
